using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using VarGpt.Cli.Runner;
using VarGpt.Torch;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt doctor: this machine's CPU and libtorch facts, and the numerical self-check of the native kernels VarGpt relies on.</summary>
public static class DoctorCommand
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print one JSON object: cpu (vendor, brand, family, model, flags, caches), versions, auto_dtype, threads, switches, checks [{name, pass, default_pass, taken, attempts [{route, pass, error, tolerance, problem, implementations}]}], totals." };
        var threads = BenchCommand.ThreadsOption();
        var allRoutes = new Option<bool>("--all-routes") { Description = "Check every convolution route (default, channels_last, im2col, float64), not only until one passes." };
        var repeat = new Option<int>("--repeat") { Description = "Run the checks this many times (kernels that are only sometimes wrong); a check fails if any run fails.", DefaultValueFactory = _ => 1 };
        var inject = new Option<string[]>("--inject-fault")
        {
            Description = "Corrupt the results of these convolution routes (default, channels_last, im2col, float64) to see the checks catch it and take the next route; also read from VARGPT_CONV_FAULT.",
            AllowMultipleArgumentsPerToken = true,
        };
        var noTrace = new Option<bool>("--no-trace") { Description = "Do not record which oneDNN implementations ran (tracing briefly redirects stdout)." };
        var cmd = new Command("doctor",
            """
            Check that this machine computes right: prints the CPU (model, family, ISA flags, caches), the TorchSharp,
            libtorch and oneDNN versions, threads, then checks every native kernel VarGpt relies on against float64
            computed another way (BSQ-VAE convolutions forward and backward, linear, attention; fp32 and bf16). A
            convolution whose default implementation fails is shown with the fallback the product takes instead.
            Exit code 0 if every kernel has a right implementation here, 1 if one has none.
            """)
        { json, threads, allRoutes, repeat, inject, noTrace };
        cmd.WithExamples(
            "vargpt doctor",
            "vargpt doctor --json --threads 1",
            "vargpt doctor --repeat 20                 # kernels that are wrong only sometimes",
            "vargpt doctor --inject-fault default      # see a wrong conv kernel caught and routed around");
        cmd.SetAction(parse =>
        {
            BenchCommand.ApplyThreads(parse.GetValue(threads));
            int n = parse.GetValue(repeat);
            if (n < 1) throw new InvalidOptionException($"--repeat must be at least 1, got {n}", "--repeat");
            var faulty = ConvRouterOptions.FromEnvironment().FaultyRoutes.ToHashSet();
            try { foreach (var r in parse.GetValue(inject) ?? []) faulty.Add(ConvRoutes.Parse(r)); }
            catch (InvalidOptionException e) { throw new InvalidOptionException("--inject-fault: " + e.Message, "--inject-fault"); }
            return Run(new KernelSelfCheckOptions { AllRoutes = parse.GetValue(allRoutes), FaultyRoutes = faulty, CaptureImplementations = !parse.GetValue(noTrace) },
                n, parse.GetValue(json), parse.InvocationConfiguration.Output);
        });
        return cmd;
    }

    static int Run(KernelSelfCheckOptions options, int repeat, bool json, TextWriter o)
    {
        LibTorchNative.DisableNnpack(); // as every model load does (ConvRouter); reported below
        var env = NativeEnvironment.Read();
        // oneDNN prints its version, threading runtime and the ISA it dispatches to with its first verbose line
        IReadOnlyList<string> oneDnnInfo = options.CaptureImplementations
            ? OneDnnVerbose.Capture(() => { using var a = TorchSharp.torch.ones(32, 32, TorchSharp.torch.ScalarType.BFloat16); using var p = a.matmul(a); return 0; }).Info
            : [];
        var sw = Stopwatch.StartNew();
        IReadOnlyList<KernelCheck> checks = KernelSelfCheck.Run(options);
        for (int i = 1; i < repeat; i++)
            checks = checks.Zip(KernelSelfCheck.Run(options with { CaptureImplementations = false }), (a, b) => a.Pass && !b.Pass || a.DefaultPass && !b.DefaultPass ? b : a).ToList();
        double seconds = sw.Elapsed.TotalSeconds;
        int failed = checks.Count(c => !c.Pass), fallbacks = checks.Count(c => c.Pass && !c.DefaultPass);
        if (json) o.WriteLine(Json(env, oneDnnInfo, checks, options, repeat, seconds, failed, fallbacks));
        else Text(env, oneDnnInfo, checks, options, repeat, seconds, failed, fallbacks, o);
        return failed > 0 ? ExitCodes.Failed : ExitCodes.Ok;
    }

    static readonly string[] ImportantFlags = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_vp2intersect", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "avx10"];

    static void Text(NativeEnvironment env, IReadOnlyList<string> oneDnnInfo, IReadOnlyList<KernelCheck> checks, KernelSelfCheckOptions options, int repeat, double seconds, int failed, int fallbacks, TextWriter o)
    {
        var cpu = env.Cpu;
        o.WriteLine($"CPU          {cpu.Summary}, {cpu.LogicalProcessors} logical processors");
        if (cpu.Vendor != "")
        {
            o.WriteLine($"ISA flags    {string.Join(' ', ImportantFlags.Where(cpu.Has))}   (absent: {string.Join(' ', ImportantFlags.Where(f => !cpu.Has(f)))})");
            o.WriteLine($"caches       {(cpu.Caches.Count == 0 ? "not described by CPUID" : string.Join(", ", cpu.Caches.Where(c => c.Type != "instruction").Select(c => $"L{c.Level} {Bytes(c.Bytes)}")))} (CPUID, per core/complex)");
        }
        o.WriteLine($"TorchSharp   {env.TorchSharpVersion}; libtorch {env.LibTorchVersion ?? "?"}; oneDNN {env.OneDnnVersion ?? "?"}");
        o.WriteLine($"libtorch     CPU capability {env.CpuCapability ?? "?"}; {env.Threads} intra-op thread{(env.Threads == 1 ? "" : "s")}; oneDNN (mkldnn) {OnOff(env.MkldnnEnabled)}; NNPACK {OnOff(env.NnpackEnabled)}{(env.NnpackEnabled == false ? " (VarGpt turns it off: never used by its convolutions, and its probe floods stderr on CPUs it does not know)" : "")}");
        o.WriteLine($"oneMKL       kernels {env.MklKernels}");
        o.WriteLine($"malloc       freed memory {MallocTuning.State}");
        o.WriteLine($"Scalars      {ScalarGuard.Describe()}");
        o.WriteLine($"dtype        --dtype {TorchRuntime.AutoDTypeName} (the default of chat, generate, edit, serve) = {TorchRuntime.AutoDTypeReason(TorchSharp.torch.CPU, cpu)} on the CPU");
        foreach (var line in oneDnnInfo.Where(l => l.StartsWith("cpu,", StringComparison.Ordinal)))
            o.WriteLine($"oneDNN       {line[4..]}");
        foreach (var v in new[] { "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", MklDispatch.Variable, MallocTuning.Variable, ScalarGuard.Variable, "GLIBC_TUNABLES", ConvRouterOptions.RouteVariable, ConvRouterOptions.FaultVariable })
            if (Environment.GetEnvironmentVariable(v) is { } val) o.WriteLine($"environment  {v}={val}");
        if (options.FaultyRoutes.Count > 0) o.WriteLine($"injected     wrong results from the convolution route(s) {string.Join(", ", options.FaultyRoutes.Select(ConvRoutes.Name))}");
        o.WriteLine();
        o.WriteLine($"Kernel checks against float64 (error = max relative error; {(repeat > 1 ? $"worst of {repeat} runs; " : "")}'ran' = oneDNN implementations):");
        foreach (var c in checks)
        {
            var taken = c.Taken;
            string head = c.Pass ? (c.DefaultPass ? "PASS" : "PASS*") : "FAIL";
            o.WriteLine($"{head,-5} {c.Name}");
            foreach (var a in c.Attempts)
                o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"        {a.Route,-13} {(a.Pass ? "pass" : "FAIL")}  error {a.Error,9:G3} (tolerance {a.Tolerance:G2}){(ReferenceEquals(a, taken) && c.Attempts.Count > 1 ? "  <- taken" : "")}{(a.Problem is null ? "" : "  " + a.Problem)}{(a.Implementations.Count == 0 ? "" : "  ran: " + string.Join(", ", a.Implementations))}"));
        }
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{checks.Count} checks in {seconds:F1} s: {checks.Count - failed} right ({fallbacks} of them by a fallback route, marked PASS*), {failed} with no right implementation on this machine."));
        if (fallbacks > 0) o.WriteLine("A PASS* kernel is wrong in libtorch on this CPU; VarGpt's models detect that at their first use of each shape and take the same fallback (docs/notes/cpu-kernels.md).");
    }

    static string Json(NativeEnvironment env, IReadOnlyList<string> oneDnnInfo, IReadOnlyList<KernelCheck> checks, KernelSelfCheckOptions options, int repeat, double seconds, int failed, int fallbacks)
    {
        var cpu = env.Cpu;
        var doc = new
        {
            cpu = new { cpu.Vendor, cpu.Brand, cpu.Family, cpu.Model, cpu.Stepping, cpu.Hypervisor, cpu.LogicalProcessors, cpu.Flags, caches = cpu.Caches },
            torchsharp = env.TorchSharpVersion, libtorch = env.LibTorchVersion, onednn = env.OneDnnVersion, cpu_capability = env.CpuCapability, mkl_kernels = env.MklKernels, malloc = MallocTuning.State, scalar_guard = ScalarGuard.Describe(),
            auto_dtype = TorchRuntime.DTypeName(TorchRuntime.AutoDType(TorchSharp.torch.CPU, cpu)),
            onednn_info = oneDnnInfo, threads = env.Threads, mkldnn_enabled = env.MkldnnEnabled, nnpack_enabled = env.NnpackEnabled,
            injected_faults = options.FaultyRoutes.Select(ConvRoutes.Name).ToArray(), repeat,
            checks = checks.Select(c => new
            {
                name = c.Name, pass = c.Pass, default_pass = c.DefaultPass, taken = c.Taken?.Route,
                attempts = c.Attempts.Select(a => new { route = a.Route, pass = a.Pass, error = a.Error, tolerance = a.Tolerance, problem = a.Problem, implementations = a.Implementations }),
            }),
            passed = checks.Count - failed, failed, fallbacks, seconds,
        };
        return JsonSerializer.Serialize(doc, new JsonSerializerOptions
        {
            PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true,
            NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        });
    }

    static string OnOff(bool? b) => b is null ? "?" : b.Value ? "on" : "off";

    static string Bytes(long b) => b >= 1 << 20 ? $"{b >> 20} MiB" : $"{b >> 10} KiB";
}
