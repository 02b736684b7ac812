using VarGpt.Configuration;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Benchmarks;

/// <summary>Settings of <see cref="MachineBenchmarks.Run"/> (kept small by default: a few seconds on a shared 2-core machine).</summary>
public sealed record MachineBenchOptions
{
    /// <summary>Size of the fp32 tensor summed for the read bandwidth (well above the caches).</summary>
    public long BandwidthBytes { get; init; } = 256L << 20;
    /// <summary>Square matmul size n: [n, n] x [n, n]^T through linear, 2n^3 FLOP.</summary>
    public int MatmulN { get; init; } = 1024;
    public int Repeats { get; init; } = 5;
    public Device? Device { get; init; }
}

/// <summary>
/// Figures that bound what the model can do on this machine: memory read bandwidth (decoding a bf16 LM is
/// bandwidth-bound: tokens/s &lt;= bandwidth / weight bytes) and matmul throughput in fp32 and bf16 (prefill and
/// image generation are compute-bound). Best of N runs, after one warm-up.
/// </summary>
public static class MachineBenchmarks
{
    /// <summary>Read bandwidth in bytes/s: sum() over a large fp32 tensor, best of <paramref name="repeats"/>.</summary>
    public static (double BytesPerSecond, TimingStats Timing) MemoryReadBandwidth(long bytes, int repeats, Device? device = null)
    {
        long n = Math.Max(1, bytes / 4);
        using var x = ones(n, ScalarType.Float32, device ?? CPU);
        var t = BenchTimer.Measure(() => { using var s = x.sum(); }, repeats, warmup: 1, device);
        return (n * 4.0 / t.Best, t);
    }

    /// <summary>
    /// Matmul throughput in FLOP/s for [n, n] x [n, n]^T in <paramref name="dtype"/> through functional.linear (the path
    /// the model layers take; fp16/bf16 matmul through torch.matmul can be pathological on the CPU), best of repeats.
    /// </summary>
    public static (double FlopsPerSecond, TimingStats Timing) MatmulFlops(int n, ScalarType dtype, int repeats, Device? device = null) =>
        Gemm(new GemmShape(n, n, n), dtype, device, work => BenchTimer.Measure(work, repeats, warmup: 1, device));

    /// <summary>
    /// GEMM throughput in FLOP/s of functional.linear on one of the model's own shapes (<see cref="GemmShape.Of"/>), timed
    /// for at least <paramref name="minSeconds"/> and 10 runs (<see cref="BenchTimer.MeasureFor"/>); best run.
    /// </summary>
    public static (double FlopsPerSecond, TimingStats Timing) GemmFlops(GemmShape shape, ScalarType dtype, Device? device = null, double minSeconds = 1.0) =>
        Gemm(shape, dtype, device, work => BenchTimer.MeasureFor(work, minSeconds, device: device));

    static (double FlopsPerSecond, TimingStats Timing) Gemm(GemmShape shape, ScalarType dtype, Device? device, Func<Action, TimingStats> time)
    {
        var dev = device ?? CPU;
        using var g = new Generator(0, CPU);
        using var a = randn([shape.Rows, shape.In], ScalarType.Float32, generator: g).to(dtype, dev);
        using var w = randn([shape.Out, shape.In], ScalarType.Float32, generator: g).to(dtype, dev);
        var t = time(() => { using var y = nn.functional.linear(a, w); });
        return (shape.Flop / t.Best, t);
    }

    static BenchMetric BandwidthMetric(double bytesPerSecond, TimingStats t, long bytes) =>
        new("memory_read_bandwidth", bytesPerSecond / 1e9, "GB/s", $"sum() of {bytes >> 20} MiB fp32, best of {t.Count}, median {t.Median * 1e3:F1} ms");

    /// <summary>
    /// The bounds a model benchmark's figures are read against, measured in the same run: read bandwidth (decode) and
    /// GEMM throughput on the model's MLP shape in float32, bfloat16 and the model's own dtype (prefill, image scales,
    /// the FLOP bound), with their metrics for the benchmark's record.
    /// </summary>
    public static ModelBounds MeasureBounds(VargptConfig config, ScalarType modelDType, Device device, long bandwidthBytes = 256L << 20,
        TextWriter? log = null, double gemmSeconds = 1.0)
    {
        log?.WriteLine($"measuring memory read bandwidth and {get_num_threads()}-thread GEMM throughput...");
        var (bw, bwt) = MemoryReadBandwidth(bandwidthBytes, 10, device);
        var metrics = new List<BenchMetric> { BandwidthMetric(bw, bwt, bandwidthBytes) };
        var shape = GemmShape.Of(config);
        var gemm = new Dictionary<ScalarType, double>();
        foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16, modelDType }.Distinct())
        {
            var (f, t) = GemmFlops(shape, dt, device, gemmSeconds);
            gemm[dt] = f;
            metrics.Add(new($"gemm_{TorchRuntime.DTypeName(dt)}", f / 1e9, "GFLOP/s",
                $"linear {shape} (the LM MLP up-projection), best of {t.Count}, median {shape.Flop / t.Median / 1e9:F0} GFLOP/s"));
        }
        return new ModelBounds(bw, gemm, metrics);
    }

    /// <summary>All machine figures as one record (metrics: memory_read_bandwidth, matmul_fp32, matmul_bf16, peak_rss).</summary>
    public static BenchRecord Run(MachineBenchOptions? options = null)
    {
        options ??= new MachineBenchOptions();
        var dev = options.Device ?? CPU;
        var rec = new BenchRecord("machine")
            .Set("device", dev.ToString())
            .Set("bandwidth_bytes", options.BandwidthBytes)
            .Set("matmul_n", options.MatmulN)
            .Set("repeats", options.Repeats);
        using var mem = MemoryPhase.Start();
        var (bw, bwt) = MemoryReadBandwidth(options.BandwidthBytes, options.Repeats, dev);
        rec.Metrics.Add(BandwidthMetric(bw, bwt, options.BandwidthBytes));
        foreach (var (name, dt) in new[] { ("matmul_fp32", ScalarType.Float32), ("matmul_bf16", ScalarType.BFloat16) })
        {
            var (f, ft) = MatmulFlops(options.MatmulN, dt, options.Repeats, dev);
            rec.Add(name, f / 1e9, "GFLOP/s", $"linear [{options.MatmulN}x{options.MatmulN}] x [{options.MatmulN}x{options.MatmulN}]^T, best of {ft.Count}, median {ft.Median * 1e3:F1} ms");
        }
        rec.Add("peak_rss", mem.PeakBytes / 1e6, "MB", mem.PeakIsPhaseOnly ? "VmHWM during the benchmark" : "process VmHWM (no per-phase reset on this system)");
        return rec;
    }
}

/// <summary>Read bandwidth (bytes/s), GEMM throughput (FLOP/s) by dtype, and the metrics that report them.</summary>
public sealed record ModelBounds(double Bandwidth, IReadOnlyDictionary<ScalarType, double> Gemm, IReadOnlyList<BenchMetric> Metrics);

/// <summary>One GEMM shape: [Rows, In] × [Out, In]ᵀ (functional.linear).</summary>
public sealed record GemmShape(long Rows, long In, long Out)
{
    public double Flop => 2.0 * Rows * In * Out;
    public override string ToString() => $"[{Rows}x{In}] x [{Out}x{In}]^T";

    /// <summary>
    /// The language model's MLP up-projection over 1024 rows (the final scale of a 512×512 image; a long prefill): the
    /// largest GEMM of every image scale and of prefill, so the throughput that bounds them.
    /// </summary>
    public static GemmShape Of(VargptConfig config) => new(1024, config.HiddenSize, config.IntermediateSize);
}
