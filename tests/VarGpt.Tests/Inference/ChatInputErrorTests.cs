using System.Text.Json.Nodes;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Vision;
using VarGpt.Configuration;
using VarGpt.Inference;

using VarGpt;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Inference;

/// <summary>Every bad input gives an exception whose message names the problem (the CLI prints it as one line, exit 2).</summary>
/// <remarks>Loads whole pipelines: runs apart from the parallel tests, which it would slow.</remarks>
[Collection(nameof(TorchDefaultsCollection))]
public class ChatInputErrorTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void Missing_corrupt_and_unsupported_image_files_name_the_file()
    {
        using var t = TestPaths.Temp();
        var missing = Assert.Throws<InputNotFoundException>(() => RgbImage.Load(t["nope.png"]));
        Assert.Contains("nope.png", missing.Message);
        File.WriteAllBytes(t["corrupt.png"], [0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10, 0, 0, 0, 13, 1, 2, 3]);
        var corrupt = Assert.Throws<ImageLoadException>(() => RgbImage.Load(t["corrupt.png"]));
        Assert.Contains("corrupt.png", corrupt.Message);
        Assert.Contains("corrupt", corrupt.Message);
        File.WriteAllText(t["notes.txt"], "not an image at all");
        var unsupported = Assert.Throws<ImageLoadException>(() => RgbImage.Load(t["notes.txt"]));
        Assert.Contains("unsupported", unsupported.Message);
        File.WriteAllBytes(t["empty.jpg"], []);
        Assert.Contains("empty", Assert.Throws<ImageLoadException>(() => RgbImage.Load(t["empty.jpg"])).Message);
    }

    [Fact]
    public void An_image_above_max_pixels_is_resized_and_reported()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        var big = VargptChatTests.Picture(300, 200);                       // 60000 px > 112*112
        var small = VargptChatTests.Picture(64, 64);
        var reply = chat.Chat([ChatMessage.User(ContentPart.FromImage(big), ContentPart.FromImage(small), ContentPart.FromText("compare"))],
            new VargptChatOptions { MaxNewTokens = 2 }, Ct);
        Assert.Equal([true, false], reply.ImagesResized);
        // the resized image is at most max_pixels: its token count is bounded by max_pixels / (28*28)
        int bigTokens = reply.PromptTokens - chat.Chat([ChatMessage.User(ContentPart.FromImage(small), ContentPart.FromImage(small), ContentPart.FromText("compare"))],
            new VargptChatOptions { MaxNewTokens = 2 }, Ct).PromptTokens + 64 * 64 / (28 * 28);
        Assert.InRange(bigTokens, 1, TinyCheckpoint.MaxPixels / (28 * 28));
    }

    [Fact]
    public void Empty_prompts_and_image_items_without_pixels_are_rejected()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        Assert.Contains("empty", Assert.Throws<InvalidPromptException>(() => chat.Chat([ChatMessage.User("   ")], cancellationToken: Ct)).Message);
        Assert.Contains("no messages", Assert.Throws<InvalidPromptException>(() => chat.Chat(Array.Empty<ChatMessage>(), cancellationToken: Ct)).Message);
        Assert.Contains("FromImage", Assert.Throws<InvalidPromptException>(() => chat.Chat([ChatMessage.User(ContentPart.Image, ContentPart.FromText("x"))], cancellationToken: Ct)).Message);
        Assert.Contains("must end with", Assert.Throws<InvalidPromptException>(() => chat.Chat([ChatMessage.User("a"), ChatMessage.Assistant("b")], cancellationToken: Ct)).Message);
    }

    [Fact]
    public void Image_token_count_mismatch_names_the_special_token()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        var e = Assert.Throws<InvalidPromptException>(() => chat.Chat([ChatMessage.User("look: <|image_pad|> here")], cancellationToken: Ct));
        Assert.Contains("<|image_pad|>", e.Message);
        Assert.Contains("do not match", e.Message);
        // one literal pad next to a real image also breaks the count
        e = Assert.Throws<InvalidPromptException>(() => chat.Chat([ChatMessage.User(ContentPart.FromImage(VargptChatTests.Picture(56, 56)), ContentPart.FromText("<|image_pad|>"))], cancellationToken: Ct));
        Assert.Contains("2 <|image_pad|> placeholders", e.Message);
        // and the pipeline's own convention: image slots vs images given
        var p = Assert.Throws<InvalidPromptException>(() => chat.Prepare([ChatMessage.User(ContentPart.Image, ContentPart.FromText("x"))], []));
        Assert.Contains("1 image item(s) but 0 image(s)", p.Message);
    }

    [Fact]
    public void A_prompt_beyond_max_position_embeddings_is_rejected_with_both_numbers()
    {
        TorchTestSetup.Init();
        var withImage = new[] { ChatMessage.User(ContentPart.FromImage(VargptChatTests.Picture(112, 112)), ContentPart.FromText("hello")) };
        int length;
        using (var p = TinyCheckpoint.Chat.Prepare([ChatMessage.User(ContentPart.Image, ContentPart.FromText("hello"))], [VargptChatTests.Picture(112, 112)]))
            length = p.Length;
        using var t = TestPaths.Temp();
        foreach (var f in Directory.GetFiles(TinyCheckpoint.Dir)) File.Copy(f, Path.Combine(t.Path, Path.GetFileName(f)));
        var cfg = JsonNode.Parse(File.ReadAllText(t["config.json"]))!.AsObject();
        cfg["max_position_embeddings"] = length;      // the prompt needs one more position than that (for the first new token)
        File.WriteAllText(t["config.json"], cfg.ToJsonString());
        var gen = JsonNode.Parse(File.ReadAllText(t["generation_config.json"]))!.AsObject();
        gen["eos_token_id"] = new JsonArray();                     // no EOS: the reply must run into the position limit
        File.WriteAllText(t["generation_config.json"], gen.ToJsonString());
        using var chat = VargptModel.Load(t.Path);
        var e = Assert.Throws<InvalidPromptException>(() => chat.Chat(withImage, cancellationToken: Ct));
        Assert.Contains($"has {length} tokens", e.Message);
        Assert.Contains($"supports {length} positions", e.Message);
        Assert.Contains("16 of them image tokens", e.Message);
        // a short prompt works, and its reply is capped to the remaining positions
        var reply = chat.Chat([ChatMessage.User("hi")], new VargptChatOptions { MaxNewTokens = 500 }, Ct);
        Assert.Equal(length, reply.PromptTokens + reply.GeneratedTokens);
        Assert.Equal(VargptChatFinish.MaxNewTokens, reply.Finish);
    }

    [Fact]
    public void Bad_options_device_and_dtype_names_are_rejected()
    {
        var file = new VarGpt.Configuration.GenerationConfig();
        Assert.Contains("temperature", Assert.Throws<InvalidOptionException>(() => new VargptChatOptions { Temperature = -1 }.Resolve(file)).Message);
        Assert.Contains("top_p", Assert.Throws<InvalidOptionException>(() => new VargptChatOptions { TopP = 0 }.Resolve(file)).Message);
        Assert.Contains("max_new_tokens", Assert.Throws<InvalidOptionException>(() => new VargptChatOptions { MaxNewTokens = 0 }.Resolve(file)).Message);
        Assert.Throws<InvalidOptionException>(() => new VargptChatOptions { StopSequences = [""] }.Resolve(file));
        Assert.Contains("gpu", Assert.Throws<InvalidOptionException>(() => TorchRuntime.ParseDevice("gpu")).Message);
        Assert.Contains("fp8", Assert.Throws<InvalidOptionException>(() => TorchRuntime.ParseDType("fp8")).Message);
    }
}
