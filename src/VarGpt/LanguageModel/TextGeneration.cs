using System.Runtime.CompilerServices;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.LanguageModel;

/// <summary>Prompt tensors of one generate call (what the official processor returns).</summary>
/// <param name="InputIds">[B, L] token ids, left-padded when B &gt; 1.</param>
/// <param name="AttentionMask">[B, L], 1 = token, 0 = padding; null = what transformers infers (ids != pad if the pad token occurs and is not an EOS id, else all ones).</param>
/// <param name="ImageEmbeds">[N, H] vision-tower features for the N &lt;|image_pad|&gt; tokens, in order; null = plain embeddings.</param>
/// <param name="ImageGridThw">[n, 3] one row per image (for the M-RoPE positions); may be given without ImageEmbeds.</param>
public sealed record GenerationInputs(Tensor InputIds, Tensor? AttentionMask = null, Tensor? ImageEmbeds = null, Tensor? ImageGridThw = null);

public sealed record GenerationOptions
{
    /// <summary>Seed of the sampling generator (same seed, same tokens); null uses torch's global generator.</summary>
    public long? Seed { get; init; }
    /// <summary>
    /// Batch size 1: when the chosen token is &lt;|image_gen_start|&gt;, do what the official patched sampler does before
    /// generating the image -- append and forward it, choose one more token from those logits (appended, never
    /// forwarded) -- and stop with <see cref="StopReason.ImageGeneration"/>. The caller continues with the session's cache,
    /// hidden states and mask. Off: the token is treated like any other.
    /// </summary>
    public bool InterceptImageGeneration { get; init; } = true;
    /// <summary>Keep the float32 logits of the last position of every forward pass (debug / parity tests).</summary>
    public bool RecordStepLogits { get; init; }
    /// <summary>Keep the prefill and per-step position ids (debug / parity tests).</summary>
    public bool RecordPositions { get; init; }
    /// <summary>Keep the post-final-norm hidden states of every forwarded token (official past_hidden_states: the image-generation context).</summary>
    public bool KeepHiddenStates { get; init; }
}

public enum StopReason
{
    /// <summary>Still running.</summary>
    None,
    /// <summary>Every row emitted an EOS token.</summary>
    Eos,
    /// <summary>max_new_tokens / max_length reached.</summary>
    MaxLength,
    /// <summary>&lt;|image_gen_start|&gt; was chosen (batch 1): continue with image generation.</summary>
    ImageGeneration,
    Cancelled,
}

/// <summary>One chosen token per row. Finished rows receive the pad token (transformers semantics).</summary>
public sealed record GenerationStep(int Index, long[] Tokens, bool[] Finished, bool IsImageGenerationStart);

/// <summary>Everything a finished generate call produced (tensors are owned by the result).</summary>
public sealed class GenerationResult : IDisposable
{
    /// <summary>[B, L + n]: prompt and generated tokens.</summary>
    public required Tensor Sequences { get; init; }
    /// <summary>[B, n] generated tokens.</summary>
    public required Tensor GeneratedIds { get; init; }
    public required StopReason StopReason { get; init; }
    /// <summary>[passes, B, V] float32 logits of the last position of every forward (with RecordStepLogits).</summary>
    public Tensor? StepLogits { get; init; }
    /// <summary>[3, B, L] prefill positions (with RecordPositions).</summary>
    public Tensor? PrefillPositionIds { get; init; }
    /// <summary>[passes - 1, 3, B, 1] decode-step positions (with RecordPositions).</summary>
    public Tensor? DecodePositionIds { get; init; }
    /// <summary>[B, 1] M-RoPE deltas of the prompt.</summary>
    public required Tensor RopeDeltas { get; init; }

    public void Dispose()
    {
        Sequences.Dispose(); GeneratedIds.Dispose(); StepLogits?.Dispose();
        PrefillPositionIds?.Dispose(); DecodePositionIds?.Dispose(); RopeDeltas.Dispose();
    }
}

/// <summary>
/// Text generation as transformers 4.46 generate() runs it with the official patched sampler
/// (patching_utils/vargpt_sample.py) and VARGPTQwen2VLForConditionalGeneration.prepare_inputs_for_generation:
/// prefill with M-RoPE positions from get_rope_index, then one token per step at position
/// cache_position + rope_deltas on all three rows with the attention mask grown by one; float32 logits of the last
/// position go through the logits processors, then argmax or multinomial; finished rows get the pad token; stop when
/// every row emitted an EOS id or max length is reached. The only host sync per step is the read of the chosen tokens.
/// One instance = one generate call; its KV cache, sequence and mask stay available afterwards (image generation
/// continues from them).
/// </summary>
public sealed class TextGeneration : IDisposable
{
    readonly ICausalLanguageModel _model;
    readonly GenerationConfig _config;
    readonly GenerationOptions _options;
    readonly GenerationInputs _inputs;
    readonly GrowableBuffer _sequences = new(1), _mask = new(1), _hidden = new(1);
    readonly long[] _eos;
    readonly long _pad;
    readonly Generator? _generator;
    readonly List<Tensor> _stepLogits = [], _decodePositions = [];
    Tensor? _ropeDeltas, _unfinished, _eosTensor, _prefillPositions;
    bool[] _finished = [];
    bool _started;
    /// <summary>The prompt has no padding, so every decode step's mask is all ones and no mask is passed (as HF's sdpa path drops it).</summary>
    bool _noPadding;

    public TextGeneration(ICausalLanguageModel model, GenerationInputs inputs, GenerationConfig config, GenerationOptions? options = null)
    {
        config.Validate();
        if (inputs.InputIds.dim() != 2) throw new ArgumentException($"input_ids must be [B, L], got [{string.Join(",", inputs.InputIds.shape)}]");
        _model = model;
        _inputs = inputs;
        _config = config;
        _options = options ?? new GenerationOptions();
        _eos = config.EosTokenIds;
        _pad = config.PadTokenId ?? (_eos.Length > 0 ? _eos[0] : 0);
        BatchSize = (int)inputs.InputIds.shape[0];
        PromptLength = inputs.InputIds.shape[1];
        MaxLength = config.MaxNewTokens is int n ? PromptLength + n : config.MaxLength;
        // room for the prompt and up to 512 new tokens; longer runs grow the storage by doubling
        Cache = new KVCache(model.Config.NumHiddenLayers, Math.Min(MaxLength, PromptLength + 512) + 2);
        if (_options.Seed is long seed) _generator = new Generator((ulong)seed, model.Device);
    }

    public int BatchSize { get; }
    public long PromptLength { get; }
    /// <summary>Prompt + generated tokens at which generation stops (transformers' max_length).</summary>
    public long MaxLength { get; }
    public KVCache Cache { get; }
    public StopReason StopReason { get; private set; }
    /// <summary>Tokens in the sequence so far (prompt included).</summary>
    public long Length => _sequences.Length;
    /// <summary>[B, Length] prompt + generated ids (a view; valid until the next step).</summary>
    public Tensor Sequences => _sequences.View();
    /// <summary>[B, Length] the 2D attention mask as the official loop holds it (covers every token of Sequences).</summary>
    public Tensor AttentionMask => _mask.View();
    /// <summary>[B, 1] M-RoPE deltas from the prefill.</summary>
    public Tensor RopeDeltas => _ropeDeltas ?? throw new InvalidOperationException("the prefill has not run yet");
    /// <summary>[B, T, H] post-final-norm hidden states of every forwarded token (only with KeepHiddenStates).</summary>
    public Tensor HiddenStates => _options.KeepHiddenStates ? _hidden.View() : throw new InvalidOperationException("enable GenerationOptions.KeepHiddenStates to keep hidden states");

    /// <summary>Runs the whole generation and returns the tokens (and the recorded debug tensors).</summary>
    public static GenerationResult Generate(ICausalLanguageModel model, GenerationInputs inputs, GenerationConfig config,
        GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var g = new TextGeneration(model, inputs, config, options);
        return g.RunToEnd(cancellationToken);
    }

    public GenerationResult RunToEnd(CancellationToken cancellationToken = default)
    {
        foreach (var _ in Run(cancellationToken)) { }
        using var scope = NewDisposeScope();
        var seq = _sequences.View().clone();
        return new GenerationResult
        {
            Sequences = seq.DetachFromDisposeScope(),
            GeneratedIds = seq.narrow(1, PromptLength, seq.shape[1] - PromptLength).clone().DetachFromDisposeScope(),
            StopReason = StopReason,
            StepLogits = _stepLogits.Count == 0 ? null : stack(_stepLogits).DetachFromDisposeScope(),
            PrefillPositionIds = _prefillPositions?.clone().DetachFromDisposeScope(),
            DecodePositionIds = _decodePositions.Count == 0 ? null : stack(_decodePositions).DetachFromDisposeScope(),
            RopeDeltas = RopeDeltas.clone().DetachFromDisposeScope(),
        };
    }

    /// <summary>Streams the chosen tokens of a batch-1 generation, one forward pass per element, off the caller's thread.</summary>
    public async IAsyncEnumerable<int> StreamTokensAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        if (BatchSize != 1) throw new InvalidOperationException($"StreamTokensAsync needs batch size 1 (got {BatchSize}); use RunAsync");
        await foreach (var step in RunAsync(cancellationToken)) yield return (int)step.Tokens[0];
    }

    /// <summary><see cref="Run"/> with every forward pass on the thread pool.</summary>
    public async IAsyncEnumerable<GenerationStep> RunAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var e = Run(cancellationToken).GetEnumerator();
        while (true)
        {
            bool more;
            try { more = await Task.Run(e.MoveNext, cancellationToken).ConfigureAwait(false); }
            catch (OperationCanceledException) { StopReason = StopReason.Cancelled; throw; }
            if (!more) yield break;
            yield return e.Current;
        }
    }

    /// <summary>
    /// The generation loop: yields every chosen token as soon as it is known (before the next forward pass).
    /// Each yielded step's tensor work is finished; nothing is held in a dispose scope across a yield, so the
    /// enumerator may be advanced from different threads.
    /// </summary>
    public IEnumerable<GenerationStep> Run(CancellationToken cancellationToken = default)
    {
        if (_started) throw new InvalidOperationException("a TextGeneration instance runs once; create a new one for the next prompt");
        _started = true;
        CheckCancelled(cancellationToken);
        var logits = Prefill();
        for (int index = 0; ; )
        {
            var (tokens, step) = Choose(logits, index++, padFinished: true);
            logits.Dispose();
            if (BatchSize == 1 && _options.InterceptImageGeneration && _model.Config.ImageGen.StartId > 0 && step.Tokens[0] == _model.Config.ImageGen.StartId)
            {
                // official vargpt_sample: forward <|image_gen_start|>, choose the next token, append it unforwarded, stop
                yield return step with { IsImageGenerationStart = true };
                CheckCancelled(cancellationToken);
                logits = DecodeStep(tokens);
                tokens.Dispose();
                var (last, lastStep) = Choose(logits, index, padFinished: false);
                logits.Dispose(); last.Dispose();
                StopReason = StopReason.ImageGeneration;
                yield return lastStep;
                yield break;
            }
            UpdateStopReason();
            yield return step;
            if (StopReason != StopReason.None) { tokens.Dispose(); yield break; }
            CheckCancelled(cancellationToken);
            logits = DecodeStep(tokens);
            tokens.Dispose();
        }
    }

    void CheckCancelled(CancellationToken ct)
    {
        if (!ct.IsCancellationRequested) return;
        StopReason = StopReason.Cancelled;
        ct.ThrowIfCancellationRequested();
    }

    /// <summary>Prefill over the padded prompt; returns the float32 logits [B, V] of the last position (detached).</summary>
    Tensor Prefill()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();   // inference: no autograd graph through the KV cache (grad mode is per thread)
        var device = _model.Device;
        var ids = _inputs.InputIds.to(ScalarType.Int64, device);
        var mask = _inputs.AttentionMask?.to(ScalarType.Int64, device) ?? DefaultAttentionMask(ids);
        if (!mask.shape.SequenceEqual(ids.shape))
            throw new ArgumentException($"attention_mask [{string.Join(",", mask.shape)}] must match input_ids [{string.Join(",", ids.shape)}]");
        var embeds = _model.EmbedInputs(ids, _inputs.ImageEmbeds);
        // prepare_inputs_for_generation: with an attention mask, the first step's positions come from get_rope_index
        var (positions, deltas) = RopeIndex.GetRopeIndex(ids, _inputs.ImageGridThw?.to(ScalarType.Int64, CPU), mask, _model.Config);
        _ropeDeltas = deltas.DetachFromDisposeScope();
        if (_options.RecordPositions) _prefillPositions = positions.alias().DetachFromDisposeScope();
        _sequences.Reserve(MaxLength + 2);
        _mask.Reserve(MaxLength + 2);
        _sequences.Append(ids);
        _mask.Append(mask);
        _noPadding = mask.min().item<long>() == 1;                                              // one host read at prefill
        _unfinished = ones(BatchSize, ScalarType.Int64, device).DetachFromDisposeScope();
        _eosTensor = tensor(_eos, ScalarType.Int64, device).DetachFromDisposeScope();
        _finished = new bool[BatchSize];
        return Forward(embeds, positions, mask);
    }

    /// <summary>
    /// transformers' _prepare_attention_mask_for_generation: ids != pad when the pad token occurs in the prompt and is
    /// not an EOS id, otherwise all ones (the VARGPT case: pad &lt;|endoftext|&gt; is an EOS id).
    /// </summary>
    Tensor DefaultAttentionMask(Tensor ids)
    {
        bool padIsEos = Array.IndexOf(_eos, _pad) >= 0;
        if (_config.PadTokenId is long pad && !padIsEos && ids.eq(pad).any().item<bool>())
            return ids.ne(pad).to(ScalarType.Int64);
        return ones_like(ids);
    }

    /// <summary>One decoding step on the tokens [B] chosen last: position = cache_position + rope_deltas on all rows.</summary>
    Tensor DecodeStep(Tensor tokens)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();   // inference: no autograd graph through the KV cache (grad mode is per thread)
        long cachePosition = Cache.Length;
        var embeds = _model.EmbedInputs(tokens.view(BatchSize, 1));
        var positions = (_ropeDeltas! + cachePosition).unsqueeze(0).expand(3, BatchSize, 1);   // [3, B, 1]
        if (_options.RecordPositions) _decodePositions.Add(positions.clone().DetachFromDisposeScope());
        // all-ones mask = no mask (HF _ignore_causal_mask_sdpa): skips building a [B, 1, 1, K] additive mask every step
        return Forward(embeds, positions, _noPadding ? null : _mask.View());
    }

    Tensor Forward(Tensor embeds, Tensor positions, Tensor? mask)
    {
        using var scope = NewDisposeScope();
        var output = _model.Forward(embeds, positions, mask, Cache, lastPositionOnly: true);
        if (_options.KeepHiddenStates) _hidden.Append(output.LastHiddenState);
        var logits = output.Logits.select(1, 0);                                               // [B, V] float32
        if (_options.RecordStepLogits) _stepLogits.Add(logits.clone().DetachFromDisposeScope());
        return logits.DetachFromDisposeScope();
    }

    /// <summary>Logits processors, token choice, pad for finished rows; appends the token (and a mask column). One host read.</summary>
    (Tensor Tokens, GenerationStep Step) Choose(Tensor logits, int index, bool padFinished)
    {
        using var scope = NewDisposeScope();
        var scores = LogitsProcessors.Apply(_config, _sequences.View(), logits);
        var next = _config.DoSample
            ? scores.softmax(-1).multinomial(1, generator: _generator).squeeze(1)
            : scores.argmax(-1);
        bool hasEos = _eos.Length > 0;
        if (hasEos && padFinished) next = next * _unfinished! + _pad * (1 - _unfinished!);
        var host = next.cpu().data<long>().ToArray();                                         // the one sync per step
        _sequences.Append(next.unsqueeze(1));
        _mask.Append(ones(BatchSize, 1, ScalarType.Int64, next.device));
        if (hasEos)
        {
            var hit = isin(next, _eosTensor!);
            var unfinished = (_unfinished! * hit.logical_not().to(ScalarType.Int64)).DetachFromDisposeScope();
            _unfinished!.Dispose();
            _unfinished = unfinished;
            for (int b = 0; b < BatchSize; b++) if (Array.IndexOf(_eos, host[b]) >= 0) _finished[b] = true;
        }
        return (next.DetachFromDisposeScope(), new GenerationStep(index, host, (bool[])_finished.Clone(), false));
    }

    void UpdateStopReason()
    {
        if (_eos.Length > 0 && _finished.All(f => f)) StopReason = StopReason.Eos;
        else if (Length >= MaxLength) StopReason = StopReason.MaxLength;
    }

    public void Dispose()
    {
        Cache.Dispose();
        _sequences.Dispose(); _mask.Dispose(); _hidden.Dispose();
        _ropeDeltas?.Dispose(); _unfinished?.Dispose(); _eosTensor?.Dispose(); _prefillPositions?.Dispose();
        foreach (var t in _stepLogits) t.Dispose();
        foreach (var t in _decodePositions) t.Dispose();
        _generator?.Dispose();
    }
}
