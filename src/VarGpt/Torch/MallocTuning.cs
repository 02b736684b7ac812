using System.Runtime.InteropServices;

namespace VarGpt.Torch;

/// <summary>
/// Keeps the memory of freed tensors inside the process. glibc serves blocks of 128 KiB+ (its dynamic mmap threshold
/// grows to 32 MiB at most) with mmap and returns them to the OS on free, and trims the heap top above 128 KiB; libtorch
/// allocates every tensor with malloc, so every scale of the image loop and every VAE layer faults its activations in
/// again, page by page. Measured in this VM (AMD EPYC Zen 4): allocating, touching and freeing 146 MB costs 143–159 ms
/// by default and 6–12 ms with the settings below (docs/performance.md, "Fresh memory"). The settings are glibc's
/// <c>mallopt(M_MMAP_THRESHOLD)</c> and <c>mallopt(M_TRIM_THRESHOLD)</c> (the equivalent of
/// <c>GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…</c>, set in-process so that users need
/// not know). The cost: the process keeps its high-water mark of heap memory instead of giving it back (peak RSS is
/// unchanged). Limit: a thread other than the process's first allocates from a glibc arena whose heaps hold at most
/// 64 MiB, so its larger blocks are still mmapped and returned (M_ARENA_MAX cannot help: .NET threads own arenas before
/// Main runs); the CLI's model work runs on the first thread. Measured on `vargpt bench generate` (small preset, fp32,
/// 256², Zen 4, load 20+): kernel CPU time 1.80 → 1.35 s per image, total CPU 27.1 → 25.8 s. Process-wide by nature, like the allocator itself; applied once by the CLI at start.
/// <c>VARGPT_MALLOC=default</c> (or any <c>glibc.malloc</c> tunable in <c>GLIBC_TUNABLES</c>) leaves glibc's own choice.
/// </summary>
public static class MallocTuning
{
    /// <summary>Set to "default" to leave glibc's malloc settings alone.</summary>
    public const string Variable = "VARGPT_MALLOC";

    /// <summary>Blocks below this come from the heap and stay there after free (glibc's own default: 128 KiB, dynamic up to 32 MiB).</summary>
    public const int MmapThreshold = 1 << 30;

    /// <summary>Free memory at the heap top is returned to the OS only above this (glibc's default: 128 KiB).</summary>
    public const int TrimThreshold = int.MaxValue;

    static readonly object Gate = new();
    const int M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3;

    [DllImport("libc", EntryPoint = "mallopt")] static extern int MallOpt(int param, int value);

    /// <summary>What <see cref="KeepFreedMemory"/> did: "kept in process (…)", or why not.</summary>
    public static string State { get; private set; } = "glibc defaults (not applied)";

    /// <summary>
    /// Applies the settings once, unless the user chose otherwise (see the class comment). Returns <see cref="State"/>.
    /// Call before the first large allocation (settings apply to later allocations only).
    /// </summary>
    public static string KeepFreedMemory()
    {
        lock (Gate)
        {
            if (State.StartsWith("kept", StringComparison.Ordinal)) return State;
            if (!OperatingSystem.IsLinux()) return State = "not Linux: the platform allocator's defaults";
            if (string.Equals(Environment.GetEnvironmentVariable(Variable), "default", StringComparison.OrdinalIgnoreCase))
                return State = $"glibc defaults ({Variable}=default)";
            if ((Environment.GetEnvironmentVariable("GLIBC_TUNABLES") ?? "").Contains("glibc.malloc.", StringComparison.Ordinal))
                return State = "glibc settings from GLIBC_TUNABLES";
            try
            {
                // mallopt returns 1 on success; a libc without it (musl) throws EntryPointNotFoundException
                bool ok = MallOpt(M_MMAP_THRESHOLD, MmapThreshold) == 1 & MallOpt(M_TRIM_THRESHOLD, TrimThreshold) == 1;
                return State = ok ? $"kept in process (mmap_threshold {MmapThreshold >> 20} MiB, trim_threshold {TrimThreshold / (1 << 20)} MiB)"
                                  : "glibc defaults (mallopt refused the settings)";
            }
            catch (EntryPointNotFoundException) { return State = "not glibc: the C library's defaults"; }
            catch (DllNotFoundException) { return State = "not glibc: the C library's defaults"; }
        }
    }
}
