using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>
/// Guards the memory mappings of a checkpoint file against another program truncating or rewriting the file in place,
/// which would otherwise kill the process with SIGBUS at the next touch of a lost page (docs/reliability.md). Linux
/// read leases (fcntl F_SETLEASE, F_RDLCK): a process that opens the file for writing or truncates it is held by the
/// kernel while we get SIGIO. The handler copies each mapping into anonymous memory and moves the copy over the mapping
/// in one mremap, so views keep their addresses and the values they were loaded with, then releases the lease and the
/// writer goes on. (Copy-on-write is not enough: truncation drops even the private copies of a MAP_PRIVATE mapping.)
/// Renames and deletes need no lease: the mapping keeps the old inode.
/// The lease keeps a reference to each mapping, so the mapping cannot be freed under the handler; disposing the lease
/// drops the references and the guard. When no lease can be had (not the file's owner without CAP_LEASE, a file
/// system without leases, the file already open for writing, not Linux x64/arm64) <see cref="TryTake"/> returns null
/// and the caller copies instead. The kernel waits /proc/sys/fs/lease-break-time seconds (45 by default) for the copy;
/// a file that cannot be read that fast is the remaining risk.
/// </summary>
public sealed class MappedFileLease : IDisposable
{
    /// <summary>The file the lease is on.</summary>
    public string Path { get; }

    /// <summary>A writer broke the lease: the mappings were moved to anonymous copies; the file may now differ from them.</summary>
    public bool Broken { get { lock (Held) return _broken; } }

    readonly SafeFileHandle _handle;
    /// <summary>Whole-file tensors over the mappings (one per element type viewed): they keep the mappings alive.</summary>
    readonly List<Tensor> _maps = [];
    bool _broken, _disposed;

    MappedFileLease(string path, SafeFileHandle handle)
    {
        Path = path;
        _handle = handle;
    }

    // Signals and leases belong to the process, so does the table of held leases; every access under its lock.
    static readonly List<MappedFileLease> Held = [];
    static PosixSignalRegistration? _sigio;

    /// <summary>
    /// Takes a read lease on <paramref name="path"/>, to be taken before the file is mapped (<see cref="Map"/>). Null,
    /// with the reason in <paramref name="whyNot"/>, when no lease can be had: the file must then be copied, not mapped.
    /// </summary>
    public static MappedFileLease? TryTake(string path, out string? whyNot)
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture is not (Architecture.X64 or Architecture.Arm64))
        {
            whyNot = "file leases are used on Linux x64 and arm64 only";
            return null;
        }
        lock (Held)
        {
            // the handler before the lease: SIGIO's default action ends the process
            _sigio ??= PosixSignalRegistration.Create((PosixSignal)Sigio, OnSigio);
            var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            if (Fcntl((int)handle.DangerousGetHandle(), FSetLease, FRdLck) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                handle.Dispose();
                whyNot = $"no read lease on {path}: {Marshal.GetPInvokeErrorMessage(errno)}"
                    + (errno == Eacces ? " (not the file's owner)" : errno == Eagain ? " (another process has it open for writing)" : "");
                return null;
            }
            var lease = new MappedFileLease(path, handle);
            Held.Add(lease);
            whyNot = null;
            return lease;
        }
    }

    /// <summary>
    /// Maps the file with <paramref name="map"/> (a whole-file tensor over a private mapping) under this lease, which
    /// owns the tensor from then on. Null when a writer has broken the lease (the file changed) or it was disposed.
    /// </summary>
    public Tensor? Map(Func<Tensor> map)
    {
        lock (Held)
        {
            if (_broken || _disposed) return null;
            var t = map();
            _maps.Add(t);
            return t;
        }
    }

    /// <summary>Releases the lease and the references to the mappings; views still alive are no longer guarded.</summary>
    public void Dispose()
    {
        lock (Held)
        {
            if (_disposed) return;
            _disposed = true;
            if (Held.Remove(this)) Release();
            foreach (var m in _maps) m.Dispose();
            _maps.Clear();
        }
    }

    /// <summary>SIGIO: some held lease is being broken. Move the mappings of every such file to memory, then let the writer go.</summary>
    static void OnSigio(PosixSignalContext context)
    {
        context.Cancel = true;
        lock (Held)
        {
            for (int i = Held.Count - 1; i >= 0; i--)
            {
                var lease = Held[i];
                // a read lease being broken by a writer reads back as the type it is going to: F_UNLCK
                if (Fcntl((int)lease._handle.DangerousGetHandle(), FGetLease, 0) == FRdLck) continue;
                foreach (var m in lease._maps) MoveToMemory(m);
                lease._broken = true;
                lease.Release();
                Held.RemoveAt(i);
            }
        }
    }

    /// <summary>
    /// Replaces the mapping under <paramref name="map"/> by an anonymous copy at the same address: copy, then mremap the
    /// copy over it (atomic for other threads, which read the same values before and after).
    /// </summary>
    static unsafe void MoveToMemory(Tensor map)
    {
        nint start;
        using (var first = map.narrow(0, 0, 1))
            fixed (byte* p = first.bytes) start = (nint)p;
        nuint length = (nuint)(map.NumberOfElements * map.ElementSize);
        length = (length + (nuint)Environment.SystemPageSize - 1) / (nuint)Environment.SystemPageSize * (nuint)Environment.SystemPageSize;
        nint copy = Mmap(0, length, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (copy == -1) return;   // no memory for the copy: the writer waits out lease-break-time; nothing better to do
        Buffer.MemoryCopy((void*)start, (void*)copy, (long)length, (long)length);
        if (Mremap(copy, length, length, MremapMaymove | MremapFixed, start) == -1) Munmap(copy, length);
    }

    void Release()
    {
        Fcntl((int)_handle.DangerousGetHandle(), FSetLease, FUnlck);
        _handle.Dispose();
    }

    const int Sigio = 29, FSetLease = 1024, FGetLease = 1025, FRdLck = 0, FUnlck = 2, Eagain = 11, Eacces = 13;
    const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20, MremapMaymove = 1, MremapFixed = 2;

    // fcntl and mremap are variadic in C; on x64 and arm64 Linux their extra arguments travel in the registers a fixed
    // signature uses
    [DllImport("libc", EntryPoint = "fcntl", SetLastError = true)] static extern int Fcntl(int fd, int cmd, int arg);
    [DllImport("libc", EntryPoint = "mmap", SetLastError = true)] static extern nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);
    [DllImport("libc", EntryPoint = "mremap", SetLastError = true)] static extern nint Mremap(nint oldAddress, nuint oldSize, nuint newSize, int flags, nint newAddress);
    [DllImport("libc", EntryPoint = "munmap", SetLastError = true)] static extern int Munmap(nint addr, nuint length);
}
