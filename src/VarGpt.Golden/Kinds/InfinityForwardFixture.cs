using System.Text.Json;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "infinity_forward": a tiny Infinity driven the way VARGPT drives it. Teacher-forced Infinity.forward +
/// forward_decoder (cond_BD, cond_BD_or_gss, x_BLC_padded, block-causal mask, rope table, debug block outputs,
/// logits) and the KV-cached scale-by-scale path (logits_kvcache), against the official outputs.
/// </summary>
public sealed class InfinityForwardFixture : IFixtureKind
{
    public string Kind => "infinity_forward";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 3e-3), rtol = f.Atol("rtol", 1e-3);
        var cfg = ConfigJson.Parse<InfinityConfig>(f.Config, f.Id + " config");
        using var model = new Infinity(cfg);
        model.eval();
        f.LoadInto(model, prefix: ModelComponents.Infinity.Prefix);
        var schedule = ResolveSchedule(f.Params);

        using var ng = no_grad();
        var text = CrossAttnKv.FromCuSeqlens(f.In("sos"), f.In("sos_cu_seqlens_k"));
        var ctx = CrossAttnKv.FromCuSeqlens(f.In("ca_kv_compact"), f.In("ca_cu_seqlens_k"));
        var xwo = f.In("x_BLC_wo_prefix");

        var p = model.Prefix(text, xwo, schedule);
        int L = p.LEnd;
        cmp.Close("cond_BD", p.Cond, f.Out("cond_BD"), atol, rtol);
        cmp.Close("cond_BD_or_gss", p.Ada, f.Out("cond_BD_or_gss"), atol, rtol);
        cmp.Close("x_BLC_padded", p.XBLC, f.Out("x_BLC_padded"), atol, rtol);
        cmp.Exact("attn_visible", p.AttnMask[0, 0].narrow(0, 0, L).narrow(1, 0, L).to(ScalarType.Byte), f.Out("attn_visible"));
        if (f.Has("out.ca_kv_native"))
            cmp.Close("ca_kv_native", model.TextProjForCa(text.KvCompact), f.Out("ca_kv_native"), atol, rtol);

        var (cos, sin) = model.RopeRows(schedule.Template, 0, L, CPU);
        cmp.Close("rope_cache", stack([cos, sin], 0), f.Out("rope_cache"), atol, rtol);

        // debug taps: block outputs (teacher-forced) for the rows of the first few scales
        var taps = new Dictionary<int, Tensor>();
        var logits = model.ForwardDecoder(p.XBLC, ctx, p.Ada, p.Cond, schedule, p.AttnMask, (i, x) => taps[i] = x.clone().DetachFromDisposeScope());
        cmp.Close("logits", logits, f.Out("logits"), atol, rtol);
        foreach (var name in f.IoNames.Where(n => n.StartsWith("out.debug.block", StringComparison.Ordinal) && n.EndsWith("_out", StringComparison.Ordinal)).Order())
        {
            int i = int.Parse(name["out.debug.block".Length..^"_out".Length]);
            using var exp = f.Out(name["out.".Length..]);
            if (!taps.TryGetValue(i, out var got)) { cmp.Check(name, false, $"model has no block {i}"); continue; }
            cmp.Close(name["out.".Length..], got.narrow(1, 0, exp.shape[1]), exp, atol, rtol);
        }
        foreach (var t in taps.Values) t.Dispose();

        // KV-cached path: the same rows fed scale by scale (autoregressive_infer_cfg's block loop)
        using var cache = model.NewCache(ctx, schedule);
        var outs = new List<Tensor>();
        int start = 0;
        for (int si = 0; si < schedule.Scales.Count; si++)
        {
            int n = schedule.Scales[si].Tokens;
            var h = model.ForwardScale(p.XBLC.narrow(1, start, n), p.Ada, cache, si);
            outs.Add(model.Logits(h, p.Cond));
            start += n;
        }
        cmp.Close("logits_kvcache", cat(outs.ToArray(), 1), f.Out("logits_kvcache"), atol, rtol);
    }

    /// <summary>The fixture's schedule: the official entry when the scales match, else an entry of its own under the given name.</summary>
    static ScaleSchedule ResolveSchedule(JsonElement prm)
    {
        double template = prm.GetProperty("h_div_w_template").GetDouble();
        string pn = prm.GetProperty("pn").GetString()!;
        var scales = prm.GetProperty("scale_schedule").EnumerateArray()
            .Select(s => new Scale(s[0].GetInt32(), s[1].GetInt32(), s[2].GetInt32())).ToArray();
        if (ScaleSchedules.Official.PnsOf(template).Contains(pn))
        {
            var s = ScaleSchedules.Official.Get(template, pn);
            if (s.Scales.Select(x => (x.H, x.W)).SequenceEqual(scales.Select(x => (x.H, x.W)))) return s;
            throw new InvalidFileException($"fixture schedule {pn} differs from the official one");
        }
        return new ScaleSchedule(template, pn, (scales[^1].H * ScaleSchedules.VaeStride, scales[^1].W * ScaleSchedules.VaeStride), scales);
    }
}
