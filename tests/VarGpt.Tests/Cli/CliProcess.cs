using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace VarGpt.Tests.Cli;

/// <summary>
/// Runs the vargpt executable (the CLI's apphost, copied next to the tests) as a child process: for what an in-process
/// run cannot show — signals, kill -9, a working directory, a process's own exit code.
/// </summary>
public sealed class CliProcess : IDisposable
{
    public static string Executable { get; } = Path.Combine(AppContext.BaseDirectory, OperatingSystem.IsWindows() ? "VarGpt.Cli.exe" : "VarGpt.Cli");

    const string Env = "/usr/bin/env";
    readonly Process _p;
    readonly StringBuilder _out = new(), _err = new();
    readonly object _lock = new();

    public CliProcess(IEnumerable<string> args, string? workingDir = null, IReadOnlyDictionary<string, string>? env = null, int threads = 1, byte[]? stdin = null)
    {
        // A test host started in the background (`cmd &` in a script) ignores SIGINT and SIGQUIT, and a child inherits
        // that: env --default-signal gives the CLI the default dispositions a terminal user's process has.
        bool viaEnv = OperatingSystem.IsLinux() && File.Exists(Env);
        var psi = new ProcessStartInfo(viaEnv ? Env : Executable)
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true,
            WorkingDirectory = workingDir ?? Environment.CurrentDirectory,
        };
        if (viaEnv) { psi.ArgumentList.Add("--default-signal=INT,QUIT"); psi.ArgumentList.Add(Executable); }
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = threads.ToString(System.Globalization.CultureInfo.InvariantCulture);
        psi.Environment["MKL_NUM_THREADS"] = psi.Environment["OMP_NUM_THREADS"];
        psi.Environment.Remove("VARGPT_FAILPOINT");
        psi.Environment.Remove("VARGPT_FAILPOINT_TRACE");
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        _p = new Process { StartInfo = psi };
        _p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (_lock) _out.AppendLine(e.Data); };
        _p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (_lock) _err.AppendLine(e.Data); };
        _p.Start();
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
        if (stdin is not null) { _p.StandardInput.BaseStream.Write(stdin); _p.StandardInput.BaseStream.Flush(); }
        _p.StandardInput.Close();
    }

    public int Id => _p.Id;
    public string Out { get { lock (_lock) return _out.ToString(); } }
    public string Err { get { lock (_lock) return _err.ToString(); } }

    /// <summary>Waits until stdout contains <paramref name="text"/> (true) or the process ends / the timeout passes (false).</summary>
    public bool WaitForOutput(string text, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            if (Out.Contains(text, StringComparison.Ordinal)) return true;
            if (_p.HasExited) { _p.WaitForExit(); return Out.Contains(text, StringComparison.Ordinal); }
            Thread.Sleep(20);
        }
        return false;
    }

    [DllImport("libc", SetLastError = true)] static extern int kill(int pid, int sig);

    public void Signal(int signal) => kill(_p.Id, signal);

    /// <summary>True when the process ended within <paramref name="timeout"/>.</summary>
    public bool WaitForExitOrTimeout(TimeSpan timeout) => _p.WaitForExit(timeout);

    public int WaitForExit(TimeSpan timeout)
    {
        if (!_p.WaitForExit(timeout))
        {
            _p.Kill(entireProcessTree: true);
            throw new TimeoutException($"vargpt did not exit within {timeout}; stdout:\n{Out}\nstderr:\n{Err}");
        }
        _p.WaitForExit();   // drains the output handlers
        return _p.ExitCode;
    }

    /// <summary>Runs to the end: (exit code, stdout, stderr).</summary>
    public static (int Code, string Out, string Err) Run(IEnumerable<string> args, string? workingDir = null, IReadOnlyDictionary<string, string>? env = null, int timeoutSeconds = 300, byte[]? stdin = null)
    {
        using var p = new CliProcess(args, workingDir, env, stdin: stdin);
        int code = p.WaitForExit(TimeSpan.FromSeconds(timeoutSeconds));
        return (code, p.Out, p.Err);
    }

    public void Dispose()
    {
        try { if (!_p.HasExited) _p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _p.Dispose();
    }
}
