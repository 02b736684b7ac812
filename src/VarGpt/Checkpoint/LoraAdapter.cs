using System.Text.Json;
using System.Text.RegularExpressions;
using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>
/// The adapter_config.json fields a merge needs (PEFT LoraConfig). Only plain LoRA is accepted: scaling = lora_alpha / r
/// (use_rslora false), no DoRA, no per-layer rank/alpha patterns, no trained biases, no modules_to_save, weights stored
/// as [out, in] (fan_in_fan_out false); anything else is rejected naming the field.
/// </summary>
public sealed record LoraAdapterConfig
{
    public required string Path { get; init; }
    public required int Rank { get; init; }
    public required double Alpha { get; init; }
    /// <summary>target_modules as a list (PEFT suffix rule: a module named t or ending in "." + t); null when it is a string.</summary>
    public IReadOnlyList<string>? TargetModules { get; init; }
    /// <summary>target_modules as a string: a regex matched against the whole module name, or "all-linear".</summary>
    public string? TargetModulesPattern { get; init; }
    public double Scaling => Alpha / Rank;

    /// <summary>Does target_modules select this module name? (null target_modules: PEFT's per-model defaults; we accept any.)</summary>
    public bool Targets(string module)
    {
        if (TargetModules is { } list) return list.Any(t => module == t || module.EndsWith("." + t, StringComparison.Ordinal));
        if (TargetModulesPattern is { } p) return p == "all-linear" || Regex.IsMatch(module, "^(?:" + p + ")$", RegexOptions.CultureInvariant);
        return true;
    }

    public static LoraAdapterConfig Load(string dir)
    {
        var path = System.IO.Path.Combine(dir, LoraAdapter.ConfigFile);
        if (!File.Exists(path))
            throw new InputNotFoundException($"{path} not found: a PEFT LoRA adapter folder holds {LoraAdapter.ConfigFile} and {LoraAdapter.WeightsFile}", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not valid JSON ({e.Message})", e); }
        using var _ = doc;
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{path}: the adapter config is not a JSON object");
        InvalidFileException Bad(string what) => new($"{path}: {what}");
        JsonElement? Get(string name) => root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        if (Get("peft_type") is { } pt && pt.GetString() != "LORA")
            throw Bad($"peft_type is '{pt}', only LORA adapters can be merged");
        if (Get("r") is not { ValueKind: JsonValueKind.Number } r || !r.TryGetInt32(out int rank) || rank <= 0)
            throw Bad("field 'r' (the LoRA rank) is missing or not a positive integer");
        if (Get("lora_alpha") is not { ValueKind: JsonValueKind.Number } a || !double.IsFinite(a.GetDouble()))
            throw Bad("field 'lora_alpha' is missing or not a number");
        // Variants whose merge is not W + B·A·alpha/r, or which carry weights a LoRA merge cannot place.
        if (Get("use_rslora") is { } rs && rs.ValueKind != JsonValueKind.False)
            throw Bad($"use_rslora is {rs.GetRawText()}; only use_rslora false (scaling lora_alpha / r) is supported");
        if (Get("use_dora") is { } dora && dora.ValueKind != JsonValueKind.False)
            throw Bad($"use_dora is {dora.GetRawText()}; DoRA adapters are not supported");
        if (Get("fan_in_fan_out") is { } fifo && fifo.ValueKind != JsonValueKind.False)
            throw Bad("fan_in_fan_out is true (GPT-2 Conv1D layout); only Linear weights stored [out, in] are supported");
        if (Get("bias") is { } bias && bias.GetString() != "none")
            throw Bad($"bias is '{bias.GetString()}'; only bias \"none\" is supported (trained biases are not LoRA weights)");
        foreach (var field in new[] { "rank_pattern", "alpha_pattern" })
            if (Get(field) is { ValueKind: JsonValueKind.Object } pat && pat.EnumerateObject().Any())
                throw Bad($"{field} is not empty; per-layer ranks/alphas are not supported");
        if (Get("modules_to_save") is { ValueKind: JsonValueKind.Array } mts && mts.GetArrayLength() > 0)
            throw Bad("modules_to_save is not empty; fully trained modules cannot be merged from a LoRA adapter");

        IReadOnlyList<string>? list = null;
        string? pattern = null;
        switch (Get("target_modules"))
        {
            case { ValueKind: JsonValueKind.Array } arr:
                list = arr.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Bad("target_modules holds a non-string entry")).ToList();
                break;
            case { ValueKind: JsonValueKind.String } s:
                pattern = s.GetString();
                break;
            case null: break;
            case var other: throw Bad($"target_modules must be a list of names or a regex string, not {other.Value.ValueKind}");
        }
        return new LoraAdapterConfig { Path = path, Rank = rank, Alpha = a.GetDouble(), TargetModules = list, TargetModulesPattern = pattern };
    }
}

/// <summary>What a merge did: the adapter folder, the merged Linear layers and the ones skipped (not loaded).</summary>
public sealed record LoraAdapterMergeReport(string Directory, LoraAdapterConfig Config, IReadOnlyList<string> Merged, IReadOnlyList<string> Skipped);

/// <summary>
/// Loads a PEFT LoRA adapter folder (what <see cref="Lora.SaveAdapter"/> writes: adapter_config.json +
/// adapter_model.safetensors with keys <c>base_model.model.{name}.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c>
/// [out, r]) into a loaded model by merging it: W ← W + (B·A)·lora_alpha/r, computed in fp32 and rounded to the weight
/// dtype (PEFT merge_and_unload). Every key, shape and module is checked before anything changes.
/// </summary>
public static class LoraAdapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    public const string KeyPrefix = "base_model.model.";
    const string ASuffix = ".lora_A.weight", BSuffix = ".lora_B.weight";

    /// <summary>
    /// Merges the adapter in <paramref name="dir"/> into <paramref name="model"/>. Each merged weight becomes a new
    /// parameter tensor (the old one is released), so a weight that was a memory-mapped view of a checkpoint file
    /// (<see cref="StateDictOptions.MemoryMap"/>) is never written through. <paramref name="skip"/>: module names to leave
    /// out (e.g. parts of the model that were not loaded); they are reported, not checked.
    /// Errors (before any change): missing files, keys that are not LoRA A/B weights, a module the model lacks or that
    /// is not a Linear, a module not selected by target_modules, an A without its B, shapes that do not fit the layer or r.
    /// </summary>
    public static LoraAdapterMergeReport Merge(nn.Module model, string dir, Func<string, bool>? skip = null)
    {
        dir = Path.GetFullPath(dir);
        if (!Directory.Exists(dir)) throw new InputNotFoundException($"LoRA adapter folder not found: {dir}");
        var config = LoraAdapterConfig.Load(dir);
        var weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(weightsPath))
            throw new InputNotFoundException($"{weightsPath} not found: a PEFT LoRA adapter folder holds {ConfigFile} and {WeightsFile}", weightsPath);
        using var file = SafeTensorsFile.Open(weightsPath);
        InvalidFileException Bad(string key, string what) => new($"{weightsPath}: key '{key}': {what}");

        // key -> (module, A key, B key)
        var pairs = new SortedDictionary<string, (string? A, string? B)>(StringComparer.Ordinal);
        foreach (var key in file.Tensors.Keys)
        {
            bool isA = key.EndsWith(ASuffix, StringComparison.Ordinal), isB = key.EndsWith(BSuffix, StringComparison.Ordinal);
            if (!key.StartsWith(KeyPrefix, StringComparison.Ordinal) || !(isA || isB))
                throw Bad(key, $"not a LoRA weight; expected {KeyPrefix}{{module}}{ASuffix} or {BSuffix} (PEFT layout, no adapter name)");
            var module = key[KeyPrefix.Length..^(isA ? ASuffix : BSuffix).Length];
            var p = pairs.GetValueOrDefault(module);
            pairs[module] = isA ? (key, p.B) : (p.A, key);
        }
        if (pairs.Count == 0) throw new InvalidFileException($"{weightsPath}: no LoRA weights");

        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        var plan = new List<(string Name, Linear Layer, string A, string B)>();
        var skipped = new List<string>();
        foreach (var (name, (a, b)) in pairs)
        {
            if (a is null) throw Bad(b!, $"has no matching {KeyPrefix}{name}{ASuffix}");
            if (b is null) throw Bad(a, $"has no matching {KeyPrefix}{name}{BSuffix}");
            if (!config.Targets(name))
                throw Bad(a, $"module '{name}' is not selected by target_modules ({(config.TargetModules is { } l ? "[" + string.Join(", ", l) + "]" : config.TargetModulesPattern)}) of {config.Path}");
            if (skip?.Invoke(name) == true) { skipped.Add(name); continue; }
            if (!modules.TryGetValue(name, out var m))
                throw Bad(a, $"the model has no module '{name}' (an adapter for another architecture or naming?)");
            if (m is not Linear lin || lin.weight is null)
                throw Bad(a, $"module '{name}' is a {m.GetType().Name}, not a Linear; LoRA merging supports Linear layers only");
            long outF = lin.weight.shape[0], inF = lin.weight.shape[1];
            var sa = file.Tensors[a].Shape;
            var sb = file.Tensors[b].Shape;
            if (!sa.SequenceEqual(new long[] { config.Rank, inF }))
                throw Bad(a, $"shape [{string.Join(", ", sa)}] but r = {config.Rank} and '{name}' has {inF} input features: expected [{config.Rank}, {inF}]");
            if (!sb.SequenceEqual(new long[] { outF, config.Rank }))
                throw Bad(b, $"shape [{string.Join(", ", sb)}] but r = {config.Rank} and '{name}' has {outF} output features: expected [{outF}, {config.Rank}]");
            plan.Add((name, lin, a, b));
        }

        using (no_grad())
            foreach (var (_, lin, a, b) in plan)
            {
                var old = lin.weight!;
                Tensor merged;
                using (var la = file.Load(a, ScalarType.Float32, old.device))
                using (var lb = file.Load(b, ScalarType.Float32, old.device))
                    merged = MergedWeight(old, la, lb, config.Scaling);
                // A new parameter rather than copy_ into the old one: the old one may be a view of a (private) file mapping.
                lin.weight = new Parameter(merged, old.requires_grad);
                if (!ReferenceEquals(old, lin.weight)) old.Dispose();
            }
        return new LoraAdapterMergeReport(dir, config, plan.Select(p => p.Name).ToList(), skipped);
    }

    /// <summary>
    /// W + (B·A)·scaling as a new tensor in W's dtype and device: the product and the sum in fp32, then rounded (PEFT
    /// merges in the weight dtype; fp32 keeps a bf16 merge within one rounding of the exact result).
    /// </summary>
    public static Tensor MergedWeight(Tensor weight, Tensor loraA, Tensor loraB, double scaling)
    {
        using var scope = NewDisposeScope();
        var delta = loraB.to(ScalarType.Float32, weight.device).matmul(loraA.to(ScalarType.Float32, weight.device)).mul(scaling);
        return weight.to(ScalarType.Float32).add(delta).to(weight.dtype).detach().MoveToOuterDisposeScope();
    }
}
