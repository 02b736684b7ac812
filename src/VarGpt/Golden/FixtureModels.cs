using System.Globalization;
using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Generation;

namespace VarGpt.Golden;

/// <summary>
/// The full tiny VARGPT models of the fixtures: fixture.json "config" holds the HF config under "config" plus the
/// sizes the official constructor hard-codes ("vae", "infinity", "vargpt_gen_args", "custom_pn_entries").
/// </summary>
public static class FixtureModels
{
    public static VargptConfig FullConfig(Fixture f)
    {
        var root = f.Config;
        var src = f.Id + "/fixture.json config";
        var cfg = VargptConfig.Parse(root.GetProperty("config"), src);
        var j = new JsonFields(root, src);
        if (j.Has("infinity")) cfg = cfg with { Infinity = InfinityConfig.Parse(j.Obj("infinity")) };
        if (j.Has("vae")) cfg = cfg with { Vae = VaeConfig.Parse(j.Obj("vae")) };
        if (j.Has("vargpt_gen_args")) cfg = cfg with { Pn = j.Obj("vargpt_gen_args").Str("pn", cfg.Pn) };
        if (root.TryGetProperty("custom_pn_entries", out var entries)) RegisterPnEntries(entries);
        return cfg;
    }

    /// <summary>Registers entries like {"1.0/fx5": {"pixel": [h, w], "scales": [[t,h,w], ...]}} (official dynamic_resolution_h_w additions).</summary>
    public static void RegisterPnEntries(JsonElement entries)
    {
        foreach (var e in entries.EnumerateObject())
        {
            int slash = e.Name.IndexOf('/');
            double template = double.Parse(e.Name[..slash], CultureInfo.InvariantCulture);
            string pn = e.Name[(slash + 1)..];
            var px = e.Value.GetProperty("pixel");
            var scales = e.Value.GetProperty("scales").EnumerateArray()
                .Select(s => new Scale(s[0].GetInt32(), s[1].GetInt32(), s[2].GetInt32())).ToArray();
            ScaleSchedules.Register(template, pn, (px[0].GetInt32(), px[1].GetInt32()), scales);
        }
    }
}
