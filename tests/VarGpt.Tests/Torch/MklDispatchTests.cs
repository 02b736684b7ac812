using System.Runtime.InteropServices;
using VarGpt.Torch;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VarGpt.Tests.Torch;

/// <summary>
/// The oneMKL vendor-check shim (<see cref="MklDispatch"/>, issue 17): built and loaded wherever a C compiler is, MKL
/// then dispatches fp32 GEMM to the widest kernels the CPU has whoever made it, and those kernels' results equal a
/// float64 reference that uses no BLAS at all, on the model's own GEMM shapes.
/// </summary>
public class MklDispatchTests(ITestOutputHelper log)
{
    static bool LinuxX64 => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64;

    static bool CompilerOnPath => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Any(d => File.Exists(Path.Combine(d, "cc")));

    [Fact]
    public void The_shim_is_built_and_loaded_where_a_c_compiler_exists_and_mkl_takes_the_cpus_widest_kernels()
    {
        TorchTestSetup.Init();
        using (var a = ones(64, 64)) using (var p = a.matmul(a)) { } // MKL's first call decides its kernels
        log.WriteLine($"{CpuInfo.Detect().Summary}; oneMKL {MklDispatch.Describe()}");
        if (!LinuxX64 || Environment.GetEnvironmentVariable(MklDispatch.Variable) is not null) return;
        if (CompilerOnPath) Assert.True(MklDispatch.State == MklShimState.Loaded, MklDispatch.Describe());
        if (MklDispatch.State != MklShimState.Loaded) return;
        var cpu = CpuInfo.Detect();
        var path = MklDispatch.CodePath();
        Assert.NotNull(path);
        if (cpu.Has("avx512f") && cpu.Has("avx512bw") && cpu.Has("avx512vl")) Assert.StartsWith("avx512", path);
        else if (cpu.Has("avx2") && cpu.Has("fma")) Assert.StartsWith("avx2", path);
    }

    [Fact]
    public void Doctor_names_the_mkl_kernels_in_use()
    {
        TorchTestSetup.Init();
        var env = NativeEnvironment.Read();
        Assert.StartsWith(MklDispatch.CodePath() ?? "not reachable", env.MklKernels);
        if (MklDispatch.State == MklShimState.Loaded) Assert.Contains(MklDispatch.LibraryName, env.MklKernels);
        else if (MklDispatch.State is MklShimState.NotBuilt or MklShimState.LoadFailed) Assert.Contains("install a C compiler", env.MklKernels);
    }

    /// <summary>
    /// The fast path (whatever kernels MKL dispatched to in this process) against a reference that shares no code with
    /// it: float64 products summed by elementwise ops, in row blocks. Shapes: the small preset's q/o (896×896), MLP-like
    /// 896→2048 and 4864→512 (cut from 896↔4864 to keep the elementwise reference fast), and tail sizes that exercise
    /// the kernels' edge handling.
    /// </summary>
    [Theory]
    [InlineData(64, 896, 896)]
    [InlineData(48, 896, 2048)]
    [InlineData(48, 4864, 512)]
    [InlineData(37, 300, 129)]
    public void Fp32_linear_through_mkl_equals_a_float64_reference_without_blas(int rows, int inF, int outF)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new Generator(11UL);
        var x = randn([rows, inF], generator: g);
        var w = randn([outF, inF], generator: g) / Math.Sqrt(inF);
        var b = randn([outF], generator: g) * 0.1;
        var y = F.linear(x, w, b).to(ScalarType.Float64);
        var (x64, w64, b64) = (x.to(ScalarType.Float64), w.to(ScalarType.Float64), b.to(ScalarType.Float64));
        double worst = 0;
        for (long r0 = 0; r0 < rows; r0 += 8)
        {
            using var inner = NewDisposeScope();
            long n = Math.Min(8, rows - r0);
            var xs = x64.narrow(0, r0, n).unsqueeze(1);                      // [n,1,in]
            var reference = (xs * w64.unsqueeze(0)).sum(2) + b64;            // [n,out]
            var magnitude = (xs.abs() * w64.abs().unsqueeze(0)).sum(2) + b64.abs();
            var err = ((y.narrow(0, r0, n) - reference).abs() / magnitude).max().item<double>();
            worst = Math.Max(worst, err);
        }
        log.WriteLine($"x[{rows},{inF}] w[{outF},{inF}]: max relative error {worst:G3}; oneMKL {MklDispatch.Describe()}");
        Assert.True(worst <= ConvRoutes.Tolerance(ScalarType.Float32), $"fp32 linear off by {worst:G3} (relative to Σ|x||w|) on x[{rows},{inF}] w[{outF},{inF}]; oneMKL {MklDispatch.Describe()}");
    }
}

/// <summary>In-process malloc settings (<see cref="MallocTuning"/>, issue 17): applied on glibc Linux unless the user chose otherwise, and reported.</summary>
public class MallocTuningTests
{
    [Fact]
    public void Freed_memory_is_kept_in_process_on_glibc_linux_unless_the_user_set_malloc_tunables()
    {
        var state = MallocTuning.KeepFreedMemory();
        bool userChose = Environment.GetEnvironmentVariable(MallocTuning.Variable) is not null
            || (Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal);
        if (OperatingSystem.IsLinux() && !userChose && File.Exists("/lib/x86_64-linux-gnu/libc.so.6") | File.Exists("/lib/aarch64-linux-gnu/libc.so.6"))
            Assert.StartsWith("kept in process", state);
        Assert.Equal(state, MallocTuning.KeepFreedMemory());   // idempotent
        Assert.Equal(state, MallocTuning.State);
    }
}
