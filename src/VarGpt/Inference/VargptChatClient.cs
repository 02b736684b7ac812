using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using VarGpt.Text;
using VarGpt.Vision;
using AIChatMessage = Microsoft.Extensions.AI.ChatMessage;
using VChatMessage = VarGpt.Text.ChatMessage;

namespace VarGpt.Inference;

/// <summary>
/// <see cref="IChatClient"/> over <see cref="VargptModel"/> (Microsoft.Extensions.AI; <see cref="VargptModel.AsChatClient"/>), so VARGPT drops into code written
/// against that abstraction. Roles system/user/assistant map to the chat template's roles; TextContent is text;
/// DataContent with an image/* media type (bytes) and UriContent naming a local file are images, decoded like
/// <see cref="RgbImage.Load"/>. ChatOptions: Instructions (a leading system message), Temperature, TopP, TopK,
/// MaxOutputTokens, Seed, StopSequences; AdditionalProperties "repetition_penalty" (double), "do_sample" (bool),
/// "generate_images" (bool). Unset values come from the checkpoint's generation_config.json; decoding is greedy unless
/// a sampling option is given. A drawn image comes back as DataContent "image/png" in the assistant message.
/// </summary>
public sealed class VargptChatClient : IChatClient
{
    public VargptModel Model { get; }
    public ChatClientMetadata Metadata { get; }

    /// <summary>A client over a loaded model; it does not own (dispose) the model.</summary>
    public VargptChatClient(VargptModel model)
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        Metadata = new ChatClientMetadata("vargpt", new Uri(Path.GetFullPath(model.Directory)), ModelId);
    }

    string ModelId => Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(Model.Directory)));

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (conversation, chatOptions) = Map(messages, options);
        VargptChatReply? reply = null;
        await foreach (var u in Model.ChatUpdatesAsync(conversation, chatOptions, cancellationToken).ConfigureAwait(false))
            reply ??= u.Reply;
        if (reply is null) throw new InvalidOperationException("the chat loop ended without a reply");
        var message = new AIChatMessage(ChatRole.Assistant, Contents(reply.Text, reply)) { MessageId = NewId("msg") };
        return new ChatResponse(message)
        {
            ResponseId = NewId("resp"),
            ModelId = ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = FinishReason(reply.Finish),
            Usage = Usage(reply),
            RawRepresentation = reply,
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AIChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (conversation, chatOptions) = Map(messages, options);
        string responseId = NewId("resp"), messageId = NewId("msg");
        await foreach (var u in Model.ChatUpdatesAsync(conversation, chatOptions, cancellationToken).ConfigureAwait(false))
        {
            if (u.Reply is { } reply)
            {
                var contents = Contents("", reply);
                contents.Add(new UsageContent(Usage(reply)));
                yield return new ChatResponseUpdate(ChatRole.Assistant, contents)
                {
                    ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = DateTimeOffset.UtcNow,
                    FinishReason = FinishReason(reply.Finish), RawRepresentation = reply,
                };
            }
            else if (u.Text.Length > 0)
                yield return new ChatResponseUpdate(ChatRole.Assistant, u.Text)
                {
                    ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = DateTimeOffset.UtcNow,
                };
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType.IsInstanceOfType(Model)) return Model;
        return null;
    }

    /// <summary>Nothing to release: the model belongs to the caller.</summary>
    public void Dispose() { }

    /// <summary>Microsoft.Extensions.AI messages and options → our messages (images decoded) and options.</summary>
    public static (IReadOnlyList<VChatMessage> Messages, VargptChatOptions Options) Map(IEnumerable<AIChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var result = new List<VChatMessage>();
        if (!string.IsNullOrWhiteSpace(options?.Instructions)) result.Add(VChatMessage.System(options.Instructions));
        int i = 0;
        foreach (var m in messages)
        {
            var role = m.Role == ChatRole.System ? "system" : m.Role == ChatRole.User ? "user" : m.Role == ChatRole.Assistant ? "assistant"
                : throw new InvalidPromptException($"message {i}: role '{m.Role.Value}' is not supported (VARGPT has no tool calling; use system, user or assistant)");
            var parts = new List<ContentPart>();
            int k = 0;
            foreach (var c in m.Contents)
            {
                string where = $"message {i} ({role}), content {k++}";
                switch (c)
                {
                    case TextContent t: parts.Add(ContentPart.FromText(t.Text)); break;
                    case DataContent d when d.HasTopLevelMediaType("image"):
                        parts.Add(ContentPart.FromImage(RgbImage.Decode(d.Data.ToArray(), d.Name ?? $"{where} ({d.MediaType})")));
                        break;
                    case DataContent d:
                        throw new InvalidPromptException($"{where}: data of media type '{d.MediaType}' is not supported (images only: image/png, image/jpeg, image/webp, image/bmp, image/gif)");
                    case UriContent u when u.Uri.IsFile:
                        parts.Add(ContentPart.FromImage(RgbImage.Load(u.Uri.LocalPath)));
                        break;
                    case UriContent u:
                        throw new InvalidPromptException($"{where}: only local file URIs can be read ({u.Uri}); download the image and pass its bytes as DataContent");
                    case UsageContent:
                        break;   // bookkeeping from an earlier response in the history
                    default:
                        throw new InvalidPromptException($"{where}: {c.GetType().Name} is not supported (text and images only)");
                }
            }
            result.Add(new VChatMessage(role, parts));
            i++;
        }
        return (result, MapOptions(options));
    }

    static VargptChatOptions MapOptions(ChatOptions? o)
    {
        if (o is null) return new VargptChatOptions();
        if (o.Tools is { Count: > 0 }) throw new NotSupportedException("VARGPT has no tool calling; ChatOptions.Tools must be empty");
        var extra = o.AdditionalProperties;
        double? penalty = null;
        bool? doSample = null;
        bool generateImages = true;
        if (extra is not null)
        {
            if (extra.TryGetValue("repetition_penalty", out double rp)) penalty = rp;
            if (extra.TryGetValue("do_sample", out bool ds)) doSample = ds;
            if (extra.TryGetValue("generate_images", out bool gi)) generateImages = gi;
        }
        return new VargptChatOptions
        {
            Temperature = o.Temperature,
            TopP = o.TopP,
            TopK = o.TopK,
            MaxNewTokens = o.MaxOutputTokens,
            Seed = o.Seed,
            StopSequences = o.StopSequences?.ToList() ?? [],
            RepetitionPenalty = penalty,
            DoSample = doSample,
            GenerateImages = generateImages,
        };
    }

    static List<AIContent> Contents(string text, VargptChatReply reply)
    {
        var contents = new List<AIContent>();
        if (text.Length > 0) contents.Add(new TextContent(text));
        if (reply.Image is { } img) contents.Add(new DataContent(img.EncodePng(), "image/png") { Name = "vargpt-image.png" });
        return contents;
    }

    static UsageDetails Usage(VargptChatReply r) => new()
    {
        InputTokenCount = r.PromptTokens, OutputTokenCount = r.GeneratedTokens, TotalTokenCount = r.PromptTokens + r.GeneratedTokens,
    };

    static ChatFinishReason FinishReason(VargptChatFinish f) => f == VargptChatFinish.MaxNewTokens ? ChatFinishReason.Length : ChatFinishReason.Stop;

    static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";
}
