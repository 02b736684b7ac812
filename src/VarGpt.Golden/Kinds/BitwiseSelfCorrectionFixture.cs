using VarGpt.Generation;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "bitwise_self_correction": get_vae_gt_xin_v1_1 with the flip noise off (strength 0): raw features,
/// x_BLC_wo_prefix, gt_BL (exact) and the per-scale labels; once end to end from the image and once from the fixture's
/// raw features (tighter tolerance).
/// </summary>
public sealed class BitwiseSelfCorrectionFixture : IFixtureKind
{
    public string Kind => "bitwise_self_correction";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol"), rtol = f.Atol("rtol"), atolRaw = f.Atol("atol_given_raw_features", atol);
        var p = f.Params;
        var defaults = p.GetProperty("official_defaults");
        using var bsc = new BitwiseSelfCorrection(seed: p.TryGetProperty("seed", out var seed) ? seed.GetInt64() : 0)
        {
            NoiseApplyLayers = defaults.GetProperty("noise_apply_layers").GetInt32(),
            NoiseApplyRequant = defaults.GetProperty("noise_apply_requant").GetInt32() != 0,
            NoiseApplyStrength = p.GetProperty("fixture_setting").GetProperty("noise_apply_strength").GetDouble(),
        };
        using var vae = BsqVaeFixture.LoadVae(f);
        string pn = p.GetProperty("pn").GetString()!;
        var expSched = BsqVaeFixture.ParseSchedule(p.GetProperty("scale_schedule"));
        double template = p.GetProperty("h_div_w_template").GetDouble();
        // a non-standard pn extends the official table under its template (README-var "fx" entries)
        var hw = p.GetProperty("image_hw");
        var table = ScaleSchedules.Official.PnsOf(template).Contains(pn) ? ScaleSchedules.Official
            : ScaleSchedules.Official.With([new ScaleSchedule(template, pn, (hw[0].GetInt32(), hw[1].GetInt32()), expSched)]);
        // get_vae_gt_xin_v1_1: the template nearest the image's h/w, the model's pn
        using var image = f.In("image");
        var schedule = table.Get(ScaleSchedules.NearestTemplate((double)image.shape[^2] / image.shape[^1]), pn);
        var targets = bsc.GetVaeGtXin(vae, image, schedule);
        using (targets)
        {
            cmp.Check("h_div_w_template", schedule.Template == template, $"template {schedule.Template}");
            cmp.Check("scale_schedule", schedule.Scales.SequenceEqual(expSched),
                $"got [{string.Join(" ", schedule.Scales)}] expected [{string.Join(" ", expSched)}]");
            cmp.Check("seq_len", schedule.SequenceLength == p.GetProperty("seq_len").GetInt32(), $"got {schedule.SequenceLength}");
            cmp.Check("flip_probabilities_zero", targets.FlipProbabilities.All(x => x == 0), string.Join(",", targets.FlipProbabilities));

            cmp.Close("raw_features", vae.Encode(f.In("image")), f.Out("raw_features"), atol, rtol);
            cmp.Close("x_BLC_wo_prefix", targets.XBLCWoPrefix, f.Out("x_BLC_wo_prefix"), atol, rtol);
            cmp.Exact("gt_BL", targets.GtBL, f.Out("gt_BL"));
            for (int k = 0; k < targets.GtBits.Count; k++)
                cmp.Exact($"gt_bits.s{k}", targets.GtBits[k], f.Out($"gt_bits.s{k}"));
        }

        // from the official raw features: isolates the ladder (tighter tolerance)
        using var fromRaw = bsc.FlipRequant(vae.quantizer.lfq, schedule.Scales, f.Out("raw_features"));
        cmp.Close("from_raw.x_BLC_wo_prefix", fromRaw.XBLCWoPrefix, f.Out("x_BLC_wo_prefix"), atolRaw, atolRaw);
        cmp.Exact("from_raw.gt_BL", fromRaw.GtBL, f.Out("gt_BL"));
    }
}
