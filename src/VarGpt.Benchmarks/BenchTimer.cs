using System.Diagnostics;
using static TorchSharp.torch;

namespace VarGpt.Benchmarks;

/// <summary>Wall times of repeated runs of one piece of work, in seconds.</summary>
public sealed record TimingStats(IReadOnlyList<double> Seconds)
{
    public double Best => Seconds.Min();
    public double Mean => Seconds.Average();
    public double Median
    {
        get
        {
            var s = Seconds.Order().ToArray();
            return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
        }
    }
    public int Count => Seconds.Count;
}

/// <summary>
/// Times work with warm-up runs and repeats. The device is synchronised before the clock stops (a no-op on the CPU,
/// where libtorch calls are synchronous), so CUDA timings measure the work and not the launch.
/// </summary>
public static class BenchTimer
{
    /// <summary>Runs <paramref name="work"/> warmup times untimed, then repeats times timed.</summary>
    public static TimingStats Measure(Action work, int repeats = 5, int warmup = 1, Device? device = null)
    {
        if (repeats < 1) throw new ArgumentOutOfRangeException(nameof(repeats), repeats, "must be at least 1");
        for (int i = 0; i < warmup; i++) { work(); Sync(device); }
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            work();
            Sync(device);
            times[i] = sw.Elapsed.TotalSeconds;
        }
        return new TimingStats(times);
    }

    /// <summary>
    /// Times <paramref name="work"/> until <paramref name="minSeconds"/> of timed runs and at least
    /// <paramref name="minRepeats"/> runs (at most <paramref name="maxRepeats"/>), after one warm-up: a short kernel
    /// timed three times gave figures 1.8× apart on a busy machine, the best of many is what the hardware can do.
    /// </summary>
    public static TimingStats MeasureFor(Action work, double minSeconds, int minRepeats = 10, int maxRepeats = 1000, Device? device = null)
    {
        if (minRepeats < 1 || maxRepeats < minRepeats) throw new ArgumentOutOfRangeException(nameof(minRepeats), minRepeats, $"need 1 <= minRepeats <= maxRepeats ({maxRepeats})");
        work(); Sync(device);
        var times = new List<double>();
        double total = 0;
        while (times.Count < maxRepeats && (times.Count < minRepeats || total < minSeconds))
        {
            var sw = Stopwatch.StartNew();
            work();
            Sync(device);
            times.Add(sw.Elapsed.TotalSeconds);
            total += times[^1];
        }
        return new TimingStats(times.ToArray());
    }

    /// <summary>Wall time of one run (seconds) and its result.</summary>
    public static (T Result, double Seconds) Time<T>(Func<T> work, Device? device = null)
    {
        var sw = Stopwatch.StartNew();
        var r = work();
        Sync(device);
        return (r, sw.Elapsed.TotalSeconds);
    }

    static void Sync(Device? device)
    {
        if (device is { type: TorchSharp.DeviceType.CUDA }) cuda.synchronize(device);
    }
}
