using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>
/// Drops the resident pages of a memory-mapped weight view (<see cref="StateDictOptions.MemoryMap"/>) from the process:
/// madvise(MADV_DONTNEED) on the pages lying wholly inside the view. On a private file mapping the pages stay in the
/// page cache and a later touch reads them back from the file, so this only frees RSS, never changes a value. Used
/// when a weight is replaced after it was read (int8 quantization at load): without it the bf16 pages just read would
/// stay counted in the process until the whole shard is unmapped.
/// </summary>
public static class MappedPages
{
    /// <summary>Releases the pages of <paramref name="view"/> (a CPU tensor that is a view of a file mapping); no-op off Linux. Returns the bytes advised.</summary>
    public static long Release(Tensor view)
    {
        if (!OperatingSystem.IsLinux() || view.device_type != TorchSharp.DeviceType.CPU || view.numel() == 0 || !view.is_contiguous()) return 0;
        if (view.numel() * view.element_size() > int.MaxValue && view.shape[0] > 1)   // Tensor.bytes is an int-length span
        {
            long half = view.shape[0] / 2;
            using var first = view.narrow(0, 0, half);
            using var second = view.narrow(0, half, view.shape[0] - half);
            return Release(first) + Release(second);
        }
        long page = Environment.SystemPageSize;
        unsafe
        {
            fixed (byte* p = view.bytes)
            {
                long start = (long)p, end = start + view.numel() * view.element_size();
                long a = (start + page - 1) / page * page, b = end / page * page;   // pages shared with a neighbour stay
                if (b <= a) return 0;
                return Madvise((nint)a, (nuint)(b - a), MadvDontneed) == 0 ? b - a : 0;
            }
        }
    }

    const int MadvDontneed = 4;
    [DllImport("libc", EntryPoint = "madvise", SetLastError = true)] static extern int Madvise(nint addr, nuint length, int advice);
}
