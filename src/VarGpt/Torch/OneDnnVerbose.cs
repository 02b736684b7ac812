using System.Runtime.InteropServices;

namespace VarGpt.Torch;

/// <summary>
/// Runs an action with oneDNN's verbose mode on and returns the lines oneDNN printed, which name the primitive and
/// the implementation that ran (e.g. <c>convolution,jit:avx512_core,forward_training,src_f32::blocked:aBcd16b…</c>).
/// oneDNN prints to the process's stdout (file descriptor 1), so for the duration of the action fd 1 is pointed at a
/// temporary file: a diagnostic for <c>vargpt doctor</c>, which runs nothing else meanwhile — never call it while
/// other threads write to stdout.
/// </summary>
public static class OneDnnVerbose
{
    /// <summary>One executed primitive: "convolution", "jit:avx512_core", "forward_training", the problem description.</summary>
    public sealed record Execution(string Primitive, string Implementation, string PropKind, string Problem);

    /// <summary>The result of <paramref name="action"/>, the executions oneDNN reported and its info lines (version, ISA); empty lists when unavailable.</summary>
    public static (T Result, IReadOnlyList<Execution> Executions, IReadOnlyList<string> Info) Capture<T>(Func<T> action)
    {
        if (!OperatingSystem.IsLinux() || !LibTorchNative.Available) return (action(), [], []);
        Console.Out.Flush();
        FFlush(0);
        var path = Path.GetTempFileName();
        int fd = Open(path, 1 | 0x200 /* O_WRONLY | O_TRUNC */, 0x180);
        if (fd < 0) { File.Delete(path); return (action(), [], []); }
        int saved = Dup(1);
        Dup2(fd, 1);
        Close(fd);
        T result;
        try
        {
            LibTorchNative.SetOneDnnVerbose(1);
            result = action();
        }
        finally
        {
            LibTorchNative.SetOneDnnVerbose(0);
            FFlush(0);
            Dup2(saved, 1);
            Close(saved);
        }
        var lines = File.ReadAllLines(path);
        File.Delete(path);
        var execs = new List<Execution>();
        var info = new List<string>();
        foreach (var l in lines)
        {
            if (!l.StartsWith("onednn_verbose,", StringComparison.Ordinal)) continue;
            var f = l.Split(',');
            // onednn_verbose[,timestamp],primitive,exec,cpu,<primitive>,<impl>,<prop_kind>,<mds>,<attrs>,<aux>,<problem>,<time>
            int ex = Array.IndexOf(f, "exec");
            if (ex >= 0 && f.Length > ex + 4 && f[ex + 1] == "cpu")
                execs.Add(new Execution(f[ex + 2], f[ex + 3], f[ex + 4], f.Length > ex + 8 ? f[^2] : ""));
            else if (Array.IndexOf(f, "info") >= 0) info.Add(string.Join(',', f.Skip(Array.IndexOf(f, "info") + 1)));
        }
        return (result, execs, info);
    }

    [DllImport("libc", EntryPoint = "fflush")] static extern int FFlush(nint stream);
    [DllImport("libc", EntryPoint = "open")] static extern int Open(string path, int flags, int mode);
    [DllImport("libc", EntryPoint = "dup")] static extern int Dup(int fd);
    [DllImport("libc", EntryPoint = "dup2")] static extern int Dup2(int fd, int fd2);
    [DllImport("libc", EntryPoint = "close")] static extern int Close(int fd);
}
