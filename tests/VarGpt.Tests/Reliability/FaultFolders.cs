using System.Diagnostics;

namespace VarGpt.Tests.Reliability;

/// <summary>
/// Folders that fail like real disks: a small tmpfs (disk full after N bytes) and a read-only folder. Mounting needs
/// root (this machine's test runs); without it the disk-full cases skip and the read-only folder falls back to mode
/// 0555, which refuses writes to anyone but root.
/// </summary>
public sealed class FaultFolder : IDisposable
{
    public string Path { get; }
    readonly bool _mounted;

    FaultFolder(string path, bool mounted) { Path = path; _mounted = mounted; }

    public string this[string name] => System.IO.Path.Combine(Path, name);

    [System.Runtime.InteropServices.DllImport("libc")] static extern uint geteuid();
    public static bool IsRoot => OperatingSystem.IsLinux() && geteuid() == 0;

    static string NewDir()
    {
        var dir = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "vargpt-fault-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    static bool Mount(string options, string dir) => Exec("mount", "-t", "tmpfs", "-o", options, "tmpfs", dir) == 0;

    static int Exec(string file, params string[] args) => Exec(10_000, file, args);

    /// <summary>Runs a program to its end within <paramref name="timeoutMs"/>: its exit code, or -1 when it could not start or did not end.</summary>
    public static int Exec(int timeoutMs, string file, params string[] args)
    {
        try
        {
            var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            p.WaitForExit(timeoutMs);
            return p.HasExited ? p.ExitCode : -1;
        }
        catch (System.ComponentModel.Win32Exception) { return -1; }
    }

    /// <summary>A tmpfs of <paramref name="bytes"/> (rounded up to pages); skips the test when it cannot be mounted.</summary>
    public static FaultFolder SmallDisk(long bytes)
    {
        var dir = NewDir();
        if (!IsRoot || !Mount($"size={bytes},mode=0777", dir))
        {
            Directory.Delete(dir);
            Assert.Skip("a small tmpfs needs root (mount -t tmpfs); run the suite as root to exercise disk-full cases");
        }
        return new FaultFolder(dir, true);
    }

    /// <summary>A read-only folder holding <paramref name="files"/> (name → bytes): a read-only tmpfs remount as root, else mode 0555.</summary>
    public static FaultFolder ReadOnly(IReadOnlyDictionary<string, byte[]>? files = null)
    {
        var dir = NewDir();
        bool mounted = IsRoot && Mount("size=1m,mode=0777", dir);
        foreach (var (name, bytes) in files ?? new Dictionary<string, byte[]>()) File.WriteAllBytes(System.IO.Path.Combine(dir, name), bytes);
        if (mounted)
        {
            if (Exec("mount", "-o", "remount,ro", dir) != 0) throw new InvalidOperationException($"cannot remount {dir} read-only");
        }
        else
        {
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
            if (IsRoot) Assert.Skip("root ignores mode 0555 and tmpfs cannot be mounted here: no read-only folder to test with");
        }
        return new FaultFolder(dir, mounted);
    }

    /// <summary>Entries of the folder (recursive), relative paths, sorted: "no temporary file left" checks.</summary>
    public IReadOnlyList<string> Entries() =>
        Directory.EnumerateFileSystemEntries(Path, "*", SearchOption.AllDirectories).Select(p => System.IO.Path.GetRelativePath(Path, p)).Order(StringComparer.Ordinal).ToList();

    public void Dispose()
    {
        if (_mounted) Exec("umount", "-l", Path);
        else if (!OperatingSystem.IsWindows()) try { File.SetUnixFileMode(Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute); } catch (IOException) { }
        try { Directory.Delete(Path, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
