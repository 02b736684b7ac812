using TorchSharp;

namespace VarGpt.Tests;

/// <summary>Locations of the repository and of ../shared (golden fixtures, tokenizers, demo data).</summary>
public static class TestPaths
{
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>The shared folder beside the clone (override with VARGPT_SHARED).</summary>
    public static string Shared { get; } = Environment.GetEnvironmentVariable("VARGPT_SHARED") is { Length: > 0 } s
        ? Path.GetFullPath(s) : Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    public static string Golden => Path.Combine(Shared, "golden");
    public static string QwenTokenizer => Path.Combine(Shared, "tokenizers", "qwen2-vl");
    public static string DemoData => Path.Combine(Shared, "data", "vargpt-official-demo");

    /// <summary>../shared/golden plus every folder of VARGPT_GOLDEN_DIRS (colon-separated).</summary>
    public static IReadOnlyList<string> GoldenRoots { get; } =
        new[] { Golden }.Concat((Environment.GetEnvironmentVariable("VARGPT_GOLDEN_DIRS") ?? "")
            .Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();

    static string FindRepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !File.Exists(Path.Combine(d.FullName, "VarGpt.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("cannot find VarGpt.sln above " + AppContext.BaseDirectory);
    }

    /// <summary>A fresh temporary directory, deleted by the caller's using.</summary>
    public static TempDir Temp() => new();

    /// <summary>
    /// A temporary directory that lives as long as the test process (shared fixtures such as a tiny checkpoint built
    /// once); all of them are deleted when the process exits.
    /// </summary>
    public static string ProcessTemp(string name)
    {
        var dir = Path.Combine(_processTemp.Value, name);
        Directory.CreateDirectory(dir);
        return dir;
    }

    static readonly Lazy<string> _processTemp = new(() =>
    {
        var root = Path.Combine(Path.GetTempPath(), $"vargpt-tests-{Environment.ProcessId}-{Guid.NewGuid():N}"[..40]);
        Directory.CreateDirectory(root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(root, true); } catch (IOException) { } };
        return root;
    });
}

public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "vargpt-test-" + Guid.NewGuid().ToString("N")[..12]);
    public TempDir() => Directory.CreateDirectory(Path);
    public string this[string name] => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

/// <summary>Pins libtorch to one thread per test process: xunit runs two tests at once on a 2-core machine.</summary>
public static class TorchTestSetup
{
    static int _done;

#pragma warning disable CA2255 // on purpose: before any test binds a TorchSharp import
    // As the CLI's Main touches VarGpt first: TorchSharp's imports bind through the Scalar guard even in tests that
    // use TorchSharp before any VarGpt type (VarGpt.Torch.ScalarGuard).
    [System.Runtime.CompilerServices.ModuleInitializer]
    internal static void RegisterScalarGuard() => VarGpt.Torch.ScalarGuard.Register();
#pragma warning restore CA2255

    public static void Init()
    {
        if (Interlocked.Exchange(ref _done, 1) == 1) return;
        // Before any tensor math: MKL sgemm is alignment-dependent (1-ulp run-to-run noise in fp32) unless MKL_CBWR is set.
        VarGpt.Training.TrainerReproducibility.RequestStrictBlas();
        VarGpt.Torch.LibTorchNative.DisableNnpack(); // as every VarGpt model does (ConvRouter): no NNPACK probe, no warning flood
        torch.set_num_threads(1);
    }
}

