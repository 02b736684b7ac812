using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Tests.TestModels;
using VarGpt.Text;

namespace VarGpt.Tests.Inference;

/// <summary>The thread-safety contract of <see cref="VargptModel"/>: one loaded model serves concurrent calls, each with its own caches and generators.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ConcurrencyTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Concurrent_chats_and_images_on_one_model_give_the_results_of_sequential_calls()
    {
        TorchTestSetup.Init();
        var model = TinyCheckpoint.Chat;
        var prompts = new[] { "a red circle", "two blue stars", "what is green", "a small square on the left" };
        var options = new VargptChatOptions { MaxNewTokens = 10, Temperature = 1.2, TopK = 0, TopP = 1, GenerateImages = false };
        var sequential = prompts.Select((p, i) => model.Chat([ChatMessage.User(p)], options with { Seed = i }, Ct).TokenIds).ToList();
        var image = new ImageOptions { ForceImageStart = true, Seed = 5, Cfg = 2 };
        var sequentialImage = model.GenerateImage("a red circle", image, cancellationToken: Ct).Images[0].Image.Data;

        var chats = prompts.Select((p, i) => Task.Run(() => model.Chat([ChatMessage.User(p)], options with { Seed = i }, Ct).TokenIds, Ct)).ToList();
        var drawn = Task.Run(() => model.GenerateImage("a red circle", image, cancellationToken: Ct).Images[0].Image.Data, Ct);
        var concurrent = await Task.WhenAll(chats);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(sequential[i], concurrent[i]);
        Assert.Equal(sequentialImage, await drawn);
    }

    [Fact]
    public void A_preview_decodes_the_running_image_after_every_scale_and_not_after_the_callback()
    {
        TorchTestSetup.Init();
        var model = TinyCheckpoint.Chat;
        var previews = new List<VarGpt.Vision.RgbImage>();
        ImageProgress? last = null;
        var result = model.GenerateImage("a red circle", new ImageOptions { ForceImageStart = true, Seed = 3 }, p =>
        {
            previews.Add(p.DecodePreview());
            last = p;
        }, Ct);
        var final = result.Images[0].Image;
        Assert.Equal(last!.Scales, previews.Count);
        Assert.All(previews, p => Assert.Equal((final.Width, final.Height), (p.Width, p.Height)));
        Assert.Equal(final.Data, previews[^1].Data);                   // the last scale's preview is the image
        Assert.Throws<InvalidOperationException>(() => last.DecodePreview());
        var again = model.GenerateImage("a red circle", new ImageOptions { ForceImageStart = true, Seed = 3 }, cancellationToken: Ct);
        Assert.Equal(final.Data, again.Images[0].Image.Data);          // decoding previews does not change the image
    }
}
