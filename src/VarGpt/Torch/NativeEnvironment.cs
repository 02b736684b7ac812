using System.Text.RegularExpressions;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// The facts a native-kernel problem report needs: the CPU (<see cref="CpuInfo"/>), the TorchSharp / libtorch /
/// oneDNN versions, the CPU capability libtorch dispatches its own kernels to, intra-op threads, and the libtorch
/// backend switches, and the oneMKL kernel set fp32 GEMM dispatches to (<see cref="MklDispatch"/>). Read-only;
/// <see cref="Read"/> costs a few milliseconds.
/// </summary>
public sealed record NativeEnvironment(CpuInfo Cpu, string TorchSharpVersion, string? LibTorchVersion, string? OneDnnVersion,
    string? CpuCapability, int Threads, bool? MkldnnEnabled, bool? NnpackEnabled, string? BuildConfig, string MklKernels)
{
    public static NativeEnvironment Read()
    {
        var config = LibTorchNative.ShowConfig();
        string? Find(string pattern) => config is null ? null : Regex.Match(config, pattern, RegexOptions.Multiline) is { Success: true } m ? m.Groups[1].Value.Trim() : null;
        return new NativeEnvironment(
            CpuInfo.Detect(),
            typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString(3) ?? "?",
            Find(@"PyTorch version:?\s*([^\s,]+)") ?? Find(@"TORCH_VERSION=([^\s,]+)"),
            Find(@"(?:oneDNN|MKL-DNN)\s+(v[^\n]+)") ?? LibTorchNative.OneDnnVersion(),
            Find(@"CPU capability usage:\s*(\S+)"),
            get_num_threads(),
            LibTorchNative.MkldnnEnabled,
            LibTorchNative.NnpackEnabled,
            config,
            MklDispatch.Describe());
    }
}
