using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// Binary spherical quantizer (official multiscale_bsq.py BSQ with new_quant=True, one codebook, no projections):
/// per position u = z/||z||_2 over the d channels, bit_k = [u_k &gt; 0] (exact zero gives 0), value +-1/sqrt(d).
/// The only state is the persistent <c>mask</c> buffer (I64 2^(d-1-k), MSB first) that the checkpoint carries; integer
/// labels built from it are never used by VARGPT.
/// </summary>
public sealed class BSQ : nn.Module
{
    public int Dim { get; }
    /// <summary>Official codebook_scale = 1/np.sqrt(d) (a double, rounded to fp32 where it meets a tensor).</summary>
    public double CodebookScale => 1.0 / Math.Sqrt(Dim);

    public BSQ(int dim, Device? device = null) : base(nameof(BSQ))
    {
        if (dim < 1 || dim > 62) throw new ArgumentException($"BSQ codebook_dim must be in 1..62, got {dim}");
        Dim = dim;
        register_buffer("mask", pow(tensor(2L, device: device), arange(dim - 1, -1, -1, ScalarType.Int64, device)));
    }

    /// <summary>
    /// Official BSQ.forward on a channel-first map z [B,d,T,h,w] (any float dtype; quantisation runs in fp32).
    /// Returns quantized [B,d,T,h,w] fp32 (= z_n + (zhat - z_n), zhat = +-1/sqrt(d), equal to zhat up to one ulp) and
    /// bits [B,T,h,w,d] I64 (official int32; VARGPT casts labels to long).
    /// </summary>
    public (Tensor Quantized, Tensor Bits) forward(Tensor z)
    {
        if (z.dim() != 5 || z.shape[1] != Dim)
            throw new ArgumentException($"BSQ expects [B,{Dim},T,h,w], got [{string.Join(",", z.shape)}]");
        using var scope = NewDisposeScope();
        // 'b d ... -> b ... d'; l2norm over d (F.normalize, eps 1e-12). The official normalises before its fp32 cast,
        // but VARGPT always feeds fp32 (raw features are cast to fp32), so casting first changes nothing there.
        var x = z.to(ScalarType.Float32).movedim([1], [-1]);
        x = nn.functional.normalize(x, p: 2, dim: -1, eps: 1e-12);
        // quantize_new: zhat = where(x > 0, 1, -1) * (1/sqrt(d)); straight-through value x + (zhat - x)
        float q = (float)(1.0 / Math.Sqrt(Dim));
        var zhat = where(x.gt(0), tensor(q, device: x.device), tensor(-q, device: x.device));
        var quantized = x + (zhat - x).detach();
        var bits = quantized.gt(0).to(ScalarType.Int64);
        return (quantized.movedim([-1], [1]).contiguous().MoveToOuterDisposeScope(), bits.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Official BSQ.indices_to_codes(bits, 'bit_label'): bits [B, ..., d] (0/1, any dtype) -> codes [B, d, ...] fp32 with
    /// code = bit*2s - s (s = 1/sqrt(d)), then L2-normalised over d (a no-op up to rounding). For generation bits are
    /// [B,1,h,w,d] and codes [B,d,1,h,w].
    /// </summary>
    public static Tensor IndicesToCodes(Tensor bits)
    {
        if (bits.dim() < 3) throw new ArgumentException($"IndicesToCodes expects bits [B,...,d] with at least 3 dims, got [{string.Join(",", bits.shape)}]");
        using var scope = NewDisposeScope();
        double s = 1.0 / Math.Sqrt(bits.shape[^1]);
        // int tensor * python float promotes to fp32 and the scalar is rounded to fp32: (bits*s)*2 - s
        var codes = bits.to(ScalarType.Float32).mul(s).mul(2).sub(s);
        codes = nn.functional.normalize(codes, p: 2, dim: -1, eps: 1e-12);
        return codes.movedim([-1], [1]).contiguous().MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Multi-scale residual BSQ (official multiscale_bsq.py MultiScaleBSQ, schedule_mode 'dynamic', no projections, no LN,
/// no stochastic depth or flips). Interpolation: residual -&gt; scale by 'area', scale -&gt; full by 'trilinear'.
/// </summary>
public sealed class MultiScaleBSQ : nn.Module
{
    public readonly BSQ lfq;

    public MultiScaleBSQ(int dim, Device? device = null) : base(nameof(MultiScaleBSQ))
    {
        lfq = new BSQ(dim, device);
        RegisterComponents();
    }

    /// <summary>
    /// Result of the encode() ladder: Z = quantized sum (the shape of the input: [B,d,h,w] for 4-D features),
    /// Bits[k] [B,1,h_k,w_k,d] I64, VarInputs[k] = area-downsampled running sum at scale k+1 ([B,d,1,h,w]; VARGPT does not use it).
    /// </summary>
    public sealed record Output(Tensor Z, IReadOnlyList<Tensor> Bits, IReadOnlyList<Tensor> VarInputs) : IDisposable
    {
        public void Dispose()
        {
            Z.Dispose();
            foreach (var t in Bits) t.Dispose();
            foreach (var t in VarInputs) t.Dispose();
        }
    }

    /// <summary>
    /// Official MultiScaleBSQ.forward over an explicit schedule: residual = x; for each scale, area-resize the residual
    /// (unless the scale is the full size), quantize, trilinear-resize back, subtract from the residual and add to the sum.
    /// x is [B,d,h,w] or [B,d,T,h,w]; runs in fp32 without gradient.
    /// </summary>
    public Output forward(Tensor x, IReadOnlyList<Scale> schedule)
    {
        if (schedule.Count == 0) throw new ArgumentException("MultiScaleBSQ needs a non-empty scale schedule");
        bool image = x.dim() == 4;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var residual = (image ? x.unsqueeze(2) : x).to(ScalarType.Float32);
        var full = new Scale((int)residual.shape[2], (int)residual.shape[3], (int)residual.shape[4]);
        Tensor? sum = null;
        var bits = new List<Tensor>();
        var varInputs = new List<Tensor>();
        for (int si = 0; si < schedule.Count; si++)
        {
            var s = schedule[si];
            var r = s == full ? residual : MultiScaleResidual.Resize(residual, s, MultiScaleResidual.Down);
            var (quantized, b) = lfq.forward(r);
            if (s != full) quantized = MultiScaleResidual.Resize(quantized, full, MultiScaleResidual.Up);
            residual = residual - quantized;
            sum = sum is null ? quantized : sum + quantized;
            bits.Add(b);
            if (si != schedule.Count - 1)
                varInputs.Add(MultiScaleResidual.Resize(sum, schedule[si + 1], MultiScaleResidual.Down));
        }
        var z = image ? sum!.squeeze(2) : sum!;
        var output = new Output(z.MoveToOuterDisposeScope(),
            bits.Select(t => t.MoveToOuterDisposeScope()).ToArray(),
            varInputs.Select(t => t.MoveToOuterDisposeScope()).ToArray());
        return output;
    }
}
