using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace VarGpt.Torch;

/// <summary>What <see cref="MklDispatch"/> did at start.</summary>
public enum MklShimState
{
    /// <summary>The shim is loaded: MKL dispatches by the CPU's features on every vendor.</summary>
    Loaded,
    /// <summary>Not attempted: not Linux x86-64, or <c>VARGPT_MKL_VENDOR_CHECK=keep</c>.</summary>
    Off,
    /// <summary>The library is not next to VarGpt.dll (built without a C compiler).</summary>
    NotBuilt,
    /// <summary>dlopen failed (see <see cref="MklDispatch.Problem"/>).</summary>
    LoadFailed,
}

/// <summary>
/// oneMKL (linked into libtorch_cpu.so; libtorch's fp32 <c>linear</c>/<c>matmul</c> on the CPU is MKL sgemm) takes its
/// generic kernels on every CPU that is not a genuine Intel one: on AMD Zen 5 that halves fp32 GEMM throughput
/// (140–160 GFLOP/s against OpenBLAS's 300–350 on the same 2 cores, issue 17). MKL decides once, at its first call,
/// by asking <c>mkl_serv_intel_cpu_true()</c>; libtorch exports that symbol and calls it through the PLT, so the tiny
/// native library libvargpt_mkl_cpu.so (src/VarGpt/Native/vargpt_mkl_cpu.c, one function returning 1) loaded with
/// RTLD_GLOBAL before that call replaces the answer, and MKL then picks its kernels from the CPUID feature bits as it
/// does on Intel (AVX-512 on Zen 4/5). Process-wide by nature (one MKL per process); done once, when the VarGpt
/// assembly loads (<see cref="Initialize"/>), which is before any VarGpt code can run a GEMM. Numerics: another
/// kernel, the same products summed in another order (fp32 rounding); checked against float64 by
/// <see cref="KernelSelfCheck"/> like every other kernel, and the golden fixtures run through it.
/// <c>VARGPT_MKL_VENDOR_CHECK=keep</c> leaves MKL's own choice (diagnostics, A/B measurements).
/// </summary>
public static class MklDispatch
{
    /// <summary>Set to "keep" to leave MKL's vendor check alone.</summary>
    public const string Variable = "VARGPT_MKL_VENDOR_CHECK";
    public const string LibraryName = "libvargpt_mkl_cpu.so";

    const int RTLD_NOW = 2, RTLD_GLOBAL = 0x100;
    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string path, int flags);
    [DllImport("libc", EntryPoint = "dlerror")] static extern nint DlError();

    static readonly object Gate = new();
    static MklShimState? _state;

    public static MklShimState State { get { Initialize(); return _state!.Value; } }
    /// <summary>Why the shim is not loaded (null when loaded or off).</summary>
    public static string? Problem { get; private set; }

#pragma warning disable CA2255 // a library module initializer on purpose: it must run before libtorch's first MKL call
    [ModuleInitializer]
    internal static void OnLoad() => Initialize();
#pragma warning restore CA2255

    /// <summary>Loads the shim once (idempotent, thread safe). Called when the VarGpt assembly loads.</summary>
    public static void Initialize()
    {
        lock (Gate)
        {
            if (_state is not null) return;
            _state = Load();
        }
    }

    static MklShimState Load()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return MklShimState.Off;
        if (string.Equals(Environment.GetEnvironmentVariable(Variable), "keep", StringComparison.OrdinalIgnoreCase)) return MklShimState.Off;
        var dir = Path.GetDirectoryName(typeof(MklDispatch).Assembly.Location);
        var path = string.IsNullOrEmpty(dir) ? null : Path.Combine(dir, LibraryName);
        if (path is null || !File.Exists(path))
        {
            Problem = $"{LibraryName} is not next to VarGpt.dll (built without a C compiler?)";
            return MklShimState.NotBuilt;
        }
        if (DlOpen(path, RTLD_NOW | RTLD_GLOBAL) == 0)
        {
            var e = DlError();
            Problem = $"dlopen {path}: {(e == 0 ? "unknown error" : Marshal.PtrToStringUTF8(e))}";
            return MklShimState.LoadFailed;
        }
        return MklShimState.Loaded;
    }

    /// <summary>
    /// The kernel set MKL dispatches to in this process (its first call decides), from MKL's own
    /// <c>mkl_serv_cpu_detect()</c>: "generic", "sse4.2", "avx2", "avx512", ...; null when MKL is not reachable.
    /// </summary>
    public static string? CodePath()
    {
        int? t = LibTorchNative.MklCpuType();
        return t is int v ? CodePathName(v) : null;
    }

    /// <summary>
    /// One line for reports (<c>vargpt doctor</c>, benchmarks): the kernel set MKL uses and whether the vendor-check
    /// shim is in place, with what to do when it could not be.
    /// </summary>
    public static string Describe()
    {
        var path = CodePath() ?? "not reachable (libtorch without MKL?)";
        return State switch
        {
            MklShimState.Loaded => $"{path}; vendor check answered by {LibraryName}",
            MklShimState.Off => $"{path}; vendor check left to MKL ({(OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 ? $"{Variable}=keep" : "not Linux x86-64")})",
            _ => $"{path}; {Problem}: on non-Intel CPUs MKL keeps its generic kernels (slower fp32 GEMM, same results within rounding); install a C compiler (gcc) and rebuild",
        };
    }

    /// <summary>MKL's cpu type codes (the kernel libraries of a dynamic MKL: libmkl_def, _mc3, _avx2, _avx512).</summary>
    public static string CodePathName(int type) => type switch
    {
        0 or 1 => "generic (libmkl_def)",
        2 or 3 => "sse4.2 (libmkl_mc3)",
        4 or 5 or 15 => "avx2 (libmkl_avx2)",
        >= 6 and <= 16 => "avx512 (libmkl_avx512)",
        _ => $"unknown ({type})",
    };
}
