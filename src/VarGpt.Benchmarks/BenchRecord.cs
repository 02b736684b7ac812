using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace VarGpt.Benchmarks;

/// <summary>One measured figure: name, value, unit (e.g. "GB/s", "s", "bytes"), optional note on how it was measured.</summary>
public sealed record BenchMetric(string Name, double Value, string Unit, string? Note = null);

/// <summary>The machine a benchmark ran on (recorded with every result so figures can be compared).</summary>
/// MklKernels: the oneMKL kernel set fp32 GEMM dispatches to; Malloc: whether freed memory stays in the process
/// (both move the figures by tens of percent, issue 17).
public sealed record MachineInfo(string Os, string Cpu, int LogicalCores, long? TotalMemoryBytes, int TorchThreads, string TorchSharp, string Runtime,
    string? MklKernels = null, string? Malloc = null)
{
    public static MachineInfo Current() => new(
        RuntimeInformation.OSDescription,
        CpuModel() ?? RuntimeInformation.ProcessArchitecture.ToString(),
        Environment.ProcessorCount,
        MemTotal(),
        get_num_threads(),
        typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "?",
        RuntimeInformation.FrameworkDescription,
        VarGpt.Torch.MklDispatch.Describe(),
        VarGpt.Torch.MallocTuning.State);

    static string? CpuModel()
    {
        if (!File.Exists("/proc/cpuinfo")) return null;
        var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
        return line?[(line.IndexOf(':') + 1)..].Trim();
    }

    static long? MemTotal()
    {
        if (!File.Exists("/proc/meminfo")) return null;
        var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
        var parts = line?["MemTotal:".Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return parts != null && long.TryParse(parts[0], out var kb) ? kb * 1024 : null;
    }
}

/// <summary>
/// A benchmark result: name, settings, machine, metrics. <see cref="ToJson"/> gives one JSON object (for --json and
/// for collecting runs); <see cref="WriteText"/> the aligned human form. Benchmarks add metrics with <see cref="Add"/>.
/// </summary>
public sealed class BenchRecord(string benchmark)
{
    public string Benchmark { get; } = benchmark;
    public DateTimeOffset Timestamp { get; } = DateTimeOffset.UtcNow;
    public MachineInfo Machine { get; init; } = MachineInfo.Current();
    /// <summary>Settings of the run (sizes, dtype, device, repeats...), in insertion order.</summary>
    public List<KeyValuePair<string, object>> Settings { get; } = [];
    public List<BenchMetric> Metrics { get; } = [];

    public BenchRecord Set(string name, object value)
    {
        Settings.Add(new(name, value));
        return this;
    }

    public BenchRecord Add(string name, double value, string unit, string? note = null)
    {
        Metrics.Add(new BenchMetric(name, value, unit, note));
        return this;
    }

    public JsonObject ToJsonObject()
    {
        var settings = new JsonObject();
        foreach (var (k, v) in Settings)
            settings[k] = v switch
            {
                int i => i, long l => l, double d => d, float f => f, bool b => b,
                _ => Convert.ToString(v, CultureInfo.InvariantCulture),
            };
        var metrics = new JsonObject();
        foreach (var m in Metrics)
        {
            var o = new JsonObject { ["value"] = m.Value, ["unit"] = m.Unit };
            if (m.Note != null) o["note"] = m.Note;
            metrics[m.Name] = o;
        }
        return new JsonObject
        {
            ["benchmark"] = Benchmark,
            ["timestamp"] = Timestamp.ToString("o", CultureInfo.InvariantCulture),
            ["machine"] = JsonSerializer.SerializeToNode(Machine, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }),
            ["settings"] = settings,
            ["metrics"] = metrics,
        };
    }

    public string ToJson(bool indented = true) =>
        ToJsonObject().ToJsonString(new JsonSerializerOptions { WriteIndented = indented, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });

    public void WriteText(TextWriter o)
    {
        o.WriteLine($"{Benchmark}: {Machine.Cpu}, {Machine.LogicalCores} logical cores, {FormatBytes(Machine.TotalMemoryBytes)} RAM, torch threads {Machine.TorchThreads}, TorchSharp {Machine.TorchSharp}");
        if (Machine.MklKernels is not null) o.WriteLine($"  oneMKL kernels: {Machine.MklKernels}; malloc: freed memory {Machine.Malloc}");
        if (Settings.Count > 0) o.WriteLine("  settings: " + string.Join(", ", Settings.Select(kv => $"{kv.Key}={Convert.ToString(kv.Value, CultureInfo.InvariantCulture)}")));
        int w = Metrics.Count == 0 ? 0 : Metrics.Max(m => m.Name.Length);
        foreach (var m in Metrics)
            o.WriteLine($"  {m.Name.PadRight(w)}  {Format(m.Value),12} {m.Unit}{(m.Note != null ? "   (" + m.Note + ")" : "")}");
    }

    static string Format(double v) => Math.Abs(v) >= 1e5 || v == Math.Floor(v) && Math.Abs(v) >= 1
        ? v.ToString("N0", CultureInfo.InvariantCulture)
        : v.ToString("G4", CultureInfo.InvariantCulture);

    static string FormatBytes(long? b) => b is { } x ? (x / (double)(1L << 30)).ToString("F1", CultureInfo.InvariantCulture) + " GiB" : "?";
}
