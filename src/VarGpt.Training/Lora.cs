using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>LoRA hyper-parameters (finetuning_args LoraArguments).</summary>
public sealed record LoraOptions
{
    public int Rank { get; init; } = 8;
    /// <summary>lora_alpha; LLaMA-Factory default lora_rank * 2.</summary>
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; }
    /// <summary>["all"] or module names matched PEFT-style: a module named exactly t or ending in "." + t.</summary>
    public IReadOnlyList<string> Targets { get; init; } = ["all"];
    /// <summary>
    /// Parameter-name substrings left fully trainable besides the adapters. Default: the official quirk
    /// (<see cref="Freezing.OfficialLoraAlwaysTrainable"/>: "vargpt_gen", "image_gen_projector").
    /// </summary>
    public IReadOnlyList<string> AlsoTrainable { get; init; } = Freezing.OfficialLoraAlwaysTrainable;

    public static LoraOptions FromConfig(TrainingConfig c) => new() { Rank = c.LoraRank, Alpha = c.LoraAlpha, Dropout = c.LoraDropout, Targets = c.LoraTarget };
}

/// <summary>
/// A Linear with a LoRA adapter (PEFT LoraLayer): y = base(x) + lora_B(lora_A(dropout(x))) · alpha/r, where
/// lora_A [r, in] starts kaiming-uniform(a=√5) and lora_B [out, r] starts at zero, so the wrapped layer starts equal
/// to the base. Parameter names: base_layer.weight/bias, lora_A.weight, lora_B.weight. Adapter weights share the base
/// weight's dtype and device (the trainer keeps fp32 masters for bf16 parameters).
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    public readonly Linear base_layer;
    public readonly Linear lora_A;
    public readonly Linear lora_B;
    readonly Dropout? lora_dropout;
    public double Scaling { get; }
    public int Rank { get; }

    public LoraLinear(Linear baseLayer, int rank, double alpha, double dropout) : base(nameof(LoraLinear))
    {
        var w = baseLayer.weight ?? throw new ArgumentException("LoRA needs a Linear with a weight");
        base_layer = baseLayer;
        Rank = rank;
        Scaling = alpha / rank;
        lora_A = nn.Linear(w.shape[1], rank, hasBias: false, device: w.device, dtype: w.dtype);
        lora_B = nn.Linear(rank, w.shape[0], hasBias: false, device: w.device, dtype: w.dtype);
        using (torch.no_grad())
        {
            nn.init.kaiming_uniform_(lora_A.weight!, a: Math.Sqrt(5));
            nn.init.zeros_(lora_B.weight!);
        }
        if (dropout > 0) lora_dropout = nn.Dropout(dropout);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = base_layer.forward(x);
        var h = lora_dropout != null ? lora_dropout.forward(x) : x;
        return y.add(lora_B.forward(lora_A.forward(h)), alpha: Scaling).MoveToOuterDisposeScope();
    }

    /// <summary>W + (B·A)·scaling, computed in fp32 and rounded to the base dtype.</summary>
    public Tensor MergedWeight() => LoraAdapter.MergedWeight(base_layer.weight!, lora_A.weight!, lora_B.weight!, Scaling);
}

/// <summary>
/// Applies, merges and exports LoRA adapters on a TorchSharp model by swapping Linear children for
/// <see cref="LoraLinear"/> (and back) with <see cref="ModuleSwap"/>, which keeps state_dict key order unchanged after merging.
/// </summary>
public static class Lora
{
    /// <summary>
    /// The Linear layers LoRA wraps. "all" = every Linear except lm_head (find_all_linear_modules' exclusion for this
    /// model type) and except the VAE (frozen in every VARGPT stage); otherwise PEFT's suffix rule.
    /// </summary>
    public static IReadOnlyList<string> FindTargets(nn.Module model, IReadOnlyList<string> targets)
    {
        var linears = model.named_modules().Where(m => m.module is Linear && m.name.Length > 0).Select(m => m.name).ToList();
        if (targets.Count == 1 && targets[0] == "all")
            return linears.Where(n => !n.Contains("lm_head", StringComparison.Ordinal) && !ModelComponents.Vae.Owns(n)).ToList();
        var unmatched = targets.Where(t => !linears.Any(n => n == t || n.EndsWith("." + t, StringComparison.Ordinal))).ToList();
        if (unmatched.Count > 0)
            throw new ArgumentException($"lora_target {string.Join(", ", unmatched.Select(u => $"'{u}'"))} matches no Linear layer of the model");
        return linears.Where(n => targets.Any(t => n == t || n.EndsWith("." + t, StringComparison.Ordinal))).ToList();
    }

    /// <summary>
    /// Wraps the targets, then sets requires_grad: adapters and <see cref="LoraOptions.AlsoTrainable"/> substrings train,
    /// everything else is frozen; <paramref name="frozen"/> (explicit user freezes) wins over both.
    /// Returns the wrapped layer names.
    /// </summary>
    public static IReadOnlyList<string> Apply(nn.Module model, LoraOptions options, Func<string, bool>? frozen = null)
    {
        if (options.Rank <= 0) throw new ArgumentException("lora_rank must be > 0");
        var targets = FindTargets(model, options.Targets);
        if (targets.Count == 0) throw new ArgumentException("no Linear layer to apply LoRA to");
        var modules = ModuleSwap.Modules(model);
        foreach (var name in targets)
        {
            var lin = (Linear)modules[name];
            ModuleSwap.Replace(model, modules, name, new LoraLinear(lin, options.Rank, options.Alpha, options.Dropout));
        }
        foreach (var (name, p) in model.named_parameters())
        {
            bool train = IsAdapterParam(name) || Freezing.IsForbidden(name, options.AlsoTrainable);
            if (frozen != null && frozen(name)) train = false;
            p.requires_grad_(train);
        }
        return targets;
    }

    public static bool IsAdapterParam(string name) => name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_B.weight", StringComparison.Ordinal);

    /// <summary>The wrapped layers by their original (official) names.</summary>
    public static IReadOnlyList<(string Name, LoraLinear Layer)> Layers(nn.Module model) =>
        model.named_modules().Where(m => m.module is LoraLinear).Select(m => (m.name, (LoraLinear)m.module)).ToList();

    /// <summary>Folds every adapter into its base weight and puts the base Linear back: the model's keys become the original ones.</summary>
    public static void Merge(nn.Module model)
    {
        var modules = ModuleSwap.Modules(model);
        foreach (var (name, layer) in Layers(model))
        {
            using (var merged = layer.MergedWeight())
            using (torch.no_grad())
                layer.base_layer.weight!.copy_(merged);
            ModuleSwap.Replace(model, modules, name, layer.base_layer);
            layer.lora_A.Dispose();
            layer.lora_B.Dispose();
        }
    }

    /// <summary>
    /// The model's weights under official names with adapters folded in, without modifying the model
    /// (for checkpoints/exports while training continues). Non-LoRA entries are the live tensors.
    /// </summary>
    public static IEnumerable<KeyValuePair<string, Tensor>> MergedStateDict(nn.Module model)
    {
        var layers = Layers(model).ToDictionary(l => l.Name, l => l.Layer);
        foreach (var (key, t) in model.state_dict())
        {
            int cut = key.IndexOf(".base_layer.", StringComparison.Ordinal);
            if (cut >= 0 && layers.TryGetValue(key[..cut], out var layer))
            {
                var baseKey = key[..cut] + "." + key[(cut + ".base_layer.".Length)..];
                yield return new(baseKey, key.EndsWith(".base_layer.weight", StringComparison.Ordinal) ? layer.MergedWeight() : t);
            }
            else if (key.Contains(".lora_A.", StringComparison.Ordinal) || key.Contains(".lora_B.", StringComparison.Ordinal)) continue;
            else yield return new(key, t);
        }
    }

    /// <summary>
    /// Saves the adapters alone in PEFT layout: adapter_model.safetensors with keys
    /// <c>base_model.model.{name}.lora_A.weight</c> / <c>.lora_B.weight</c> and adapter_config.json.
    /// Returns the trainable non-adapter parameters (the official vargpt_gen/projector quirk) that a PEFT adapter
    /// cannot carry: when non-empty, only the merged export holds the full result.
    /// </summary>
    public static IReadOnlyList<string> SaveAdapter(string dir, nn.Module model, LoraOptions options, string? baseModelNameOrPath = null)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        var layers = Layers(model);
        foreach (var (name, l) in layers)
        {
            tensors.Add(new($"base_model.model.{name}.lora_A.weight", l.lora_A.weight!));
            tensors.Add(new($"base_model.model.{name}.lora_B.weight", l.lora_B.weight!));
        }
        var targetSuffixes = options.Targets.Count == 1 && options.Targets[0] == "all"
            ? layers.Select(l => l.Name.Split('.')[^1]).Distinct().Order(StringComparer.Ordinal).ToList()
            : options.Targets.ToList();
        var config = new Dictionary<string, object?>
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["base_model_name_or_path"] = baseModelNameOrPath,
            ["r"] = options.Rank, ["lora_alpha"] = options.Alpha, ["lora_dropout"] = options.Dropout,
            ["target_modules"] = targetSuffixes, ["bias"] = "none", ["fan_in_fan_out"] = false, ["inference_mode"] = true,
            ["init_lora_weights"] = true, ["modules_to_save"] = null, ["use_rslora"] = false, ["use_dora"] = false,
        };
        // the adapter folder is replaced as a whole: never weights of one save beside the config of another
        AtomicFile.WriteFolder(dir, tmp =>
        {
            SafeTensorsWriter.Save(Path.Combine(tmp, "adapter_model.safetensors"), tensors);
            FailPoints.Hit("adapter.weights");
            TrainerCheckpoint.WriteAllTextDurable(Path.Combine(tmp, "adapter_config.json"), JsonSerializer.Serialize(config, new JsonSerializerOptions { WriteIndented = true }));
        }, replace: true);
        return model.named_parameters().Where(p => p.parameter.requires_grad && !IsAdapterParam(p.name)).Select(p => p.name).ToList();
    }
}
