using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// The multi-scale residual bookkeeping shared by the generation loop (official autoregressive_infer_cfg), the training
/// targets (BitwiseSelfCorrection.flip_requant) and the VAE's own ladder (MultiScaleBSQ): bits -&gt; codes, the running
/// sum of codes at the final latent size, and the next scale's input. All tensors are 5-D [B,d,1,h,w] fp32, and every
/// resize is F.interpolate with PyTorch defaults on 5-D tensors (align_corners false, no antialias; T stays 1, so the
/// trilinear resize is bilinear in h and w): up = 'trilinear' (z_interplote_up), down = 'area' (z_interplote_down).
/// </summary>
public static class MultiScaleResidual
{
    /// <summary>Official MultiScaleBSQ.z_interplote_up.</summary>
    public const InterpolationMode Up = InterpolationMode.Trilinear;
    /// <summary>Official MultiScaleBSQ.z_interplote_down (adaptive average pooling).</summary>
    public const InterpolationMode Down = InterpolationMode.Area;

    /// <summary>F.interpolate(x [B,d,T,h,w], size=(t,h,w), mode) with the official defaults.</summary>
    public static Tensor Resize(Tensor x, Scale size, InterpolationMode mode)
    {
        if (x.dim() != 5) throw new ArgumentException($"multi-scale resize expects [B,d,T,h,w], got [{string.Join(",", x.shape)}]");
        return nn.functional.interpolate(x, [size.T, size.H, size.W], mode: mode,
            align_corners: mode == InterpolationMode.Trilinear ? false : null);
    }

    /// <summary>Codes of sampled bits: [B,1,h,w,d] (0/1, any dtype) -&gt; [B,d,1,h,w] fp32 (official lfq.indices_to_codes(bits, 'bit_label')).</summary>
    public static Tensor CodesFromBits(Tensor bits) => BSQ.IndicesToCodes(bits);

    /// <summary>
    /// Adds one scale's codes [B,d,1,h,w] to the running sum at the final latent size: summed + trilinear(codes -&gt; final),
    /// or summed + codes when the codes already have the final size (the generation loop adds the last scale without
    /// resizing; a same-size trilinear resize is the identity, so both official rules agree). <paramref name="summed"/>
    /// null means the sum is still 0. Returns a new tensor (fp32).
    /// </summary>
    public static Tensor Accumulate(Tensor? summed, Tensor codes, Scale final)
    {
        bool same = codes.shape[2] == final.T && codes.shape[3] == final.H && codes.shape[4] == final.W;
        if (summed is null) return same ? codes.to(ScalarType.Float32, copy: true) : Resize(codes, final, Up).to(ScalarType.Float32);
        if (same) return summed + codes;
        using var up = Resize(codes, final, Up);
        return summed + up;
    }

    /// <summary>Next scale's input = trilinear(summed [B,d,1,H,W] -&gt; next) [B,d,1,h,w] (no antialias, from the full-size sum).</summary>
    public static Tensor NextScaleInput(Tensor summed, Scale next) => Resize(summed, next, Up);

    /// <summary>Channel-first map [B,d,1,h,w] (or [B,d,h,w]) -&gt; tokens [B,h*w,d] in row-major (h, w) order, as word_embed consumes them.</summary>
    public static Tensor ToTokens(Tensor x)
    {
        using var flat = x.reshape(x.shape[0], x.shape[1], -1);
        return flat.permute(0, 2, 1);
    }
}
