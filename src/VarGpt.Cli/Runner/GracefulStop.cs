using System.Runtime.InteropServices;

namespace VarGpt.Cli.Runner;

/// <summary>
/// Ctrl-C / SIGTERM for long work that can stop cleanly (training): the first signal cancels <see cref="Token"/> (the
/// trainer finishes its step, saves a checkpoint and returns), a second one ends the process at once. Commands that
/// use it are synchronous actions, so System.CommandLine's own handler (which exits two seconds after the signal,
/// whatever the work is doing) is not installed.
/// </summary>
public sealed class GracefulStop : IDisposable
{
    readonly CancellationTokenSource _cts = new();
    readonly PosixSignalRegistration[] _registrations;
    readonly TextWriter _log;
    readonly string _what;
    int _signals;

    public GracefulStop(TextWriter log, string what = "stopping after the current step (a checkpoint is saved)")
    {
        _log = log;
        _what = what;
        _registrations = [PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal), PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal)];
    }

    public CancellationToken Token => _cts.Token;

    /// <summary>The signal that stopped the work, or null.</summary>
    public PosixSignal? Signal { get; private set; }

    /// <summary>128 + the signal number (130 SIGINT, 143 SIGTERM), the shell's convention for a process a signal stopped.</summary>
    public int ExitCode => Signal == PosixSignal.SIGTERM ? 143 : 130;

    void OnSignal(PosixSignalContext context)
    {
        if (Interlocked.Increment(ref _signals) > 1)
        {
            context.Cancel = false;   // the second signal: default action, the process ends now
            return;
        }
        context.Cancel = true;
        Signal = context.Signal;
        _log.WriteLine($"{(context.Signal == PosixSignal.SIGTERM ? "SIGTERM" : "interrupt")}: {_what}; send it again to stop at once without saving");
        _log.Flush();
        _cts.Cancel();
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _cts.Dispose();
    }
}
