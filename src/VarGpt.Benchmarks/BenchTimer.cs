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
