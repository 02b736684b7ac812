using VarGpt.Cli.Commands;
using VarGpt.Tests.Cli;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Tests.Torch;

/// <summary>"--dtype auto": bf16 where the CPU multiplies bf16 natively (or on CUDA), fp32 elsewhere; the CLI's default.</summary>
public class AutoDTypeTests
{
    static CpuInfo Cpu(params string[] flags) => new("AuthenticAMD", "test CPU", 25, 17, 1, false, flags, [], 2);

    [Fact]
    public void Auto_picks_bf16_only_on_CPUs_with_native_bf16_dot_products_and_on_CUDA()
    {
        Assert.Equal(ScalarType.BFloat16, TorchRuntime.AutoDType(CPU, Cpu("avx2", "avx512f", "avx512_bf16")));
        Assert.Equal(ScalarType.BFloat16, TorchRuntime.AutoDType(CPU, Cpu("avx2", "amx_tile", "amx_bf16")));
        // Cascade Lake: AVX-512 and VNNI but no bf16 instructions, so libtorch's bf16 is fp32 work plus conversions
        Assert.Equal(ScalarType.Float32, TorchRuntime.AutoDType(CPU, Cpu("avx2", "avx512f", "avx512_vnni")));
        Assert.Equal(ScalarType.Float32, TorchRuntime.AutoDType(CPU, Cpu()));
        Assert.Equal(ScalarType.BFloat16, TorchRuntime.AutoDType(new Device("cuda"), Cpu()));
        Assert.Equal("float32 (CPU has no native bf16: neither avx512_bf16 nor amx_bf16)", TorchRuntime.AutoDTypeReason(CPU, Cpu("avx512f")));
        Assert.Equal("bfloat16 (CPU has avx512_bf16)", TorchRuntime.AutoDTypeReason(CPU, Cpu("avx512_bf16")));
    }

    [Fact]
    public void Auto_needs_a_device_and_unknown_names_list_auto()
    {
        Assert.Equal(TorchRuntime.AutoDType(CPU, CpuInfo.Detect()), TorchRuntime.ParseDType(" AUTO ", CPU));
        Assert.Equal(ScalarType.Float32, TorchRuntime.ParseDType("fp32", CPU));
        Assert.Contains("needs a device", Assert.Throws<InvalidOptionException>(() => TorchRuntime.ParseDType("auto")).Message);
        Assert.Contains("expected auto, float32, bfloat16 or float16", Assert.Throws<InvalidOptionException>(() => TorchRuntime.ParseDType("fp8", CPU)).Message);
    }

    [Fact]
    public void User_commands_default_to_auto_and_the_evaluation_commands_to_float32()
    {
        Assert.Equal("auto", new ModelOptions().DType.GetDefaultValue());
        Assert.Equal("float32", new ModelOptions(defaultDType: "float32").DType.GetDefaultValue());
        foreach (var (command, expected) in new[] { ("chat", "auto"), ("generate", "auto"), ("edit", "auto"), ("serve", "auto"), ("shapes eval", "float32"), ("shapes mine-dpo", "float32") })
        {
            var (code, o, e) = CliHarness.Run([.. command.Split(' '), "--help"]);
            Assert.True(code == 0, e);
            var line = o.Split('\n').SkipWhile(l => !l.TrimStart().StartsWith("--dtype", StringComparison.Ordinal)).Take(4);
            Assert.Contains($"[default: {expected}]", string.Join(' ', line.Select(l => l.Trim())));
        }
    }
}
