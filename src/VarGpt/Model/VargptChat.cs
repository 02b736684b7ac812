using System.Diagnostics;
using System.Runtime.CompilerServices;
using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Text;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>
/// Sampling and length settings of one chat call. Every unset field takes the checkpoint's generation_config.json value,
/// as transformers' generate() does (so its repetition_penalty applies even when decoding greedily), except do_sample:
/// the default is greedy decoding, what the official inference scripts pass (do_sample=False).
/// </summary>
public sealed record VargptChatOptions
{
    /// <summary>The official inference scripts' budget (generate(max_new_tokens=4096)); capped at max_position_embeddings.</summary>
    public const int DefaultMaxNewTokens = 4096;

    /// <summary>New tokens at most; null = generation_config max_new_tokens, else <see cref="DefaultMaxNewTokens"/>.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>null = sample when Temperature &gt; 0, TopK or TopP is set; greedy otherwise. Temperature 0 means greedy.</summary>
    public bool? DoSample { get; init; }
    public double? Temperature { get; init; }
    /// <summary>0 disables top-k.</summary>
    public int? TopK { get; init; }
    public double? TopP { get; init; }
    public double? RepetitionPenalty { get; init; }
    /// <summary>Seed of the token sampler (same seed, same output) and, unless <see cref="Image"/> sets one, of the image sampler.</summary>
    public long? Seed { get; init; }
    /// <summary>Generation stops as soon as the text contains one of these; the reply ends before it.</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];
    /// <summary>When the model starts an image (&lt;|image_gen_start|&gt;), draw it (true) or stop there without drawing (false).</summary>
    public bool GenerateImages { get; init; } = true;
    /// <summary>Image sampling settings; null = the official values (cfg 3, tau 0.5, top-k 900, top-p 0.97) with the seed above.</summary>
    public ImageGenerationOptions? Image { get; init; }

    /// <summary>The generate settings: the checkpoint's generation_config.json with these overrides (greedy unless asked otherwise).</summary>
    public GenerationConfig Resolve(GenerationConfig checkpoint)
    {
        if (MaxNewTokens is <= 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "max_new_tokens must be > 0");
        if (Temperature is double t && (!(t >= 0) || double.IsInfinity(t))) throw new ArgumentOutOfRangeException(nameof(Temperature), t, "temperature must be a finite number >= 0 (0 = greedy)");
        if (TopK is < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top_k must be >= 0 (0 disables it)");
        if (TopP is double p && !(p > 0 && p <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), p, "top_p must be in (0, 1]");
        if (RepetitionPenalty is double r && (!(r > 0) || double.IsInfinity(r))) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), r, "repetition_penalty must be a finite number > 0 (1 = off)");
        if (StopSequences.Any(string.IsNullOrEmpty)) throw new ArgumentException("stop sequences must be non-empty strings", nameof(StopSequences));
        bool sample = DoSample ?? (Temperature is > 0 || TopK is not null || TopP is not null);
        if (Temperature == 0)
        {
            if (DoSample == true) throw new ArgumentOutOfRangeException(nameof(Temperature), 0.0, "temperature 0 means greedy decoding; it cannot be combined with DoSample = true");
            sample = false;
        }
        return checkpoint with
        {
            DoSample = sample,
            MaxNewTokens = MaxNewTokens ?? checkpoint.MaxNewTokens ?? DefaultMaxNewTokens,
            Temperature = Temperature is > 0 ? Temperature.Value : checkpoint.Temperature,
            TopK = TopK ?? checkpoint.TopK,
            TopP = TopP ?? checkpoint.TopP,
            RepetitionPenalty = RepetitionPenalty ?? checkpoint.RepetitionPenalty,
        };
    }
}

public enum VargptChatFinish
{
    /// <summary>The model ended its turn (an EOS token such as &lt;|im_end|&gt;).</summary>
    EndOfTurn,
    /// <summary>max_new_tokens (or the model's position limit) reached.</summary>
    MaxNewTokens,
    /// <summary>The text reached one of the stop sequences.</summary>
    StopSequence,
    /// <summary>The model started an image (&lt;|image_gen_start|&gt;); no text follows an image (official vargpt_sample).</summary>
    Image,
}

/// <summary>Wall-clock split of one reply. TimeToFirstToken = Prepare + prefill + the first token choice.</summary>
public sealed record VargptChatTimings(TimeSpan Prepare, TimeSpan TimeToFirstToken, TimeSpan Decode, int DecodeSteps, TimeSpan Image);

/// <summary>One assistant reply.</summary>
public sealed record VargptChatReply
{
    /// <summary>The reply text (special tokens skipped, cut before a stop sequence).</summary>
    public required string Text { get; init; }
    /// <summary>The generated token ids (EOS included when the model emitted one; the token chosen after &lt;|image_gen_start|&gt; excluded).</summary>
    public required IReadOnlyList<int> TokenIds { get; init; }
    public required VargptChatFinish Finish { get; init; }
    /// <summary>The image the model drew (Finish = Image with GenerateImages on), else null.</summary>
    public RgbImage? Image { get; init; }
    /// <summary>Seed the image sampler used (print it to reproduce the image).</summary>
    public long? ImageSeed { get; init; }
    /// <summary>Prompt tokens including the image tokens.</summary>
    public required int PromptTokens { get; init; }
    /// <summary>Per input image: true when it was shrunk to the processor's max_pixels.</summary>
    public IReadOnlyList<bool> ImagesResized { get; init; } = [];
    public VargptChatTimings? Timings { get; init; }
    public int GeneratedTokens => TokenIds.Count;
}

/// <summary>A streamed piece: text as it becomes complete; <see cref="ImageStarting"/> once before an image is drawn; the last update carries the reply.</summary>
public sealed record VargptChatUpdate(string Text)
{
    public bool ImageStarting { get; init; }
    public VargptChatReply? Reply { get; init; }
}

/// <summary>
/// Chat with a loaded VARGPT-v1.1 folder: messages (text and images, see <see cref="ContentPart.FromImage"/>) in,
/// the assistant reply out — streamed with correct UTF-8 across token boundaries, or whole, or for several independent
/// conversations at once (left-padded batch, same tokens as one by one when greedy). Runs the official generate loop
/// (<see cref="VargptPipeline"/>); when the model starts an image, the image is generated and returned with the reply.
/// Calls may come from any thread; run one at a time for speed (they share the CPU).
/// </summary>
public sealed class VargptChat : IDisposable
{
    readonly bool _ownsPipeline;

    public VargptPipeline Pipeline { get; }

    public VargptChat(VargptPipeline pipeline, bool ownsPipeline = false)
    {
        Pipeline = pipeline ?? throw new ArgumentNullException(nameof(pipeline));
        _ownsPipeline = ownsPipeline;
    }

    /// <summary>Loads a model folder once (see <see cref="VargptPipeline.Load"/>; progress gets (stage, fraction)).</summary>
    public static VargptChat Load(string dir, PipelineOptions? options = null, Action<string, double>? progress = null) =>
        new(VargptPipeline.Load(dir, options, progress), ownsPipeline: true);

    /// <summary>The reply to the conversation (runs on the calling thread).</summary>
    public VargptChatReply Chat(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        foreach (var u in Updates(messages, options ?? new(), cancellationToken))
            if (u.Reply is { } r) return r;
        throw new InvalidOperationException("the chat loop ended without a reply");
    }

    /// <summary>Single-turn shortcut: one user message with the images first, then the text (the Qwen2-VL examples' order).</summary>
    public VargptChatReply Chat(string prompt, IReadOnlyList<RgbImage>? images = null, VargptChatOptions? options = null, CancellationToken cancellationToken = default) =>
        Chat([UserMessage(prompt, images ?? [])], options, cancellationToken);

    public static ChatMessage UserMessage(string text, IReadOnlyList<RgbImage> images) =>
        new("user", images.Select(ContentPart.FromImage).Append(ContentPart.FromText(text)).ToList());

    /// <summary>The reply text as it is generated (complete UTF-8 characters only), off the caller's thread.</summary>
    public async IAsyncEnumerable<string> ChatStreamingAsync(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await foreach (var u in ChatUpdatesAsync(messages, options, cancellationToken).ConfigureAwait(false))
            if (u.Text.Length > 0) yield return u.Text;
    }

    /// <summary>Text pieces, an ImageStarting marker when the model starts an image, and finally the whole reply (usage, finish, image).</summary>
    public async IAsyncEnumerable<VargptChatUpdate> ChatUpdatesAsync(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // every step (prefill, one decode step, the image) runs on the thread pool; the iterator holds no dispose scope across yields
        using var e = Updates(messages, options ?? new(), cancellationToken).GetEnumerator();
        while (await Task.Run(e.MoveNext, cancellationToken).ConfigureAwait(false))
            yield return e.Current;
    }

    /// <summary>The synchronous update stream behind every chat call.</summary>
    public IEnumerable<VargptChatUpdate> Updates(IReadOnlyList<ChatMessage> messages, VargptChatOptions options, CancellationToken cancellationToken = default)
    {
        var generation = options.Resolve(Pipeline.Generation);   // validates before any work
        var (textMessages, images) = SplitImages(messages);
        return Run(textMessages, images, generation, options, cancellationToken);
    }

    IEnumerable<VargptChatUpdate> Run(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, GenerationConfig generation,
        VargptChatOptions options, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        ct.ThrowIfCancellationRequested();
        using var prompt = Pipeline.Prepare(messages, images);
        generation = CapToPositions(generation, prompt.Length);
        var prepared = clock.Elapsed;
        using var session = Pipeline.StartGeneration(prompt, generation, options.Seed);
        var decoder = Pipeline.Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        var stops = new StopSequenceFilter(options.StopSequences);
        var ids = new List<int>();
        TimeSpan firstToken = default;
        bool imageStarted = false, stopped = false;
        int steps = 0;
        foreach (var step in session.Run(ct))
        {
            if (steps++ == 0) firstToken = clock.Elapsed;
            if (imageStarted) continue;                    // the token chosen after <|image_gen_start|>: appended, never forwarded, not part of the reply
            int id = (int)step.Tokens[0];
            ids.Add(id);
            if (step.IsImageGenerationStart) { imageStarted = true; continue; }
            var piece = stops.Push(decoder.Push(id), out stopped);
            if (piece.Length > 0) yield return new VargptChatUpdate(piece);
            if (stopped) break;
        }
        var decodeEnd = clock.Elapsed;
        if (!stopped)
        {
            var rest = stops.Push(decoder.Flush(), out stopped);
            if (!stopped) rest += stops.Flush();
            if (rest.Length > 0) yield return new VargptChatUpdate(rest);
        }
        var finish = stopped ? VargptChatFinish.StopSequence : session.StopReason switch
        {
            StopReason.Eos => VargptChatFinish.EndOfTurn,
            StopReason.ImageGeneration => VargptChatFinish.Image,
            _ => VargptChatFinish.MaxNewTokens,
        };
        RgbImage? image = null;
        long? imageSeed = null;
        var imageTime = TimeSpan.Zero;
        if (finish == VargptChatFinish.Image && options.GenerateImages && Pipeline.Model.Parts.HasFlag(ModelParts.Generation))
        {
            yield return new VargptChatUpdate("") { ImageStarting = true };
            var imageOptions = options.Image ?? new ImageGenerationOptions { Seed = options.Seed ?? Random.Shared.NextInt64(0, 1L << 53) };
            imageSeed = imageOptions.Seed;
            using var drawn = Pipeline.ContinueWithImage(session, imageOptions, cancellationToken: ct);
            image = RgbImage.FromTensor(drawn.Rgb);
            imageTime = clock.Elapsed - decodeEnd;
        }
        yield return new VargptChatUpdate("")
        {
            Reply = new VargptChatReply
            {
                Text = stops.Text, TokenIds = ids, Finish = finish, Image = image, ImageSeed = imageSeed,
                PromptTokens = prompt.Length, ImagesResized = prompt.ShrunkForMaxPixels,
                Timings = new VargptChatTimings(prepared, firstToken, decodeEnd - firstToken, Math.Max(0, steps - 1), imageTime),
            },
        };
    }

    /// <summary>
    /// Several independent conversations in one left-padded batch. Greedy decoding gives exactly the tokens of calling
    /// <see cref="Chat(IReadOnlyList{ChatMessage}, VargptChatOptions?, CancellationToken)"/> one by one; sampling draws
    /// from one generator for the whole batch, so seeded batch replies differ from seeded single replies.
    /// A row that starts an image stops there (Finish = Image) without drawing it: the official loop draws images at batch size 1 only.
    /// </summary>
    public IReadOnlyList<VargptChatReply> ChatBatch(IReadOnlyList<IReadOnlyList<ChatMessage>> conversations, VargptChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(conversations);
        if (conversations.Count == 0) return [];
        options ??= new();
        var generation = options.Resolve(Pipeline.Generation);
        var clock = Stopwatch.StartNew();
        var prompts = new List<PreparedPrompt>();
        try
        {
            for (int b = 0; b < conversations.Count; b++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                try
                {
                    var (m, imgs) = SplitImages(conversations[b]);
                    prompts.Add(Pipeline.Prepare(m, imgs));
                }
                catch (InvalidPromptException e) { throw new InvalidPromptException($"conversation {b}: {e.Message}", e); }
            }
            generation = CapToPositions(generation, prompts.Max(p => p.Length));
            var prepared = clock.Elapsed;
            using var scope = NewDisposeScope();
            var inputs = LeftPadded(prompts);
            using var session = new TextGeneration(Pipeline.Model, inputs, generation,
                new GenerationOptions { Seed = options.Seed, InterceptImageGeneration = false });
            TimeSpan firstToken = default;
            int steps = 0;
            foreach (var _ in session.Run(cancellationToken))
                if (steps++ == 0) firstToken = clock.Elapsed;
            var decode = clock.Elapsed - firstToken;
            var seq = session.Sequences;
            long promptLength = session.PromptLength;
            var generated = seq.narrow(1, promptLength, seq.shape[1] - promptLength).cpu();
            var replies = new List<VargptChatReply>();
            for (int b = 0; b < prompts.Count; b++)
                replies.Add(BatchRow(generated[b].data<long>().ToArray(), generation, prompts[b], options,
                    new VargptChatTimings(prepared, firstToken, decode, Math.Max(0, steps - 1), TimeSpan.Zero)));
            return replies;
        }
        finally
        {
            foreach (var p in prompts) p.Dispose();
        }
    }

    /// <summary>
    /// Left-pads the prompts into one batch. The padding positions hold each row's own first token (not the pad id):
    /// they are masked out of attention and positions, and repeating a token the row already has leaves the
    /// repetition penalty's token set unchanged, so a padded row sees exactly the logits processors of its single run.
    /// </summary>
    static GenerationInputs LeftPadded(IReadOnlyList<PreparedPrompt> prompts)
    {
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
        return new GenerationInputs(cat(ids, 0), cat(masks, 0),
            withImages.Count == 0 ? null : cat(withImages.Select(p => p.ImageEmbeds!).ToList(), 0),
            withImages.Count == 0 ? null : cat(withImages.Select(p => p.ImageGridThw!).ToList(), 0));
    }

    /// <summary>One row of a batch: cut at its first EOS (finished rows are padded) or &lt;|image_gen_start|&gt;, then decode and apply stop sequences.</summary>
    VargptChatReply BatchRow(long[] generated, GenerationConfig generation, PreparedPrompt prompt, VargptChatOptions options, VargptChatTimings timings)
    {
        var ids = new List<int>();
        var finish = VargptChatFinish.MaxNewTokens;
        int imageStart = Pipeline.Config.ImageGen.StartId;
        foreach (var t in generated)
        {
            ids.Add((int)t);
            if (Array.IndexOf(generation.EosTokenIds, t) >= 0) { finish = VargptChatFinish.EndOfTurn; break; }
            if (imageStart > 0 && t == imageStart) { finish = VargptChatFinish.Image; break; }
        }
        var stops = new StopSequenceFilter(options.StopSequences);
        stops.Push(Pipeline.Tokenizer.Decode(ids, skipSpecialTokens: true), out bool stopped);
        if (stopped) finish = VargptChatFinish.StopSequence;
        return new VargptChatReply
        {
            Text = stops.Text, TokenIds = ids, Finish = finish, PromptTokens = prompt.Length,
            ImagesResized = prompt.ShrunkForMaxPixels, Timings = timings,
        };
    }

    /// <summary>Room for the new tokens within max_position_embeddings (the M-RoPE table has no more rows).</summary>
    GenerationConfig CapToPositions(GenerationConfig g, int promptLength)
    {
        int room = Pipeline.Config.MaxPositionEmbeddings - promptLength;
        return g.MaxNewTokens is int n && n > room ? g with { MaxNewTokens = room } : g;
    }

    /// <summary>
    /// Messages whose image items carry pixels → the same messages with pixel-less image slots + the images in order
    /// (what <see cref="VargptPipeline.Prepare"/> takes). Checks what the template would otherwise accept silently.
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

    public void Dispose()
    {
        if (_ownsPipeline) Pipeline.Dispose();
    }
}

/// <summary>
/// Streams text through while watching for stop sequences: text that could still be the start of a stop sequence is
/// held back until it is decided, so nothing past a stop sequence is ever emitted.
/// </summary>
internal sealed class StopSequenceFilter(IReadOnlyList<string> stops)
{
    readonly System.Text.StringBuilder _text = new();
    readonly int _longest = stops.Count == 0 ? 0 : stops.Max(s => s.Length);
    int _emitted;

    /// <summary>Everything accepted so far (cut before the stop sequence once one was found).</summary>
    public string Text => _text.ToString();

    /// <summary>Adds text; returns what may be shown now. <paramref name="stopped"/>: a stop sequence was completed (the text is cut before it).</summary>
    public string Push(string piece, out bool stopped)
    {
        stopped = false;
        if (stops.Count == 0) { _text.Append(piece); _emitted = _text.Length; return piece; }
        int searchFrom = Math.Max(0, _text.Length - _longest + 1);
        _text.Append(piece);
        var s = _text.ToString();
        int cut = -1;
        foreach (var stop in stops)
        {
            int at = s.IndexOf(stop, searchFrom, StringComparison.Ordinal);
            if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0)
        {
            stopped = true;
            _text.Length = cut;
            return Take(cut);
        }
        // hold back the longest suffix that is a proper prefix of some stop sequence
        int hold = 0;
        foreach (var stop in stops)
            for (int n = Math.Min(stop.Length - 1, s.Length); n > hold; n--)
                if (string.CompareOrdinal(s, s.Length - n, stop, 0, n) == 0) { hold = n; break; }
        return Take(s.Length - hold);
    }

    public string Flush() => Take(_text.Length);

    string Take(int upTo)
    {
        if (upTo <= _emitted) return "";
        var r = _text.ToString(_emitted, upTo - _emitted);
        _emitted = upTo;
        return r;
    }
}
