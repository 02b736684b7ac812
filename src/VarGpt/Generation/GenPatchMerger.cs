using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace VarGpt.Generation;

/// <summary>
/// VARGPT's glue projector (official modeling_vargpt_qwen2_vl.py GenPatchMerger): Linear(in, in) → exact-erf GELU →
/// Linear(in, out). image_gen_projector maps Infinity width C → LLM width H, image_gen_projector_out maps H → C.
/// ln_q (LayerNorm(in), eps 1e-6) is in the checkpoint but the official forward never applies it; we load it and
/// likewise skip it.
/// </summary>
public sealed class GenPatchMerger : nn.Module<Tensor, Tensor>
{
    /// <summary>Input width (official hidden_size = image_gen_dim) and output width (official dim).</summary>
    public readonly int InDim, OutDim;
#pragma warning disable IDE1006
    readonly LayerNorm ln_q;
    readonly Sequential mlp;
#pragma warning restore IDE1006

    /// <param name="dim">output width (official "dim")</param>
    /// <param name="imageGenDim">input width (official "image_gen_dim")</param>
    /// <param name="device">null = the current default, as torch's factory kwargs</param>
    /// <param name="dtype">null = the current default</param>
    public GenPatchMerger(int dim, int imageGenDim, Device? device = null, ScalarType? dtype = null) : base("GenPatchMerger")
    {
        InDim = imageGenDim; OutDim = dim;
        ln_q = nn.LayerNorm(imageGenDim, eps: 1e-6, device: device, dtype: dtype);
        mlp = nn.Sequential(("0", nn.Linear(imageGenDim, imageGenDim, device: device, dtype: dtype)), ("1", nn.GELU()),
            ("2", nn.Linear(imageGenDim, dim, device: device, dtype: dtype)));
        RegisterComponents();
    }

    /// <summary>x [..., in] → [..., out]. (The official forward returns the flattened [-1, out]; callers reshape back.)</summary>
    public override Tensor forward(Tensor x)
    {
        if (x.shape[^1] != InDim) throw new ArgumentException($"GenPatchMerger expects last dim {InDim}, got [{string.Join(",", x.shape)}]");
        long[] outShape = [.. x.shape[..^1], OutDim];
        using var flat = x.reshape(-1, InDim);
        using var y = mlp.forward(flat);
        return y.view(outShape);
    }
}
