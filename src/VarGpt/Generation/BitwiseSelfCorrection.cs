using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// Teacher-forcing inputs and bit labels for training the visual decoder with bitwise self-correction (official
/// infinity/models/bitwise_self_correction.py BitwiseSelfCorrection.flip_requant, called by
/// modeling_vargpt_qwen2_vl.py get_vae_gt_xin_v1_1).
/// <para>
/// Noise: for every scale index &lt; <see cref="NoiseApplyLayers"/> a flip probability p is drawn uniformly from
/// {0, 0.01, ..., floor(100*strength)/100} (official np.random.randint(0, 100*strength+1)*0.01, one draw per scale shared
/// by the batch), each bit is flipped independently when U[0,1) &lt; p, and the flipped bits are re-quantised and
/// accumulated; labels are always the clean bits of the (corrupted) residual. We draw p from a seeded System.Random and
/// the mask from a seeded CPU torch.Generator, so runs are reproducible but cannot match numpy/torch bitwise.
/// With <see cref="NoiseApplyStrength"/> = 0 every p is 0, no random numbers are drawn and the result is deterministic.
/// </para>
/// </summary>
public sealed class BitwiseSelfCorrection : IDisposable
{
    /// <summary>Scales with index below this get noise and requantisation (official 13, i.e. all scales of VARGPT).</summary>
    public int NoiseApplyLayers { get; init; } = 13;
    /// <summary>Re-quantise the (possibly flipped) bits through indices_to_codes (official 1).</summary>
    public bool NoiseApplyRequant { get; init; } = true;
    /// <summary>Maximum flip probability (official 0.3). 0 turns the noise off.</summary>
    public double NoiseApplyStrength { get; init; } = 0.3;

    readonly Random _rng;
    readonly Generator _gen;

    public BitwiseSelfCorrection(long seed = 0)
    {
        _rng = new Random(unchecked((int)seed ^ (int)(seed >> 32)));
        _gen = new Generator((ulong)seed, CPU);
    }

    public void Dispose() => _gen.Dispose();

    /// <summary>Teacher-forcing data of one batch.</summary>
    /// <param name="XBLCWoPrefix">[B, L - first scale tokens, d] fp32: the next-scale inputs of scales 1..n-1 (training_scales cut applied).</param>
    /// <param name="GtBL">[B, L, d] I64: clean bit labels of every scale, concatenated.</param>
    /// <param name="GtBits">per scale [B, h*w, d] I64 (the parts of GtBL).</param>
    /// <param name="FlipProbabilities">the p drawn for each scale (0 where no noise was applied).</param>
    public sealed record Targets(Tensor XBLCWoPrefix, Tensor GtBL, IReadOnlyList<Tensor> GtBits, IReadOnlyList<double> FlipProbabilities) : IDisposable
    {
        public void Dispose()
        {
            XBLCWoPrefix.Dispose();
            GtBL.Dispose();
            foreach (var t in GtBits) t.Dispose();
        }
    }

    /// <summary>The p of one scale: randint(0, int(100*strength + 1)) * 0.01 (numpy's high is exclusive).</summary>
    internal double DrawFlipProbability()
    {
        if (NoiseApplyStrength <= 0) return 0;
        int high = (int)(100 * NoiseApplyStrength + 1);
        return _rng.Next(0, high) * 0.01;
    }

    /// <summary>Flips each bit independently with probability p (official: torch.rand(*bits.shape) on CPU, then .to(device), strict '&lt;').</summary>
    internal Tensor FlipBits(Tensor bits, double p)
    {
        using var u = rand(bits.shape, ScalarType.Float32, generator: _gen);
        using var mask = u.lt(p).to(bits.device);
        using var flipped = 1 - bits;
        return where(mask, flipped, bits);
    }

    /// <summary>
    /// Official flip_requant on raw encoder features [B,d,h,w] (or [B,d,1,h,w]) over <paramref name="schedule"/> (t = 1):
    /// cum = 0; per scale: r = f - cum, area-downsampled unless last; bits = BSQ(r) (the label); bits' = bits with
    /// random flips; q = codes(bits') (if requant) else the BSQ value; cum += trilinear(q -&gt; final);
    /// next input = trilinear(cum -&gt; next scale). Runs in fp32 without gradient on the features' device.
    /// </summary>
    public Targets FlipRequant(BSQ lfq, IReadOnlyList<Scale> schedule, Tensor rawFeatures, int trainingScales = 100)
    {
        if (schedule.Count == 0) throw new ArgumentException("FlipRequant needs a non-empty scale schedule");
        if (rawFeatures.dim() is not (4 or 5) || rawFeatures.shape[1] != lfq.Dim)
            throw new ArgumentException($"FlipRequant expects raw features [B,{lfq.Dim},h,w], got [{string.Join(",", rawFeatures.shape)}]");
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        long B = rawFeatures.shape[0], d = lfq.Dim;
        var codesOut = (rawFeatures.dim() == 4 ? rawFeatures.unsqueeze(2) : rawFeatures).to(ScalarType.Float32);
        var final = schedule[^1];
        if (codesOut.shape[2] != final.T || codesOut.shape[3] != final.H || codesOut.shape[4] != final.W)
            throw new ArgumentException($"FlipRequant: the last scale ({final.H}x{final.W}) must equal the latent size of the features [{string.Join(",", rawFeatures.shape)}]; pick the pn that matches the image resolution");
        Tensor? cum = null;
        var gt = new List<Tensor>();
        var inputs = new List<Tensor>();
        var probs = new List<double>();
        for (int si = 0; si < schedule.Count; si++)
        {
            var residual = cum is null ? codesOut : codesOut - cum;
            if (si != schedule.Count - 1) residual = MultiScaleResidual.Resize(residual, schedule[si], MultiScaleResidual.Down);
            var (quantized, bits) = lfq.forward(residual); // [B,d,1,h,w], [B,1,h,w,d]
            gt.Add(bits.reshape(B, -1, d));
            if (si < NoiseApplyLayers)
            {
                double p = DrawFlipProbability();
                probs.Add(p);
                var pred = p > 0 ? FlipBits(bits, p) : bits;
                if (NoiseApplyRequant) quantized = MultiScaleResidual.CodesFromBits(pred);
            }
            else probs.Add(0);
            // flip_requant resizes every scale to the final size, the last one included (identity there)
            var up = MultiScaleResidual.Resize(quantized, final, MultiScaleResidual.Up);
            cum = cum is null ? up : cum + up;
            if (si < schedule.Count - 1)
                inputs.Add(MultiScaleResidual.ToTokens(MultiScaleResidual.NextScaleInput(cum, schedule[si + 1])));
        }
        // get_vae_gt_xin_v1_1: keep the first training_scales scales
        long seqLen = schedule.Take(trainingScales).Sum(s => (long)s.T * s.H * s.W);
        long first = (long)schedule[0].T * schedule[0].H * schedule[0].W;
        var x = inputs.Count == 0 ? zeros([B, 0, d], device: codesOut.device) : cat(inputs, 1);
        x = x[.., ..(int)(seqLen - first), ..].contiguous();
        var gtBL = cat(gt, 1)[.., ..(int)seqLen, ..].contiguous();
        return new Targets(x.MoveToOuterDisposeScope(), gtBL.MoveToOuterDisposeScope(),
            gt.Select(t => t.contiguous().MoveToOuterDisposeScope()).ToArray(), probs);
    }

    /// <summary>
    /// Official get_vae_gt_xin_v1_1 for targets whose schedule is known (the caller looks it up in the model's table:
    /// nearest h/w template of the image, the model's pn, t forced to 1): raw features = vae.Encode(pixels) (no grad),
    /// then <see cref="FlipRequant"/> with all scales (training_scales 100).
    /// </summary>
    public Targets GetVaeGtXin(BsqVae vae, Tensor pixels, ScaleSchedule schedule)
    {
        if (pixels.dim() != 4) throw new ArgumentException($"GetVaeGtXin expects pixels [B,3,H,W], got [{string.Join(",", pixels.shape)}]");
        using var raw = vae.Encode(pixels);
        return FlipRequant(vae.quantizer.lfq, schedule.Scales, raw);
    }
}
