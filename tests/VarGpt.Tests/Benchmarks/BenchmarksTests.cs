using System.Text.Json;
using VarGpt.Benchmarks;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

namespace VarGpt.Tests.Benchmarks;

public class BenchmarksTests
{
    [Fact]
    public void Memory_phase_sees_an_allocation_and_the_peak_survives_its_release()
    {
        TorchTestSetup.Init();
        if (!File.Exists("/proc/self/status")) Assert.Skip("needs Linux /proc/self/status (VmHWM)");
        using var m = MemoryPhase.Start();
        Assert.True(m.PeakIsPhaseOnly, "writing /proc/self/clear_refs should reset VmHWM on Linux");
        // 256 MiB of fresh pages, touched: mapped directly, because a malloc'd block may reuse pages the process already
        // holds (MallocTuning, which other tests apply to this process, keeps freed memory in the heap)
        Assert.Equal((256L << 20) / 4096, TouchFreshPages(256L << 20));
        // freed again: RSS may drop, the phase peak must still show the 256 MiB
        Assert.True(m.PeakIncreaseBytes > 200L << 20, $"peak increase {m.PeakIncreaseBytes} bytes");
        Assert.True(m.PeakBytes >= m.EndBytes);
        Assert.True(ProcessMemory.CurrentRssBytes() > 0);
    }

    /// <summary>Maps <paramref name="bytes"/> of anonymous memory, writes one byte in every 4 KiB page, unmaps it; returns the pages written.</summary>
    static long TouchFreshPages(long bytes)
    {
        const int ProtReadWrite = 3, MapPrivateAnonymous = 0x22;
        nint p = Mmap(0, (nuint)bytes, ProtReadWrite, MapPrivateAnonymous, -1, 0);
        Assert.True(p != -1, "mmap failed");
        try
        {
            long pages = 0;
            for (long off = 0; off < bytes; off += 4096, pages++) System.Runtime.InteropServices.Marshal.WriteByte(p + (nint)off, 1);
            return pages;
        }
        finally { Munmap(p, (nuint)bytes); }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mmap")] static extern nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);
    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "munmap")] static extern int Munmap(nint addr, nuint length);

    [Fact]
    public void Timer_runs_warmups_and_repeats()
    {
        int calls = 0;
        var t = BenchTimer.Measure(() => { calls++; Thread.Sleep(2); }, repeats: 3, warmup: 2);
        Assert.Equal(5, calls);
        Assert.Equal(3, t.Count);
        Assert.True(t.Best >= 0.0015 && t.Best <= t.Median && t.Median <= t.Seconds.Max());
        Assert.Throws<ArgumentOutOfRangeException>(() => BenchTimer.Measure(() => { }, repeats: 0));
    }

    [Fact]
    public void Measure_for_runs_the_minimum_repeats_and_until_the_minimum_time_within_the_cap()
    {
        int calls = 0;
        var t = BenchTimer.MeasureFor(() => { calls++; Thread.Sleep(2); }, minSeconds: 0.05, minRepeats: 3, maxRepeats: 100);
        Assert.True(t.Count >= 3 && t.Seconds.Sum() >= 0.05, $"{t.Count} runs, {t.Seconds.Sum()} s");
        Assert.Equal(t.Count + 1, calls);   // and one warm-up
        Assert.Equal(5, BenchTimer.MeasureFor(() => Thread.Sleep(1), minSeconds: 100, minRepeats: 2, maxRepeats: 5).Count);
        Assert.Equal(4, BenchTimer.MeasureFor(() => { }, minSeconds: 0, minRepeats: 4).Count);
    }

    [Fact]
    public void Model_bounds_give_bandwidth_and_gemm_on_the_models_mlp_shape_in_float32_bfloat16_and_its_own_dtype()
    {
        TorchTestSetup.Init();
        var cfg = TestModels.TinyVargpt.Config();
        var bounds = MachineBenchmarks.MeasureBounds(cfg, ScalarType.Float16, CPU, 16L << 20, gemmSeconds: 0.02);
        Assert.Equal(["memory_read_bandwidth", "gemm_float32", "gemm_bfloat16", "gemm_float16"], bounds.Metrics.Select(m => m.Name));
        Assert.True(bounds.Bandwidth > 1e8, $"bandwidth {bounds.Bandwidth} B/s");
        Assert.Equal([ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16], bounds.Gemm.Keys);
        Assert.All(bounds.Gemm.Values, f => Assert.True(f > 1e6, $"{f} FLOP/s"));
        Assert.Contains($"linear [1024x{cfg.HiddenSize}] x [{cfg.IntermediateSize}x{cfg.HiddenSize}]^T", bounds.Metrics[1].Note);
        Assert.Equal(2.0 * 1024 * cfg.HiddenSize * cfg.IntermediateSize, GemmShape.Of(cfg).Flop);
    }

    [Fact]
    public void Machine_figures_are_positive_and_the_record_round_trips_as_json()
    {
        TorchTestSetup.Init();
        var (bw, bt) = MachineBenchmarks.MemoryReadBandwidth(16L << 20, 2);
        Assert.True(bw > 1e8, $"bandwidth {bw} B/s");
        Assert.Equal(2, bt.Count);
        var (flops, _) = MachineBenchmarks.MatmulFlops(128, ScalarType.BFloat16, 2);
        Assert.True(flops > 1e7, $"{flops} FLOP/s");
        var rec = new BenchRecord("unit").Set("n", 128).Set("dtype", "bf16").Add("x", 1.5, "s", "note");
        using var doc = JsonDocument.Parse(rec.ToJson());
        Assert.Equal("unit", doc.RootElement.GetProperty("benchmark").GetString());
        Assert.Equal(128, doc.RootElement.GetProperty("settings").GetProperty("n").GetInt32());
        Assert.Equal(1.5, doc.RootElement.GetProperty("metrics").GetProperty("x").GetProperty("value").GetDouble());
        var text = new StringWriter();
        rec.WriteText(text);
        Assert.Contains("x  ", text.ToString());
        Assert.Contains("(note)", text.ToString());
    }

    [Fact]
    public void Streaming_writer_checks_element_counts_and_matches_the_in_memory_writer()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using var a = arange(10, ScalarType.Float32);
        using var b = arange(6, ScalarType.Int64).reshape(2, 3);
        SafeTensorsWriter.Save(d["mem.safetensors"], [new("a", a), new("b", b)], floatDType: ScalarType.BFloat16);
        TensorEntry[] entries = [new("a", ScalarType.BFloat16, [10]), new("b", ScalarType.Int64, [2, 3])];
        SafeTensorsWriter.SaveStreaming(d["stream.safetensors"], entries, (e, sink) =>
        {
            if (e.Name == "a") { using var p1 = a.narrow(0, 0, 4); using var p2 = a.narrow(0, 4, 6); sink(p1); sink(p2); }
            else sink(b);
        });
        Assert.Equal(File.ReadAllBytes(d["mem.safetensors"]), File.ReadAllBytes(d["stream.safetensors"]));

        var few = Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.SaveStreaming(d["bad.safetensors"], entries, (e, sink) => sink(a.narrow(0, 0, 3))));
        Assert.Contains("'a'", few.Message);
        Assert.Contains("3 of 10", few.Message);
        var many = Assert.Throws<InvalidOperationException>(() => SafeTensorsWriter.SaveStreaming(d["bad.safetensors"], entries, (e, sink) => { sink(a); sink(a); }));
        Assert.Contains("more than 10", many.Message);
        Assert.False(File.Exists(d["bad.safetensors"]));
        Assert.Empty(Directory.GetFiles(d.Path, "bad.safetensors.tmp*"));
    }

    [Fact]
    public void State_dict_compare_reports_without_copying()
    {
        var module = new Dictionary<string, long[]> { ["a"] = [2, 3], ["b"] = [4], ["c"] = [1] };
        var source = new Dictionary<string, long[]> { ["p.a"] = [2, 3], ["p.b"] = [5], ["p.z"] = [1], ["q.other"] = [1] };
        var c = StateDict.Compare(module, source, new StateDictOptions { Prefix = "p.", AllowMissing = ["c"] });
        Assert.Equal([("a", "p.a")], c.Matched);
        Assert.Empty(c.Missing);
        Assert.Equal(["p.c"], c.AllowedMissing); // under the checkpoint name (prefix included)
        Assert.Equal(["p.z"], c.Unexpected);
        Assert.Equal("p.b", c.ShapeMismatches.Single().Name);
        Assert.False(c.IsMatch);
    }
}
