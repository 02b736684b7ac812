using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>Output of the teacher-forced prefix builder (official Infinity.forward).</summary>
/// <param name="XBLC">[B, Lpad, C]: cond_BD + pos_start, then word_embed of the next-scale inputs, zero rows to a multiple of pad_to_multiplier.</param>
/// <param name="Cond">cond_BD [B, D]</param>
/// <param name="Ada">cond_BD_or_gss = shared_ada_lin(cond_BD) [B, 1, 6, C]</param>
/// <param name="AttnMask">block-causal mask, bool [1, 1, Lpad, Lpad] (true = visible; padded rows see only token 0)</param>
/// <param name="LEnd">real length L (sum of h*w)</param>
/// <param name="NeedToPad">Lpad - L</param>
public sealed record InfinityPrefix(Tensor XBLC, Tensor Cond, Tensor Ada, Tensor AttnMask, int LEnd, int NeedToPad);

/// <summary>
/// Infinity, the next-scale bitwise visual decoder of VARGPT-v1.1 (official var_model/infinity/models/infinity.py,
/// checkpoint prefix "vargpt_gen."), with the VARGPT settings: text-conditioned CrossAttnBlocks, shared AdaLN,
/// cosine self-attention with RoPE-2D (normalised by the '1M' grid), level embedding before the first block only,
/// bit-label head (2 logits per bit). In VARGPT the block stack is fed by the LLM (image_gen_projector_out of its
/// hidden states), so the pieces are exposed separately:
/// <list type="bullet">
/// <item><see cref="Condition(Tensor)"/> (text_norm + text_proj_for_sos), <see cref="AdaLn"/>, <see cref="FirstTokens"/>,
/// <see cref="WordEmbed"/>, <see cref="Logits"/>, <see cref="AppendUncond"/> (CFG rows);</item>
/// <item>training: <see cref="Prefix"/> (Infinity.forward) then <see cref="ForwardDecoder"/> (Infinity.forward_decoder);</item>
/// <item>generation: <see cref="NewCache"/> then <see cref="ForwardScale"/> per scale (autoregressive_infer_cfg's block loop).</item>
/// </list>
/// </summary>
public sealed class Infinity : nn.Module
{
    public InfinityConfig Config { get; }
    public int C => Config.EmbedDim;
    /// <summary>Logits per token: 2 per bit.</summary>
    public int V => 2 * Config.CodebookDim;

#pragma warning disable IDE1006 // field names = official state-dict names
    readonly Parameter cfg_uncond, pos_start;
    readonly FastRMSNorm text_norm;
    readonly TextAttentivePool text_proj_for_sos;
    readonly Sequential text_proj_for_ca;
    readonly Torch.Embedding lvl_embed;
    readonly Linear word_embed;
    readonly Sequential shared_ada_lin;
    readonly AdaLNBeforeHead head_nm;
    readonly Linear head;
    readonly ModuleList<MultipleLayers>? block_chunks;
    readonly ModuleList<CrossAttnBlock>? blocks;
#pragma warning restore IDE1006

    readonly CrossAttnBlock[] _blocks;
    readonly Dictionary<(double, string), (Tensor Cos, Tensor Sin)> _rope = [];

    public IReadOnlyList<CrossAttnBlock> Blocks => _blocks;

    /// <summary>Builds every parameter and buffer on <paramref name="device"/> in <paramref name="dtype"/> (null: libtorch's current defaults).</summary>
    public Infinity(InfinityConfig config, Device? device = null, ScalarType? dtype = null) : base("Infinity")
    {
        Config = config;
        int c = config.EmbedDim, d = c, ct5 = config.TextChannels; // VARGPT: D = C, cross-attention kv_dim = D
        if (config.Depth % Math.Max(1, config.BlockChunks) != 0)
            throw new ArgumentException($"Infinity depth {config.Depth} is not divisible by block_chunks {config.BlockChunks}");
        if (config.HeadDim % 4 != 0) throw new ArgumentException($"Infinity head_dim {config.HeadDim} must be divisible by 4 (RoPE-2D)");
        double initStd = Math.Sqrt(1.0 / c / 3);

        cfg_uncond = new Parameter(TruncNormal([config.TextMaxLen, ct5], 1.2, device, dtype, divideBy: Math.Sqrt(ct5)));
        pos_start = new Parameter(TruncNormal([1, 1, c], initStd, device, dtype));
        text_norm = new FastRMSNorm(ct5, config.NormEps, device, dtype);
        text_proj_for_sos = new TextAttentivePool(ct5, d, config.PoolHeadDim, device, dtype);
        text_proj_for_ca = nn.Sequential(("0", nn.Linear(ct5, d, device: device, dtype: dtype)), ("1", nn.GELU(GELU.Approximate.tanh)),
            ("2", nn.Linear(d, d, device: device, dtype: dtype)));
        lvl_embed = new Torch.Embedding(config.LevelEmbeddings, c, device, dtype);
        using (no_grad()) using (var w = TruncNormal(lvl_embed.weight.shape, initStd, device, ScalarType.Float32)) lvl_embed.weight.copy_(w);
        word_embed = nn.Linear(config.CodebookDim, c, device: device, dtype: dtype);
        shared_ada_lin = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(d, 6 * c, device: device, dtype: dtype)));

        _blocks = new CrossAttnBlock[config.Depth];
        for (int i = 0; i < config.Depth; i++)
        {
            double dpr = config.Depth == 1 ? 0 : config.DropPathRate * i / (config.Depth - 1); // torch.linspace(0, rate, depth)
            _blocks[i] = new CrossAttnBlock(c, d, config.NumHeads, config.FfnHidden, config.NormEps, dpr, device, dtype);
        }
        if (config.BlockChunks > 1)
        {
            int per = config.Depth / config.BlockChunks;
            block_chunks = nn.ModuleList(Enumerable.Range(0, config.BlockChunks).Select(k => new MultipleLayers(_blocks.Skip(k * per).Take(per))).ToArray());
        }
        else blocks = nn.ModuleList(_blocks);

        head_nm = new AdaLNBeforeHead(c, d, config.NormEps, device, dtype);
        head = nn.Linear(c, V, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>
    /// A trunc_normal_(std) initialised tensor (÷ <paramref name="divideBy"/>), drawn in float32 and then cast:
    /// TorchSharp's trunc_normal_ run in bfloat16 leaves NaNs (its erfinv meets ±1 after rounding).
    /// </summary>
    internal static Tensor TruncNormal(long[] shape, double std, Device? device, ScalarType? dtype, double divideBy = 1)
    {
        using var f = empty(shape, dtype: ScalarType.Float32, device: device);
        nn.init.trunc_normal_(f, std: std);
        if (divideBy != 1) using (no_grad()) f.div_(divideBy);
        return f.to(dtype ?? get_default_dtype());
    }

    // ---------------------------------------------------------------- conditioning pieces

    /// <summary>
    /// cond_BD [B, D] from packed text rows (official text_norm then text_proj_for_sos). VARGPT passes one sos row per
    /// sample (sos_embedding[image_gen_start_token_id]); for CFG the unconditional rows come from <see cref="AppendUncond"/>.
    /// </summary>
    public Tensor Condition(CrossAttnKv text)
    {
        using var scope = NewDisposeScope();
        var normed = text_norm.forward(text.KvCompact);
        return text_proj_for_sos.forward(text with { KvCompact = normed }).MoveToOuterDisposeScope();
    }

    /// <summary>cond_BD [B, D] from one sos row per sample [B, Ct5].</summary>
    public Tensor Condition(Tensor sos) => Condition(CrossAttnKv.OneRowEach(sos));

    /// <summary>Infinity's own text path text_proj_for_ca(text_norm(rows)): present in the weights, unused by VARGPT.</summary>
    public Tensor TextProjForCa(Tensor rows)
    {
        using var n = text_norm.forward(rows);
        return text_proj_for_ca.forward(n);
    }

    /// <summary>cond_BD_or_gss = shared_ada_lin(cond) reshaped to [B, 1, 6, C] (gamma1, gamma2, scale1, scale2, shift1, shift2).</summary>
    public Tensor AdaLn(Tensor cond)
    {
        using var y = shared_ada_lin.forward(cond);
        return y.reshape(-1, 1, 6, C);
    }

    /// <summary>The first-scale token: cond_BD.unsqueeze(1) + pos_start → [B, 1, C].</summary>
    public Tensor FirstTokens(Tensor cond)
    {
        using var u = cond.unsqueeze(1);
        return u + pos_start;
    }

    /// <summary>word_embed of next-scale inputs [B, n, d] → [B, n, C] (norm0_ve is the identity in VARGPT).</summary>
    public Tensor WordEmbed(Tensor codes) => word_embed.forward(codes);

    /// <summary>Official get_logits: head(head_nm(y.to(cond.dtype), cond)) → [B, n, 2d]; bit k has logits [2k] (0) and [2k+1] (1).</summary>
    public Tensor Logits(Tensor y, Tensor cond)
    {
        using var yy = y.to(cond.dtype);
        using var h = head_nm.forward(yy, cond);
        return head.forward(h);
    }

    /// <summary>The learned unconditional rows cfg_uncond[:n] [n, Ct5].</summary>
    public Tensor CfgUncondRows(int n)
    {
        if (n > Config.TextMaxLen)
            throw new ArgumentException($"the unconditional CFG branch needs {n} rows of cfg_uncond but it has only {Config.TextMaxLen} (text_maxlen): the prompt context is too long");
        return cfg_uncond.narrow(0, 0, n);
    }

    /// <summary>
    /// CFG batch doubling (official autoregressive_infer_cfg / get_ca_kv_cross with cfg): appends, for every segment of
    /// length n, the raw rows cfg_uncond[:n] as a new segment. Used for both the sos rows and the cross-attention context.
    /// </summary>
    public CrossAttnKv AppendUncond(CrossAttnKv cond)
    {
        using var scope = NewDisposeScope();
        var rows = new List<Tensor> { cond.KvCompact };
        var cu = new List<int>(cond.CuSeqlens);
        for (int b = 0; b < cond.Batch; b++)
        {
            rows.Add(CfgUncondRows(cond.Length(b)).to(cond.KvCompact.dtype));
            cu.Add(cu[^1] + cond.Length(b));
        }
        return new CrossAttnKv(cat(rows.ToArray(), 0).MoveToOuterDisposeScope(), cu.ToArray());
    }

    // ---------------------------------------------------------------- teacher-forced training path

    /// <summary>
    /// Official Infinity.forward (the prefix builder VARGPT's v1.1 training calls): cond dropout (training only: with
    /// probability cond_drop_rate a sample's text rows become cfg_uncond rows), cond_BD, cond_BD_or_gss,
    /// x_BLC = cat(cond_BD + pos_start, word_embed(x_wo_prefix)) zero-padded to a multiple of pad_to_multiplier, and the
    /// block-causal mask. The level embeddings are added later by <see cref="ForwardDecoder"/>.
    /// </summary>
    /// <param name="text">sos rows per sample (VARGPT: one row each)</param>
    /// <param name="xWoPrefix">next-scale inputs of scales 1.. [B, L-1, d]</param>
    /// <param name="rng">randomness of the cond dropout (python random in the official code)</param>
    public InfinityPrefix Prefix(CrossAttnKv text, Tensor xWoPrefix, ScaleSchedule schedule, Random? rng = null)
    {
        using var scope = NewDisposeScope();
        long B = xWoPrefix.shape[0];
        if (text.Batch != B) throw new ArgumentException($"Infinity.Prefix: {text.Batch} text segments for a batch of {B}");
        int L = schedule.SequenceLength;
        if (xWoPrefix.shape[1] != L - 1)
            throw new ArgumentException($"Infinity.Prefix: x_wo_prefix has {xWoPrefix.shape[1]} rows, schedule {schedule.Pn} needs {L - 1}");
        if (training && Config.CondDropRate > 0)
        {
            rng ??= Random.Shared;
            var parts = new List<Tensor>();
            for (int b = 0; b < B; b++)
            {
                var seg = text.KvCompact.narrow(0, text.CuSeqlens[b], text.Length(b));
                parts.Add(rng.NextDouble() < Config.CondDropRate ? CfgUncondRows(text.Length(b)).to(seg.dtype) : seg);
            }
            text = text with { KvCompact = cat(parts.ToArray(), 0) };
        }
        var cond = Condition(text);
        var ada = AdaLn(cond);
        var x = cat([FirstTokens(cond), WordEmbed(xWoPrefix)], 1);
        int lp = PaddedLength(L);
        if (lp > L) x = nn.functional.pad(x, [0, 0, 0, lp - L]);
        var mask = BlockCausalMask(schedule.Scales, lp, x.device);
        return new InfinityPrefix(x.MoveToOuterDisposeScope(), cond.MoveToOuterDisposeScope(), ada.MoveToOuterDisposeScope(),
            mask.MoveToOuterDisposeScope(), L, lp - L);
    }

    /// <summary>Convenience overload: one sos row per sample [B, Ct5].</summary>
    public InfinityPrefix Prefix(Tensor sos, Tensor xWoPrefix, ScaleSchedule schedule, Random? rng = null) =>
        Prefix(CrossAttnKv.OneRowEach(sos), xWoPrefix, schedule, rng);

    /// <summary>L rounded up to pad_to_multiplier: the number of &lt;|image_gen_pad|&gt; rows VARGPT feeds through the LLM.</summary>
    public int PaddedLength(int L)
    {
        int m = Math.Max(1, Config.PadToMultiplier);
        return (L + m - 1) / m * m;
    }

    /// <summary>
    /// Block-causal mask, bool [1, 1, Lpad, Lpad], true = visible: token i sees token j iff scale(j) ≤ scale(i); padded
    /// rows see only token 0, real rows never see padded ones (official attn_bias of Infinity.forward).
    /// </summary>
    public static Tensor BlockCausalMask(IReadOnlyList<Scale> scales, int paddedLength, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var ids = new List<long>();
        for (int s = 0; s < scales.Count; s++) ids.AddRange(Enumerable.Repeat((long)s, scales[s].Tokens));
        int L = ids.Count;
        if (paddedLength < L) throw new ArgumentException($"padded length {paddedLength} < sequence length {L}");
        var d = tensor(ids.ToArray(), device: device);
        var m = d.unsqueeze(1).ge(d.unsqueeze(0));
        if (paddedLength > L)
        {
            m = nn.functional.pad(m.to(ScalarType.Int8), [0, paddedLength - L, 0, paddedLength - L]).to(ScalarType.Bool);
            m[TensorIndex.Slice(L), 0] = tensor(true);
        }
        return m.reshape(1, 1, paddedLength, paddedLength).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Official Infinity.forward_decoder as VARGPT's v1.1 training calls it: x_BLC [B, Lpad, C] (VARGPT: the LLM's
    /// image-pad states through image_gen_projector_out) + level embedding of every scale (padded rows get none) →
    /// all blocks with the block-causal mask and rope rows [0, Lpad) → head on the first L rows → logits [B, L, 2d].
    /// </summary>
    /// <param name="blockTap">optional observer of each block's output (debugging / fixtures)</param>
    public Tensor ForwardDecoder(Tensor xBLC, CrossAttnKv context, Tensor ada, Tensor cond, ScaleSchedule schedule,
        Tensor? attnMask = null, Action<int, Tensor>? blockTap = null)
    {
        using var scope = NewDisposeScope();
        int L = schedule.SequenceLength, lp = (int)xBLC.shape[1];
        if (lp < L) throw new ArgumentException($"ForwardDecoder: x_BLC has {lp} rows, schedule {schedule.Pn} needs at least {L}");
        var ids = new List<long>();
        for (int s = 0; s < schedule.Scales.Count; s++) ids.AddRange(Enumerable.Repeat((long)s, schedule.Scales[s].Tokens));
        var lvl = lvl_embed.forward(tensor(ids.ToArray(), device: xBLC.device)).to(xBLC.dtype); // [L, C]
        if (lp > L) lvl = nn.functional.pad(lvl, [0, 0, 0, lp - L]);
        var x = xBLC + lvl;
        attnMask ??= BlockCausalMask(schedule.Scales, lp, xBLC.device);
        var (cos, sin) = RopeRows(schedule.Template, 0, lp, xBLC.device);
        for (int i = 0; i < _blocks.Length; i++)
        {
            using var kv = _blocks[i].ProjectContext(context);
            x = _blocks[i].forward(x, ada, cos, sin, attnMask, kv, null);
            blockTap?.Invoke(i, x);
        }
        return Logits(x.narrow(1, 0, L), cond).MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------- KV-cached scale-by-scale generation path

    /// <summary>
    /// Starts a KV-cached pass (official kv_caching(True)) for one batch (VARGPT with CFG: row 0 conditional, row 1
    /// unconditional) over <paramref name="schedule"/>, projecting each block's cross-attention K/V of the constant
    /// context once.
    /// </summary>
    public InfinityKvCache NewCache(CrossAttnKv context, ScaleSchedule schedule)
    {
        using var ng = no_grad();
        using var scope = NewDisposeScope();
        var cross = new ProjectedKv[_blocks.Length];
        for (int i = 0; i < _blocks.Length; i++)
        {
            var p = _blocks[i].ProjectContext(context);
            cross[i] = new ProjectedKv(p.K.DetachFromDisposeScope(), p.V.DetachFromDisposeScope(), p.CuSeqlens);
        }
        return new InfinityKvCache(schedule, cross);
    }

    /// <summary>
    /// The block loop of autoregressive_infer_cfg for scale <paramref name="si"/>: x [B, h*w, C] (VARGPT:
    /// image_gen_projector_out of the LLM output of this scale) + lvl_embed[si], then every block with the cached
    /// self-attention K/V (no mask) and the rope rows of this scale. Returns the hidden states [B, h*w, C]; feed them to
    /// <see cref="Logits"/>. Scales must be fed in order.
    /// </summary>
    public Tensor ForwardScale(Tensor x, Tensor ada, InfinityKvCache cache, int si)
    {
        using var ng = no_grad();
        using var scope = NewDisposeScope();
        var sched = cache.Schedule;
        if (si < 0 || si >= sched.Scales.Count) throw new ArgumentOutOfRangeException(nameof(si), $"scale {si} outside schedule {sched.Pn} ({sched.Scales.Count} scales)");
        int n = sched.Scales[si].Tokens;
        if (x.shape[1] != n) throw new ArgumentException($"ForwardScale: scale {si} of {sched.Pn} has {n} tokens, x has {x.shape[1]}");
        int start = sched.Scales.Take(si).Sum(s => s.Tokens);
        if (si != cache.ScalesDone || cache.Length != start)
            throw new InvalidOperationException($"ForwardScale: scales must be fed in order; cache holds {cache.ScalesDone} scales ({cache.Length} tokens), got scale {si}");
        var h = x + lvl_embed.weight![si].to(x.dtype);
        var (cos, sin) = RopeRows(sched.Template, start, n, x.device);
        for (int i = 0; i < _blocks.Length; i++)
            h = _blocks[i].forward(h, ada, cos, sin, null, cache.Cross[i], cache.SelfAttn[i]);
        cache.ScalesDone = si + 1;
        return h.MoveToOuterDisposeScope();
    }

    // ---------------------------------------------------------------- rope

    /// <summary>RoPE-2D (cos, sin) rows [start, start+n) of the template's table, float32 on device.</summary>
    public (Tensor Cos, Tensor Sin) RopeRows(double template, int start, int n, Device device)
    {
        (Tensor Cos, Tensor Sin) t;
        lock (_rope)
        {
            var key = (template, device.ToString());
            if (!_rope.TryGetValue(key, out t))
            {
                var (c, s) = Rope2d.Table(template, Config.HeadDim, Config.PadToMultiplier, device);
                t = (c.DetachFromDisposeScope(), s.DetachFromDisposeScope());
                _rope[key] = t;
            }
        }
        if (start + n > t.Cos.shape[0])
            throw new ArgumentException($"rope rows [{start}, {start + n}) exceed the '1M' table of template {template} ({t.Cos.shape[0]} rows)");
        return (t.Cos.narrow(0, start, n), t.Sin.narrow(0, start, n));
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            lock (_rope)
            {
                foreach (var (c, s) in _rope.Values) { c.Dispose(); s.Dispose(); }
                _rope.Clear();
            }
        base.Dispose(disposing);
    }
}
