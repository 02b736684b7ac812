using VarGpt.Tests.Cli;

namespace VarGpt.Tests.Reliability;

/// <summary>
/// Output files other than training (issue 18 deliverable 2): `vargpt init` killed with SIGKILL mid-write leaves no
/// half-written folder; two processes writing the same output leave one writer's complete result, never a mix.
/// </summary>
public class OutputFileKillTests
{
    static string Sha(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public void Init_killed_mid_write_leaves_no_folder_and_the_rerun_sweeps_the_leftover()
    {
        using var d = TestPaths.Temp();
        var target = d["model"];
        var (code, _, err) = CliProcess.Run(["init", "--preset", "tiny", "--out", target], env: new Dictionary<string, string> { ["VARGPT_FAILPOINT"] = "safetensors.tensor#20" });
        Assert.True(code == 128 + 9, $"exit {code}: {err}");
        Assert.False(Directory.Exists(target), "a killed init left a (partial) model folder");
        var leftovers = Directory.GetFileSystemEntries(d.Path).Select(Path.GetFileName).ToList();
        Assert.Single(leftovers);
        Assert.StartsWith(".model.tmp-", leftovers[0]);
        (code, _, err) = CliProcess.Run(["init", "--preset", "tiny", "--out", target]);
        Assert.True(code == 0, err);
        Assert.Equal(["model"], Directory.GetFileSystemEntries(d.Path).Select(Path.GetFileName));
        Assert.Equal(0, CliHarness.Run("info", target).Code);
    }

    [Fact]
    public void Two_processes_writing_the_same_output_leave_one_writers_whole_result()
    {
        using var d = TestPaths.Temp();
        // references: each seed alone
        var expected = new[] { 1, 2 }.Select(seed =>
        {
            var r = CliHarness.Run("init", "--preset", "tiny", "--seed", seed.ToString(System.Globalization.CultureInfo.InvariantCulture), "--out", d[$"ref{seed}"]);
            Assert.True(r.Code == 0, r.Err);
            return Sha(Path.Combine(d[$"ref{seed}"], "model.safetensors"));
        }).ToArray();
        Assert.NotEqual(expected[0], expected[1]);
        Assert.Equal(0, CliHarness.Run("init", "--preset", "tiny", "--seed", "0", "--out", d["shared"]).Code);
        using var a = new CliProcess(["init", "--preset", "tiny", "--seed", "1", "--force", "--out", d["shared"]]);
        using var b = new CliProcess(["init", "--preset", "tiny", "--seed", "2", "--force", "--out", d["shared"]]);
        int ca = a.WaitForExit(TimeSpan.FromSeconds(300)), cb = b.WaitForExit(TimeSpan.FromSeconds(300));
        // each writer either succeeds or fails cleanly (exit 2, one line) when the other one's rename came between its two
        foreach (var (c, p) in new[] { (ca, a), (cb, b) })
        {
            Assert.True(c == 0 || c == 2, $"exit {c}: {p.Err}");
            Assert.DoesNotContain("   at ", p.Err);
        }
        Assert.Contains(Sha(Path.Combine(d["shared"], "model.safetensors")), expected);
        Assert.Equal(0, CliHarness.Run("info", d["shared"]).Code);
        Assert.DoesNotContain(Directory.GetFileSystemEntries(d.Path).Select(Path.GetFileName), n => n!.StartsWith('.'));
    }
}
