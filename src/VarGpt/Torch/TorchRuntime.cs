using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>Device and dtype parsing shared by the library and the CLI, plus libtorch thread control.</summary>
public static class TorchRuntime
{
    /// <summary>Parses "cpu", "cuda", "cuda:1"; throws with the accepted names otherwise.</summary>
    public static Device ParseDevice(string name)
    {
        var n = name.Trim().ToLowerInvariant();
        if (n == "cpu") return CPU;
        if (n == "cuda" || n.StartsWith("cuda:"))
        {
            if (!cuda.is_available())
                throw new InvalidOptionException($"device '{name}' requested but CUDA is not available (this build uses the CPU libtorch package; see README 'Platform notes').");
            return new Device(n);
        }
        throw new InvalidOptionException($"unknown device '{name}'; expected cpu, cuda or cuda:N");
    }

    /// <summary>Parses float32|fp32|bfloat16|bf16|float16|fp16.</summary>
    public static ScalarType ParseDType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "float32" or "fp32" or "float" or "f32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" or "half" or "f16" => ScalarType.Float16,
        AutoDTypeName => throw new InvalidOptionException($"dtype '{name}' needs a device to resolve against; use ParseDType(name, device)"),
        _ => throw new InvalidOptionException($"unknown dtype '{name}'; expected {AutoDTypeName}, float32, bfloat16 or float16"),
    };

    /// <summary>The dtype name that resolves to <see cref="AutoDType(Device, CpuInfo)"/>.</summary>
    public const string AutoDTypeName = "auto";

    /// <summary>As <see cref="ParseDType(string)"/>, and "auto" resolves to <see cref="AutoDType(Device, CpuInfo)"/> for <paramref name="device"/> on this CPU.</summary>
    public static ScalarType ParseDType(string name, Device device) =>
        IsAutoDType(name) ? AutoDType(device, CpuInfo.Detect()) : ParseDType(name);

    /// <summary>True when <paramref name="name"/> is "auto" (any case, surrounding spaces ignored), the name <see cref="ParseDType(string, Device)"/> resolves by device and CPU.</summary>
    public static bool IsAutoDType(string name) => name.Trim().Equals(AutoDTypeName, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The inference compute dtype of "--dtype auto": bf16 on CUDA (what the official lmms-eval wrapper loads with
    /// torch_dtype="auto") and on CPUs with native bf16 dot products (avx512_bf16 or AMX), where oneDNN's bf16 GEMM runs
    /// at ~2x the fp32 GEMM and decode reads half the bytes (docs/performance.md: 7.9-8.8 vs 15.1-18.4 s per small-preset
    /// image on AMD EPYC family 25 model 17), while bf16 compute stays within bf16 rounding of the official outputs
    /// (LanguageModelTests: the qwen2_lm_forward fixture's bf16-weight logits; the shipped model's evaluation,
    /// docs/performance.md); fp32 elsewhere, where the kernels widen bf16 to fp32 to multiply (not measured against fp32
    /// on such a CPU) and fp32 is the official README's numerics.
    /// </summary>
    public static ScalarType AutoDType(Device device, CpuInfo cpu) =>
        device.type == DeviceType.CUDA || HasNativeBf16(cpu) ? ScalarType.BFloat16 : ScalarType.Float32;

    /// <summary>Why <see cref="AutoDType"/> picks what it picks, for --help, doctor and load lines: "bfloat16 (CPU has avx512_bf16)".</summary>
    public static string AutoDTypeReason(Device device, CpuInfo cpu)
    {
        var dt = DTypeName(AutoDType(device, cpu));
        if (device.type == DeviceType.CUDA) return $"{dt} (CUDA)";
        var native = NativeBf16Flags.Where(cpu.Has).ToList();
        return native.Count > 0 ? $"{dt} (CPU has {string.Join(" and ", native)})" : $"{dt} (CPU has no native bf16: neither avx512_bf16 nor amx_bf16)";
    }

    /// <summary>CPU flags (Linux /proc/cpuinfo names) of native bf16 dot products.</summary>
    static readonly string[] NativeBf16Flags = ["avx512_bf16", "amx_bf16"];

    static bool HasNativeBf16(CpuInfo cpu) => NativeBf16Flags.Any(cpu.Has);

    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>
    /// Sets OMP_WAIT_POLICY=PASSIVE in the native environment unless the user set it: libtorch's OpenMP (libgomp) worker
    /// threads then sleep between parallel regions instead of spinning. On a busy machine spinning threads steal the
    /// core the main thread needs; measured on the shared 2-core box with the small preset (fp32, 2 threads, load ~18):
    /// decode 776-792 → 291-330 ms/token, prefill 7.5-13.7 → 3.1-4.3 s (docs/performance.md). libgomp reads the variable
    /// when libtorch loads, so call this before any tensor is created. Returns the effective value.
    /// </summary>
    public static string? RequestPassiveThreadWait()
    {
        const string name = "OMP_WAIT_POLICY";
        var current = Environment.GetEnvironmentVariable(name);
        if (current != null) return current;
        if (!OperatingSystem.IsWindows()) SetEnv(name, "PASSIVE", 0);
        Environment.SetEnvironmentVariable(name, "PASSIVE");
        return "PASSIVE";
    }

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => t.ToString(),
    };
}
