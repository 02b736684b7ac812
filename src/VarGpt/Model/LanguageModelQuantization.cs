using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>Weight quantization of the language model applied at load (<see cref="Inference.VargptModelOptions.Quantize"/>).</summary>
public enum WeightQuantization
{
    /// <summary>The checkpoint's weights in the compute dtype (the default; the fixtures' path).</summary>
    None,
    /// <summary>Every linear of the decoder layers and lm_head as int8 with one fp32 scale per output row (<see cref="Int8Linear"/>).</summary>
    Int8,
}

/// <summary>
/// Replaces the language model's linear layers (q/k/v/o, gate/up/down of every decoder layer, and lm_head) by
/// <see cref="Int8Linear"/>. The embedding, norms, vision tower and image-generation half keep their weights: the
/// embedding is read one row per token, and the other parts are not on the chat decode path.
/// </summary>
public static class LanguageModelQuantization
{
    /// <summary>The CLI names of <see cref="WeightQuantization"/>.</summary>
    public static readonly IReadOnlyList<string> Names = ["none", "int8"];

    /// <summary>Parses "none" or "int8"; anything else is an error naming <paramref name="option"/> and the valid values.</summary>
    public static WeightQuantization Parse(string? value, string option) => value?.Trim().ToLowerInvariant() switch
    {
        "none" => WeightQuantization.None,
        "int8" => WeightQuantization.Int8,
        _ => throw new InvalidOptionException($"{option}: unknown value '{value}'; expected {string.Join(" or ", Names)}", option),
    };

    /// <summary>Names of the linear layers <see cref="QuantizeInt8"/> replaces.</summary>
    public static IReadOnlyList<string> Targets(VargptForConditionalGeneration model) =>
        model.named_modules().Where(m => m.module is Linear && (m.name == "lm_head" || m.name.StartsWith("model.layers.", StringComparison.Ordinal)))
            .Select(m => m.name).ToList();

    /// <summary>
    /// Quantizes every target layer to int8 in place, one layer at a time. Weights named in
    /// <paramref name="mappedWeights"/> (state-dict keys of memory-mapped views) have their pages released from the
    /// process once read (<see cref="MappedPages"/>), so the peak stays near the int8 size plus one layer.
    /// <paramref name="progress"/> receives (layers done, layers). Returns the number of layers replaced.
    /// </summary>
    public static int QuantizeInt8(VargptForConditionalGeneration model, IReadOnlySet<string>? mappedWeights = null, Action<int, int>? progress = null)
    {
        var modules = ModuleSwap.Modules(model);
        var targets = Targets(model);
        using var _ = no_grad();
        for (int i = 0; i < targets.Count; i++)
        {
            var name = targets[i];
            var linear = (Linear)modules[name];
            var weight = linear.weight ?? throw new InvalidOperationException($"{name} has no weight");
            Int8Linear q;
            try { q = Int8Linear.Quantize(weight, linear.bias); }
            catch (ArgumentException e) { throw new InvalidOperationException($"{name}: {e.Message}", e); }
            ModuleSwap.Replace(model, modules, name, q);
            if (mappedWeights?.Contains(name + ".weight") == true) MappedPages.Release(weight);
            linear.Dispose();
            progress?.Invoke(i + 1, targets.Count);
        }
        return targets.Count;
    }
}
