using VarGpt.Fuzz;

namespace VarGpt.Tests.Fuzz;

/// <summary>
/// The fuzz targets in CI (fuzz/README.md): every seed, every fuzz/corpus file and every fuzz/regressions input (the
/// crashes afl found, kept once fixed) goes through its target in-process, then a short deterministic mutation run.
/// Each input must be accepted or end in the product's input-error family; anything else fails with the input's name.
/// afl-fuzz itself runs from fuzz/run.sh, not here.
/// </summary>
public class FuzzTargetTests
{
    public static TheoryData<string> Targets => new(FuzzTargets.All.Select(t => t.Name));

    static string FuzzDir => Path.Combine(TestPaths.RepoRoot, "fuzz");

    /// <summary>Seeds, then fuzz/corpus/TARGET, then fuzz/regressions/TARGET, by name.</summary>
    static List<(string Name, byte[] Bytes)> Inputs(string target)
    {
        var inputs = FuzzSeeds.For(target).Select(kv => ($"seed {kv.Key}", kv.Value)).ToList();
        foreach (var folder in new[] { "corpus", "regressions" })
        {
            var dir = Path.Combine(FuzzDir, folder, target);
            if (Directory.Exists(dir))
                inputs.AddRange(Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal).Select(f => ($"{folder}/{target}/{Path.GetFileName(f)}", File.ReadAllBytes(f))));
        }
        return inputs;
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void Every_seed_corpus_file_and_regression_input_is_accepted_or_rejected_with_an_input_error(string target)
    {
        var t = FuzzTargets.Get(target);
        var findings = new List<string>();
        foreach (var (name, bytes) in Inputs(target))
        {
            try { t.Execute(bytes); }
            catch (Exception e) { findings.Add($"{name}: {e.GetType().FullName}: {e.Message}\n{e.StackTrace}"); }
        }
        Assert.True(findings.Count == 0, string.Join("\n\n", findings));
    }

    [Fact]
    public void Every_regression_folder_names_a_target_and_every_target_has_seeds()
    {
        var names = FuzzTargets.All.Select(t => t.Name).ToHashSet();
        var regressions = Path.Combine(FuzzDir, "regressions");
        foreach (var dir in Directory.Exists(regressions) ? Directory.EnumerateDirectories(regressions) : [])
            Assert.Contains(Path.GetFileName(dir), names);
        foreach (var t in FuzzTargets.All) Assert.NotEmpty(FuzzSeeds.For(t.Name));
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void A_short_mutation_run_of_the_seeds_finds_nothing(string target)
    {
        var t = FuzzTargets.Get(target);
        var seeds = Inputs(target).Select(i => i.Bytes).ToList();
        // a fixed sequence of 300 mutants (reproducible), cut short after 10 s on a loaded machine
        var result = MutationRun.Run(t, seeds, TimeSpan.FromSeconds(10), seed: 18, maxExecutions: 300);
        if (result.Finding is { } e)
        {
            var file = Path.Combine(Path.GetTempPath(), $"vargpt-fuzz-finding-{target}-{Guid.NewGuid():N}"[..48]);
            File.WriteAllBytes(file, result.FindingInput!);
            Assert.Fail($"{target}: input {file} (after {result.Executions} executions): {e.GetType().FullName}: {e.Message}\n{e.StackTrace}");
        }
        Assert.True(result.Executions >= 10, $"{target}: only {result.Executions} executions in {result.Elapsed.TotalSeconds:F1} s");
        TestContext.Current.SendDiagnosticMessage($"{target}: {result.Executions} executions ({result.Accepted} accepted, {result.Rejected} rejected) in {result.Elapsed.TotalSeconds:F1} s");
    }
}
