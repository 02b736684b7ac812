using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Torch;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using VarGpt.Configuration;

namespace VarGpt.LanguageModel;

/// <summary>How the decoder computes attention. Both reproduce the official finfo.min mask semantics.</summary>
public enum AttentionImplementation
{
    /// <summary>scaled_dot_product_attention with the additive float mask (the official default, "sdpa").</summary>
    Sdpa,
    /// <summary>matmul + float32 softmax + matmul, line by line the official Qwen2VLAttention ("eager", used by the fixtures).</summary>
    Eager,
}

/// <summary>Official Qwen2RMSNorm: float32 x * rsqrt(mean(x^2) + eps), cast back to the input dtype, then times weight.</summary>
public sealed class Qwen2RMSNorm : Module<Tensor, Tensor>
{
    public readonly Parameter weight;
    readonly double _eps;

    public Qwen2RMSNorm(long hiddenSize, double eps, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2RMSNorm))
    {
        weight = new Parameter(ones(hiddenSize, dtype, device));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var inputDtype = x.dtype;
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        h = h * rsqrt(variance + _eps);
        return (weight * h.to(inputDtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>Official Qwen2MLP: down(silu(gate(x)) * up(x)), no biases.</summary>
public sealed class Qwen2MLP : Module<Tensor, Tensor>
{
    // typed Module<Tensor, Tensor> (not the sealed Linear) so LoRA can swap in an adapter-wrapped layer
    public readonly Module<Tensor, Tensor> gate_proj, up_proj, down_proj;

    public Qwen2MLP(VargptConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2MLP))
    {
        if (c.HiddenAct != "silu") throw new NotSupportedException($"language model hidden_act '{c.HiddenAct}' is not supported (expected silu)");
        gate_proj = Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: device, dtype: dtype);
        up_proj = Linear(c.HiddenSize, c.IntermediateSize, hasBias: false, device: device, dtype: dtype);
        down_proj = Linear(c.IntermediateSize, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // decode steps (one row, no autograd, CPU) take the multi-threaded GEMV; everything else plain linear
        return DecodeLinear.Forward(down_proj, functional.silu(DecodeLinear.Forward(gate_proj, x)) * DecodeLinear.Forward(up_proj, x)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Attention of the batch rows Start..Start+Count-1: additive mask [Count|1, 1, L, K] or null, whether SDPA's is_causal
/// is the mask, and the KV cache their keys join (null = they attend to this step's tokens only).
/// </summary>
public readonly record struct AttentionRows(long Start, long Count, Tensor? Mask, bool IsCausal, KVCache? Cache);

/// <summary>
/// Official Qwen2VLAttention / Qwen2VLSdpaAttention: q/k/v projections with bias, o_proj without; M-RoPE on q and k;
/// keys cached after the rotary; grouped-query attention with K/V heads repeated (head j uses kv head j / group).
/// </summary>
public sealed class Qwen2VLAttention : Module
{
    // typed Module<Tensor, Tensor> (not the sealed Linear) so LoRA can swap in an adapter-wrapped layer
    public readonly Module<Tensor, Tensor> q_proj, k_proj, v_proj, o_proj;
    readonly int _numHeads, _numKvHeads, _headDim, _layerIdx;

    public Qwen2VLAttention(VargptConfig c, int layerIdx, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2VLAttention))
    {
        _numHeads = c.NumAttentionHeads;
        _numKvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _layerIdx = layerIdx;
        q_proj = Linear(c.HiddenSize, _numHeads * _headDim, hasBias: true, device: device, dtype: dtype);
        k_proj = Linear(c.HiddenSize, _numKvHeads * _headDim, hasBias: true, device: device, dtype: dtype);
        v_proj = Linear(c.HiddenSize, _numKvHeads * _headDim, hasBias: true, device: device, dtype: dtype);
        o_proj = Linear(_numHeads * _headDim, c.HiddenSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>
    /// x [B, L, H]; cos/sin [B, 1, L, D]. The projections run once over all B·L tokens; attention runs per group of
    /// batch rows (<paramref name="groups"/> cover 0..B-1 in order), each with its own mask and KV cache.
    /// </summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, IReadOnlyList<AttentionRows> groups, AttentionImplementation impl)
    {
        using var scope = NewDisposeScope();
        long B = x.shape[0], L = x.shape[1];
        var q = DecodeLinear.Forward(q_proj, x).view(B, L, _numHeads, _headDim).transpose(1, 2);
        var k = DecodeLinear.Forward(k_proj, x).view(B, L, _numKvHeads, _headDim).transpose(1, 2);
        var v = DecodeLinear.Forward(v_proj, x).view(B, L, _numKvHeads, _headDim).transpose(1, 2);
        q = MultimodalRotaryEmbedding.Apply(q, cos, sin);
        k = MultimodalRotaryEmbedding.Apply(k, cos, sin);

        Tensor o;                                                                       // [B, heads, L, D]
        if (groups.Count == 1) o = Attend(q, k, v, groups[0], impl);
        else
        {
            var parts = new Tensor[groups.Count];
            long next = 0;
            for (int i = 0; i < parts.Length; i++)
            {
                var g = groups[i];
                if (g.Start != next) throw new ArgumentException($"attention row groups must cover the batch in order: group {i} starts at {g.Start}, expected {next}");
                parts[i] = Attend(q.narrow(0, g.Start, g.Count), k.narrow(0, g.Start, g.Count), v.narrow(0, g.Start, g.Count), g, impl);
                next += g.Count;
            }
            if (next != B) throw new ArgumentException($"attention row groups cover {next} of {B} batch rows");
            o = cat(parts, 0);
        }
        o = o.transpose(1, 2).reshape(B, L, _numHeads * _headDim);
        return DecodeLinear.Forward(o_proj, o).MoveToOuterDisposeScope();
    }

    /// <summary>Scaled dot-product attention of q [b, heads, L, D] (rotated) over k/v [b, Hkv, L, D] appended to the group's cache.</summary>
    Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionRows rows, AttentionImplementation impl)
    {
        long B = q.shape[0], L = q.shape[2];
        int groups = _numHeads / _numKvHeads;
        if (rows.Cache is not null) (k, v) = rows.Cache.Update(_layerIdx, k, v);
        var mask = rows.Mask;
        if (impl == AttentionImplementation.Eager)
        {
            var w = matmul(q, RepeatKv(k, groups).transpose(2, 3)) / Math.Sqrt(_headDim);
            if (mask is not null) w = w + mask;
            w = w.softmax(-1, ScalarType.Float32).to(q.dtype);
            return matmul(w, RepeatKv(v, groups));
        }
        if (L == 1 && groups > 1)
        {
            // one query: put the query heads of a kv head side by side instead of copying K/V `groups` times
            var qg = q.reshape(B, _numKvHeads, groups, _headDim);
            return functional.scaled_dot_product_attention(qg, k, v, mask).reshape(B, _numHeads, 1, _headDim);
        }
        return functional.scaled_dot_product_attention(q, RepeatKv(k, groups), RepeatKv(v, groups), mask, is_casual: rows.IsCausal);
    }

    /// <summary>[B, Hkv, T, D] -> [B, Hkv * n, T, D] with each kv head repeated n times in place (official repeat_kv).</summary>
    public static Tensor RepeatKv(Tensor x, int n)
    {
        if (n == 1) return x.alias();
        long B = x.shape[0], H = x.shape[1], T = x.shape[2], D = x.shape[3];
        return x.unsqueeze(2).expand(B, H, n, T, D).reshape(B, H * n, T, D);
    }
}

/// <summary>Official Qwen2VLDecoderLayer: pre-norm attention and MLP blocks with residuals.</summary>
public sealed class Qwen2VLDecoderLayer : Module
{
    public readonly Qwen2VLAttention self_attn;
    public readonly Qwen2MLP mlp;
    public readonly Qwen2RMSNorm input_layernorm, post_attention_layernorm;

    public Qwen2VLDecoderLayer(VargptConfig c, int layerIdx, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2VLDecoderLayer))
    {
        self_attn = new Qwen2VLAttention(c, layerIdx, device, dtype);
        mlp = new Qwen2MLP(c, device, dtype);
        input_layernorm = new Qwen2RMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        post_attention_layernorm = new Qwen2RMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }

    /// <summary>h [B, L, H]; attention per group of batch rows (<see cref="Qwen2VLAttention.forward"/>).</summary>
    public Tensor forward(Tensor h, Tensor cos, Tensor sin, IReadOnlyList<AttentionRows> groups, AttentionImplementation impl)
    {
        using var scope = NewDisposeScope();
        h = h + self_attn.forward(input_layernorm.forward(h), cos, sin, groups, impl);
        h = h + mlp.forward(post_attention_layernorm.forward(h));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Official Qwen2VLModel: embed_tokens, decoder layers, final RMSNorm. The forward takes embeddings (image features
/// are scattered in by the caller), 3D M-RoPE positions and an optional 2D padding mask and KV cache, and returns the
/// post-final-norm hidden states.
/// </summary>
public sealed class Qwen2VLModel : Module
{
    public readonly Torch.Embedding embed_tokens;
    public readonly ModuleList<Qwen2VLDecoderLayer> layers;
    public readonly Qwen2RMSNorm norm;

    public VargptConfig Config { get; }
    public AttentionImplementation AttentionImplementation { get; set; } = AttentionImplementation.Sdpa;

    public Qwen2VLModel(VargptConfig c, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2VLModel))
    {
        Config = c;
        embed_tokens = new Torch.Embedding(c.VocabSize, c.HiddenSize, device, dtype);
        layers = new ModuleList<Qwen2VLDecoderLayer>(Enumerable.Range(0, c.NumHiddenLayers).Select(i => new Qwen2VLDecoderLayer(c, i, device, dtype)).ToArray());
        norm = new Qwen2RMSNorm(c.HiddenSize, c.RmsNormEps, device, dtype);
        RegisterComponents();
    }

    /// <summary>
    /// inputsEmbeds [B, L, H]; positionIds [3, B, L] (or [B, L], broadcast to the three rows; null = the cache
    /// positions past..past+L-1 on all rows, as the official forward does); attentionMask [B, K] with 1 = keep covering
    /// the cached and the new tokens (null = no padding); cache appended in place. If <paramref name="allHiddenStates"/>
    /// is given it receives the embeddings, each layer's output except the last, then the final-norm output
    /// (transformers' output_hidden_states convention). Returns the final-norm hidden states [B, L, H].
    /// </summary>
    public Tensor forward(Tensor inputsEmbeds, Tensor? positionIds = null, Tensor? attentionMask = null, KVCache? cache = null, List<Tensor>? allHiddenStates = null)
    {
        if (inputsEmbeds.dim() != 3) throw new ArgumentException($"inputs_embeds must be [B, L, H], got [{string.Join(",", inputsEmbeds.shape)}]");
        if (cache is not null && cache.NumLayers != layers.Count)
            throw new ArgumentException($"KV cache has {cache.NumLayers} layers, the model {layers.Count}");
        using var scope = NewDisposeScope();
        long B = inputsEmbeds.shape[0], L = inputsEmbeds.shape[1];
        long past = cache?.Length ?? 0;
        var device = inputsEmbeds.device;
        var dtype = inputsEmbeds.dtype;

        if (positionIds is null)
            positionIds = arange(past, past + L, ScalarType.Int64, device).view(1, 1, L).expand(3, B, L);
        else if (positionIds.dim() == 2)
            positionIds = positionIds.unsqueeze(0).expand(3, B, L);
        if (!positionIds.shape.SequenceEqual(new[] { 3, B, L }))
            throw new ArgumentException($"position_ids must be [3, {B}, {L}], got [{string.Join(",", positionIds.shape)}]");

        var (cos, sin) = MultimodalRotaryEmbedding.CosSin(positionIds, Config.HeadDim, Config.RopeTheta, Config.MropeSection, dtype);
        var (mask, isCausal) = UpdateCausalMask(attentionMask, B, L, past, dtype, device, SlidingWindow, Eager);
        return Layers(inputsEmbeds, cos, sin, [new AttentionRows(0, B, mask, isCausal, cache)], allHiddenStates).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One image scale's conditional and unconditional CFG rows in one pass. The official autoregressive_infer_cfg makes
    /// two self.model calls: the conditional row on the generation cache (positions = cache index, causal over the cache
    /// and the scale) and the unconditional row with no cache (positions 0..n-1, causal within the scale). Here
    /// <paramref name="x"/> [2, n, H] (row 0 conditional) goes through every linear as 2n tokens at once; attention runs
    /// per row with that row's positions and mask, and only row 0's K/V join <paramref name="cache"/>. Returns the
    /// post-final-norm hidden states [2, n, H], each row what its own call returns.
    /// </summary>
    public Tensor ForwardCfgPair(Tensor x, KVCache cache)
    {
        if (x.dim() != 3 || x.shape[0] != 2) throw new ArgumentException($"the CFG pair must be [2, n, H], got [{string.Join(",", x.shape)}]");
        if (cache.NumLayers != layers.Count) throw new ArgumentException($"KV cache has {cache.NumLayers} layers, the model {layers.Count}");
        using var scope = NewDisposeScope();
        long n = x.shape[1], past = cache.Length;
        var device = x.device;
        var dtype = x.dtype;
        var positionIds = stack([arange(past, past + n, ScalarType.Int64, device), arange(n, ScalarType.Int64, device)]).unsqueeze(0).expand(3, 2, n);
        var (cos, sin) = MultimodalRotaryEmbedding.CosSin(positionIds, Config.HeadDim, Config.RopeTheta, Config.MropeSection, dtype);
        var (maskC, causalC) = UpdateCausalMask(null, 1, n, past, dtype, device, SlidingWindow, Eager);
        var (maskU, causalU) = UpdateCausalMask(null, 1, n, 0, dtype, device, SlidingWindow, Eager);
        return Layers(x, cos, sin, [new AttentionRows(0, 1, maskC, causalC, cache), new AttentionRows(1, 1, maskU, causalU, null)], null)
            .MoveToOuterDisposeScope();
    }

    long? SlidingWindow => Config.SlidingWindow > 0 ? Config.SlidingWindow : null;
    bool Eager => AttentionImplementation == AttentionImplementation.Eager;

    /// <summary>The decoder layers and the final norm over h [B, L, H] (hidden states collected as in <see cref="forward"/>).</summary>
    Tensor Layers(Tensor h, Tensor cos, Tensor sin, AttentionRows[] groups, List<Tensor>? allHiddenStates)
    {
        foreach (var layer in layers)
        {
            if (allHiddenStates is not null) allHiddenStates.Add(h.alias().MoveToOuterDisposeScope());
            h = layer.forward(h, cos, sin, groups, AttentionImplementation);
        }
        h = norm.forward(h);
        if (allHiddenStates is not null) allHiddenStates.Add(h.alias().MoveToOuterDisposeScope());
        return h;
    }

    /// <summary>
    /// The additive attention mask of the official _update_causal_mask / _prepare_4d_causal_attention_mask_with_cache_position,
    /// already sliced to the K = past + q keys: finfo(dtype).min (not -inf) for future keys, keys more than
    /// sliding_window behind the query, and keys whose 2D mask is 0; 0 elsewhere. A fully padded query row is all
    /// finfo.min, so its softmax is uniform over all keys as in the official code. Returns (null, false) when nothing is
    /// masked (one query, no padding) and (null, true) when SDPA's is_causal is exactly the mask.
    /// </summary>
    public static (Tensor? Mask, bool IsCausal) UpdateCausalMask(Tensor? attentionMask, long batch, long q, long past, ScalarType dtype, Device device, long? slidingWindow, bool eager)
    {
        long kvLen = past + q;
        bool windowInactive = slidingWindow is null || kvLen <= slidingWindow;
        if (attentionMask is null && windowInactive)
        {
            if (q == 1) return (null, false);
            if (!eager && past == 0) return (null, true);
        }
        if (attentionMask is not null && (attentionMask.dim() != 2 || attentionMask.shape[0] != batch || attentionMask.shape[1] < kvLen))
            throw new ArgumentException($"attention_mask must be [B={batch}, K>={kvLen}] (cached + new tokens), got [{string.Join(",", attentionMask.shape)}]");
        using var scope = NewDisposeScope();
        var cachePos = arange(past, kvLen, ScalarType.Int64, device).unsqueeze(1);       // [q, 1]
        var keys = arange(kvLen, ScalarType.Int64, device).unsqueeze(0);                  // [1, K]
        var masked = keys > cachePos;
        if (slidingWindow is long sw) masked = masked.logical_or(keys <= cachePos - sw);
        masked = masked.unsqueeze(0).unsqueeze(0);                                           // [1, 1, q, K]
        if (attentionMask is not null)
            masked = masked.logical_or(attentionMask.narrow(1, 0, kvLen).to(device).eq(0).unsqueeze(1).unsqueeze(2)); // [B, 1, q, K]
        var mask = zeros(masked.shape, dtype, device).masked_fill_(masked, finfo(dtype).min);
        return (mask.MoveToOuterDisposeScope(), false);
    }
}
