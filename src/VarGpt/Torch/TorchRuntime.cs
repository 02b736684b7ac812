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
        _ => throw new InvalidOptionException($"unknown dtype '{name}'; expected float32, bfloat16 or float16"),
    };

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
