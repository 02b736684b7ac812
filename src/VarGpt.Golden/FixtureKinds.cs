using System.Reflection;

namespace VarGpt.Golden;

/// <summary>
/// A runner for one fixture kind. Implementations live next to the code they check (one class per kind,
/// file Golden/Kinds/&lt;Kind&gt;Fixture.cs) and are found by reflection, so adding a kind touches no central list.
/// </summary>
public interface IFixtureKind
{
    /// <summary>The fixture.json "kind" this runner handles.</summary>
    string Kind { get; }
    /// <summary>Runs the fixture and records every comparison in <paramref name="cmp"/>.</summary>
    void Run(Fixture fixture, FixtureComparer cmp);
}

public enum FixtureStatus { Pass, Fail, Skip }

public sealed record FixtureOutcome(string Id, FixtureStatus Status, double MaxAbs, double MaxRel, string Message);

public static class FixtureKinds
{
    static readonly Lazy<Dictionary<string, IFixtureKind>> _all = new(() =>
        typeof(IFixtureKind).Assembly.GetTypes()
            .Where(t => !t.IsAbstract && typeof(IFixtureKind).IsAssignableFrom(t) && t.GetConstructor(Type.EmptyTypes) != null)
            .Select(t => (IFixtureKind)Activator.CreateInstance(t)!)
            .ToDictionary(k => k.Kind, StringComparer.Ordinal));

    public static IReadOnlyDictionary<string, IFixtureKind> All => _all.Value;

    /// <summary>Runs one fixture folder. Unknown kinds are skipped with the reason; exceptions are failures.</summary>
    public static FixtureOutcome Run(string dir)
    {
        using var f = new Fixture(dir);
        if (!All.TryGetValue(f.Kind, out var kind))
            return new(f.Id, FixtureStatus.Skip, 0, 0, $"kind {f.Kind} not implemented");
        var cmp = new FixtureComparer();
        try
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            kind.Run(f, cmp);
        }
        catch (Exception e)
        {
            var inner = e is TargetInvocationException { InnerException: not null } t ? t.InnerException! : e;
            return new(f.Id, FixtureStatus.Fail, cmp.MaxAbs, cmp.MaxRel, $"{inner.GetType().Name}: {inner.Message}\n{cmp.Report()}\n{inner.StackTrace}");
        }
        if (cmp.Results.Count == 0)
            return new(f.Id, FixtureStatus.Fail, 0, 0, "runner compared nothing");
        return new(f.Id, cmp.Passed ? FixtureStatus.Pass : FixtureStatus.Fail, cmp.MaxAbs, cmp.MaxRel, cmp.Report());
    }
}
