using TorchSharp;
using VarGpt.Model;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>Which parameters train: the trainable and frozen official names, in model order.</summary>
public sealed record FreezePlan(IReadOnlyList<string> Trainable, IReadOnlyList<string> Frozen);

/// <summary>
/// Parameter freezing as pure functions over official parameter names.
/// <para>The official rule (model/adapter.py <c>_setup_full_tuning</c>): a parameter is frozen when its name
/// <b>contains</b> any of the substrings returned by <c>get_forbidden_modules</c> (model/model_utils/visual.py L148-229
/// for vargpt_version "qwen2vl-v1.1"). Substring, not prefix: "model" matches "model.layers.0…" and would match any name
/// containing "model"; "image_gen_projector" also matches "image_gen_projector_out". Reproduced as written.</para>
/// <para>On top of it this port offers component groups (<see cref="ModelComponents"/>, matched by name prefix) and extra
/// substrings, so a user can freeze e.g. the vision tower explicitly.</para>
/// </summary>
public static class Freezing
{
    /// <summary>get_forbidden_modules for vargpt_qwen2_vl / qwen2vl-v1.1. The VAE ("vae_local") is frozen in every stage.</summary>
    public static IReadOnlyList<string> ForbiddenModules(string vargptVersion, int stage)
    {
        if (vargptVersion != "qwen2vl-v1.1")
            throw new NotSupportedException($"vargpt_version '{vargptVersion}' is not supported (this port implements qwen2vl-v1.1)");
        return stage switch
        {
            0 => ["model", "language_model", "lm_head", "visual", "vae_local"],
            1 => ["model", "language_model", "lm_head", "visual", "vae_local", "vargpt_gen"],
            2 => ["visual", "vae_local", "vargpt_gen", "sos_embedding", "image_gen_projector", "image_gen_projector_out"],
            3 => ["model", "language_model", "lm_head", "visual", "vae_local"],
            4 => ["visual", "vae_local"],
            5 => ["vae_local"],
            _ => throw new ArgumentOutOfRangeException(nameof(stage), stage, "vargpt_train_stage must be 0-5 (official: 'Invalid stage')"),
        };
    }

    /// <summary>The official test: frozen iff the name contains a forbidden substring.</summary>
    public static bool IsForbidden(string name, IEnumerable<string> forbidden) => forbidden.Any(f => name.Contains(f, StringComparison.Ordinal));

    /// <summary>
    /// Official quirk of <c>_setup_lora_tuning</c>: after wrapping the LoRA targets it sets every parameter whose name
    /// contains "vargpt_gen" or "image_gen_projector" trainable again, so LoRA runs also fully train Infinity and both
    /// projectors (including the base weights of any LoRA-wrapped layer inside them).
    /// </summary>
    public static readonly IReadOnlyList<string> OfficialLoraAlwaysTrainable = ["vargpt_gen", "image_gen_projector"];

    /// <summary>All substrings frozen for a config (official map + vargpt_freeze_modules); components are separate (prefix rule).</summary>
    public static IReadOnlyList<string> ForbiddenFor(TrainingConfig cfg) =>
        ForbiddenModules(cfg.VargptVersion, cfg.VargptTrainStage).Concat(cfg.FreezeModules).Distinct().ToList();

    /// <summary>
    /// Decides, for each parameter name (in order), whether it trains in full fine-tuning: not forbidden by substring
    /// and not in a frozen component group.
    /// </summary>
    public static FreezePlan Plan(IEnumerable<string> names, IReadOnlyCollection<string> forbidden, IReadOnlyCollection<string>? frozenComponents = null)
    {
        var components = (frozenComponents ?? []).Select(ModelComponents.Get).ToList();
        var trainable = new List<string>();
        var frozen = new List<string>();
        foreach (var n in names)
        {
            bool f = IsForbidden(n, forbidden) || components.Any(c => c.Owns(n));
            (f ? frozen : trainable).Add(n);
        }
        return new FreezePlan(trainable, frozen);
    }

    /// <summary>Plan for a config over the given names (full fine-tuning).</summary>
    public static FreezePlan Plan(IEnumerable<string> names, TrainingConfig cfg) => Plan(names, ForbiddenFor(cfg), cfg.FreezeComponents.ToList());

    /// <summary>Sets requires_grad of every parameter of <paramref name="model"/> from <paramref name="plan"/>; every name must be covered.</summary>
    public static void Apply(nn.Module model, FreezePlan plan)
    {
        var trainable = plan.Trainable.ToHashSet(StringComparer.Ordinal);
        var frozen = plan.Frozen.ToHashSet(StringComparer.Ordinal);
        foreach (var (name, p) in model.named_parameters())
        {
            if (trainable.Contains(name)) p.requires_grad_(true);
            else if (frozen.Contains(name)) p.requires_grad_(false);
            else throw new ArgumentException($"parameter '{name}' is not covered by the freeze plan");
        }
    }

    /// <summary>Human-readable summary: trainable / total parameter counts per top-level field (the official attribute, e.g. lm_head).</summary>
    public static string Summary(nn.Module model)
    {
        var groups = new SortedDictionary<string, (long Train, long Total)>(StringComparer.Ordinal);
        foreach (var (name, p) in model.named_parameters())
        {
            var key = name.Split('.')[0];
            var (t, a) = groups.GetValueOrDefault(key);
            groups[key] = (t + (p.requires_grad ? p.numel() : 0), a + p.numel());
        }
        long tt = groups.Values.Sum(g => g.Train), ta = groups.Values.Sum(g => g.Total);
        return string.Join("\n", groups.Select(g => $"  {g.Key,-26} {g.Value.Train,14:N0} / {g.Value.Total,14:N0} trainable"))
            + $"\n  {"total",-26} {tt,14:N0} / {ta,14:N0} trainable ({(ta == 0 ? 0 : 100.0 * tt / ta):F2}%)";
    }
}
