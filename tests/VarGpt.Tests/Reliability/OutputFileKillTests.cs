using VarGpt.Tests.Cli;

namespace VarGpt.Tests.Reliability;

/// <summary>
/// Output files other than training (issue 18 deliverable 2): `vargpt init` killed with SIGKILL mid-write leaves no
/// half-written folder; two processes writing the same output leave one writer's complete result, never a mix.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))] // runs CLI commands in-process that load whole models: apart from the parallel tests
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
    public void A_dataset_or_an_image_killed_mid_write_leaves_only_complete_files_and_the_rerun_sweeps_the_leftovers()
    {
        using var d = TestPaths.Temp();
        var data = d["data"];
        // shapes data: killed as its 4th file is about to be renamed into place
        string[] args = ["shapes", "data", "--out", data, "--train", "3", "--eval", "1"];
        var (code, _, err) = CliProcess.Run(args, env: new Dictionary<string, string> { ["VARGPT_FAILPOINT"] = "atomic.before-rename#4" });
        Assert.True(code == 128 + 9, $"exit {code}: {err}");
        var files = Directory.GetFiles(data, "*", SearchOption.AllDirectories);
        var (temps, done) = (files.Where(f => AtomicFile.ParseLeftover(Path.GetFileName(f)) is not null).ToList(), files.Where(f => AtomicFile.ParseLeftover(Path.GetFileName(f)) is null).ToList());
        Assert.Single(temps);
        Assert.Equal(3, done.Count);
        foreach (var png in done) Assert.True(VarGpt.Vision.RgbImage.Load(png).Width > 0);   // each complete
        (code, _, err) = CliProcess.Run(args);
        Assert.True(code == 0, err);
        Assert.DoesNotContain(Directory.GetFiles(data, "*", SearchOption.AllDirectories), f => AtomicFile.ParseLeftover(Path.GetFileName(f)) is not null);

        // generate over an existing image, killed before the rename: the old image stays whole
        var model = VarGpt.Tests.TestModels.TinyImageModel.Folder();
        var png1 = d["out.png"];
        Assert.Equal(0, CliHarness.Run("generate", "--model", model, "A red circle.", "--force-image-start", "--seed", "1", "-o", png1).Code);
        var before = Sha(png1);
        (code, _, err) = CliProcess.Run(["generate", "--model", model, "A red circle.", "--force-image-start", "--seed", "2", "-o", png1],
            env: new Dictionary<string, string> { ["VARGPT_FAILPOINT"] = "atomic.before-rename" });
        Assert.True(code == 128 + 9, $"exit {code}: {err}");
        Assert.Equal(before, Sha(png1));
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
