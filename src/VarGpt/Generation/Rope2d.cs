using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// 2-D rotary embedding of Infinity's self-attention, the "star style" variant VARGPT uses
/// (official basic.py precompute_rope2d_freqs_grid with rope2d_normalized_by_hw=2, and apply_rotary_emb).
/// Positions of every schedule of a template come from that template's '1M' schedule: cell (i, j) of scale (h, w)
/// reads grid row round(i*H1/h), column round(j*W1/w) with (H1, W1) the last '1M' scale, torch's half-to-even round.
/// The table covers all 13 '1M' scales back to back, zero-padded to a multiple of pad_to_multiplier; scale si of any
/// pn reads rows [sum of earlier scale sizes, + h*w). Channel pairs are ADJACENT (2p, 2p+1), not rotate-half.
/// </summary>
public static class Rope2d
{
    /// <summary>Side of the angle grid (official max_height = max_width = 2048 // 16).</summary>
    public const int GridSize = 2048 / 16;
    public const double Base = 10000.0;

    /// <summary>
    /// Grid (row, col) of each cell of a (h, w) scale, row-major, normalised to the final (H1, W1) scale.
    /// Mirrors torch: arange(h) * (H1 / h) in float32, then .round() (half-to-even).
    /// </summary>
    public static (int Row, int Col)[] Positions(int h, int w, int finalH, int finalW)
    {
        float rs = (float)((double)finalH / h), cs = (float)((double)finalW / w);
        var pos = new (int, int)[h * w];
        for (int i = 0; i < h; i++)
        {
            int r = (int)MathF.Round(i * rs, MidpointRounding.ToEven);
            for (int j = 0; j < w; j++)
                pos[i * w + j] = (r, (int)MathF.Round(j * cs, MidpointRounding.ToEven));
        }
        return pos;
    }

    /// <summary>
    /// (cos, sin), each [Lpad, headDim/2] float32, for the '1M' schedule of <paramref name="template"/>, Lpad = total
    /// '1M' tokens rounded up to <paramref name="padToMultiplier"/> (padded rows are zero, as in the official table).
    /// Pair p &lt; headDim/4 rotates by row·f_p, the others by col·f_(p-headDim/4); f_k = 1/10000^(2k/(headDim/2)).
    /// </summary>
    public static (Tensor Cos, Tensor Sin) Table(double template, int headDim, int padToMultiplier, Device? device = null)
    {
        if (headDim % 4 != 0) throw new ArgumentException($"RoPE-2D needs head_dim divisible by 4, got {headDim}");
        var full = ScaleSchedules.Official.Get(template, "1M");
        var (h1, w1) = full.Latent;
        if (h1 > GridSize || w1 > GridSize) throw new ArgumentException($"'1M' final scale {h1}x{w1} exceeds the {GridSize}x{GridSize} rope grid");
        var rows = new List<long>(); var cols = new List<long>();
        foreach (var s in full.Scales)
            foreach (var (r, c) in Positions(s.H, s.W, h1, w1)) { rows.Add(r); cols.Add(c); }
        int half = headDim / 2, n = rows.Count;
        int pad = padToMultiplier > 1 && n % padToMultiplier != 0 ? padToMultiplier - n % padToMultiplier : 0;

        using var scope = NewDisposeScope();
        // inv_freq = 1 / base^(arange(0, half, 2) / half), float32 as in the official code
        var expo = arange(0, half, 2, dtype: ScalarType.Int64).to(ScalarType.Float32) / half;
        var invFreq = 1.0f / full_like(expo, Base).pow(expo);
        var t = arange(GridSize, dtype: ScalarType.Float32);
        var freqs = outer(t, invFreq);                                         // [128, half/2]
        var angles = cat([freqs.index_select(0, tensor(rows.ToArray())),
                          freqs.index_select(0, tensor(cols.ToArray()))], 1); // [n, half]
        var cos = angles.cos(); var sin = angles.sin();
        if (pad > 0)
        {
            cos = nn.functional.pad(cos, [0, 0, 0, pad]);
            sin = nn.functional.pad(sin, [0, 0, 0, pad]);
        }
        device ??= CPU;
        return (cos.to(device).MoveToOuterDisposeScope(), sin.to(device).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Rotates adjacent channel pairs of x [B, H, L, hd] by the angles (cos, sin) [L, hd/2]; computed in float32
    /// (official: autocast off) and returned in x's dtype.
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        var shape = x.shape;
        var xf = x.to(ScalarType.Float32).reshape([.. shape[..^1], shape[^1] / 2, 2]);
        var x0 = xf.select(-1, 0); var x1 = xf.select(-1, 1);
        var rot = stack([cos * x0 - sin * x1, sin * x0 + cos * x1], -1).reshape(shape);
        return rot.to(x.dtype).MoveToOuterDisposeScope();
    }
}
