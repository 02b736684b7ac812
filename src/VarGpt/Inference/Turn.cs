using System.Diagnostics;
using VarGpt.Configuration;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Inference;

/// <summary>What a turn does when a row chooses &lt;|image_gen_start|&gt;.</summary>
public enum ImageStartMode
{
    /// <summary>
    /// The official patched sampler (patching_utils/vargpt_sample.py; batch size 1): forward the token, choose one more
    /// (appended, never forwarded, not part of the reply), stop, and keep the image context so the image can be drawn.
    /// </summary>
    Draw,
    /// <summary>The row's text ends there (finish Image) and nothing is drawn: rows of a batch (the official loop draws at batch size 1 only), or image generation turned off.</summary>
    End,
    /// <summary>An ordinary token (benchmarks that time a fixed number of decode steps).</summary>
    Ignore,
}

/// <summary>The settings of one turn, resolved: the callers (chat, images, batch chat, benchmarks) turn their options into these.</summary>
public sealed record TurnOptions
{
    /// <summary>The generate settings (generation_config.json with the call's overrides); max_new_tokens is capped at the model's positions.</summary>
    public required GenerationConfig Generation { get; init; }
    /// <summary>Seed of the token sampler; null uses torch's global generator (greedy decoding draws nothing).</summary>
    public long? Seed { get; init; }
    /// <summary>A row stops as soon as its text contains one of these; its text ends before it.</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];
    public ImageStartMode ImageStart { get; init; } = ImageStartMode.Draw;
    /// <summary>Begin the assistant turn with &lt;|image_gen_start|&gt; (batch size 1; not an official option, see <see cref="ImageOptions.ForceImageStart"/>).</summary>
    public bool ForceImageStart { get; init; }
}

/// <summary>One row of a turn: its text so far (cut before a stop sequence), token ids and, once it ended, why.</summary>
public sealed class TurnRow
{
    internal TurnRow(StreamingDecoder decoder, IReadOnlyList<string> stops) { Decoder = decoder; Stops = new StopSequenceFilter(stops); }

    internal StreamingDecoder Decoder { get; }
    internal StopSequenceFilter Stops { get; }
    readonly List<int> _ids = [];

    /// <summary>The reply text (special tokens skipped, cut before a stop sequence).</summary>
    public string Text => Stops.Text;
    /// <summary>The generated ids (EOS included when the model emitted one; the token chosen after &lt;|image_gen_start|&gt; excluded).</summary>
    public IReadOnlyList<int> TokenIds => _ids;
    /// <summary>Null while the row runs.</summary>
    public VargptChatFinish? Finish { get; internal set; }

    internal void Add(int id) => _ids.Add(id);
}

/// <summary>One forward pass of the text phase: the text each row completed with it (empty when none).</summary>
public sealed record TurnStep(int Index, IReadOnlyList<string> Pieces);

/// <summary>
/// The one turn loop of VARGPT-v1.1: one assistant turn over one prompt (or several, left-padded into one batch) with
/// the official generate loop (<see cref="TextGeneration"/>), then — when the model started an image — the next-scale
/// image loop on the same KV cache (<see cref="ImageGeneration.AutoregressiveInferCfg"/>). Chat, batch chat, text-to-image,
/// editing and the benchmarks are thin callers of it; the official quirks live here once: the token chosen after
/// &lt;|image_gen_start|&gt; is appended but never forwarded nor part of the reply, and the cross-attention context is
/// every forwarded state but &lt;|image_gen_start|&gt;'s (official get_ca_kv_cross).
/// <para>Granularity: <see cref="Run"/> yields after every forward pass (prefill, then one decode step), so a caller can
/// stream, cancel or interleave turns between steps; <see cref="DrawImage"/> reports after every scale. A turn holds its
/// own KV cache and generators and runs on one thread at a time; several turns may run on one model at once.</para>
/// </summary>
public sealed class Turn : IDisposable
{
    readonly VargptModel _model;
    readonly TurnOptions _options;
    readonly TextGeneration _session;
    readonly TurnRow[] _rows;
    readonly List<Tensor> _owned = [];
    readonly int _startId;
    Tensor? _context;
    long _baseCacheLength;
    int _imagesDrawn;
    bool _ran;

    internal Turn(VargptModel model, IReadOnlyList<PreparedPrompt> prompts, TurnOptions options)
    {
        if (prompts.Count == 0) throw new ArgumentException("a turn needs at least one prompt", nameof(prompts));
        bool draw = options.ImageStart == ImageStartMode.Draw || options.ForceImageStart;
        if (draw && prompts.Count != 1)
            throw new ArgumentException($"drawing images needs batch size 1 (the official loop draws at batch size 1), got {prompts.Count} prompts; use ImageStartMode.End for batches");
        if (draw && !model.Module.Parts.HasFlag(ModelParts.Generation))
            throw new InvalidOperationException($"this model was loaded without its generation half (parts {model.Module.Parts}); images cannot be drawn: load it with ModelParts.All, or use ImageStartMode.End");
        _model = model;
        _options = options;
        _startId = model.Config.ImageGen.StartId;
        PromptLength = prompts.Max(p => p.Length);
        var generation = CapToPositions(options.Generation, PromptLength, model.Config.MaxPositionEmbeddings);
        GenerationInputs inputs;
        if (options.ForceImageStart)
        {
            // The assistant turn begins with <|image_gen_start|>: prefilled with the prompt, then one token is chosen from
            // its logits and appended unforwarded (what the official sampler does after the start token).
            var p = prompts[0];
            var ids = Own(cat([p.InputIds, tensor(new long[,] { { _startId } })], 1));
            inputs = p.ToGenerationInputs() with { InputIds = ids, AttentionMask = Own(ones_like(ids)) };
            generation = generation with { MaxNewTokens = 1 };
        }
        else inputs = prompts.Count == 1 ? prompts[0].ToGenerationInputs() : Own(PreparedPrompt.LeftPadded(prompts));
        _session = new TextGeneration(model.Module, inputs, generation, new GenerationOptions
        {
            Seed = options.Seed,
            InterceptImageGeneration = options.ImageStart == ImageStartMode.Draw && !options.ForceImageStart,
            KeepHiddenStates = draw,
        });
        _rows = prompts.Select(_ => new TurnRow(model.Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true), options.StopSequences)).ToArray();
    }

    public IReadOnlyList<TurnRow> Rows => _rows;
    /// <summary>Prompt tokens of the longest row (the padded prompt length).</summary>
    public int PromptLength { get; }
    /// <summary>From the start of <see cref="Run"/> to the first chosen token (prefill + first choice).</summary>
    public TimeSpan TimeToFirstToken { get; private set; }
    /// <summary>From the start of <see cref="Run"/> to the end of the text phase.</summary>
    public TimeSpan TextTime { get; private set; }
    /// <summary>Forward passes after the prefill.</summary>
    public int DecodeSteps { get; private set; }
    /// <summary>The text phase stopped at &lt;|image_gen_start|&gt; with the image context kept: <see cref="DrawImage"/> can run.</summary>
    public bool ImageReady { get; private set; }
    /// <summary>Tokens before &lt;|image_gen_start|&gt; = rows of the cross-attention context (when <see cref="ImageReady"/>).</summary>
    public int ContextTokens { get; private set; }
    /// <summary>How the generate loop stopped (Eos, MaxLength, ImageGeneration).</summary>
    public StopReason StopReason => _session.StopReason;

    /// <summary>
    /// The text phase, one element per forward pass. Nothing is held in a dispose scope across a yield, so the
    /// enumerator may be advanced from different threads (one at a time). Ends early when every row has ended.
    /// </summary>
    public IEnumerable<TurnStep> Run(CancellationToken cancellationToken = default)
    {
        if (_ran) throw new InvalidOperationException("a turn runs once");
        _ran = true;
        var clock = Stopwatch.StartNew();
        var eos = _options.Generation.EosTokenIds;
        int index = 0;
        bool unforwardedNext = _options.ForceImageStart;   // row 0's next token is the one chosen after <|image_gen_start|>
        foreach (var step in _session.Run(cancellationToken))
        {
            if (index == 0) TimeToFirstToken = clock.Elapsed;
            var pieces = new string[_rows.Length];
            for (int b = 0; b < _rows.Length; b++)
            {
                pieces[b] = "";
                var row = _rows[b];
                if (unforwardedNext)
                {
                    // official: appended, never forwarded, not part of the reply; the image follows
                    unforwardedNext = false;
                    row.Finish = VargptChatFinish.Image;
                    ImageReady = true;
                    continue;
                }
                if (row.Finish is not null) continue;                 // finished rows get pad tokens (or a batch row already ended)
                int id = (int)step.Tokens[b];
                row.Add(id);
                if (Array.IndexOf(eos, (long)id) >= 0)
                {
                    pieces[b] = row.Stops.Push(row.Decoder.Push(id), out bool atEos);   // "" for special tokens
                    row.Finish = atEos ? VargptChatFinish.StopSequence : VargptChatFinish.EndOfTurn;
                    continue;
                }
                if (_startId > 0 && id == _startId && _options.ImageStart != ImageStartMode.Ignore)
                {
                    if (step.IsImageGenerationStart) unforwardedNext = true;   // Draw: the session forwards it and chooses one more
                    else row.Finish = VargptChatFinish.Image;
                    continue;
                }
                pieces[b] = row.Stops.Push(row.Decoder.Push(id), out bool stopped);
                if (stopped) row.Finish = VargptChatFinish.StopSequence;
            }
            index++;
            yield return new TurnStep(index - 1, pieces);
            if (!unforwardedNext && _rows.All(r => r.Finish is not null)) break;
        }
        TextTime = clock.Elapsed;
        DecodeSteps = Math.Max(0, index - 1);
        var rest = new string[_rows.Length];
        foreach (var (row, b) in _rows.Select((r, b) => (r, b)))
        {
            rest[b] = "";
            if (row.Finish == VargptChatFinish.StopSequence) continue;
            row.Finish ??= VargptChatFinish.MaxNewTokens;
            rest[b] = row.Stops.Push(row.Decoder.Flush(), out bool stopped);
            if (stopped) row.Finish = VargptChatFinish.StopSequence;
            else rest[b] += row.Stops.Flush();
        }
        if (ImageReady)
        {
            using var hidden = _session.HiddenStates;                   // [1, T, H], T = every forwarded token
            ContextTokens = (int)hidden.shape[1] - 1;                   // all but <|image_gen_start|>'s state
            using var row = hidden[0];
            using var context = row.narrow(0, 0, ContextTokens);
            _context = Own(context.clone());
            _baseCacheLength = _session.Cache.Length;
        }
        if (rest.Any(r => r.Length > 0)) yield return new TurnStep(index, rest);
    }

    /// <summary>
    /// Draws one image on the turn's KV cache (official autoregressive_infer_cfg). Every call starts from the cache as
    /// the text phase left it (the previous image's tokens are dropped), so image i of a count equals a fresh turn with
    /// that seed.
    /// </summary>
    public GeneratedImage DrawImage(ImageOptions options, long seed, Action<ImageProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (!ImageReady || _context is null)
            throw new InvalidOperationException(_ran ? "the turn did not stop at <|image_gen_start|>: there is no image to draw" : "run the text phase first");
        if (_imagesDrawn++ > 0) _session.Cache.Truncate(_baseCacheLength);
        using var drawn = ImageGeneration.AutoregressiveInferCfg(_model.Module, _session.Cache, _context, options, seed, progress, null, cancellationToken);
        return new GeneratedImage(RgbImage.FromTensor(drawn.Rgb), seed, drawn.Schedule);
    }

    /// <summary>Room for the new tokens within max_position_embeddings (the M-RoPE table has no more rows).</summary>
    static GenerationConfig CapToPositions(GenerationConfig g, int promptLength, int maxPositions)
    {
        int room = maxPositions - promptLength;
        return g.MaxNewTokens is int n && n > room ? g with { MaxNewTokens = room } : g;
    }

    GenerationInputs Own(GenerationInputs inputs)
    {
        Own(inputs.InputIds); Own(inputs.AttentionMask!);
        if (inputs.ImageEmbeds is { } e) Own(e);
        if (inputs.ImageGridThw is { } g) Own(g);
        return inputs;
    }

    Tensor Own(Tensor t)
    {
        _owned.Add(t.DetachFromDisposeScope());
        return t;
    }

    public void Dispose()
    {
        _session.Dispose();
        foreach (var t in _owned) t.Dispose();
    }
}
