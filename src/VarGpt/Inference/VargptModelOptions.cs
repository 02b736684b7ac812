using VarGpt.Model;
using static TorchSharp.torch;

namespace VarGpt.Inference;

/// <summary>How <see cref="VargptModel.Load"/> loads a model folder.</summary>
public sealed record VargptModelOptions
{
    /// <summary>Name of the subfolder of a model folder whose PEFT LoRA adapter is merged at load by default.</summary>
    public const string DefaultAdapterFolder = "adapter";

    public Device Device { get; init; } = CPU;
    /// <summary>Compute dtype. The official inference scripts load the bf16 checkpoint with torch_dtype=float32.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>ModelParts.Understanding skips the generation half (as the official lmms-eval wrapper does) to save memory.</summary>
    public ModelParts Parts { get; init; } = ModelParts.All;
    /// <summary>
    /// CPU loads: build the model on META (no allocation, no random init) and make every weight stored in the compute
    /// dtype a zero-copy view of a private mapping of its safetensors file (StateDictOptions.MemoryMap); the others are
    /// allocated and read. Pages are read on first use and stay evictable page cache instead of anonymous memory, so a
    /// bf16 checkpoint run in bf16 fits in less RAM than its size. A file is mapped only under a read lease that protects
    /// the process from programs rewriting it in place (Checkpoint.MappedFileLease; otherwise it is copied), and the
    /// model holds that lease until disposed. null (default) = on for the CPU, off elsewhere. Training turns it off: the optimizer writes into the weights. Trade-off measured in docs/notes/checkpoint-io.md.
    /// </summary>
    public bool? MemoryMap { get; init; }
    /// <summary>
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into the weights at load
    /// (<see cref="Checkpoint.LoraAdapter.Merge"/>). null (default) = the model folder's <c>adapter/</c> subfolder when it exists.
    /// </summary>
    public string? Adapter { get; init; }
    /// <summary>false = never merge an adapter (the base weights alone, even when the folder has <c>adapter/</c>).</summary>
    public bool MergeAdapter { get; init; } = true;
    /// <summary>
    /// Quantize the language model's linear layers at load (after any adapter merge): Int8 keeps them as int8 with one
    /// fp32 scale per output row (<see cref="Torch.Int8Linear"/>), half the bytes of bf16 for every decode step;
    /// CPU only, with DType float32 or bfloat16 (activations, norms and attention stay in DType). Opt-in: results
    /// differ from the checkpoint's by the rounding of the weights (docs/performance.md, "Int8").
    /// </summary>
    public WeightQuantization Quantize { get; init; } = WeightQuantization.None;

    internal bool UseMemoryMap => MemoryMap ?? Device.type == TorchSharp.DeviceType.CPU;

    /// <summary>Fails naming the option when <see cref="Quantize"/> does not fit the device or dtype (<see cref="VargptModel.Load(string, VargptModelOptions?, Action{string, double}?)"/> checks it too).</summary>
    public void CheckQuantize()
    {
        if (Quantize == WeightQuantization.None) return;
        if (!Enum.IsDefined(Quantize)) throw new InvalidOptionException($"VargptModelOptions.Quantize: unknown value {(int)Quantize}", nameof(Quantize));
        if (Device.type != TorchSharp.DeviceType.CPU)
            throw new InvalidOptionException($"quantize {Quantize.ToString().ToLowerInvariant()} runs on the CPU only, not {Device}", nameof(Quantize));
        if (DType is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new InvalidOptionException($"quantize {Quantize.ToString().ToLowerInvariant()} computes in float32 or bfloat16, not {DType}", nameof(Quantize));
    }

    /// <summary>The adapter folder a load of <paramref name="modelDir"/> merges, or null.</summary>
    public string? ResolveAdapter(string modelDir)
    {
        if (!MergeAdapter)
        {
            if (Adapter is not null) throw new InvalidOptionException($"VargptModelOptions: Adapter = {Adapter} but MergeAdapter = false; set one or the other");
            return null;
        }
        if (Adapter is not null)
        {
            var full = Path.GetFullPath(Adapter);
            return Directory.Exists(full) ? full : throw new InputNotFoundException($"LoRA adapter folder not found: {full}");
        }
        var own = Path.Combine(modelDir, DefaultAdapterFolder);
        return Directory.Exists(own) ? Path.GetFullPath(own) : null;
    }
}
