using VarGpt.Configuration;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Inference;

/// <summary>
/// The continuous-batching decode engine over a loaded model: one shared KV cache whose rows are left-aligned to a
/// common length (a row that joins is padded on the left; the padding is masked out of attention), per-row M-RoPE
/// positions (each row continues at its own prefill's max position + 1, which is exactly where the official
/// single-row loop puts it: cache_position + rope_deltas), per-row logits processors and samplers, applied to all rows of
/// a step at once (a seeded row draws from its own generator, so it gets the tokens of a seeded single call). The rows
/// admitted together are prefilled as one left-padded batch (per-row get_rope_index positions), then merged; a row that
/// ends is cut out of the cache and fully padded leading columns are trimmed.
/// <para>Greedy rows give exactly the tokens of single decoding as long as the batch's linear layers run the same
/// per-row kernel (DecodeLinear's GEMV, up to <see cref="DecodeLinear.MaxRows"/> rows); above that libtorch's GEMM sums in
/// another order and a near-tie can flip (tested in ContinuousBatchTests).</para>
/// Not thread safe: one scheduler thread drives it.
/// </summary>
public sealed class ContinuousBatch : IChatBatchEngine, IDisposable
{
    readonly VargptModel _owner;
    readonly VargptForConditionalGeneration _model;
    readonly List<ChatRow> _rows = [];
    KVCache? _cache;       // [B, Hkv, T, D] per layer, row b = _rows[b]
    Tensor? _mask;         // [B, T] int64, 1 = token, 0 = left padding
    Tensor? _ids;          // [B, T] int64, each row's prompt and chosen ids (for the repetition penalty); padding repeats the row's first id
    bool _padded;          // some row has padding: pass the mask (no padding = no mask, as the single-row loop and HF's sdpa path do)

    public ContinuousBatch(VargptModel model)
    {
        _owner = model;
        _model = model.Module;
    }

    public int Running => _rows.Count;

    sealed class RowState : IDisposable
    {
        public required GenerationConfig Generation { get; init; }
        public Generator? Sampler { get; init; }
        public long NextPosition { get; set; }                    // M-RoPE position of the next forwarded token (all three rows)
        public long LastToken { get; set; }

        public void Dispose() => Sampler?.Dispose();
    }

    public IReadOnlyList<ChatAdmission> Admit(IReadOnlyList<(ChatBatchRequest Request, CancellationToken Cancellation)> requests)
    {
        var results = new ChatAdmission[requests.Count];
        var admitted = new List<(int Index, ChatRow Row, PreparedPrompt Prompt)>();
        try
        {
            for (int i = 0; i < requests.Count; i++)
            {
                try
                {
                    var (row, prompt) = Prepare(requests[i].Request, requests[i].Cancellation);
                    admitted.Add((i, row, prompt));
                }
                catch (Exception e) { results[i] = new ChatAdmission(null, e); }
            }
            if (admitted.Count == 0) return results;
            var rows = admitted.Select(a => a.Row).ToList();
            PrefillResult? prefill = null;
            try
            {
                prefill = Prefill(admitted.Select(a => a.Prompt).ToList());
                var states = rows.Select(r => (RowState)r.State!).ToList();
                for (int b = 0; b < rows.Count; b++) states[b].NextPosition = prefill.NextPositions[b];
                Take(rows, Choose(states, prefill.Ids, prefill.Logits));
                prefill.Logits.Dispose();
                Join(rows, prefill.Cache, prefill.Mask, prefill.Ids, prefill.Padded);   // takes the cache, mask and ids
            }
            catch (Exception e)
            {
                if (prefill is not null && !_rows.Contains(rows[0])) prefill.Dispose();
                foreach (var (i, row, _) in admitted) { (row.State as RowState)?.Dispose(); results[i] = new ChatAdmission(null, e); }
                return results;
            }
            foreach (var (i, row, _) in admitted) results[i] = new ChatAdmission(row, null);
            var ended = rows.Where(r => r.Finish is not null).ToList();   // first token EOS, max_new_tokens 1
            if (ended.Count > 0) Remove(ended);
            return results;
        }
        finally
        {
            foreach (var a in admitted) a.Prompt.Dispose();
        }
    }

    /// <summary>Validates the options and prepares the conversation (template, images, vision tower); the row's state is set, its prompt not yet forwarded.</summary>
    (ChatRow Row, PreparedPrompt Prompt) Prepare(ChatBatchRequest request, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var generation = request.Options.Resolve(_owner.GenerationConfig);   // validates before any work
        var (messages, images) = ChatMessages.SplitImages(request.Messages);
        var prompt = _owner.Prepare(messages, images);
        int room = _owner.Config.MaxPositionEmbeddings - prompt.Length;
        int maxNew = Math.Min(generation.MaxNewTokens ?? VargptChatOptions.DefaultMaxNewTokens, room);
        generation = generation with { MaxNewTokens = maxNew };
        var row = new ChatRow(request, prompt.Length, maxNew, _owner.Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true), request.Options.StopSequences)
        {
            State = new RowState
            {
                Generation = generation,
                Sampler = request.Options.Seed is long seed && generation.DoSample ? new Generator((ulong)seed, _model.Device) : null,
            },
        };
        return (row, prompt);
    }

    /// <summary>What a prefill leaves: the rows' cache [G, Hkv, L, D], mask and ids [G, L], float32 logits [G, V] of the last position, each row's next M-RoPE position.</summary>
    internal sealed record PrefillResult(KVCache Cache, Tensor Mask, Tensor Ids, Tensor Logits, long[] NextPositions, bool Padded) : IDisposable
    {
        public void Dispose() { Cache.Dispose(); Mask.Dispose(); Ids.Dispose(); Logits.Dispose(); }
    }

    /// <summary>
    /// The official prefill (TextGeneration.Prefill) of prompts left-padded into one batch: get_rope_index positions
    /// over each row's own tokens, the padding masked out. A row's next position is its max position + 1 (padded length
    /// + its rope delta), exactly where it would be alone. The caller owns the result.
    /// </summary>
    internal PrefillResult Prefill(IReadOnlyList<PreparedPrompt> prompts)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var inputs = PreparedPrompt.LeftPadded(prompts);
        long L = inputs.InputIds.shape[1];
        var ids = inputs.InputIds.to(ScalarType.Int64, _model.Device);
        var mask = inputs.AttentionMask!.to(ScalarType.Int64, _model.Device);
        var embeds = _model.EmbedInputs(ids, inputs.ImageEmbeds);
        var (positions, deltas) = RopeIndex.GetRopeIndex(ids, inputs.ImageGridThw?.to(ScalarType.Int64, CPU), mask, _model.Config);
        var cache = new KVCache(_model.Config.NumHiddenLayers, L + 64);
        try
        {
            var logits = _model.Forward(embeds, positions, mask, cache, lastPositionOnly: true).Logits.select(1, 0);   // [G, V]
            var next = (deltas.view(-1) + L).cpu().data<long>().ToArray();
            return new PrefillResult(cache, mask.DetachFromDisposeScope(), ids.DetachFromDisposeScope(), logits.DetachFromDisposeScope(), next,
                prompts.Any(p => p.Length != L));
        }
        catch { cache.Dispose(); throw; }
    }

    public void Step()
    {
        if (_rows.Count == 0) return;
        using (var scope = NewDisposeScope())
        using (var noGrad = no_grad())
        {
            int B = _rows.Count;
            var states = _rows.Select(r => (RowState)r.State!).ToArray();
            var tokens = tensor(states.Select(s => s.LastToken).ToArray(), ScalarType.Int64, _model.Device).view(B, 1);
            var positions = tensor(states.Select(s => s.NextPosition).ToArray(), ScalarType.Int64, _model.Device).view(1, B, 1).expand(3, B, 1);
            Grow(ref _mask, ones(B, 1, ScalarType.Int64, _model.Device));
            Grow(ref _ids, tokens);
            var embeds = _model.EmbedInputs(tokens);
            var logits = _model.Forward(embeds, positions, _padded ? _mask : null, _cache, lastPositionOnly: true).Logits.select(1, 0);   // [B, V]
            foreach (var s in states) s.NextPosition++;
            Take(_rows, Choose(states, _ids!, logits));
        }
        var ended = _rows.Where(r => r.Finish is not null).ToList();
        if (ended.Count > 0) Remove(ended);
    }

    public void Release(ChatRow row)
    {
        if (_rows.Contains(row)) Remove([row]);
        else (row.State as RowState)?.Dispose();
    }

    /// <summary>Appends a column [B, 1] to a batch table [B, T] (kept outside the step's dispose scope).</summary>
    static void Grow(ref Tensor? table, Tensor column)
    {
        var grown = cat([table!, column], 1).DetachFromDisposeScope();
        table!.Dispose();
        table = grown;
    }

    /// <summary>
    /// The logits processors and the token choice of every row at once (TextGeneration.Choose per row), with one host
    /// read: rows are grouped by the processors' settings; a greedy group takes one argmax, an unseeded sampling group
    /// one multinomial, and a seeded row draws from its own generator on its own row, exactly as a seeded single call.
    /// </summary>
    /// <param name="ids">[R, T] each row's prompt and chosen ids (left padding repeats the row's first id, so the repetition penalty's token set is the row's own)</param>
    /// <param name="logits">[R, V] float32</param>
    static long[] Choose(IReadOnlyList<RowState> states, Tensor ids, Tensor logits)
    {
        using var scope = NewDisposeScope();
        var groups = Enumerable.Range(0, states.Count).GroupBy(b => LogitsProcessors.Settings(states[b].Generation)).Select(g => g.ToArray()).ToList();
        Tensor next;
        if (groups.Count == 1) next = ChooseGroup(states, groups[0], ids, logits);
        else
        {
            next = empty(states.Count, ScalarType.Int64, logits.device);
            foreach (var rows in groups)
            {
                var index = tensor(rows.Select(b => (long)b).ToArray(), ScalarType.Int64, logits.device);
                next.index_copy_(0, index, ChooseGroup(states, rows, ids.index_select(0, index), logits.index_select(0, index)));
            }
        }
        return next.cpu().data<long>().ToArray();                                               // the one host read
    }

    /// <summary>One group of rows with equal processor settings: scores [G, V] → chosen ids [G].</summary>
    static Tensor ChooseGroup(IReadOnlyList<RowState> states, int[] rows, Tensor ids, Tensor logits)
    {
        var g = states[rows[0]].Generation;
        var scores = LogitsProcessors.Apply(g, ids, logits);
        if (!g.DoSample) return scores.argmax(-1);
        var probs = scores.softmax(-1);
        if (rows.All(b => states[b].Sampler is null)) return probs.multinomial(1).squeeze(1);
        return cat(rows.Select((b, j) => probs.narrow(0, j, 1).multinomial(1, generator: states[b].Sampler)).ToList(), 0).squeeze(1);
    }

    /// <summary>Hands each row its chosen id (end of turn, image start, stop sequences, max tokens).</summary>
    void Take(IReadOnlyList<ChatRow> rows, long[] chosen)
    {
        for (int b = 0; b < rows.Count; b++)
        {
            var row = rows[b];
            var state = (RowState)row.State!;
            state.LastToken = chosen[b];
            row.Add((int)chosen[b], row.Request.IgnoreEos ? [] : state.Generation.EosTokenIds, row.Request.IgnoreEos ? -1 : _owner.Config.ImageGen.StartId);
        }
    }

    /// <summary>
    /// Merges prefilled rows (their own cache [G, Hkv, L, D], mask and ids [G, L]) into the batch, left-padding whichever
    /// side is shorter. Takes ownership of the cache, mask and ids.
    /// </summary>
    void Join(IReadOnlyList<ChatRow> rows, KVCache rowCache, Tensor rowMask, Tensor rowIds, bool rowsPadded)
    {
        if (_cache is null)
        {
            (_cache, _mask, _ids, _padded) = (rowCache, rowMask, rowIds, rowsPadded);
            _rows.AddRange(rows);
            return;
        }
        using var scope = NewDisposeScope();
        long T = _cache.Length, L = rowCache.Length, target = Math.Max(T, L);
        var merged = new KVCache(_cache.NumLayers, target + 64);
        for (int layer = 0; layer < _cache.NumLayers; layer++)
        {
            var (kb, vb) = Contents(_cache, layer, _rows.Count);
            var (kr, vr) = Contents(rowCache, layer, rows.Count);
            merged.Update(layer, cat([PadLeft(kb, target - T), PadLeft(kr, target - L)], 0), cat([PadLeft(vb, target - T), PadLeft(vr, target - L)], 0));
        }
        var mask = cat([PadLeft(_mask!, target - T, 0L), PadLeft(rowMask, target - L, 0L)], 0);
        var ids = cat([PadLeft(_ids!, target - T, null), PadLeft(rowIds, target - L, null)], 0);
        _cache.Dispose(); rowCache.Dispose(); _mask!.Dispose(); _ids!.Dispose(); rowMask.Dispose(); rowIds.Dispose();
        _cache = merged;
        _mask = mask.DetachFromDisposeScope();
        _ids = ids.DetachFromDisposeScope();
        _padded = _padded || rowsPadded || T != L;
        _rows.AddRange(rows);
    }

    /// <summary>Cuts rows out of the batch cache and trims the leading columns that are padding for every remaining row.</summary>
    void Remove(IReadOnlyList<ChatRow> rows)
    {
        foreach (var r in rows) (r.State as RowState)?.Dispose();
        int before = _rows.Count;
        var keep = Enumerable.Range(0, before).Where(b => !rows.Contains(_rows[b])).ToArray();
        _rows.RemoveAll(rows.Contains);
        if (keep.Length == 0)
        {
            _cache?.Dispose(); _mask?.Dispose(); _ids?.Dispose();
            _cache = null; _mask = null; _ids = null;
            return;
        }
        using var scope = NewDisposeScope();
        var index = tensor(keep.Select(k => (long)k).ToArray(), ScalarType.Int64, _model.Device);
        var mask = _mask!.index_select(0, index);
        var ids = _ids!.index_select(0, index);
        // first column where some remaining row has a token: everything before it is padding for all
        long start = mask.any(0).to(ScalarType.Int64).argmax().item<long>();
        long T = mask.shape[1] - start;
        var trimmed = new KVCache(_cache!.NumLayers, T + 64);
        for (int layer = 0; layer < _cache.NumLayers; layer++)
        {
            var (k, v) = Contents(_cache, layer, before);
            trimmed.Update(layer, k.index_select(0, index).narrow(2, start, T), v.index_select(0, index).narrow(2, start, T));
        }
        _cache.Dispose(); _mask!.Dispose(); _ids!.Dispose();
        _cache = trimmed;
        _mask = mask.narrow(1, start, T).clone().DetachFromDisposeScope();
        _ids = ids.narrow(1, start, T).clone().DetachFromDisposeScope();
        _padded = _mask.min().item<long>() == 0;
    }

    /// <summary>
    /// The cached K/V of one layer [B, Hkv, T, D]. KVCache has no reader of its own yet: appending zero tokens returns the
    /// whole view (KVCache.Update). TODO(issue 15, after the restructuring lands): row selection and merging move into
    /// the library's KV cache, beside the turn loop.
    /// </summary>
    (Tensor K, Tensor V) Contents(KVCache cache, int layer, long rows)
    {
        var c = _model.Config;
        using var empty = zeros(rows, c.NumKeyValueHeads, 0, c.HeadDim, _model.DType, _model.Device);
        return cache.Update(layer, empty, empty);
    }

    static Tensor PadLeft(Tensor kv, long n) =>
        n == 0 ? kv : cat([zeros(kv.shape[0], kv.shape[1], n, kv.shape[3], kv.dtype, kv.device), kv], 2);

    /// <summary>Left-pads a table [B, T] by n columns of <paramref name="value"/> (null: each row's first entry).</summary>
    static Tensor PadLeft(Tensor table, long n, long? value) =>
        n == 0 ? table : cat([value is long v ? full(table.shape[0], n, v, table.dtype, table.device) : table.narrow(1, 0, 1).expand(table.shape[0], n), table], 1);

    public void Dispose()
    {
        foreach (var r in _rows) (r.State as RowState)?.Dispose();
        _rows.Clear();
        _cache?.Dispose(); _mask?.Dispose(); _ids?.Dispose();
    }
}
