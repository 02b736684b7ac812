using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace VarGpt;

/// <summary>
/// An output file or folder could not be written: the disk is full, the folder is read-only or not ours, a directory
/// stands where the file should go. An environment error, not a bug: the CLI prints the one line and exits 2.
/// </summary>
public sealed class OutputWriteException(string path, string cause, Exception? inner = null)
    : VargptInputException($"cannot write {path}: {cause}", inner)
{
    public string Path { get; } = path;
    public string Cause { get; } = cause;
}

/// <summary>
/// The one way the product writes an output file: into a temporary file beside the target (<c>.NAME.tmp-PID-RANDOM</c>,
/// same folder, so the rename cannot cross file systems), flushed to disk, then renamed over the target. A reader (or a
/// crash, or a second process writing the same target) sees the old file or the new one, never a mix; a failed write
/// removes its temporary file; temporary files of processes that no longer run are swept. I/O errors become
/// <see cref="OutputWriteException"/> naming the target and the cause (disk full, read-only, permission, a directory).
/// </summary>
public static partial class AtomicFile
{
    /// <summary>The temporary sibling of <paramref name="target"/> for this process: <c>.NAME.tmp-PID-RANDOM</c>.</summary>
    public static string TempPathFor(string target)
    {
        var full = System.IO.Path.GetFullPath(target);
        return System.IO.Path.Combine(System.IO.Path.GetDirectoryName(full)!,
            $".{System.IO.Path.GetFileName(full)}{TempMarker}{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
    }

    const string TempMarker = ".tmp-";
    const string OldMarker = ".old-";

    /// <summary>Writes <paramref name="target"/> atomically through <paramref name="write"/>; creates the folder when missing.</summary>
    public static void Write(string target, Action<Stream> write)
    {
        var full = System.IO.Path.GetFullPath(target);
        var dir = System.IO.Path.GetDirectoryName(full)!;
        EnsureFolder(dir);
        if (Directory.Exists(full)) throw new OutputWriteException(full, "a folder of that name is in the way");
        SweepStale(dir, System.IO.Path.GetFileName(full));
        var tmp = TempPathFor(full);
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            FailPoints.Hit("atomic.before-rename");
            File.Move(tmp, full, overwrite: true);
            FsyncFolder(dir);
        }
        catch (Exception e)
        {
            TryDelete(tmp);
            if (IsEnvironmentError(e)) throw Wrap(full, e);
            throw;
        }
    }

    public static void WriteAllBytes(string target, ReadOnlySpan<byte> bytes)
    {
        var copy = bytes.ToArray();
        Write(target, s => s.Write(copy));
    }

    public static void WriteAllText(string target, string text) => WriteAllBytes(target, new UTF8Encoding(false).GetBytes(text));

    /// <summary>Copies the bytes (not the mode: a read-only source must not make the copy read-only) of <paramref name="source"/> to <paramref name="target"/>, atomically.</summary>
    public static void Copy(string source, string target)
    {
        if (SamePath(source, target)) throw new OutputWriteException(System.IO.Path.GetFullPath(target), "it is the file being copied");
        Write(target, dst =>
        {
            using var src = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            src.CopyTo(dst);
        });
    }

    /// <summary>
    /// Builds a folder atomically: <paramref name="fill"/> writes into a temporary sibling folder, which is then
    /// renamed to <paramref name="target"/>. An existing target is replaced (renamed aside first, removed after) only
    /// when <paramref name="replace"/> is set; an empty one is always replaced. A failure removes the temporary folder.
    /// </summary>
    public static void WriteFolder(string target, Action<string> fill, bool replace = false)
    {
        var full = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(target));
        var parent = System.IO.Path.GetDirectoryName(full)!;
        EnsureFolder(parent);
        if (File.Exists(full)) throw new OutputWriteException(full, "a file of that name is in the way");
        SweepStale(parent, System.IO.Path.GetFileName(full));
        var tmp = TempPathFor(full);
        try
        {
            Directory.CreateDirectory(tmp);
            fill(tmp);
            FsyncFolder(tmp);
            FailPoints.Hit("atomic.folder-before-rename");
            if (Directory.Exists(full))
            {
                if (!Directory.EnumerateFileSystemEntries(full).Any()) Directory.Delete(full);
                else if (!replace) throw new OutputWriteException(full, "the folder exists and is not empty");
                else
                {
                    // swap: a crash between the two renames leaves the old copy under .NAME.old-PID-…, which the sweep restores
                    var old = System.IO.Path.Combine(parent, $".{System.IO.Path.GetFileName(full)}{OldMarker}{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
                    Directory.Move(full, old);
                    FailPoints.Hit("atomic.folder-swap");
                    Directory.Move(tmp, full);
                    FsyncFolder(parent);
                    Directory.Delete(old, recursive: true);
                    return;
                }
            }
            Directory.Move(tmp, full);
            FsyncFolder(parent);
        }
        catch (Exception e)
        {
            TryDeleteFolder(tmp);
            if (IsEnvironmentError(e)) throw Wrap(full, e);
            throw;
        }
    }

    /// <summary>
    /// Removes the temporary files and folders that processes no longer running left in <paramref name="dir"/>
    /// (only those of <paramref name="target"/> when given): <c>.NAME.tmp-PID-…</c>, and the older spellings
    /// <c>NAME.tmp-PID-…</c> and <c>.tmp-NAME-PID</c>. A <c>.NAME.old-PID-…</c> copy (a folder swap cut short) is
    /// renamed back to NAME when NAME is missing, else removed. Returns what was removed or restored.
    /// </summary>
    public static IReadOnlyList<string> SweepStale(string dir, string? target = null)
    {
        var done = new List<string>();
        if (!Directory.Exists(dir)) return done;
        IEnumerable<string> entries;
        try { entries = Directory.EnumerateFileSystemEntries(dir).ToList(); }
        catch (Exception e) when (IsEnvironmentError(e)) { return done; }
        foreach (var path in entries)
        {
            var name = System.IO.Path.GetFileName(path);
            if (ParseLeftover(name) is not { } l || (target is not null && l.Target != target) || IsRunning(l.Pid)) continue;
            try
            {
                var targetPath = System.IO.Path.Combine(dir, l.Target);
                if (l.Old && !Directory.Exists(targetPath) && !File.Exists(targetPath))
                {
                    if (Directory.Exists(path)) Directory.Move(path, targetPath); else File.Move(path, targetPath);
                    done.Add($"restored {targetPath} from {name}");
                    continue;
                }
                if (Directory.Exists(path)) Directory.Delete(path, recursive: true); else File.Delete(path);
                done.Add($"removed {path}");
            }
            catch (Exception e) when (IsEnvironmentError(e)) { }
        }
        return done;
    }

    /// <summary>(target name, pid, is a swapped-out old copy) of a leftover's name, or null for any other name.</summary>
    internal static (string Target, int Pid, bool Old)? ParseLeftover(string name)
    {
        var m = LeftoverPattern().Match(name);
        if (m.Success) return (m.Groups["t"].Value, int.Parse(m.Groups["pid"].Value, System.Globalization.CultureInfo.InvariantCulture), m.Groups["kind"].Value == "old");
        m = LegacyTempPattern().Match(name);   // model.safetensors.tmp-PID-xxxxxxxx (SafeTensorsWriter before issue 18)
        if (m.Success) return (m.Groups["t"].Value, int.Parse(m.Groups["pid"].Value, System.Globalization.CultureInfo.InvariantCulture), false);
        m = LegacyFolderPattern().Match(name);  // .tmp-checkpoint-N-PID and checkpoint-N.old-PID (TrainerCheckpoint before issue 18)
        if (m.Success) return (m.Groups["t"].Value, int.Parse(m.Groups["pid"].Value, System.Globalization.CultureInfo.InvariantCulture), m.Groups["old"].Success);
        return null;
    }

    [GeneratedRegex(@"^\.(?<t>.+)\.(?<kind>tmp|old)-(?<pid>\d{1,9})-[0-9a-f]{8}$")] private static partial Regex LeftoverPattern();
    [GeneratedRegex(@"^(?<t>[^.].*)\.tmp-(?<pid>\d{1,9})(-[0-9a-f]{8})?$")] private static partial Regex LegacyTempPattern();
    [GeneratedRegex(@"^(\.tmp-(?<t>checkpoint-\d+)-(?<pid>\d{1,9})|(?<t>checkpoint-\d+)(?<old>\.old)-(?<pid>\d{1,9}))$")] private static partial Regex LegacyFolderPattern();

    /// <summary>Whether a process with this id runs (Linux: /proc; elsewhere the process table).</summary>
    static bool IsRunning(int pid)
    {
        if (pid == Environment.ProcessId) return true;
        if (OperatingSystem.IsLinux()) return Directory.Exists($"/proc/{pid}");
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>
    /// Checks before long work that <paramref name="target"/> can be written: its folder exists and is writable (a
    /// probe file is created and removed), and no folder stands where the file goes. Throws
    /// <see cref="InputNotFoundException"/> for a missing folder (a typo), <see cref="OutputWriteException"/> otherwise.
    /// </summary>
    public static void CheckWritable(string target, string? what = null)
    {
        var full = System.IO.Path.GetFullPath(target);
        var dir = System.IO.Path.GetDirectoryName(full)!;
        var label = what is null ? full : $"{what} {full}";
        if (Directory.Exists(full)) throw new OutputWriteException(label, "it is a folder; name a file");
        if (!Directory.Exists(dir))
            throw File.Exists(dir) ? new OutputWriteException(label, $"{dir} is a file, not a folder") : new InputNotFoundException($"cannot write {label}: the folder {dir} does not exist", dir);
        Probe(dir, label);
    }

    /// <summary>Checks before long work that the folder <paramref name="dir"/> can be created (if missing) and written.</summary>
    public static void CheckWritableFolder(string dir, string? what = null)
    {
        var full = System.IO.Path.GetFullPath(dir);
        var label = what is null ? full : $"{what} {full}";
        if (File.Exists(full)) throw new OutputWriteException(label, "it is a file, not a folder");
        try { Directory.CreateDirectory(full); }
        catch (Exception e) when (IsEnvironmentError(e)) { throw Wrap(label, e); }
        Probe(full, label);
    }

    static void Probe(string dir, string label)
    {
        var probe = TempPathFor(System.IO.Path.Combine(dir, "write-probe"));
        try
        {
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None)) { }
        }
        catch (Exception e) when (IsEnvironmentError(e)) { throw Wrap(label, e); }
        finally { TryDelete(probe); }
    }

    /// <summary>Creates the folder (and its parents) or throws <see cref="OutputWriteException"/> naming it.</summary>
    public static void EnsureFolder(string dir)
    {
        if (Directory.Exists(dir)) return;
        try { Directory.CreateDirectory(dir); }
        catch (Exception e) when (IsEnvironmentError(e)) { throw Wrap(dir, e); }
    }

    /// <summary>I/O errors the environment causes (disk full, permissions, read-only, paths in the way).</summary>
    public static bool IsEnvironmentError(Exception e) => e is IOException or UnauthorizedAccessException;

    /// <summary>An environment error as <see cref="OutputWriteException"/> naming <paramref name="path"/> and the cause.</summary>
    public static OutputWriteException Wrap(string path, Exception e) => e as OutputWriteException ?? new OutputWriteException(path, Cause(e), e);

    /// <summary>The cause of an I/O error in words (errno where .NET keeps it), without the path .NET appends.</summary>
    public static string Cause(Exception e)
    {
        if (e is UnauthorizedAccessException) return "permission denied";
        if (e is DirectoryNotFoundException) return "a folder on the path does not exist";
        if (e is PathTooLongException) return "the path is too long";
        switch (e.HResult)
        {
            case 28: return "no space left on device (the disk is full)";
            case 30: return "read-only file system";
            case 122: return "disk quota exceeded";
            case 27: return "file too large for this file system";
            case 21: return "it is a folder";
            case 20: return "a part of the path is a file, not a folder";
            case 5: return "input/output error (a failing disk or a detached network mount)";
            case 13: case 1: return "permission denied";
        }
        var m = e.Message;
        int cut = m.IndexOf(" : '", StringComparison.Ordinal);
        return (cut > 0 ? m[..cut] : m).TrimEnd('.');
    }

    static bool SamePath(string a, string b) =>
        string.Equals(System.IO.Path.GetFullPath(a), System.IO.Path.GetFullPath(b), StringComparison.Ordinal);

    internal static void TryDelete(string path)
    {
        try { if (File.Exists(path)) File.Delete(path); }
        catch (Exception e) when (IsEnvironmentError(e)) { }
    }

    internal static void TryDeleteFolder(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); }
        catch (Exception e) when (IsEnvironmentError(e)) { }
    }

    [DllImport("libc", SetLastError = true, EntryPoint = "open")] static extern int SysOpen(string path, int flags);
    [DllImport("libc", SetLastError = true, EntryPoint = "fsync")] static extern int SysFsync(int fd);
    [DllImport("libc", SetLastError = true, EntryPoint = "close")] static extern int SysClose(int fd);

    /// <summary>fsync of a folder so a rename inside it is durable (POSIX only; a no-op on Windows).</summary>
    public static void FsyncFolder(string dir)
    {
        if (OperatingSystem.IsWindows()) return;
        int fd = SysOpen(dir, 0 /* O_RDONLY */);
        if (fd < 0) return;
        try { SysFsync(fd); } finally { SysClose(fd); }
    }
}

/// <summary>
/// Test hook of the kill -9 harness (docs/reliability.md): with <c>VARGPT_FAILPOINT=NAME#N</c> in the environment the
/// process kills itself with SIGKILL at the N-th time it reaches the point NAME (N = 1 when omitted), exactly as an
/// outside <c>kill -9</c> there would; with <c>VARGPT_FAILPOINT_TRACE=FILE</c> every point reached is appended to FILE
/// (the harness learns from an uninterrupted run where it can kill). Without those variables a point costs one branch.
/// The hit counter is the only mutable process-wide state, and exists only for this test hook.
/// </summary>
public static class FailPoints
{
    static readonly (string Name, int Nth)? Armed = ParseArmed(Environment.GetEnvironmentVariable("VARGPT_FAILPOINT"));
    static readonly string? Trace = Environment.GetEnvironmentVariable("VARGPT_FAILPOINT_TRACE") is { Length: > 0 } t ? t : null;
    static int _hits;

    static (string, int)? ParseArmed(string? spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) return null;
        int hash = spec.LastIndexOf('#');
        return hash > 0 && int.TryParse(spec[(hash + 1)..], out int n) && n > 0 ? (spec[..hash], n) : (spec, 1);
    }

    public static bool Enabled => Armed is not null || Trace is not null;

    /// <summary>Marks a point where a crash must leave consistent files.</summary>
    public static void Hit(string name)
    {
        if (Armed is null && Trace is null) return;
        if (Trace is not null) File.AppendAllText(Trace, name + "\n");
        if (Armed is { } a && a.Name == name && Interlocked.Increment(ref _hits) == a.Nth)
        {
            Console.Out.Flush();
            kill(Environment.ProcessId, 9);
        }
    }

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);
}
