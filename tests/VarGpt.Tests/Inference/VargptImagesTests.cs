using Microsoft.Extensions.AI;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Vision;
using MeaiOptions = Microsoft.Extensions.AI.ImageGenerationOptions;
using VarGpt.Inference;

using VarGpt;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Inference;

/// <summary>(Loads whole pipelines: runs apart from the parallel tests.) Text-to-image and editing through <see cref="VargptModel"/> on a tiny random checkpoint (image start forced).</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class VargptImagesTests
{
    static readonly Lazy<VargptModel> Images = new(() => VargptModel.Load(TinyImageModel.Folder()));
    static readonly ImageOptions Forced = new() { ForceImageStart = true };
    const string Prompt = "Please draw a red circle on the left.";

    static VargptModel Model()
    {
        TorchTestSetup.Init();
        return Images.Value;
    }

    static ImageResult Gen(VargptModel m, string prompt, ImageOptions o, Action<ImageProgress>? progress = null) =>
        m.GenerateImage(prompt, o, progress, TestContext.Current.CancellationToken);

    static ImageResult Edit(VargptModel m, RgbImage image, string instruction, ImageOptions o, Action<ImageProgress>? progress = null) =>
        m.EditImage(image, instruction, o, progress, TestContext.Current.CancellationToken);

    static RgbImage Pattern(int w, int h)
    {
        var data = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = (y * w + x) * 3;
                data[i] = (byte)(x * 255 / w); data[i + 1] = (byte)(y * 255 / h); data[i + 2] = (byte)((x ^ y) & 0xff);
            }
        return new RgbImage(w, h, data);
    }

    [Fact]
    public void Same_seed_gives_identical_png_bytes_and_different_seeds_differ()
    {
        var m = Model();
        var a = Gen(m, Prompt, Forced with { Seed = 7 });
        var b = Gen(m, Prompt, Forced with { Seed = 7 });
        var c = Gen(m, Prompt, Forced with { Seed = 8 });
        Assert.Equal(7, a.Seed);
        Assert.Equal(256, a.Images[0].Image.Width);
        Assert.Equal(256, a.Images[0].Image.Height);
        Assert.Equal(a.Images[0].Image.EncodePng(), b.Images[0].Image.EncodePng());
        Assert.NotEqual(a.Images[0].Image.Data, c.Images[0].Image.Data);
        Assert.True(a.ImageStartForced);
        Assert.Equal("", a.Text);
        Assert.Equal(a.PromptTokens, a.ContextTokens); // forced: the context is the prompt alone
    }

    [Fact]
    public void Without_a_seed_a_random_one_is_chosen_and_reproduces_the_image()
    {
        var m = Model();
        var a = Gen(m, Prompt, Forced);
        var b = Gen(m, Prompt, Forced with { Seed = a.Seed });
        Assert.Equal(a.Images[0].Image.Data, b.Images[0].Image.Data);
    }

    [Fact]
    public void Count_images_equal_one_by_one_calls_with_consecutive_seeds()
    {
        var m = Model();
        var batch = Gen(m, Prompt, Forced with { Seed = 100, Count = 3 });
        Assert.Equal([100L, 101L, 102L], batch.Images.Select(p => p.Seed));
        for (int i = 0; i < 3; i++)
        {
            var single = Gen(m, Prompt, Forced with { Seed = 100 + i });
            Assert.Equal(single.Images[0].Image.Data, batch.Images[i].Image.Data);
        }
        var prompts = m.GenerateImages([Prompt, "A blue star at the top."], Forced with { Seed = 100 }, null, TestContext.Current.CancellationToken);
        Assert.Equal(batch.Images[0].Image.Data, prompts[0].Images[0].Image.Data);
        Assert.Equal(Gen(m, "A blue star at the top.", Forced with { Seed = 100 }).Images[0].Image.Data, prompts[1].Images[0].Image.Data);
    }

    [Fact]
    public void Edit_produces_an_image_that_depends_on_the_source()
    {
        var m = Model();
        var progress = new List<ImageProgress>();
        var a = Edit(m, Pattern(64, 48), "Transform this image <image> to match the style of a poster", Forced with { Seed = 3 }, progress.Add);
        var b = Edit(m, Pattern(48, 64), "Transform this image <image> to match the style of a poster", Forced with { Seed = 3 });
        Assert.Equal(256, a.Images[0].Image.Width);
        Assert.NotEqual(a.Images[0].Image.Data, b.Images[0].Image.Data);
        Assert.Equal(7, progress.Count);
        Assert.Equal(Enumerable.Range(0, 7), progress.Select(p => p.ScaleIndex));
        // image first, then the instruction, when the instruction has no <image> marker
        var c = Edit(m, Pattern(64, 48), "make it a poster", Forced with { Seed = 3 });
        Assert.True(c.ContextTokens > a.ContextTokens - 20 && c.Images.Count == 1);
    }

    [Fact]
    public void A_model_that_answers_with_text_gives_a_clear_error_with_its_text()
    {
        var m = Model();
        var e = Assert.Throws<NoImageGeneratedException>(() => Gen(m, Prompt, new ImageOptions { Seed = 1, MaxNewTokens = 5 }));
        Assert.Contains("did not start an image", e.Message);
        Assert.Contains("--force-image-start", e.Message);
        Assert.Equal(StopReason.MaxLength, e.StopReason);
    }

    [Fact]
    public void Bad_options_are_rejected_with_the_valid_values()
    {
        var m = Model();
        Exception e = Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { Pn = "0.3M" }));
        Assert.Contains("0.25M", e.Message);
        Assert.Contains("0.06M", e.Message);
        e = Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { AspectRatio = 1.1 }));
        Assert.Contains("1.25", e.Message);
        Assert.Contains("valid", e.Message);
        Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { Cfg = 0.5 }));
        Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { Tau = 0 }));
        Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { TopP = 1.5 }));
        Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { TopK = -1 }));
        Assert.Throws<InvalidOptionException>(() => Gen(m, Prompt, Forced with { Count = 0 }));
    }

    [Fact]
    public void Prompt_context_longer_than_cfg_uncond_rows_is_a_clear_error()
    {
        TorchTestSetup.Init();
        using var small = VargptModel.Load(TinyImageModel.Folder(textMaxLen: 48));
        var longPrompt = string.Join(" ", Enumerable.Repeat("a large red circle on the left", 20));
        var e = Assert.Throws<VargptInputException>(() => Gen(small, longPrompt, Forced with { Seed = 1 }));
        Assert.Contains("at most 48", e.Message);
        Assert.Contains("Shorten the prompt", e.Message);
        // editing: the image tokens dominate; the message says how to lower the image's pixels
        e = Assert.Throws<VargptInputException>(() => Edit(small, Pattern(400, 400), "make it blue", Forced with { Seed = 1 }));
        Assert.Contains("at most 48", e.Message);
        Assert.Contains("EditMaxPixels", e.Message);
        Assert.Contains("--max-pixels", e.Message);
        // and lowering it works
        var ok = Edit(small, Pattern(400, 400), "make it blue", Forced with { Seed = 1, EditMaxPixels = 56 * 56 });
        Assert.Single(ok.Images);
        Assert.True(ok.ContextTokens <= 48);
        // without guidance there is no limit
        Assert.Single(Gen(small, longPrompt, Forced with { Seed = 1, Cfg = 1 }).Images);
    }

    [Fact]
    public void Checkpoint_without_generation_weights_names_the_missing_ones()
    {
        TorchTestSetup.Init();
        var e = Assert.Throws<InvalidFileException>(() => VargptModel.Load(TinyImageModel.Folder(withGeneration: false)));
        foreach (var p in ModelComponents.PrefixesOf(ModelParts.Generation)) Assert.Contains(p + "*", e.Message);
        Assert.Contains("understanding-only", e.Message);
    }

#pragma warning disable MEAI001
    [Fact]
    public async Task IImageGenerator_generates_and_edits()
    {
        var m = Model();
        using IImageGenerator gen = new VargptImageGenerator(m, Forced);
        var options = new MeaiOptions { Count = 2, AdditionalProperties = new() { ["seed"] = 7L } };
        var r = await gen.GenerateAsync(new ImageGenerationRequest(Prompt), options, TestContext.Current.CancellationToken);
        var images = r.Contents.OfType<DataContent>().ToList();
        Assert.Equal(2, images.Count);
        Assert.Equal("image/png", images[0].MediaType);
        Assert.Equal(7L, images[0].AdditionalProperties!["seed"]);
        Assert.Equal(8L, images[1].AdditionalProperties!["seed"]);
        var direct = Gen(m, Prompt, Forced with { Seed = 7 });
        Assert.Equal(direct.Images[0].Image.EncodePng(), images[0].Data.ToArray());

        var src = new DataContent(Pattern(40, 40).EncodePng(), "image/png");
        var edited = await gen.GenerateAsync(new ImageGenerationRequest("make it blue", [src]), new MeaiOptions { AdditionalProperties = new() { ["seed"] = 5L } },
            TestContext.Current.CancellationToken);
        Assert.Single(edited.Contents.OfType<DataContent>());
        Assert.IsType<ImageResult>(edited.RawRepresentation);
        Assert.NotNull(gen.GetService<ImageGeneratorMetadata>());
        await Assert.ThrowsAsync<InvalidOptionException>(() => gen.GenerateAsync(new ImageGenerationRequest(Prompt),
            new MeaiOptions { AdditionalProperties = new() { ["bogus"] = 1 } }, TestContext.Current.CancellationToken));
    }
#pragma warning restore MEAI001
}
