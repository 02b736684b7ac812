using Microsoft.Extensions.AI;
using VarGpt.Model;
using VarGpt.Text;
using VChatMessage = VarGpt.Text.ChatMessage;
using ChatMessage = Microsoft.Extensions.AI.ChatMessage;
using VarGpt.Inference;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Inference;

/// <remarks>Loads whole pipelines: runs apart from the parallel tests, which it would slow.</remarks>
[Collection(nameof(TorchDefaultsCollection))]
public class VargptChatClientTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Response_with_image_bytes_matches_the_chat_api_and_reports_usage()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        using var client = new VargptChatClient(chat);
        var picture = VargptChatTests.Picture(80, 60);
        var messages = new List<ChatMessage>
        {
            new(ChatRole.User, [new DataContent(picture.EncodePng(), "image/png"), new TextContent("what is in the picture")]),
        };
        var response = await client.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 9, Instructions = "answer briefly" }, Ct);
        var expected = chat.Chat([VChatMessage.System("answer briefly"), ChatMessage_User(picture, "what is in the picture")], new VargptChatOptions { MaxNewTokens = 9 }, Ct);
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(expected.PromptTokens, response.Usage!.InputTokenCount);
        Assert.Equal(9, response.Usage.OutputTokenCount);
        Assert.Equal(expected.PromptTokens + 9, response.Usage.TotalTokenCount);
        Assert.Same(client.Metadata, client.GetService<ChatClientMetadata>());
        Assert.Same(chat, client.GetService<VargptModel>());
    }

    static VChatMessage ChatMessage_User(VarGpt.Vision.RgbImage image, string text) =>
        VChatMessage.User(ContentPart.FromImage(image), ContentPart.FromText(text));

    [Fact]
    public async Task Streaming_updates_concatenate_to_the_response_and_end_with_usage()
    {
        TorchTestSetup.Init();
        using var client = new VargptChatClient(TinyCheckpoint.Chat);
        using var t = TestPaths.Temp();
        VargptChatTests.Picture(40, 40).SavePng(t["p.png"]);
        var messages = new List<ChatMessage>
        {
            new(ChatRole.User, "hello"), new(ChatRole.Assistant, "hi there"),
            new(ChatRole.User, [new UriContent(new Uri(t["p.png"]), "image/png"), new TextContent("and this?")]),
        };
        var options = new ChatOptions { MaxOutputTokens = 8, Temperature = 1.2f, TopK = 0, TopP = 1f, Seed = 5 };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(messages, options, Ct)) updates.Add(u);
        var whole = await client.GetResponseAsync(messages, options, Ct);
        Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));   // same seed, same sampled text
        var last = updates[^1];
        Assert.Equal(ChatFinishReason.Length, last.FinishReason);
        var usage = last.Contents.OfType<UsageContent>().Single().Details;
        Assert.Equal(8, usage.OutputTokenCount);
        Assert.Equal(whole.Usage!.InputTokenCount, usage.InputTokenCount);
        Assert.All(updates, u => Assert.Equal(updates[0].ResponseId, u.ResponseId));
        // a different seed samples differently
        var other = await client.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 8, Temperature = 1.2f, TopK = 0, TopP = 1f, Seed = 6 }, Ct);
        Assert.NotEqual(((VargptChatReply)whole.RawRepresentation!).TokenIds, ((VargptChatReply)other.RawRepresentation!).TokenIds);
    }

    [Fact]
    public async Task A_drawn_image_comes_back_as_png_data()
    {
        TorchTestSetup.Init();
        using var probe = VargptModel.Load(TinyCheckpoint.Dir);
        var tok = probe.Tokenizer;
        using var chat = ScriptedModel.Load([tok.TokenToId(SpecialTokens.ImageGenStart), ScriptedModel.ByteToken(tok, (byte)'q')], endWithEos: false);
        using var client = new VargptChatClient(chat);
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "draw")], new ChatOptions { Seed = 1 }, Ct);
        var png = response.Messages.Single().Contents.OfType<DataContent>().Single();
        Assert.Equal("image/png", png.MediaType);
        var image = VarGpt.Vision.RgbImage.Decode(png.Data.ToArray());
        Assert.Equal((128, 128), (image.Width, image.Height));
        Assert.Equal(ChatFinishReason.Stop, response.FinishReason);
    }

    [Fact]
    public async Task Unsupported_content_roles_and_tools_are_rejected_by_name()
    {
        TorchTestSetup.Init();
        using var client = new VargptChatClient(TinyCheckpoint.Chat);
        var e = await Assert.ThrowsAsync<InvalidPromptException>(() => client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new DataContent(new byte[] { 1, 2 }, "audio/wav"), new TextContent("x")])], cancellationToken: Ct));
        Assert.Contains("audio/wav", e.Message);
        e = await Assert.ThrowsAsync<InvalidPromptException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.Tool, "x")], cancellationToken: Ct));
        Assert.Contains("tool", e.Message);
        e = await Assert.ThrowsAsync<InvalidPromptException>(() => client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new UriContent("https://example.com/cat.png", "image/png")])], cancellationToken: Ct));
        Assert.Contains("https://example.com/cat.png", e.Message);
        var corrupt = await Assert.ThrowsAsync<VarGpt.Vision.ImageLoadException>(() => client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new DataContent(new byte[] { 0xFF, 0xD8, 0xFF, 0, 1 }, "image/jpeg") { Name = "cat.jpg" }])], cancellationToken: Ct));
        Assert.Contains("cat.jpg", corrupt.Message);
        await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.User, "x")],
            new ChatOptions { Tools = [AIFunctionFactory.Create(() => 1, "f")] }, Ct));
    }
}
