using System.Globalization;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Server.Backend;
using VarGpt.Text;
using VarGpt.Vision;

namespace VarGpt.Server.Http;

/// <summary>A parsed POST /v1/chat/completions.</summary>
public sealed record ChatCall(ChatJob Job, bool Stream, bool IncludeUsage, string Model);

/// <summary>A parsed POST /v1/images/generations or /v1/images/edits.</summary>
public sealed record ImageCall(ImageJob Job, ImageSize Size, bool Stream, int PartialImages, string Model, bool Edit);

/// <summary>
/// OpenAI request bodies → backend jobs, with OpenAI's checks and error wording. Parameters VARGPT cannot honour are
/// refused with a message rather than silently ignored; the VARGPT extensions are documented in the README.
/// </summary>
public static class Requests
{
    static readonly HashSet<string> ChatKeys =
    [
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options",
        "user", "metadata", "store", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
        "parallel_tool_calls", "logit_bias", "modalities", "service_tier",
        // VARGPT extensions
        "top_k", "repetition_penalty", "generate_images", "image_seed", "cfg", "tau", "image_top_k", "image_top_p", "ignore_eos",
    ];

    public static ChatCall ParseChat(JsonDocument doc, ServedModel model, ServerOptions limits)
    {
        var r = RequestFields.Root(doc);
        r.RejectUnknown(ChatKeys);
        var name = CheckModel(r.RequiredString("model", 256), model);
        if (r.Integer("n", 1, 128) is long n && n != 1)
            throw ApiException.BadRequest($"Invalid 'n': {n}. This server returns one choice per request (n = 1); send {n} requests instead.", "n", "invalid_value");
        foreach (var unsupported in new[] { "frequency_penalty", "presence_penalty" })
            if (r.Number(unsupported, -2, 2) is double p && p != 0)
                throw ApiException.BadRequest($"'{unsupported}' is not supported by VARGPT (the official generate loop has repetition_penalty instead; see the README).", unsupported, "unsupported_parameter");
        if (r.Bool("logprobs") == true) throw ApiException.BadRequest("'logprobs' is not supported by this server.", "logprobs", "unsupported_parameter");
        if (r.Array("tools") is { } tools && tools.GetArrayLength() > 0)
            throw ApiException.BadRequest("'tools' is not supported: VARGPT has no tool calling.", "tools", "unsupported_parameter");
        if (r.Object("response_format") is { } rf && rf.String("type") is string t && t != "text")
            throw ApiException.BadRequest($"Invalid 'response_format.type': '{t}'. Only 'text' is supported.", "response_format.type", "unsupported_parameter");

        var messages = ParseMessages(r, limits);
        int maxAllowed = limits.MaxTokens ?? model.ContextLength;
        long? maxTokens = r.Integer("max_completion_tokens", 1, maxAllowed) ?? r.Integer("max_tokens", 1, maxAllowed);
        var stop = ParseStop(r);
        double? temperature = r.Number("temperature", 0, 2);
        var options = new VargptChatOptions
        {
            MaxNewTokens = maxTokens is long m ? (int)m : Math.Min(VargptChatOptions.DefaultMaxNewTokens, maxAllowed),
            Temperature = temperature,
            TopP = r.Number("top_p", double.Epsilon, 1),
            TopK = r.Integer("top_k", 0, int.MaxValue) is long k ? (int)k : null,
            RepetitionPenalty = r.Number("repetition_penalty", double.Epsilon, 100),
            Seed = r.Integer("seed", long.MinValue, long.MaxValue),
            StopSequences = stop,
        };
        var image = ImageOptionsOf(r, "image_", seedKey: "image_seed") with { Count = 1 };
        bool stream = r.Bool("stream") ?? false;
        bool usage = stream && (r.Object("stream_options")?.Bool("include_usage") ?? false);
        return new ChatCall(new ChatJob(messages, options, r.Bool("generate_images") ?? true, image, r.Bool("ignore_eos") ?? false), stream, usage, name);
    }

    static List<string> ParseStop(RequestFields r)
    {
        if (!r.Has("stop")) return [];
        var v = r.Element.GetProperty("stop");
        var list = new List<string>();
        if (v.ValueKind == JsonValueKind.String) list.Add(v.GetString()!);
        else if (v.ValueKind == JsonValueKind.Array)
        {
            foreach (var s in v.EnumerateArray())
                list.Add(s.ValueKind == JsonValueKind.String ? s.GetString()! : throw ApiException.BadRequest("Invalid 'stop': expected a string or an array of strings.", "stop", "invalid_type"));
        }
        else throw ApiException.BadRequest("Invalid type for 'stop': expected a string or an array of strings.", "stop", "invalid_type");
        if (list.Count > 4) throw ApiException.BadRequest($"Invalid 'stop': at most 4 stop sequences, got {list.Count}.", "stop", "invalid_value");
        if (list.Any(s => s.Length == 0)) throw ApiException.BadRequest("Invalid 'stop': stop sequences must not be empty.", "stop", "invalid_value");
        return list;
    }

    static List<ChatMessage> ParseMessages(RequestFields r, ServerOptions limits)
    {
        var array = r.Array("messages") ?? throw ApiException.BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
        int count = array.GetArrayLength();
        if (count == 0) throw ApiException.BadRequest("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", "messages", "empty_array");
        if (count > limits.MaxMessages)
            throw ApiException.BadRequest($"Invalid 'messages': {count} messages; this server takes at most {limits.MaxMessages}.", "messages", "array_above_max_length");
        var messages = new List<ChatMessage>();
        int images = 0, i = 0;
        foreach (var m in array.EnumerateArray())
        {
            string where = $"messages[{i}]";
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"Invalid type for '{where}': expected an object.", where, "invalid_type");
            var f = new RequestFields(m, where);
            var role = f.RequiredString("role", 32) switch
            {
                "system" or "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                var other => throw ApiException.BadRequest($"Invalid '{where}.role': '{other}'. Supported roles: system, developer, user, assistant (VARGPT has no tool calling).", $"{where}.role", "invalid_value"),
            };
            var parts = new List<ContentPart>();
            if (m.TryGetProperty("content", out var content) && content.ValueKind != JsonValueKind.Null)
            {
                if (content.ValueKind == JsonValueKind.String) parts.Add(ContentPart.FromText(content.GetString()!));
                else if (content.ValueKind == JsonValueKind.Array)
                {
                    int k = 0;
                    foreach (var part in content.EnumerateArray())
                    {
                        string pw = $"{where}.content[{k++}]";
                        if (part.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"Invalid type for '{pw}': expected an object.", pw, "invalid_type");
                        var pf = new RequestFields(part, pw);
                        switch (pf.RequiredString("type", 32))
                        {
                            case "text": parts.Add(ContentPart.FromText(pf.String("text") ?? throw ApiException.BadRequest($"Missing required parameter: '{pw}.text'.", $"{pw}.text", "missing_required_parameter"))); break;
                            case "image_url":
                                if (role != "user") throw ApiException.BadRequest($"Invalid '{pw}': images are only accepted in user messages.", pw, "invalid_value");
                                if (++images > limits.MaxImagesPerRequest)
                                    throw ApiException.BadRequest($"Invalid '{pw}': more than {limits.MaxImagesPerRequest} images in one request.", pw, "too_many_images");
                                var iu = pf.Object("image_url") ?? throw ApiException.BadRequest($"Missing required parameter: '{pw}.image_url'.", $"{pw}.image_url", "missing_required_parameter");
                                parts.Add(ContentPart.FromImage(InputImages.FromUrl(iu.RequiredString("url", int.MaxValue), $"{pw}.image_url.url", limits)));
                                break;
                            case var type:
                                throw ApiException.BadRequest($"Invalid '{pw}.type': '{type}'. Supported content parts: text, image_url.", $"{pw}.type", "invalid_value");
                        }
                    }
                }
                else throw ApiException.BadRequest($"Invalid type for '{where}.content': expected a string or an array of content parts.", $"{where}.content", "invalid_type");
            }
            else if (role != "assistant") throw ApiException.BadRequest($"Missing required parameter: '{where}.content'.", $"{where}.content", "missing_required_parameter");
            messages.Add(new ChatMessage(role, parts));
            i++;
        }
        if (messages[^1].Role != "user")
            throw ApiException.BadRequest($"Invalid 'messages': the last message is '{messages[^1].Role}'; the model answers a user message, so the conversation must end with one.", "messages", "invalid_value");
        return messages;
    }

    static string CheckModel(string name, ServedModel model) =>
        string.Equals(name, model.Id, StringComparison.Ordinal) ? name : throw ApiException.ModelNotFound(name);

    /// <summary>VARGPT's image sampler settings (extensions): cfg, tau, top_k, top_p, seed; prefix for the chat names (image_top_k).</summary>
    static ImageOptions ImageOptionsOf(RequestFields r, string prefix, string seedKey)
    {
        var o = new ImageOptions();
        if (r.Number("cfg", 1, 100) is double cfg) o = o with { Cfg = cfg };
        if (r.Number("tau", 1e-6, 100) is double tau) o = o with { Tau = tau };
        if (r.Integer(prefix + "top_k", 0, int.MaxValue) is long k) o = o with { TopK = (int)k };
        if (r.Number(prefix + "top_p", 0, 1) is double p) o = o with { TopP = p };
        if (r.Integer(seedKey, 0, long.MaxValue) is long s) o = o with { Seed = s };
        return o;
    }

    static readonly HashSet<string> ImageKeys =
    [
        "model", "prompt", "n", "size", "response_format", "output_format", "quality", "style", "background", "moderation", "user",
        "stream", "partial_images", "output_compression",
        // VARGPT extensions
        "seed", "cfg", "tau", "top_k", "top_p", "force_image_start", "edit_max_pixels",
    ];

    /// <summary>The images API's fields, from a JSON body (generations) or a multipart form (edits) turned into JSON.</summary>
    public static ImageCall ParseImage(RequestFields r, ServedModel model, ServerOptions limits, RgbImage? source)
    {
        r.RejectUnknown(ImageKeys);
        if (!model.CanDraw) throw ApiException.BadRequest($"The model `{model.Id}` was loaded without its image-generation half.", "model", "unsupported_model");
        var name = r.String("model", 256) is string m ? CheckModel(m, model) : model.Id;
        var prompt = r.RequiredString("prompt", 32000);
        if (string.IsNullOrWhiteSpace(prompt)) throw ApiException.BadRequest("Invalid 'prompt': empty string.", "prompt", "empty_string");
        int n = (int)(r.Integer("n", 1, limits.MaxImagesPerCall) ?? 1);
        var size = SizeOf(r.String("size", 64), model);
        if (r.String("response_format", 32) is string f && f != "b64_json")
            throw ApiException.BadRequest($"Invalid 'response_format': '{f}'. This server returns images inline only: use 'b64_json'.", "response_format", "unsupported_value");
        if (r.String("output_format", 16) is string of && of != "png")
            throw ApiException.BadRequest($"Invalid 'output_format': '{of}'. This server returns PNG only.", "output_format", "unsupported_value");
        bool stream = r.Bool("stream") ?? false;
        int scales = size.Scales;
        int partial = (int)(r.Integer("partial_images", 0, scales - 1) ?? (stream ? scales - 1 : 0));
        var options = ImageOptionsOf(r, "", "seed") with
        {
            Count = n, AspectRatio = size.AspectRatio, Pn = size.Pn,
            ForceImageStart = r.Bool("force_image_start") ?? false,
        };
        if (r.Has("edit_max_pixels")) options = options with { EditMaxPixels = r.Integer("edit_max_pixels", 28 * 28, limits.MaxImagePixels) };
        options = options with { Seed = options.Seed ?? Seeds.Random() };
        return new ImageCall(new ImageJob(prompt, source, options, PreviewScales(partial, scales)), size, stream, partial, name, source is not null);
    }

    /// <summary>The scales whose previews are sent: the last <paramref name="count"/> before the final one (the finer, the later).</summary>
    public static IReadOnlySet<int> PreviewScales(int count, int scales) =>
        Enumerable.Range(0, scales - 1).Reverse().Take(count).ToHashSet();

    static ImageSize SizeOf(string? size, ServedModel model)
    {
        if (size is null || size == "auto") return model.DefaultImageSize;
        return model.ImageSizes.FirstOrDefault(s => s.Name == size)
            ?? throw ApiException.BadRequest($"Invalid 'size': '{size}'. This model draws {string.Join(", ", model.ImageSizes.Select(s => $"'{s.Name}'"))} (its scale schedule table) or 'auto'.", "size", "invalid_value");
    }

    /// <summary>A JSON request body (depth at most 32) → the document, or the OpenAI-style 400 naming the syntax error.</summary>
    public static async Task<JsonDocument> ParseJsonBodyAsync(Stream body, CancellationToken cancellationToken)
    {
        // read whole (Kestrel bounds it by MaxBodyBytes) to check UTF-8 first: JsonDocument checks it only when a string
        // is read, so a bad byte in a key or value would surface mid-request as an InvalidOperationException (a 500;
        // found by fuzzing: fuzz/regressions/server-chat)
        using var buffer = new MemoryStream();
        await body.CopyToAsync(buffer, cancellationToken).ConfigureAwait(false);
        var bytes = buffer.GetBuffer().AsMemory(0, (int)buffer.Length);
        if (!System.Text.Unicode.Utf8.IsValid(bytes.Span))
            throw ApiException.BadRequest("We could not parse the JSON body of your request: it is not valid UTF-8.", null, "invalid_json");
        try { return JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 32 }); }
        catch (JsonException e) { throw ApiException.BadRequest($"We could not parse the JSON body of your request. ({e.Message})", null, "invalid_json"); }
    }

    /// <summary>The multipart form of a request; a malformed body (bad boundary, section header, length) is the client's 400, not a 500 (found by fuzzing: fuzz/regressions/server-images).</summary>
    public static async Task<IFormCollection> ReadFormAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        try { return await request.ReadFormAsync(cancellationToken).ConfigureAwait(false); }
        catch (Exception e) when (e is InvalidDataException or IOException)   // IOException: the body ends before the closing boundary
        {
            throw ApiException.BadRequest($"The multipart/form-data body is malformed: {e.Message}", null, "invalid_multipart");
        }
    }

    /// <summary>POST /v1/images/edits: the multipart form (one 'image' file, no mask, text fields) → the image call, the image decoded within the limits.</summary>
    public static async Task<ImageCall> ParseEditFormAsync(IFormCollection form, ServedModel model, ServerOptions limits, CancellationToken cancellationToken)
    {
        if (form.Files.GetFile("mask") is not null)
            throw ApiException.BadRequest("'mask' is not supported: VARGPT edits the whole image by instruction.", "mask", "unsupported_parameter");
        var files = form.Files.Where(f => f.Name is "image" or "image[]").ToList();
        if (files.Count == 0) throw ApiException.BadRequest("Missing required parameter: 'image' (a PNG or JPEG file).", "image", "missing_required_parameter");
        if (files.Count > 1) throw ApiException.BadRequest($"Invalid 'image': VARGPT edits one image at a time, got {files.Count}.", "image", "too_many_images");
        var unknownFiles = form.Files.Where(f => f.Name is not ("image" or "image[]")).Select(f => f.Name).FirstOrDefault();
        if (unknownFiles is not null) throw ApiException.BadRequest($"Unrecognized request argument supplied: {unknownFiles}", unknownFiles, "unknown_parameter");
        if (files[0].Length > limits.MaxImageBytes)
            throw ApiException.BadRequest($"Invalid 'image': the image has {files[0].Length} bytes; the limit is {limits.MaxImageBytes} bytes.", "image", "image_too_large");
        byte[] bytes;
        using (var ms = new MemoryStream())
        {
            await files[0].CopyToAsync(ms, cancellationToken).ConfigureAwait(false);
            bytes = ms.ToArray();
        }
        var source = InputImages.FromBytes(bytes, "image", limits);
        using var doc = FormToJson(form.Select(kv => new KeyValuePair<string, string>(kv.Key, kv.Value.ToString())));
        return ParseImage(RequestFields.Root(doc), model, limits, source);
    }

    /// <summary>A multipart form's text fields as the JSON object <see cref="ParseImage"/> reads (numbers and booleans typed).</summary>
    public static JsonDocument FormToJson(IEnumerable<KeyValuePair<string, string>> fields)
    {
        var numeric = new HashSet<string> { "n", "partial_images", "seed", "cfg", "tau", "top_k", "top_p", "edit_max_pixels", "output_compression" };
        var boolean = new HashSet<string> { "stream", "force_image_start" };
        var o = new System.Text.Json.Nodes.JsonObject();
        foreach (var (key, value) in fields)
        {
            if (numeric.Contains(key))
            {
                if (!double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
                    throw ApiException.BadRequest($"Invalid type for '{key}': expected a number, but got '{value}'.", key, "invalid_type");
                o[key] = System.Text.Json.Nodes.JsonNode.Parse(value);
            }
            else if (boolean.Contains(key))
                o[key] = value.ToLowerInvariant() switch
                {
                    "true" or "1" => true, "false" or "0" => false,
                    _ => throw ApiException.BadRequest($"Invalid type for '{key}': expected a boolean, but got '{value}'.", key, "invalid_type"),
                };
            else o[key] = value;
        }
        return JsonDocument.Parse(o.ToJsonString());
    }
}
