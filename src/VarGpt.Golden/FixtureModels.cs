using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Configuration;

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
        if (j.Has("infinity")) cfg = cfg with { Infinity = ConfigJson.Parse<InfinityConfig>(j.Obj("infinity").Element, j.Obj("infinity").Source) };
        if (j.Has("vae")) cfg = cfg with { Vae = ConfigJson.Parse<VaeConfig>(j.Obj("vae").Element, j.Obj("vae").Source) };
        if (j.Has("vargpt_gen_args")) cfg = cfg with { Pn = j.Obj("vargpt_gen_args").Str("pn", cfg.Pn) };
        if (j.Has("custom_pn_entries")) cfg = cfg with { CustomPns = [.. cfg.CustomPns, .. VargptConfig.ParseCustomPns(j.Obj("custom_pn_entries"))] };
        return cfg;
    }
}
