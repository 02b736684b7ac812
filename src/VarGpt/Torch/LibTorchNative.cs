using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// The few libtorch C++ entry points TorchSharp does not wrap, called by their exported (Itanium-mangled) names in
/// libtorch_cpu: the backend switches of <c>at::globalContext()</c> and <c>at::show_config()</c>. Everything here reads
/// or writes state that is process-wide by nature (one <c>at::Context</c> per process, shared by every model in it);
/// VarGpt changes exactly one switch, NNPACK off (<see cref="DisableNnpack"/>), once, and never toggles anything
/// around individual calls. Every entry point is looked up by name at first use: a libtorch without it makes the
/// feature report "unavailable" instead of failing to load.
/// </summary>
public static unsafe class LibTorchNative
{
    static readonly Lazy<Exports?> _exports = new(Load);

    /// <summary>True when the libtorch_cpu exports below were found (libtorch 2.x on Linux; other platforms: false).</summary>
    public static bool Available => _exports.Value is not null;

    /// <summary>at::globalContext().userEnabledNNPACK(); null when unavailable.</summary>
    public static bool? NnpackEnabled => _exports.Value is { } e ? e.UserEnabledNnpack(e.GlobalContext()) != 0 : null;

    /// <summary>at::globalContext().userEnabledMkldnn() (oneDNN for conv/matmul); null when unavailable.</summary>
    public static bool? MkldnnEnabled => _exports.Value is { } e ? e.UserEnabledMkldnn(e.GlobalContext()) != 0 : null;

    /// <summary>
    /// Turns libtorch's NNPACK convolution backend off (<c>at::globalContext().setUserEnabledNNPACK(false)</c>), which
    /// silences "Could not initialize NNPACK! Reason: Unsupported hardware." at its source: ATen's
    /// <c>ConvParams::use_nnpack</c> tests the user switch before it calls <c>at::_nnpack_available()</c>, whose
    /// <c>init_nnpack</c> logs that warning on every call on CPUs NNPACK's cpuinfo does not recognise (one line per
    /// small fp32 conv). NNPACK is never chosen for VarGpt's convolutions anyway (only for fp32 inference with batch ≥ 16
    /// when oneDNN is not used), so results do not change (docs/notes/cpu-kernels.md). Idempotent; returns false
    /// when the export is unavailable.
    /// </summary>
    public static bool DisableNnpack()
    {
        if (_exports.Value is not { } e) return false;
        e.SetUserEnabledNnpack(e.GlobalContext(), 0);
        return true;
    }

    /// <summary>
    /// libtorch's build description (<c>at::show_config()</c>, what <c>torch.__config__.show()</c> prints): PyTorch
    /// version, oneDNN version and commit, CPU capability, build flags. Null when unavailable.
    /// </summary>
    public static string? ShowConfig() => _exports.Value is { } e ? CallStringFunction(e.ShowConfig) : null;

    /// <summary>oneDNN's version string as libtorch reports it (<c>at::get_mkldnn_version()</c>); null when unavailable.</summary>
    public static string? OneDnnVersion() => _exports.Value is { } e ? CallStringFunction(e.GetMkldnnVersion) : null;

    /// <summary>oneMKL's dispatch code (<c>mkl_serv_cpu_detect()</c>; the first call decides it); null when unavailable. See <see cref="MklDispatch"/>.</summary>
    public static int? MklCpuType() => _exports.Value is { MklCpuDetect: not null } e ? e.MklCpuDetect() : null;

    /// <summary>
    /// Sets oneDNN's verbose level at run time (<c>torch::verbose::_mkldnn_set_verbose</c>; 1 = one line per primitive
    /// execution on stdout, naming the implementation). Process-wide; used only by <see cref="OneDnnVerbose.Capture"/>.
    /// </summary>
    internal static bool SetOneDnnVerbose(int level) => _exports.Value is { } e && e.MkldnnSetVerbose(level) != 0;

    // std::string (libstdc++ cxx11 ABI) returned by value: the caller passes a 32-byte buffer as the hidden first
    // argument; the string is {char* data; size_t length; char local[16] or capacity}. Heap storage is released with
    // libstdc++'s operator delete (the allocator libtorch used).
    static string CallStringFunction(delegate* unmanaged<byte*, byte*> f)
    {
        var buf = stackalloc byte[32];
        f(buf);
        byte* data = *(byte**)buf;
        long len = *(long*)(buf + 8);
        var s = System.Text.Encoding.UTF8.GetString(data, checked((int)len));
        if (data != buf + 16) OperatorDelete(data);
        return s;
    }

    [DllImport("libstdc++.so.6", EntryPoint = "_ZdlPv")] static extern void OperatorDelete(byte* p);

    sealed class Exports
    {
        public delegate* unmanaged<nint> GlobalContext;
        public delegate* unmanaged<nint, byte> UserEnabledNnpack;
        public delegate* unmanaged<nint, byte, void> SetUserEnabledNnpack;
        public delegate* unmanaged<nint, byte> UserEnabledMkldnn;
        public delegate* unmanaged<byte*, byte*> ShowConfig;
        public delegate* unmanaged<byte*, byte*> GetMkldnnVersion;
        public delegate* unmanaged<int, int> MkldnnSetVerbose;
        public delegate* unmanaged<int> MklCpuDetect;   // optional: libtorch builds without MKL lack it
    }

    static Exports? Load()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return null;
        _ = get_num_threads(); // makes TorchSharp load libtorch first, so the handle below is the copy it uses
        if (!NativeLibrary.TryLoad("libtorch_cpu.so", typeof(TorchSharp.torch).Assembly, DllImportSearchPath.AssemblyDirectory | DllImportSearchPath.ApplicationDirectory, out var lib)
            && !NativeLibrary.TryLoad("libtorch_cpu.so", out lib))
            return null;
        nint Get(string name) => NativeLibrary.TryGetExport(lib, name, out var p) ? p : 0;
        var p = new[]
        {
            Get("_ZN2at13globalContextEv"),
            Get("_ZNK2at7Context17userEnabledNNPACKEv"),
            Get("_ZN2at7Context20setUserEnabledNNPACKEb"),
            Get("_ZNK2at7Context17userEnabledMkldnnEv"),
            Get("_ZN2at11show_configB5cxx11Ev"),
            Get("_ZN2at18get_mkldnn_versionB5cxx11Ev"),
            Get("_ZN5torch7verbose19_mkldnn_set_verboseEi"),
        };
        if (p.Any(x => x == 0)) return null;
        return new Exports
        {
            GlobalContext = (delegate* unmanaged<nint>)p[0],
            UserEnabledNnpack = (delegate* unmanaged<nint, byte>)p[1],
            SetUserEnabledNnpack = (delegate* unmanaged<nint, byte, void>)p[2],
            UserEnabledMkldnn = (delegate* unmanaged<nint, byte>)p[3],
            ShowConfig = (delegate* unmanaged<byte*, byte*>)p[4],
            GetMkldnnVersion = (delegate* unmanaged<byte*, byte*>)p[5],
            MkldnnSetVerbose = (delegate* unmanaged<int, int>)p[6],
            MklCpuDetect = (delegate* unmanaged<int>)Get("mkl_serv_cpu_detect"),
        };
    }
}
