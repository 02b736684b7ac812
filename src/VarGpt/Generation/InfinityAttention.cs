using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VarGpt.Generation;

/// <summary>
/// Cosine self-attention of an Infinity block (official basic.py SelfAttention, cos_attn=True, the non-flash layout):
/// q, k L2-normalised (eps 1e-12), q scaled per head by exp(min(scale_mul_1H11, ln 100)), RoPE-2D after the
/// normalisation, softmax scale 1. q has q_bias, k the zero buffer zero_k_bias, v has v_bias.
/// </summary>
public sealed class SelfAttention : nn.Module
{
    // official: torch.log(torch.tensor(100)).item() (float32 log)
    static readonly double MaxScaleMul = MathF.Log(100f);

    public readonly int NumHeads, HeadDim;
#pragma warning disable IDE1006 // official state-dict names
    readonly Linear mat_qkv;
    readonly Parameter q_bias, v_bias, scale_mul_1H11;
    readonly Tensor zero_k_bias;
    readonly Linear proj;
#pragma warning restore IDE1006

    public SelfAttention(int embedDim, int numHeads, Device? device = null, ScalarType? dtype = null) : base("SelfAttention")
    {
        if (embedDim % numHeads != 0) throw new ArgumentException($"embed_dim {embedDim} not divisible by num_heads {numHeads}");
        NumHeads = numHeads; HeadDim = embedDim / numHeads;
        mat_qkv = nn.Linear(embedDim, 3 * embedDim, hasBias: false, device: device, dtype: dtype);
        q_bias = new Parameter(zeros([embedDim], dtype: dtype, device: device));
        v_bias = new Parameter(zeros([embedDim], dtype: dtype, device: device));
        zero_k_bias = zeros([embedDim], dtype: dtype, device: device);
        scale_mul_1H11 = new Parameter(full([1, numHeads, 1, 1], 4.0f, dtype: dtype, device: device).log());
        proj = nn.Linear(embedDim, embedDim, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>
    /// x [B, L, C] → [B, L, C]. (cos, sin) are the rope rows of these L tokens. mask (bool, true = visible) is the
    /// training block-causal mask, null at inference. With a cache, this call's k/v are appended to it first and the
    /// queries attend to everything cached (the official kv_caching path; both CFG rows live in the cache).
    /// </summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, SelfAttnKv? cache)
    {
        using var scope = NewDisposeScope();
        long B = x.shape[0], L = x.shape[1], C = x.shape[2];
        var bias = cat([q_bias, zero_k_bias, v_bias]);
        var qkv = F.linear(x, mat_qkv.weight, bias).view(B, L, 3, NumHeads, HeadDim).permute(2, 0, 3, 1, 4); // 3,B,H,L,hd
        var q = qkv[0]; var k = qkv[1]; var v = qkv[2];
        // SDPA has no scale argument and uses 1/sqrt(hd); fold sqrt(hd) into q so the effective scale is 1 (official scale=1).
        var scaleMul = scale_mul_1H11.clamp_max(MaxScaleMul).exp() * Math.Sqrt(HeadDim);
        q = F.normalize(q, dim: -1, eps: 1e-12).mul(scaleMul.to(q.dtype));
        k = F.normalize(k, dim: -1, eps: 1e-12);
        q = Rope2d.Apply(q, cos, sin);
        k = Rope2d.Apply(k, cos, sin);
        v = v.contiguous();
        if (cache != null) (k, v) = cache.Append(k, v);
        var o = F.scaled_dot_product_attention(q, k, v, attn_mask: mask).transpose(1, 2).reshape(B, L, C);
        return proj.forward(o).MoveToOuterDisposeScope();
    }
}

/// <summary>Per-block self-attention K/V cache over scales (official SelfAttention.cached_k / cached_v), [B, H, L, hd].</summary>
public sealed class SelfAttnKv : IDisposable
{
    public Tensor? K { get; private set; }
    public Tensor? V { get; private set; }
    public long Length => K is null ? 0 : K.shape[2];

    /// <summary>Appends along L and returns the full cached (K, V); the cache owns its tensors (outside any dispose scope).</summary>
    internal (Tensor K, Tensor V) Append(Tensor k, Tensor v)
    {
        Tensor nk = K is null ? k.clone() : cat([K, k], 2);
        Tensor nv = V is null ? v.clone() : cat([V, v], 2);
        K?.Dispose(); V?.Dispose();
        K = nk.DetachFromDisposeScope(); V = nv.DetachFromDisposeScope();
        return (K, V);
    }

    public void Dispose() { K?.Dispose(); V?.Dispose(); K = V = null; }
}

/// <summary>
/// Key/value projection of a cross-attention context for one attention module: k, v [N, H, hd] stored in bfloat16,
/// because the official CrossAttention casts the packed kv to bf16 before the flash kernel. Segment b = rows
/// [CuSeqlens[b], CuSeqlens[b+1]).
/// </summary>
public sealed class ProjectedKv(Tensor k, Tensor v, int[] cuSeqlens) : IDisposable
{
    public Tensor K { get; } = k;
    public Tensor V { get; } = v;
    public int[] CuSeqlens { get; } = cuSeqlens;
    public void Dispose() { K.Dispose(); V.Dispose(); }
}

/// <summary>
/// Shared math of the official CrossAttention (block cross-attention and the attention pool): kv projection with
/// bias cat(zero_k_bias, v_bias), and flash_attn_varlen_kvpacked_func reproduced as float32 softmax attention on
/// bf16-rounded q/k/v with the output rounded to bf16 (what the fixtures did), each batch row attending only to its
/// own context segment.
/// </summary>
public static class CrossAttentionMath
{
    /// <summary>x rounded to bfloat16 (round-to-nearest-even) and cast back to x's dtype: torch x.to(bf16).to(x.dtype).</summary>
    public static Tensor RoundToBf16(Tensor x) =>
        x.dtype == ScalarType.BFloat16 ? x.alias() : x.to(ScalarType.BFloat16).to(x.dtype);

    /// <summary>ctx [N, Ckv] → (k, v) [N, H, hd] in bf16.</summary>
    public static ProjectedKv ProjectKv(Tensor ctx, int[] cuSeqlens, Tensor matKvWeight, Tensor zeroKBias, Tensor vBias, int numHeads, int headDim)
    {
        using var scope = NewDisposeScope();
        long n = ctx.shape[0];
        if (cuSeqlens[^1] != n) throw new ArgumentException($"cross-attention context has {n} rows but cu_seqlens ends at {cuSeqlens[^1]}");
        var kv = F.linear(ctx, matKvWeight, cat([zeroKBias, vBias])).view(n, 2, numHeads, headDim);
        var k = kv.select(1, 0).to(ScalarType.BFloat16).MoveToOuterDisposeScope();
        var v = kv.select(1, 1).to(ScalarType.BFloat16).MoveToOuterDisposeScope();
        return new ProjectedKv(k, v, cuSeqlens);
    }

    /// <summary>
    /// q [B, Lq, H, hd] (any float dtype) against the B segments of kv → [B, Lq, H*hd] in <paramref name="outDtype"/>,
    /// softmax scale 1/sqrt(hd). Computed in float32 on bf16-rounded inputs, result rounded to bf16.
    /// </summary>
    public static Tensor Attend(Tensor q, ProjectedKv kv, ScalarType outDtype)
    {
        using var scope = NewDisposeScope();
        long B = q.shape[0], Lq = q.shape[1], H = q.shape[2], hd = q.shape[3];
        var cu = kv.CuSeqlens;
        if (cu.Length - 1 != B) throw new ArgumentException($"cross-attention: {B} query rows but the context has {cu.Length - 1} segments");
        var qf = q.to(ScalarType.BFloat16).to(ScalarType.Float32);
        var outs = new Tensor[B];
        for (int b = 0; b < B; b++)
        {
            int n = cu[b + 1] - cu[b];
            if (n == 0) { outs[b] = zeros([Lq, H, hd], device: q.device); continue; } // flash returns 0 for an empty segment
            var qb = qf[b].permute(1, 0, 2).unsqueeze(0);                                           // 1,H,Lq,hd
            var kb = kv.K.narrow(0, cu[b], n).to(ScalarType.Float32).permute(1, 0, 2).unsqueeze(0); // 1,H,n,hd
            var vb = kv.V.narrow(0, cu[b], n).to(ScalarType.Float32).permute(1, 0, 2).unsqueeze(0);
            outs[b] = F.scaled_dot_product_attention(qb, kb, vb).squeeze(0).permute(1, 0, 2);      // Lq,H,hd
        }
        var o = stack(outs, 0).reshape(B, Lq, H * hd);
        return o.to(ScalarType.BFloat16).to(outDtype).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Per-block cross-attention (official basic.py CrossAttention, for_attn_pool=False): q = mat_q(x), k/v from the
/// packed context, no cos-attn, scale 1/sqrt(hd), computed in bf16 (see <see cref="CrossAttentionMath"/>).
/// </summary>
public sealed class CrossAttention : nn.Module
{
    public readonly int NumHeads, HeadDim;
#pragma warning disable IDE1006
    readonly Linear mat_q, mat_kv, proj;
    readonly Parameter v_bias;
    readonly Tensor zero_k_bias;
#pragma warning restore IDE1006

    public CrossAttention(int embedDim, int kvDim, int numHeads, Device? device = null, ScalarType? dtype = null) : base("CrossAttention")
    {
        NumHeads = numHeads; HeadDim = embedDim / numHeads;
        mat_q = nn.Linear(embedDim, embedDim, device: device, dtype: dtype);
        mat_kv = nn.Linear(kvDim, 2 * embedDim, hasBias: false, device: device, dtype: dtype);
        v_bias = new Parameter(zeros([embedDim], dtype: dtype, device: device));
        zero_k_bias = zeros([embedDim], dtype: dtype, device: device);
        proj = nn.Linear(embedDim, embedDim, device: device, dtype: dtype);
        RegisterComponents();
    }

    public ProjectedKv ProjectKv(CrossAttnKv ctx) =>
        CrossAttentionMath.ProjectKv(ctx.KvCompact, ctx.CuSeqlens, mat_kv.weight!, zero_k_bias, v_bias, NumHeads, HeadDim);

    /// <summary>x [B, L, C] (already ca_norm'ed) → [B, L, C]; batch row b attends to context segment b.</summary>
    public Tensor forward(Tensor x, ProjectedKv kv)
    {
        using var scope = NewDisposeScope();
        long B = x.shape[0], L = x.shape[1];
        var q = mat_q.forward(x).view(B, L, NumHeads, HeadDim);
        var o = CrossAttentionMath.Attend(q, kv, x.dtype);
        return proj.forward(o).MoveToOuterDisposeScope();
    }
}

/// <summary>The CrossAttention(for_attn_pool=True) inside TextAttentivePool: a learned query mat_q [1, H, hd].</summary>
public sealed class PoolCrossAttention : nn.Module
{
    public readonly int NumHeads, HeadDim;
#pragma warning disable IDE1006
    readonly Parameter mat_q, v_bias;
    readonly Linear mat_kv, proj;
    readonly Tensor zero_k_bias;
#pragma warning restore IDE1006

    public PoolCrossAttention(int embedDim, int kvDim, int numHeads, Device? device = null, ScalarType? dtype = null) : base("CrossAttention")
    {
        NumHeads = numHeads; HeadDim = embedDim / numHeads;
        mat_q = new Parameter(Infinity.TruncNormal([1, numHeads, HeadDim], Math.Sqrt(1.0 / embedDim / 3), device, dtype));
        mat_kv = nn.Linear(kvDim, 2 * embedDim, hasBias: false, device: device, dtype: dtype);
        v_bias = new Parameter(zeros([embedDim], dtype: dtype, device: device));
        zero_k_bias = zeros([embedDim], dtype: dtype, device: device);
        proj = nn.Linear(embedDim, embedDim, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>Packed text rows [N, Ckv] with B segments → pooled [B, C].</summary>
    public Tensor forward(CrossAttnKv text)
    {
        using var scope = NewDisposeScope();
        int B = text.Batch;
        using var kv = CrossAttentionMath.ProjectKv(text.KvCompact, text.CuSeqlens, mat_kv.weight!, zero_k_bias, v_bias, NumHeads, HeadDim);
        // official: mat_q.repeat(B, 1, 1).to(kv dtype), one query per sample
        var q = mat_q.to(text.KvCompact.dtype).expand(B, NumHeads, HeadDim).unsqueeze(1); // B,1,H,hd
        var o = CrossAttentionMath.Attend(q, kv, text.KvCompact.dtype);                  // B,1,C
        return proj.forward(o).squeeze(1).MoveToOuterDisposeScope();
    }
}

/// <summary>Official infinity.py TextAttentivePool: pools the (sos) text rows of each sample into cond_BD.</summary>
public sealed class TextAttentivePool : nn.Module
{
#pragma warning disable IDE1006
    readonly PoolCrossAttention ca;
#pragma warning restore IDE1006

    public TextAttentivePool(int ct5, int d, int headDim, Device? device = null, ScalarType? dtype = null) : base("TextAttentivePool")
    {
        if (ct5 % headDim != 0 || ct5 / headDim == 0)
            throw new ArgumentException($"TextAttentivePool: text_channels {ct5} must be a positive multiple of the pool head width {headDim}");
        ca = new PoolCrossAttention(d, ct5, ct5 / headDim, device, dtype);
        RegisterComponents();
    }

    public Tensor forward(CrossAttnKv text) => ca.forward(text);
}
