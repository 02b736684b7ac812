using System.CommandLine;
using System.Globalization;
using VarGpt.Golden;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt fixtures check DIR...: runs golden fixtures (shared/golden/README.md) through VarGpt.Golden.FixtureKinds.</summary>
public static class FixturesCommand
{
    public static Command Create()
    {
        var dirs = new Argument<string[]>("DIR")
        {
            Description = "A fixture folder (holding fixture.json) or a folder searched recursively for fixtures.",
            Arity = ArgumentArity.OneOrMore,
        };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "Print every comparison of failing fixtures (worst element, tolerances)." };
        var check = new Command("check",
            """
            Run golden fixtures and compare our outputs with the official PyTorch outputs they store.
            Prints one line per fixture, PASS|FAIL|SKIP <kind>/<name> max_abs=... max_rel=... (max_abs/max_rel: the
            worst absolute/relative difference over all compared tensors; SKIP gives its reason: a fixture kind
            without a runner yet), then a summary line. Exit code 0 if none failed, 1 if any failed, 2 on bad input.
            """)
        { dirs, verbose };
        check.WithExamples(
            "vargpt fixtures check ../shared/golden",
            "vargpt fixtures check ../shared/golden/rope_index ../shared/golden/scale_schedule --verbose");
        check.SetAction(parse => Check(parse.GetRequiredValue(dirs), parse.GetValue(verbose), parse.InvocationConfiguration.Output));
        return new Command("fixtures", "Golden-fixture tools: numerical checks against the official PyTorch code.") { check }
            .WithExamples("vargpt fixtures check ../shared/golden");
    }

    static int Check(string[] dirs, bool verbose, TextWriter o)
    {
        foreach (var d in dirs)
            if (!Directory.Exists(d)) throw new VargptInputException($"fixture folder not found: {Path.GetFullPath(d)}");
        var found = Fixture.Discover(dirs).Distinct(StringComparer.Ordinal).ToList();
        if (found.Count == 0) throw new VargptInputException($"no fixture.json found under {string.Join(", ", dirs.Select(Path.GetFullPath))}");

        int pass = 0, fail = 0, skip = 0;
        foreach (var dir in found)
        {
            var r = FixtureKinds.Run(dir);
            switch (r.Status)
            {
                case FixtureStatus.Pass:
                    pass++;
                    o.WriteLine($"PASS {r.Id} {Metrics(r)}");
                    break;
                case FixtureStatus.Skip:
                    skip++;
                    o.WriteLine($"SKIP {r.Id} ({r.Message})");
                    break;
                default:
                    fail++;
                    var lines = r.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                    o.WriteLine($"FAIL {r.Id} {Metrics(r)}  {lines.FirstOrDefault()}");
                    if (verbose) foreach (var l in lines.Skip(1)) o.WriteLine("    " + l);
                    break;
            }
        }
        o.WriteLine($"{found.Count} fixtures: {pass} passed, {fail} failed, {skip} skipped");
        return fail > 0 ? ExitCodes.Failed : ExitCodes.Ok;
    }

    static string Metrics(FixtureOutcome r) =>
        string.Create(CultureInfo.InvariantCulture, $"max_abs={r.MaxAbs:G3} max_rel={r.MaxRel:G3}");
}
