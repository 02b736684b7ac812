using VarGpt.LanguageModel;
using VarGpt.Text;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Inference;

/// <summary>A prompt the model cannot take (image/message mismatch, empty, too long); the message says what and why.</summary>
public sealed class InvalidPromptException(string message, Exception? inner = null) : VargptInputException(message, inner);

/// <summary>A tokenized prompt ready for the model: ids [1, L], mask, and the vision tower's output for its images.</summary>
public sealed class PreparedPrompt : IDisposable
{
    public required string Text { get; init; }
    public required Tensor InputIds { get; init; }
    public required Tensor AttentionMask { get; init; }
    public Tensor? ImageEmbeds { get; init; }
    public Tensor? ImageGridThw { get; init; }
    /// <summary>Per image: true when it was shrunk to the processor's max_pixels.</summary>
    public bool[] ShrunkForMaxPixels { get; init; } = [];
    /// <summary>&lt;|image_pad|&gt; tokens of the prompt (the images' share of <see cref="Length"/>).</summary>
    public int ImageTokens { get; init; }
    public int Length => (int)InputIds.shape[1];

    public GenerationInputs ToGenerationInputs() => new(InputIds, AttentionMask, ImageEmbeds, ImageGridThw);

    /// <summary>
    /// Left-pads prompts into one batch (new tensors, in the caller's dispose scope; on the CPU but the image embeddings). The
    /// padding positions hold each row's own first token (not the pad id): they are masked out of attention and
    /// positions, and repeating a token the row already has leaves the repetition penalty's token set unchanged, so a
    /// padded row sees exactly the logits processors of its single run.
    /// </summary>
    public static GenerationInputs LeftPadded(IReadOnlyList<PreparedPrompt> prompts)
    {
        using var scope = NewDisposeScope();
        int L = prompts.Max(p => p.Length);
        var ids = new List<Tensor>();
        var masks = new List<Tensor>();
        foreach (var p in prompts)
        {
            int pad = L - p.Length;
            var row = p.InputIds;   // [1, L] int64 on the CPU
            ids.Add(pad == 0 ? row : cat([row.narrow(1, 0, 1).expand(1, pad), row], 1));
            masks.Add(cat([zeros(1, pad, ScalarType.Int64), ones(1, p.Length, ScalarType.Int64)], 1));
        }
        var withImages = prompts.Where(p => p.ImageEmbeds is not null).ToList();
        return new GenerationInputs(cat(ids, 0).MoveToOuterDisposeScope(), cat(masks, 0).MoveToOuterDisposeScope(),
            withImages.Count == 0 ? null : cat(withImages.Select(p => p.ImageEmbeds!).ToList(), 0).MoveToOuterDisposeScope(),
            withImages.Count == 0 ? null : cat(withImages.Select(p => p.ImageGridThw!).ToList(), 0).MoveToOuterDisposeScope());
    }

    public void Dispose()
    {
        InputIds.Dispose(); AttentionMask.Dispose(); ImageEmbeds?.Dispose(); ImageGridThw?.Dispose();
    }
}

/// <summary>Chat messages as the template takes them: image items become slots, their pixels a list in order.</summary>
public static class ChatMessages
{
    /// <summary>Single-turn shortcut: one user message with the images first, then the text (the Qwen2-VL examples' order).</summary>
    public static ChatMessage User(string text, IReadOnlyList<RgbImage> images) =>
        new("user", images.Select(ContentPart.FromImage).Append(ContentPart.FromText(text)).ToList());

    /// <summary>
    /// Messages whose image items carry pixels → the same messages with pixel-less image slots + the images in order
    /// (what <see cref="VargptModel.Prepare"/> takes). Checks what the template would otherwise accept silently.
    /// </summary>
    public static (IReadOnlyList<ChatMessage> Messages, IReadOnlyList<RgbImage> Images) SplitImages(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0) throw new InvalidPromptException("no messages: a chat needs at least one user message");
        var images = new List<RgbImage>();
        var result = new List<ChatMessage>(messages.Count);
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i] ?? throw new InvalidPromptException($"message {i} is null");
            if (string.IsNullOrWhiteSpace(m.Role)) throw new InvalidPromptException($"message {i} has no role (expected system, user or assistant)");
            var parts = new List<ContentPart>(m.Content.Count);
            for (int k = 0; k < m.Content.Count; k++)
                switch (m.Content[k])
                {
                    case ImagePart { Pixels: { } px }: images.Add(px); parts.Add(ContentPart.Image); break;
                    case ImagePart: throw new InvalidPromptException($"message {i} ({m.Role}), item {k}: an image item without pixels; use ContentPart.FromImage(RgbImage.Load(path))");
                    case TextPart t: parts.Add(t); break;
                    case var other: throw new InvalidPromptException($"message {i} ({m.Role}), item {k}: unsupported content {other?.GetType().Name ?? "null"}");
                }
            result.Add(m with { Content = parts });
        }
        var last = messages[^1];
        if (last.Role != "user")
            throw new InvalidPromptException($"the last message is '{last.Role}'; the model answers a user message, so the conversation must end with one");
        if (last.ImageCount == 0 && last.Content.OfType<TextPart>().All(t => string.IsNullOrWhiteSpace(t.Text)))
            throw new InvalidPromptException("the prompt is empty: the last user message has no text and no image");
        return (result, images);
    }

    /// <summary>
    /// The official edit format (LLaMA-Factory eval_inference_demo_edit.json): user content = the source image then the
    /// instruction, or, when the instruction contains "&lt;image&gt;" once, the image at that place ("Transform this
    /// image &lt;image&gt; to match …").
    /// </summary>
    public static ChatMessage EditRequest(string instruction)
    {
        var parts = new List<ContentPart>();
        var pieces = instruction.Split("<image>");
        if (pieces.Length > 2) throw new InvalidPromptException("the instruction contains \"<image>\" more than once; editing takes one source image");
        if (pieces.Length == 2)
        {
            if (pieces[0].Length > 0) parts.Add(ContentPart.FromText(pieces[0]));
            parts.Add(ContentPart.Image);
            if (pieces[1].Length > 0) parts.Add(ContentPart.FromText(pieces[1]));
        }
        else { parts.Add(ContentPart.Image); parts.Add(ContentPart.FromText(instruction)); }
        return ChatMessage.User([.. parts]);
    }
}
