using System.ClientModel;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Images;
using VarGpt.Vision;
using MeaiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using OaiFinish = OpenAI.Chat.ChatFinishReason;
using OaiChatMessage = OpenAI.Chat.ChatMessage;

namespace VarGpt.Tests.Server;

/// <summary>
/// The official OpenAI .NET SDK and Microsoft.Extensions.AI's OpenAI IChatClient, unmodified, against `vargpt serve`
/// on loopback (the shipped model): chat plain and streamed with an image, image generation, image edit.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class OpenAiClientTests(ServedModel served) : IClassFixture<ServedModel>
{
    OpenAIClient Client => new(new ApiKeyCredential(ServedModel.Key), new OpenAIClientOptions { Endpoint = served.V1 });

    List<OaiChatMessage> AskAboutImage() =>
    [
        new UserChatMessage(
            ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(ServedModel.ScenePng()), "image/png"),
            ChatMessageContentPart.CreateTextPart("What colour is the circle?")),
    ];

    [Fact]
    public void The_models_endpoint_lists_the_served_model()
    {
        var models = Client.GetOpenAIModelClient().GetModels(TestContext.Current.CancellationToken).Value;
        var model = Assert.Single(models);
        Assert.Equal("shapesworld", model.Id);
        Assert.Equal("vargpt", model.OwnedBy);
    }

    [Fact]
    public void Chat_with_an_image_answers_plain_and_streamed_with_the_same_greedy_text()
    {
        var chat = Client.GetChatClient("shapesworld");
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 24, Temperature = 0 };
        ChatCompletion plain = chat.CompleteChat(AskAboutImage(), options, TestContext.Current.CancellationToken);
        Assert.Equal(ChatMessageRole.Assistant, plain.Role);
        var text = string.Concat(plain.Content.Select(c => c.Text));
        Assert.False(string.IsNullOrWhiteSpace(text));
        var textOnly = chat.CompleteChat([new UserChatMessage("What colour is the circle?")], new ChatCompletionOptions { MaxOutputTokenCount = 1 }, TestContext.Current.CancellationToken);
        Assert.True(plain.Usage.InputTokenCount >= textOnly.Value.Usage.InputTokenCount + 16,
            $"the prompt holds the image's tokens: {plain.Usage.InputTokenCount} with the image, {textOnly.Value.Usage.InputTokenCount} without");
        Assert.InRange(plain.Usage.OutputTokenCount, 1, 24);
        Assert.Contains(plain.FinishReason, new[] { OaiFinish.Stop, OaiFinish.Length });

        var streamed = new System.Text.StringBuilder();
        int updates = 0;
        OaiFinish? finish = null;
        foreach (var u in chat.CompleteChatStreaming(AskAboutImage(), options, TestContext.Current.CancellationToken))
        {
            updates++;
            foreach (var part in u.ContentUpdate) streamed.Append(part.Text);
            finish ??= u.FinishReason;
        }
        Assert.Equal(text, streamed.ToString());
        Assert.True(updates >= 3, $"the answer arrives in pieces ({updates} updates)");
        Assert.Equal(plain.FinishReason, finish!.Value);
    }

    [Fact]
    public void Image_generation_returns_a_png_of_the_requested_size()
    {
        var images = Client.GetImageClient("shapesworld");
        GeneratedImage image = images.GenerateImage("Draw a red circle on the left.",
            new OpenAI.Images.ImageGenerationOptions { Size = new GeneratedImageSize(128, 128), ResponseFormat = GeneratedImageFormat.Bytes }, TestContext.Current.CancellationToken);
        var rgb = RgbImage.Decode(image.ImageBytes.ToArray(), "generated");
        Assert.Equal((128, 128), (rgb.Width, rgb.Height));
    }

    [Fact]
    public void Image_edit_takes_a_multipart_image_and_returns_a_png()
    {
        var images = Client.GetImageClient("shapesworld");
        using var source = new MemoryStream(ServedModel.ScenePng());
        GeneratedImage edited = images.GenerateImageEdit(source, "circle.png", "Edit this image <image> as follows: Make the red circle blue.",
            new ImageEditOptions { ResponseFormat = GeneratedImageFormat.Bytes }, TestContext.Current.CancellationToken);
        var rgb = RgbImage.Decode(edited.ImageBytes.ToArray(), "edited");
        Assert.Equal((128, 128), (rgb.Width, rgb.Height));
    }

    [Fact]
    public async Task Microsoft_Extensions_AI_chat_client_gets_the_same_answer_whole_and_streamed()
    {
        IChatClient client = Client.GetChatClient("shapesworld").AsIChatClient();
        List<MeaiChatMessage> messages =
        [
            new(ChatRole.User, [new DataContent(ServedModel.ScenePng(), "image/png"), new TextContent("What colour is the circle?")]),
        ];
        var options = new ChatOptions { MaxOutputTokens = 24, Temperature = 0 };
        var response = await client.GetResponseAsync(messages, options, TestContext.Current.CancellationToken);
        Assert.False(string.IsNullOrWhiteSpace(response.Text));
        Assert.NotNull(response.Usage);
        Assert.True(response.Usage!.InputTokenCount > 40, $"the prompt holds the image's tokens: {response.Usage.InputTokenCount}");

        var streamed = new System.Text.StringBuilder();
        await foreach (var u in client.GetStreamingResponseAsync(messages, options, TestContext.Current.CancellationToken))
            streamed.Append(u.Text);
        Assert.Equal(response.Text, streamed.ToString());
    }
}
