using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Torch;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Model;

/// <summary>What a state-dict entry is, which decides how a random checkpoint initialises it.</summary>
public enum TensorRole
{
    /// <summary>An ordinary weight or bias (linear, conv, embedding, learned vectors).</summary>
    Weight,
    /// <summary>Scale of a LayerNorm / GroupNorm / RMSNorm (initialised to ones).</summary>
    NormWeight,
    /// <summary>Shift of a LayerNorm / GroupNorm (zeros).</summary>
    NormBias,
    /// <summary>A persistent buffer (fixed values, e.g. vae_local.quantizer.lfq.mask, zero_k_bias).</summary>
    Buffer,
}

/// <summary>One state-dict entry of the architecture: official name, dtype, shape and role.</summary>
public sealed record ArchitectureTensor(string Name, ScalarType DType, long[] Shape, TensorRole Role)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
    public TensorEntry Entry => new(Name, DType, Shape);
}

/// <summary>
/// The state dict a config describes, enumerated by building <see cref="VargptForConditionalGeneration"/> on the META
/// device (no memory for weights, a second or two even for the 9B model): the keys a checkpoint of that config must
/// hold, with shapes and dtypes. Used by `vargpt init` (random checkpoints) and `vargpt info` (key/shape audit).
/// </summary>
public static class ModelArchitecture
{
    /// <summary>Entries sorted by name (the order StateDict.Save writes). Floating tensors get <paramref name="dtype"/>.</summary>
    public static IReadOnlyList<ArchitectureTensor> Enumerate(VargptConfig config, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var model = new VargptForConditionalGeneration(config, META, dtype);
        var roles = new Dictionary<string, TensorRole>(StringComparer.Ordinal);
        foreach (var (name, module) in model.named_modules())
        {
            if (module is not (LayerNorm or GroupNorm or Qwen2RMSNorm or FastRMSNorm)) continue;
            string prefix = name.Length == 0 ? "" : name + ".";
            foreach (var (p, _) in module.named_parameters(recurse: false))
                roles[prefix + p] = p == "bias" ? TensorRole.NormBias : TensorRole.NormWeight;
        }
        foreach (var (name, _) in model.named_buffers()) roles[name] = TensorRole.Buffer;
        var sd = model.state_dict();
        // A module that allocates real memory under the META default would make `init --preset full` and `info` cost gigabytes.
        var real = sd.Where(kv => kv.Value.device_type != TorchSharp.DeviceType.META).Select(kv => kv.Key).ToList();
        if (real.Count > 0)
            throw new InvalidOperationException($"{real.Count} state-dict tensors were allocated off the META device while enumerating the architecture, e.g. {string.Join(", ", real.Take(5))}");
        return sd
            .Select(kv => new ArchitectureTensor(kv.Key, kv.Value.dtype, kv.Value.shape, roles.GetValueOrDefault(kv.Key, TensorRole.Weight)))
            .OrderBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
    }
}
