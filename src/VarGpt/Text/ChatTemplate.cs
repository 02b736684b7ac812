using System.Text;
using VarGpt.Vision;

namespace VarGpt.Text;

/// <summary>One item of a message's content list: text, or an image slot (the pixels travel separately, in order).</summary>
public abstract record ContentPart
{
    public static ContentPart FromText(string text) => new TextPart(text);
    public static ContentPart Image { get; } = new ImagePart();
    /// <summary>An image item that carries its pixels (VargptChat collects them in order; the template renders it like <see cref="Image"/>).</summary>
    public static ContentPart FromImage(RgbImage image) => new ImagePart { Pixels = image ?? throw new ArgumentNullException(nameof(image)) };
}

public sealed record TextPart(string Text) : ContentPart;

public sealed record ImagePart : ContentPart
{
    /// <summary>The image itself, or null when the pixels are passed separately (VargptPipeline.Prepare).</summary>
    public RgbImage? Pixels { get; init; }
}

/// <summary>A chat message: role ("system", "user", "assistant", ...) and its content items in order.</summary>
public sealed record ChatMessage(string Role, IReadOnlyList<ContentPart> Content)
{
    /// <summary>Plain-string content; the template renders it exactly like a single text item.</summary>
    public ChatMessage(string role, string text) : this(role, [new TextPart(text)]) { }

    public static ChatMessage System(string text) => new("system", text);
    public static ChatMessage User(string text) => new("user", text);
    public static ChatMessage User(params ContentPart[] parts) => new("user", parts);
    public static ChatMessage Assistant(string text) => new("assistant", text);

    public int ImageCount => Content.Count(c => c is ImagePart);
}

/// <summary>
/// The Qwen2-VL chat template that VARGPT-v1.1 inherits (tokenizer_config.json "chat_template", applied by
/// processor.apply_chat_template in inference_v1_1/*.py), written out in C#:
/// a default system turn "You are a helpful assistant." when the first message is not a system message, then for each
/// message "&lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n" where each image item renders as
/// "&lt;|vision_start|&gt;&lt;|image_pad|&gt;&lt;|vision_end|&gt;" at its position, and "&lt;|im_start|&gt;assistant\n" as the
/// generation prompt. The single &lt;|image_pad|&gt; is expanded per image later (<see cref="PromptExpansion.ExpandImagePads"/>).
/// </summary>
public static class ChatTemplate
{
    public const string DefaultSystemMessage = "You are a helpful assistant.";

    /// <param name="addVisionId">the template's add_vision_id: prefix each image with "Picture N: " (off in VARGPT).</param>
    public static string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, bool addVisionId = false)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var sb = new StringBuilder();
        int images = 0;
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i] ?? throw new ArgumentException($"message {i} is null", nameof(messages));
            if (i == 0 && m.Role != "system")
                sb.Append(SpecialTokens.ImStart).Append("system\n").Append(DefaultSystemMessage).Append(SpecialTokens.ImEnd).Append('\n');
            sb.Append(SpecialTokens.ImStart).Append(m.Role).Append('\n');
            foreach (var part in m.Content)
                switch (part)
                {
                    case TextPart t: sb.Append(t.Text); break;
                    case ImagePart:
                        images++;
                        if (addVisionId) sb.Append("Picture ").Append(images).Append(": ");
                        sb.Append(SpecialTokens.VisionStart).Append(SpecialTokens.ImagePad).Append(SpecialTokens.VisionEnd);
                        break;
                    default: throw new ArgumentException($"message {i}: unsupported content item {part?.GetType().Name ?? "null"}", nameof(messages));
                }
            sb.Append(SpecialTokens.ImEnd).Append('\n');
        }
        if (addGenerationPrompt) sb.Append(SpecialTokens.ImStart).Append("assistant\n");
        return sb.ToString();
    }
}
