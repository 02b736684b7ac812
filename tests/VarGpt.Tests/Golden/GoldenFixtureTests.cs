using VarGpt.Golden;

namespace VarGpt.Tests.Golden;

/// <summary>
/// Runs every golden fixture under ../shared/golden and under each VARGPT_GOLDEN_DIRS folder, one case per fixture
/// named kind/folder. A kind without a runner is reported as skipped with the reason; a runner never skips.
/// </summary>
public class GoldenFixtureTests
{
    /// <summary>Case name -> fixture folder. Held-out roots reuse the same kind/name, so later roots get a suffix.</summary>
    static readonly Lazy<Dictionary<string, string>> _cases = new(() =>
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int r = 0; r < TestPaths.GoldenRoots.Count; r++)
            foreach (var dir in Fixture.Discover([TestPaths.GoldenRoots[r]]))
            {
                using var f = new Fixture(dir);
                var id = r == 0 ? f.Id : $"{f.Id} @{TestPaths.GoldenRoots[r]}";
                while (map.ContainsKey(id)) id += "'";
                map[id] = dir;
            }
        return map;
    });

    public static TheoryData<string> Fixtures() => new(_cases.Value.Keys);

    [Theory, Trait("Category", "Golden")]
    [MemberData(nameof(Fixtures))]
    public void Fixture_passes(string fixture)
    {
        TorchTestSetup.Init();
        var outcome = FixtureKinds.Run(_cases.Value[fixture]);
        if (outcome.Status == FixtureStatus.Skip) Assert.Skip(outcome.Message);
        Assert.True(outcome.Status == FixtureStatus.Pass,
            $"{outcome.Id} failed: max_abs={outcome.MaxAbs:G4} max_rel={outcome.MaxRel:G4}\n{outcome.Message}");
    }

    [Fact]
    public void Shared_golden_folder_is_found()
    {
        Assert.True(Directory.Exists(TestPaths.Golden), $"golden fixtures expected at {TestPaths.Golden}");
        Assert.NotEmpty(Fixture.Discover([TestPaths.Golden]));
    }
}
