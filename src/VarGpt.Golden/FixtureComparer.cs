using System.Globalization;
using System.Text;
using static TorchSharp.torch;

namespace VarGpt.Golden;

/// <summary>One compared output: its worst element and whether it passed.</summary>
public sealed record Comparison(string Name, bool Passed, double MaxAbs, double MaxRel, string Detail);

/// <summary>
/// Collects comparisons of actual vs expected outputs with the fixture rule |a - e| &lt;= atol + rtol * |e|,
/// recording the worst element (not just pass/fail) so a failure localises the bug.
/// </summary>
public sealed class FixtureComparer
{
    public List<Comparison> Results { get; } = [];
    public bool Passed => Results.All(r => r.Passed);
    public double MaxAbs => Results.Count == 0 ? 0 : Results.Max(r => r.MaxAbs);
    public double MaxRel => Results.Count == 0 ? 0 : Results.Max(r => r.MaxRel);

    /// <summary>Floating comparison within atol + rtol*|expected|; shapes must match exactly.</summary>
    public void Close(string name, Tensor actual, Tensor expected, double atol, double rtol)
    {
        if (!actual.shape.SequenceEqual(expected.shape))
        {
            Results.Add(new(name, false, double.PositiveInfinity, double.PositiveInfinity,
                $"shape [{string.Join(",", actual.shape)}] != expected [{string.Join(",", expected.shape)}]"));
            return;
        }
        using var scope = NewDisposeScope();
        var a = actual.detach().cpu().to(ScalarType.Float64);
        var e = expected.detach().cpu().to(ScalarType.Float64);
        if (a.numel() == 0) { Results.Add(new(name, true, 0, 0, "empty")); return; }
        var diff = (a - e).abs();
        var nan = a.isnan().logical_xor(e.isnan()).any().item<bool>();
        var excess = diff - (atol + rtol * e.abs());
        long worst = excess.flatten().argmax().item<long>();
        double maxAbs = diff.max().item<double>();
        double maxRel = (diff / e.abs().clamp_min(1e-12)).max().item<double>();
        bool ok = !nan && excess.max().item<double>() <= 0;
        string detail = nan ? "NaN mismatch" :
            $"worst at flat index {worst}: actual {a.flatten()[worst].item<double>().ToString("G9", CultureInfo.InvariantCulture)} expected {e.flatten()[worst].item<double>().ToString("G9", CultureInfo.InvariantCulture)} (atol {atol}, rtol {rtol})";
        Results.Add(new(name, ok, maxAbs, maxRel, detail));
    }

    /// <summary>Exact equality of integer tensors (ids, positions, bits, grids).</summary>
    public void Exact(string name, Tensor actual, Tensor expected)
    {
        if (!actual.shape.SequenceEqual(expected.shape))
        {
            Results.Add(new(name, false, double.PositiveInfinity, double.PositiveInfinity,
                $"shape [{string.Join(",", actual.shape)}] != expected [{string.Join(",", expected.shape)}]"));
            return;
        }
        using var scope = NewDisposeScope();
        var a = actual.detach().cpu().to(ScalarType.Int64);
        var e = expected.detach().cpu().to(ScalarType.Int64);
        var ne = a.ne(e);
        long bad = ne.sum().item<long>();
        double maxAbs = a.numel() == 0 ? 0 : (a - e).abs().max().item<long>();
        string detail = bad == 0 ? "exact" : $"{bad} of {a.numel()} elements differ; first at flat index {ne.flatten().nonzero()[0].item<long>()}";
        Results.Add(new(name, bad == 0, maxAbs, bad == 0 ? 0 : double.PositiveInfinity, detail));
    }

    public void ExactList(string name, IReadOnlyList<long> actual, IReadOnlyList<long> expected)
    {
        int n = Math.Min(actual.Count, expected.Count);
        int first = -1;
        for (int i = 0; i < n && first < 0; i++) if (actual[i] != expected[i]) first = i;
        if (first < 0 && actual.Count != expected.Count) first = n;
        Results.Add(new(name, first < 0, first < 0 ? 0 : double.PositiveInfinity, first < 0 ? 0 : double.PositiveInfinity,
            first < 0 ? "exact" : $"differ at index {first} (lengths {actual.Count} vs {expected.Count}): actual [{string.Join(",", actual.Skip(Math.Max(0, first - 3)).Take(8))}] expected [{string.Join(",", expected.Skip(Math.Max(0, first - 3)).Take(8))}]"));
    }

    public void Equal(string name, string actual, string expected)
    {
        bool ok = actual == expected;
        string detail = "exact";
        if (!ok)
        {
            int i = 0;
            while (i < actual.Length && i < expected.Length && actual[i] == expected[i]) i++;
            detail = $"strings differ at char {i}: actual \"{Esc(actual, i)}\" expected \"{Esc(expected, i)}\"";
        }
        Results.Add(new(name, ok, ok ? 0 : double.PositiveInfinity, ok ? 0 : double.PositiveInfinity, detail));
    }

    static string Esc(string s, int at)
    {
        var sb = new StringBuilder();
        foreach (var c in s.Skip(Math.Max(0, at - 10)).Take(40)) sb.Append(c switch { '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", _ => c.ToString() });
        return sb.ToString();
    }

    public void Check(string name, bool ok, string detail) =>
        Results.Add(new(name, ok, ok ? 0 : double.PositiveInfinity, ok ? 0 : double.PositiveInfinity, detail));

    public string Report() => string.Join("\n", Results.Select(r =>
        $"{(r.Passed ? "ok  " : "FAIL")} {r.Name}: max_abs={r.MaxAbs:G4} max_rel={r.MaxRel:G4} {(r.Passed ? "" : r.Detail)}"));
}
