using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VarGpt.Generation;

/// <summary>Official basic.py FFN (fused_mlp off): fc2(gelu_tanh(fc1(x))).</summary>
public sealed class FFN : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    readonly Linear fc1, fc2;
#pragma warning restore IDE1006

    public FFN(int inFeatures, int hiddenFeatures, Device? device = null, ScalarType? dtype = null) : base("FFN")
    {
        fc1 = nn.Linear(inFeatures, hiddenFeatures, device: device, dtype: dtype);
        fc2 = nn.Linear(hiddenFeatures, inFeatures, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = fc1.forward(x);
        using var a = F.gelu(h, GELU.Approximate.tanh);
        return fc2.forward(a);
    }
}

/// <summary>
/// One Infinity block as VARGPT runs it (official basic.py CrossAttnBlock, shared_aln=True, the fused-norm path that
/// passes scale_ind to the self-attention):
/// <code>
/// gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada_gss + ada).unbind(2)
/// x += drop_path(SA(LN(x)(1+scale1)+shift1) * gamma1)
/// x += CA(ca_norm(x), context)                       (ca_gamma = 1)
/// x += drop_path(FFN(LN(x)(1+scale2)+shift2) * gamma2)
/// </code>
/// LN is the non-affine LayerNorm computed in float32 and cast back (fused_ada_layer_norm); ca_norm is affine.
/// </summary>
public sealed class CrossAttnBlock : nn.Module
{
    public readonly int C;
    readonly double _eps;
    /// <summary>Drop-path probability of this block (linspace(0, drop_path_rate, depth)); applied only in training.</summary>
    public double DropPathRate { get; }
#pragma warning disable IDE1006
    readonly Parameter ada_gss;
    readonly SelfAttention sa;
    readonly CrossAttention ca;
    readonly FFN ffn;
    readonly LayerNorm ca_norm;
#pragma warning restore IDE1006

    public CrossAttnBlock(int embedDim, int kvDim, int numHeads, int ffnHidden, double normEps, double dropPath, Device? device = null, ScalarType? dtype = null) : base("CrossAttnBlock")
    {
        C = embedDim; _eps = normEps; DropPathRate = dropPath;
        ada_gss = new Parameter(randn([1, 1, 6, embedDim], dtype: dtype, device: device) / Math.Sqrt(embedDim));
        sa = new SelfAttention(embedDim, numHeads, device, dtype);
        ca = new CrossAttention(embedDim, kvDim, numHeads, device, dtype);
        ffn = new FFN(embedDim, ffnHidden, device, dtype);
        ca_norm = nn.LayerNorm(embedDim, eps: normEps, device: device, dtype: dtype);
        RegisterComponents();
    }

    public ProjectedKv ProjectContext(CrossAttnKv ctx) => ca.ProjectKv(ctx);

    /// <summary>
    /// x [B, L, C]; ada [B, 1, 6, C] (shared_ada_lin(cond)); rope rows (cos, sin) [L, hd/2]; mask bool [1,1,L,L] or null;
    /// context K/V of this block's cross-attention; optional self-attention cache.
    /// </summary>
    public Tensor forward(Tensor x, Tensor ada, Tensor cos, Tensor sin, Tensor? mask, ProjectedKv context, SelfAttnKv? cache)
    {
        using var scope = NewDisposeScope();
        var g = (ada_gss + ada).unbind(2); // 6 x [B, 1, C]
        Tensor gamma1 = g[0], gamma2 = g[1], scale1 = g[2], scale2 = g[3], shift1 = g[4], shift2 = g[5];
        var xSa = sa.forward(AdaLayerNorm(x, scale1, shift1, _eps), cos, sin, mask, cache);
        x = x + DropPath(xSa.mul(gamma1));
        x = x + ca.forward(ca_norm.forward(x), context);
        x = x + DropPath(ffn.forward(AdaLayerNorm(x, scale2, shift2, _eps)).mul(gamma2));
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>timm DropPath (scale_by_keep): zero a whole sample's branch with probability p, rescale the rest.</summary>
    Tensor DropPath(Tensor branch)
    {
        if (!training || DropPathRate <= 0) return branch;
        double keep = 1 - DropPathRate;
        var shape = new long[branch.dim()];
        Array.Fill(shape, 1L); shape[0] = branch.shape[0];
        using var m = empty(shape, dtype: branch.dtype, device: branch.device).bernoulli_(keep).div_(keep);
        return branch.mul(m);
    }

    /// <summary>Official fused_op.fused_ada_layer_norm: LN_fp32(x) (no affine) cast back, then * (1 + scale) + shift.</summary>
    public static Tensor AdaLayerNorm(Tensor x, Tensor scale, Tensor shift, double eps)
    {
        using var scope = NewDisposeScope();
        var n = F.layer_norm(x.to(ScalarType.Float32), [x.shape[^1]], eps: eps).to(x.dtype);
        return n.mul(scale + 1).add_(shift).MoveToOuterDisposeScope();
    }
}

/// <summary>Official infinity.py MultipleLayers: one block chunk, its blocks in the ModuleList "module".</summary>
public sealed class MultipleLayers : nn.Module
{
#pragma warning disable IDE1006
    readonly ModuleList<CrossAttnBlock> module;
#pragma warning restore IDE1006

    public MultipleLayers(IEnumerable<CrossAttnBlock> blocks) : base("MultipleLayers")
    {
        module = nn.ModuleList(blocks.ToArray());
        RegisterComponents();
    }

    public IReadOnlyList<CrossAttnBlock> Blocks => module.ToList();
}

/// <summary>Official basic.py AdaLNBeforeHead: (scale, shift) = ada_lin(cond) [SiLU, Linear(D, 2C)]; LN(x)(1+scale)+shift.</summary>
public sealed class AdaLNBeforeHead : nn.Module
{
    readonly int _c; readonly double _eps;
#pragma warning disable IDE1006
    readonly Sequential ada_lin;
#pragma warning restore IDE1006

    public AdaLNBeforeHead(int c, int d, double eps, Device? device = null, ScalarType? dtype = null) : base("AdaLNBeforeHead")
    {
        _c = c; _eps = eps;
        ada_lin = nn.Sequential(("0", nn.SiLU()), ("1", nn.Linear(d, 2 * c, device: device, dtype: dtype)));
        RegisterComponents();
    }

    /// <summary>x [B, L, C], cond [B, D] → [B, L, C].</summary>
    public Tensor forward(Tensor x, Tensor cond)
    {
        using var scope = NewDisposeScope();
        var ss = ada_lin.forward(cond).view(-1, 1, 2, _c).unbind(2);
        return CrossAttnBlock.AdaLayerNorm(x, ss[0], ss[1], _eps).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Official basic.py FastRMSNorm (affine) with the pure-torch rms_norm_impl: (x * rsqrt(mean(x²) + eps)) * weight,
/// computed in the input dtype (promoted by the weight), then cast back to the input dtype.
/// </summary>
public sealed class FastRMSNorm : nn.Module<Tensor, Tensor>
{
    readonly double _eps;
#pragma warning disable IDE1006
    readonly Parameter weight;
#pragma warning restore IDE1006

    public FastRMSNorm(int c, double eps, Device? device = null, ScalarType? dtype = null) : base("FastRMSNorm")
    {
        _eps = eps;
        weight = new Parameter(ones([c], dtype: dtype, device: device));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var y = (x * x.pow(2).mean([-1], keepdim: true).add_(_eps).rsqrt()) * weight;
        return y.to(x.dtype).MoveToOuterDisposeScope();
    }
}
