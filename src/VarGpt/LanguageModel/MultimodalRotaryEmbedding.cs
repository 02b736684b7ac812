using static TorchSharp.torch;

namespace VarGpt.LanguageModel;

/// <summary>
/// M-RoPE of the language model (official Qwen2VLRotaryEmbedding + apply_multimodal_rotary_pos_emb).
/// inv_freq = 1 / theta^(arange(0, d, 2) / d) in float32; angles, cos and sin in float32, then cast to the
/// activation dtype. mrope_section splits the head dims into chunks (s + s); chunk i takes its positions from row
/// i mod 3 (temporal, height, width). Rotation is rotate-half.
/// </summary>
public static class MultimodalRotaryEmbedding
{
    /// <summary>
    /// cos/sin tables with the sections already mixed: [B, 1, L, head_dim] in <paramref name="dtype"/>, from
    /// position ids [3, B, L]. Selecting each frequency's position row before the float32 multiply gives the same
    /// values as the official compute-three-tables-then-split, at a third of the cost.
    /// </summary>
    public static (Tensor Cos, Tensor Sin) CosSin(Tensor positionIds, int headDim, double theta, int[] mropeSection, ScalarType dtype)
    {
        if (positionIds.dim() != 3 || positionIds.shape[0] != 3)
            throw new ArgumentException($"position_ids must be [3, B, L], got [{string.Join(",", positionIds.shape)}]");
        if (mropeSection.Sum() * 2 != headDim)
            throw new ArgumentException($"mrope_section [{string.Join(",", mropeSection)}] must sum to head_dim/2 = {headDim / 2}");
        using var scope = NewDisposeScope();
        var device = positionIds.device;
        var invFreq = InvFreq(headDim, theta, device);                                   // [D/2] float32

        // row of each frequency: the first half of mrope_section*2 covers dims 0..D/2 with rows 0,1,2,... (i mod 3).
        // Built on the device (no host-to-device copy in the decoding loop).
        var j = arange(headDim / 2, ScalarType.Int64, device);
        var section = zeros_like(j);
        for (int s = 1, start = mropeSection[0]; s < mropeSection.Length; start += mropeSection[s++])
            section = section + j.ge(start).to(ScalarType.Int64);
        var rows = section.remainder(3);
        var pos = positionIds.index_select(0, rows).permute(1, 2, 0).to(ScalarType.Float32); // [B, L, D/2]
        var freqs = pos * invFreq;
        var emb = cat([freqs, freqs], -1);                                                  // [B, L, D]
        var cos = emb.cos().to(dtype).unsqueeze(1);
        var sin = emb.sin().to(dtype).unsqueeze(1);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    /// <summary>1 / theta^(arange(0, d, 2) / d) evaluated in float32 as transformers' default rope init does.</summary>
    public static Tensor InvFreq(int headDim, double theta, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var exps = arange(0, headDim, 2, ScalarType.Int64, device).to(ScalarType.Float32) / (float)headDim;
        var baseT = full(1, (float)theta, ScalarType.Float32, device);
        return pow(baseT, exps).reciprocal().MoveToOuterDisposeScope();
    }

    /// <summary>x * cos + rotate_half(x) * sin with x [B, H, L, D] and cos/sin [B, 1, L, D].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        return (x * cos + RotateHalf(x) * sin).MoveToOuterDisposeScope();
    }

    /// <summary>cat(-x2, x1) over the last dim (official rotate_half).</summary>
    public static Tensor RotateHalf(Tensor x)
    {
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        return cat([x2.neg(), x1], -1).MoveToOuterDisposeScope();
    }
}
