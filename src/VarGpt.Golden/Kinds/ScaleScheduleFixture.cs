using System.Globalization;
using System.Text.Json;
using VarGpt.Generation;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>Fixture "scale_schedule": the dynamic-resolution table and nearest-template lookups, exact.</summary>
public sealed class ScaleScheduleFixture : IFixtureKind
{
    public string Kind => "scale_schedule";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        var p = f.Params;
        var templates = p.GetProperty("h_div_w_templates_in_order").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        cmp.Check("templates_in_order", templates.SequenceEqual(ScaleSchedules.Templates),
            $"expected [{string.Join(",", templates)}] got [{string.Join(",", ScaleSchedules.Templates)}]");
        foreach (var row in p.GetProperty("table").EnumerateArray())
        {
            double t = row.GetProperty("h_div_w_template").GetDouble();
            string pn = row.GetProperty("pn").GetString()!;
            var s = ScaleSchedules.Official.Get(t, pn);
            var expScales = row.GetProperty("scales").EnumerateArray().SelectMany(x => x.EnumerateArray().Select(v => v.GetInt64())).ToArray();
            var gotScales = s.RawScales.SelectMany(x => new long[] { x.T, x.H, x.W }).ToArray();
            string key = $"{t.ToString(CultureInfo.InvariantCulture)}/{pn}";
            cmp.ExactList($"scales.{key}", gotScales, expScales);
            var px = row.GetProperty("pixel_hw").EnumerateArray().Select(v => v.GetInt64()).ToArray();
            cmp.ExactList($"pixel_hw.{key}", [s.Pixels.H, s.Pixels.W], px);
            if (row.TryGetProperty("seq_len_t1", out var sl))
                cmp.ExactList($"seq_len_t1.{key}", [s.SequenceLength], [sl.GetInt64()]);
            // the same data as tensors in io.safetensors
            string tn = $"scales.{t.ToString("F3", CultureInfo.InvariantCulture)}.{pn}";
            if (f.Has("out." + tn))
            {
                using var exp = f.Out(tn);
                using var got = tensor(gotScales).reshape(-1, 3);
                cmp.Exact("io." + tn, got, exp);
                using var expPx = f.Out(tn.Replace("scales.", "pixel_hw."));
                cmp.Exact("io." + tn.Replace("scales.", "pixel_hw."), tensor(new long[] { s.Pixels.H, s.Pixels.W }), expPx.flatten());
            }
            else cmp.Check("io." + tn, false, "missing in io.safetensors");
        }
        foreach (var name in new[] { "nearest_template_lookups", "image_template_lookups" })
            foreach (var l in p.GetProperty(name).EnumerateArray())
            {
                double hdw = l.GetProperty("h_div_w").GetDouble();
                if (l.TryGetProperty("image_hw", out var hw))
                    hdw = hw[0].GetDouble() / hw[1].GetDouble();
                double exp = l.GetProperty("template").GetDouble();
                double got = ScaleSchedules.NearestTemplate(hdw);
                cmp.Check($"{name}({hdw.ToString(CultureInfo.InvariantCulture)})", got == exp, $"got {got} expected {exp}");
            }
    }
}
