using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Tests.Torch;

/// <summary>
/// The Scalar guard (<see cref="ScalarGuard"/>): TorchSharp's Scalar finalizer can free an at::Scalar while libtorch
/// reads it; with the guard, TorchSharp's imports bind through libvargpt_scalar_guard.so and every Scalar is freed a
/// second after its dispose, so a collection during a native call frees nothing that call still reads.
/// </summary>
public class ScalarGuardTests(ITestOutputHelper log)
{
    static bool LinuxX64 => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64;

    static bool CompilerOnPath => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Any(d => File.Exists(Path.Combine(d, "cc")));

    /// <summary>Whether this process must have the guard on: Linux x64, a C compiler to build it, not switched off.</summary>
    static bool GuardExpected => LinuxX64 && CompilerOnPath && Environment.GetEnvironmentVariable(ScalarGuard.Variable) is null;

    /// <summary>True when the guard is on (asserted where it must be); false when the test has nothing to check.</summary>
    bool GuardOn()
    {
        TorchTestSetup.Init();
        bool bound = ScalarGuard.Check();
        log.WriteLine($"Scalars {ScalarGuard.Describe()}; state {ScalarGuard.State}, {ScalarGuard.Bindings} TorchSharp imports bound through the guard");
        if (GuardExpected) Assert.True(bound, ScalarGuard.Describe());
        if (bound) Assert.StartsWith($"freed a second late by {ScalarGuard.LibraryName}", ScalarGuard.Describe()); // doctor's line
        return bound;
    }

    [Fact]
    public void Disposed_scalars_wait_a_second_in_the_guard_and_are_freed_after_it()
    {
        if (!GuardOn()) return;
        const int n = 1000;
        long deferred0 = ScalarGuard.Deferred, early0 = ScalarGuard.FreedEarly;
        for (int i = 0; i < n; i++) (i * 0.25).ToScalar().Dispose();
        long deferred1 = ScalarGuard.Deferred, freed1 = ScalarGuard.Freed, pending1 = ScalarGuard.Pending;
        Assert.True(deferred1 - deferred0 >= n, $"{n} disposes, {deferred1 - deferred0} deferred");
        // Other tests may dispose Scalars meanwhile, but nothing frees an entry younger than a second unless the queue
        // was full (a quarter million waiting).
        if (ScalarGuard.FreedEarly == early0) Assert.True(pending1 >= n, $"{pending1} pending right after {n} disposes");

        // Finalized Scalars (the racy path) go through the guard too.
        MakeGarbageScalars(n);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long deferred2 = ScalarGuard.Deferred;
        Assert.True(deferred2 - deferred1 >= n, $"{n} finalized Scalars, {deferred2 - deferred1} deferred");

        Thread.Sleep(1200);
        1.0.ToScalar().Dispose(); // entries leave the queue at a dispose after their second
        long freed2 = ScalarGuard.Freed, oldest = ScalarGuard.OldestPendingMs;
        log.WriteLine($"deferred {ScalarGuard.Deferred}, freed {freed2}, pending {ScalarGuard.Pending}, oldest {oldest} ms");
        Assert.True(freed2 - freed1 >= 2 * n, $"after 1.2 s, {freed2 - freed1} of the {2 * n} deferred Scalars were freed");
        Assert.True(oldest < 1100, $"a Scalar has waited {oldest} ms (freed after 1000 ms)");
    }

    /// <summary>
    /// The runtime asks the resolver for each TorchSharp import it binds (not once per library name), so every one of
    /// them (about 1100) binds through the guard library, and none was left to the usual binding.
    /// </summary>
    [Fact]
    public void Every_TorchSharp_import_binds_through_the_guard_library()
    {
        if (!GuardOn()) return;
        var imports = typeof(TorchSharp.torch).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Where(m => m.GetCustomAttribute<DllImportAttribute>() is { Value: "LibTorchSharp" }).ToList();
        int missing = 0;
        foreach (var m in imports)
        {
            try { Marshal.Prelink(m); } // binds the import now (a no-op when it is bound already)
            catch (EntryPointNotFoundException) { missing++; } // declared by TorchSharp, absent from its library
        }
        log.WriteLine($"{imports.Count} TorchSharp imports ({missing} without an entry point); {ScalarGuard.Bindings} bindings through the guard, {ScalarGuard.Declined} left to the usual binding");
        Assert.True(imports.Count > 1000, $"only {imports.Count} LibTorchSharp imports found in TorchSharp");
        Assert.Equal(0, ScalarGuard.Declined);
        Assert.True(ScalarGuard.Bindings >= imports.Count, $"{imports.Count} imports, {ScalarGuard.Bindings} bound through the guard");
    }

    static void MakeGarbageScalars(int n)
    {
        for (int i = 0; i < n; i++) _ = (i * 0.5).ToScalar();
    }

    [Fact]
    public void Tensor_math_with_implicit_scalars_is_right_with_the_guard_on()
    {
        GuardOn();
        using var scope = NewDisposeScope();
        var a = tensor(new float[] { 1, 2, 3, 4 });
        var b = tensor(new float[] { 0.5f, -1, 2, 8 });
        Assert.Equal(new float[] { 1.5f, 1, 5, 12 }, a.add(b).data<float>().ToArray());
        Assert.Equal(new float[] { 0.5f, 3, 1, -4 }, (a - b).data<float>().ToArray());
        Assert.Equal(new float[] { 0.5f, 1, 1.5f, 2 }, (a * 0.5).data<float>().ToArray());
        Assert.Equal(new float[] { 2, 0, 7, 20 }, a.add(b, 2).data<float>().ToArray());
        Assert.Equal(new float[] { 1, 4, 9, 16 }, a.pow(2).data<float>().ToArray());
        Assert.Equal(new float[] { 11, 12, 13, 14 }, (a + 10).data<float>().ToArray());
        Assert.Equal(new float[] { 0, 0.5f, 1, 1.5f }, a.sub(1).div(2).data<float>().ToArray());
    }

    /// <summary>
    /// The crash seen in training (ApplyRotary, a vision residual): tensor ops whose implicit Scalars die while the
    /// native call runs, while another thread collects and runs finalizers without pause. Seconds from
    /// VARGPT_SCALAR_STRESS_SECONDS (default 4). Without the guard this loop fails here within seconds (the explicit
    /// test below), so it is skipped where the guard is not on unless that variable asks for it.
    /// </summary>
    [Fact]
    public void Tensor_math_with_implicit_scalars_survives_collections_and_finalizers_during_native_calls()
    {
        bool on = GuardOn();
        var asked = Environment.GetEnvironmentVariable(StressSecondsVariable);
        if (!on && asked is null) // the explicit A/B below sets the variable to run this loop without the guard
        {
            Assert.Skip($"the Scalar guard is not on here ({ScalarGuard.Describe()}); without it this loop hits the race");
            return;
        }
        var seconds = double.Parse(asked ?? "4", CultureInfo.InvariantCulture);
        long deferred0 = ScalarGuard.Deferred;
        var r = Hammer(TimeSpan.FromSeconds(seconds));
        log.WriteLine(r.ToString());
        Console.WriteLine($"{ReportPrefix}{r}");
        Assert.True(r.Failures == 0 && r.Wrong == 0, $"guard {(on ? "on" : "off")}: {r}");
        Assert.True(r.Collections > 10, $"the collector thread ran only {r.Collections} collections");
        if (on) Assert.True(ScalarGuard.Deferred - deferred0 >= r.Ops, $"{r.Ops} op rounds, {ScalarGuard.Deferred - deferred0} Scalars deferred");
    }

    /// <summary>
    /// The A/B, explicit (VARGPT_SCALAR_RACE_REPRO=SECONDS): the stress test above in two child processes, one with
    /// VARGPT_SCALAR_GUARD=off, one with the guard. Without the guard the race shows within seconds here (a 2-core Zen 5
    /// VM shared with a training run: 10–13 "Expected false to be true" per 4 s, 336 per 30 s); with it, none.
    /// </summary>
    [Fact]
    public void Without_the_guard_the_stress_loop_hits_the_race_and_with_it_not()
    {
        if (Environment.GetEnvironmentVariable("VARGPT_SCALAR_RACE_REPRO") is not { Length: > 0 } spec)
        {
            Assert.Skip("explicit A/B of the Scalar guard in child processes: set VARGPT_SCALAR_RACE_REPRO=SECONDS (docs/reliability.md)");
            return;
        }
        if (!GuardOn()) Assert.Skip($"the guard is not on here: {ScalarGuard.Describe()}");
        var (offExit, off) = StressChild(spec, guardOff: true);
        var (onExit, on) = StressChild(spec, guardOff: false);
        log.WriteLine($"guard off: exit {offExit}, {off}");
        log.WriteLine($"guard on:  exit {onExit}, {on}");
        Assert.True(offExit != 0, $"without the guard the stress loop passed ({off}): the race did not show in {spec} s");
        Assert.True(onExit == 0, $"with the guard the stress loop failed (exit {onExit}): {on}");
    }

    static (int Exit, string Report) StressChild(string seconds, bool guardOff)
    {
        var host = Path.Combine(AppContext.BaseDirectory, "VarGpt.Tests"); // this test assembly's apphost (xunit v3 runner)
        var psi = new ProcessStartInfo(host) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-method", $"{typeof(ScalarGuardTests).FullName}.{nameof(Tensor_math_with_implicit_scalars_survives_collections_and_finalizers_during_native_calls)}" })
            psi.ArgumentList.Add(a);
        psi.Environment[StressSecondsVariable] = seconds;
        psi.Environment.Remove("VARGPT_SCALAR_RACE_REPRO");
        if (guardOff) psi.Environment[ScalarGuard.Variable] = "off";
        else psi.Environment.Remove(ScalarGuard.Variable);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var lines = p.StandardOutput.ReadToEnd().Split('\n');
        p.WaitForExit();
        var report = lines.Select(l => l.IndexOf(ReportPrefix, StringComparison.Ordinal) is var i and >= 0 ? l[(i + ReportPrefix.Length)..].Trim() : null)
            .LastOrDefault(l => l is not null) ?? $"no report (crashed?); stderr: {err.Result.Trim()}";
        return (p.ExitCode, report);
    }

    const string StressSecondsVariable = "VARGPT_SCALAR_STRESS_SECONDS";
    const string ReportPrefix = "scalar-race: ";

    internal sealed record RaceResult(long Ops, long Collections, long Failures, long Wrong, string? First)
    {
        public override string ToString() =>
            $"{Ops} op rounds, {Collections} collections, {Failures} exceptions, {Wrong} wrong values{(First is null ? "" : $"; first: {First}")}";
    }

    /// <summary>
    /// Op rounds on small tensors (each: add, sub, scalar mul, pow, scalar add, each with an implicit Scalar TorchSharp
    /// creates and never disposes) and their checked results, while a second thread collects and finalizes.
    /// </summary>
    internal static RaceResult Hammer(TimeSpan duration)
    {
        using var a = full(8, 2.0f);
        using var b = full(8, 3.0f);
        long ops = 0, collections = 0, failures = 0, wrong = 0;
        string? first = null;
        var done = 0;
        var collector = new Thread(() =>
        {
            while (Volatile.Read(ref done) == 0)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                collections++;
            }
        }) { IsBackground = true };
        collector.Start();
        var sw = Stopwatch.StartNew();
        try
        {
            while (sw.Elapsed < duration)
            {
                ops++;
                try
                {
                    using var scope = NewDisposeScope();
                    // a.add(b) is add(b, 1) inside TorchSharp; a - b likewise; a * 0.5, a.pow(2), a + 1 convert here
                    float s = a.add(b).sum().item<float>(), d = (a - b).sum().item<float>(), h = (a * 0.5).sum().item<float>(),
                          p = a.pow(2).sum().item<float>(), q = (a + 1).sum().item<float>();
                    if (s != 40 || d != -8 || h != 8 || p != 32 || q != 24)
                    {
                        wrong++;
                        first ??= $"wrong values: add {s} (40), sub {d} (-8), mul {h} (8), pow {p} (32), add scalar {q} (24)";
                    }
                }
                catch (Exception e)
                {
                    failures++;
                    first ??= $"{e.GetType().Name}: {e.Message.Split('\n')[0]}";
                }
            }
        }
        finally
        {
            Volatile.Write(ref done, 1);
            collector.Join();
        }
        return new RaceResult(ops, collections, failures, wrong, first);
    }
}

