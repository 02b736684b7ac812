namespace VarGpt.Benchmarks;

/// <summary>
/// Resident memory of this process from /proc/self/status (Linux): VmRSS now, VmHWM = the peak since start or since
/// the last <see cref="TryResetPeak"/>. On other systems the Linux-only figures are null and
/// <see cref="CurrentRssBytes"/> falls back to Environment.WorkingSet.
/// </summary>
public static class ProcessMemory
{
    const string Status = "/proc/self/status";

    public static long CurrentRssBytes() => ReadStatusKb("VmRSS:") is { } kb ? kb * 1024 : Environment.WorkingSet;

    /// <summary>Peak resident set (VmHWM) in bytes, or null where /proc is unavailable.</summary>
    public static long? PeakRssBytes() => ReadStatusKb("VmHWM:") is { } kb ? kb * 1024 : null;

    /// <summary>
    /// Resets VmHWM to the current RSS by writing "5" to /proc/self/clear_refs (Linux 4.0+), so a later
    /// <see cref="PeakRssBytes"/> measures one phase. Returns false where that is not possible.
    /// </summary>
    public static bool TryResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException) { return false; }
    }

    static long? ReadStatusKb(string key)
    {
        if (!File.Exists(Status)) return null;
        foreach (var line in File.ReadLines(Status))
            if (line.StartsWith(key, StringComparison.Ordinal))
            {
                var parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.TryParse(parts[0], out var kb) ? kb : null;
            }
        return null;
    }
}

/// <summary>
/// Memory of one phase: RSS at the start, the peak during it (VmHWM after a reset; if the reset is not possible the
/// peak is the process peak so far and <see cref="PeakIsPhaseOnly"/> is false), and RSS at the end.
/// <code>using (var m = MemoryPhase.Start()) { ... }  // then m.PeakBytes, m.EndBytes</code>
/// </summary>
public sealed class MemoryPhase : IDisposable
{
    public long StartBytes { get; }
    public bool PeakIsPhaseOnly { get; }
    long? _peak;
    long? _end;

    MemoryPhase()
    {
        PeakIsPhaseOnly = ProcessMemory.TryResetPeak();
        StartBytes = ProcessMemory.CurrentRssBytes();
    }

    public static MemoryPhase Start() => new();

    /// <summary>Ends the phase (idempotent) and records its figures.</summary>
    public MemoryPhase Stop()
    {
        _end ??= ProcessMemory.CurrentRssBytes();
        _peak ??= ProcessMemory.PeakRssBytes() ?? Math.Max(StartBytes, _end.Value);
        return this;
    }

    public long PeakBytes => Stop()._peak!.Value;
    public long EndBytes => Stop()._end!.Value;
    /// <summary>How far the phase rose above its starting RSS.</summary>
    public long PeakIncreaseBytes => Math.Max(0, PeakBytes - StartBytes);

    public void Dispose() => Stop();
}
