using VarGpt.Checkpoint;
using VarGpt.Tests.Cli;
using VarGpt.Tests.Training;
using VarGpt.Training;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Tests.Reliability;

/// <summary>
/// Resource faults (issue 18 deliverable 3) on real file systems: a full disk (a small tmpfs filled to the last byte)
/// during a checkpoint save, a model export, an image write and `vargpt init`; a read-only output folder; a model
/// file replaced while its weights are memory-mapped. Each: a clear error naming the path and the cause, the
/// previous good files intact, no temporary files left, and (training) a resume that ends where an uninterrupted run does.
/// </summary>
[Collection(nameof(GlobalRngCollection))]
public class ResourceFaultTests
{
    /// <summary>Fills the file system of <paramref name="dir"/> to the last byte with ballast; returns its path.</summary>
    static string FillDisk(string dir)
    {
        var path = Path.Combine(dir, "ballast");
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1);
        foreach (int chunk in new[] { 1 << 16, 1 << 12, 1 })
        {
            var block = new byte[chunk];
            try { while (true) { fs.Write(block); fs.Flush(); } }
            catch (IOException) { }   // ENOSPC: the rest with smaller chunks
        }
        return path;
    }

    static string[] Entries(string dir) => Directory.EnumerateFileSystemEntries(dir, "*", SearchOption.AllDirectories)
        .Select(p => Path.GetRelativePath(dir, p)).Order(StringComparer.Ordinal).ToArray();

    static void AssertNoTemporaries(string dir) =>
        Assert.True(!Entries(dir).Any(e => AtomicFile.ParseLeftover(Path.GetFileName(e)) is not null), "temporary files left: " + string.Join(", ", Entries(dir)));

    static string Sha(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public void A_full_disk_during_a_checkpoint_save_is_a_clear_error_keeps_the_last_checkpoint_and_the_resume_ends_like_an_uninterrupted_run()
    {
        TorchTestSetup.Init();
        using var disk = FaultFolder.SmallDisk(4 << 20);
        var outDir = disk["run"];
        var data = TrainerTests.Data(10);
        string? ballast = null;
        using (var m = new TrainerTests.Mlp(1))
        {
            // 9 steps of 2 micro-batches; checkpoints every 3 steps; the disk fills up during step 4 (call 7)
            var objective = new TrainerTests.Regression(m, onCall: c => { if (c == 7) ballast = FillDisk(disk.Path); return false; });
            using var t = new Trainer<IReadOnlyList<(float[], float)>>(m, objective, new ShuffledBatches<(float[], float)>(data, 2, seed: 5),
                TrainerTests.Options(outDir, saveSteps: 3) with { LoggingSteps = 1000 });
            var e = Assert.Throws<OutputWriteException>(() => t.Train(cancel: TestContext.Current.CancellationToken));
            Assert.Contains("no space left on device (the disk is full)", e.Message);
            Assert.Contains(Path.Combine(outDir, "checkpoint-6"), e.Message);
        }
        Assert.Equal(Path.Combine(outDir, "checkpoint-3"), TrainerCheckpoint.Latest(outDir));
        Assert.False(Directory.Exists(Path.Combine(outDir, "checkpoint-6")));
        AssertNoTemporaries(outDir);
        using (var st = SafeTensorsFile.Open(Path.Combine(outDir, "checkpoint-3", TrainerCheckpoint.TrainableFile)))
            foreach (var k in st.Tensors.Keys) st.Load(k).Dispose();

        // space freed: the resume ends where an uninterrupted run does
        File.Delete(ballast!);
        TrainingResult resumed;
        using (var m = new TrainerTests.Mlp(1))
        using (var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new TrainerTests.Regression(m), new ShuffledBatches<(float[], float)>(data, 2, seed: 5),
            TrainerTests.Options(outDir, saveSteps: 3) with { LoggingSteps = 1000 }))
            resumed = t.Train("latest", TestContext.Current.CancellationToken);
        using var whole = TestPaths.Temp();
        TrainingResult uninterrupted;
        using (var m = new TrainerTests.Mlp(1))
        using (var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new TrainerTests.Regression(m), new ShuffledBatches<(float[], float)>(data, 2, seed: 5),
            TrainerTests.Options(whole.Path, saveSteps: 3) with { LoggingSteps = 1000 }))
            uninterrupted = t.Train(cancel: TestContext.Current.CancellationToken);
        Assert.True(resumed.Completed);
        Assert.Equal(uninterrupted.Steps.Select(s => (s.Step, s.Loss)), resumed.Steps.Select(s => (s.Step, s.Loss)));
        Assert.Equal(Sha(Path.Combine(whole.Path, "checkpoint-9", TrainerCheckpoint.TrainableFile)), Sha(Path.Combine(outDir, "checkpoint-9", TrainerCheckpoint.TrainableFile)));
    }

    [Fact]
    public void A_full_disk_during_a_model_export_or_an_image_write_keeps_the_previous_file_and_leaves_no_temporary()
    {
        TorchTestSetup.Init();
        using var disk = FaultFolder.SmallDisk(4 << 20);
        // model export (model.safetensors + config of the trainer)
        var exportDir = disk["export"];
        using var m = new TrainerTests.Mlp(2);
        using var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new TrainerTests.Regression(m), new ShuffledBatches<(float[], float)>(TrainerTests.Data(4), 2, seed: 5),
            TrainerTests.Options(disk["run"]));
        t.ExportModel(exportDir);
        var good = Sha(Path.Combine(exportDir, TrainerCheckpoint.ModelFile));
        var picture = disk["picture.png"];
        var image = new RgbImage(64, 48, Enumerable.Range(0, 64 * 48 * 3).Select(i => (byte)(i * 7)).ToArray());
        image.SavePng(picture);
        var goodPicture = Sha(picture);
        using (no_grad()) foreach (var p in m.parameters()) p.add_(1);   // the next export differs
        var ballast = FillDisk(disk.Path);

        var e = Assert.Throws<OutputWriteException>(() => t.ExportModel(exportDir));
        Assert.Equal($"cannot write {Path.Combine(exportDir, TrainerCheckpoint.ModelFile)}: no space left on device (the disk is full)", e.Message);
        Assert.Equal(good, Sha(Path.Combine(exportDir, TrainerCheckpoint.ModelFile)));
        var noisy = new RgbImage(640, 480, Enumerable.Range(0, 640 * 480 * 3).Select(i => (byte)(i * 2654435761L >> 13)).ToArray());
        e = Assert.Throws<OutputWriteException>(() => noisy.SavePng(picture));
        Assert.Equal($"cannot write {picture}: no space left on device (the disk is full)", e.Message);
        Assert.Equal(goodPicture, Sha(picture));
        AssertNoTemporaries(disk.Path);
        File.Delete(ballast);
    }

    [Fact]
    public void Init_on_a_full_disk_exits_2_naming_the_path_and_leaves_no_folder_and_no_temporary()
    {
        using var disk = FaultFolder.SmallDisk(1 << 20);   // the tiny preset's weights need more
        var (code, _, err) = CliProcess.Run(["init", "--preset", "tiny", "--out", disk["model"]]);
        Assert.True(code == 2, err);
        Assert.Matches(@"error: cannot write .*model.*: no space left on device \(the disk is full\)", err);
        Assert.DoesNotContain("   at ", err);
        Assert.Empty(Entries(disk.Path));
    }

    [Fact]
    public void A_read_only_output_folder_fails_before_training_and_before_generating_with_exit_2()
    {
        using var ro = FaultFolder.ReadOnly();
        var err = Assert.Throws<OutputWriteException>(() => AtomicFile.CheckWritableFolder(ro["run"], "output_dir"));
        Assert.StartsWith($"cannot write output_dir {ro["run"]}: ", err.Message);
        Assert.Matches("read-only file system|permission denied", err.Message);
        var w = Assert.Throws<OutputWriteException>(() => AtomicFile.WriteAllText(ro["x.txt"], "x"));
        Assert.Matches("read-only file system|permission denied", w.Message);
        Assert.Empty(Entries(ro.Path));
    }

    [Fact]
    public void A_mapped_model_whose_file_is_replaced_or_deleted_keeps_working()
    {
        // what our writers (and cp --remove-destination, mv, git checkout) do: a new inode at the path; the mapping
        // keeps the old file's pages, so there is no SIGBUS and the weights stay the ones loaded
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var path = d["w.safetensors"];
        using (var w = randn(64, 64)) SafeTensorsWriter.Save(path, [new("w", w)]);
        using var st = SafeTensorsFile.Open(path);
        using var mapped = st.MapView("w") ?? throw new InvalidOperationException("not mapped");
        var before = mapped.sum().item<float>();
        using (var other = zeros(64, 64)) SafeTensorsWriter.Save(path, [new("w", other)]);   // AtomicFile: rename over the mapped file
        Assert.Equal(before, mapped.sum().item<float>());
        File.Delete(path);
        Assert.Equal(before, mapped.sum().item<float>());
    }

    [Theory]
    [InlineData("sh", "-c", ": > '{0}'")]   // a blocking open with O_TRUNC (truncate(1) opens O_NONBLOCK and is refused while we copy)
    [InlineData("cp", "--no-preserve=all", "{1}", "{0}")]   // cp onto an existing file opens it O_TRUNC and rewrites it in place
    public void A_mapped_model_file_truncated_or_rewritten_in_place_does_not_kill_the_process(string program, params string[] arguments)
    {
        // the writer is held by the kernel (read lease) until the mappings are private copies, so the process survives
        // and the weights keep their loaded values — also pages never touched before the write
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var path = d["w.safetensors"];
        var other = d["other.safetensors"];
        using var original = randn(1024, 1024);   // 4 MiB: 1024 pages
        SafeTensorsWriter.Save(path, [new("w", original)]);
        using (var z = zeros(8, 8)) SafeTensorsWriter.Save(other, [new("w", z)]);
        using var st = SafeTensorsFile.Open(path);
        using var mapped = st.MapView("w") ?? throw new InvalidOperationException("not mapped: " + st.MapRefused);
        Assert.Equal(original[0, 0].item<float>(), mapped[0, 0].item<float>());   // one page touched, the rest not

        Assert.Equal(0, FaultFolder.Exec(30_000, program, [.. arguments.Select(a => string.Format(a, path, other))]));
        Assert.NotEqual(new FileInfo(path).Length, st.FileLength);   // the file did change under the mapping

        Assert.True(mapped.equal(original).all().item<bool>(), "the mapped weights changed");
        Assert.Throws<InvalidFileException>(() => st.MapView("w"));   // and a load that goes on is told the file changed
    }

    [Fact]
    public void A_file_that_cannot_be_leased_is_copied_instead_of_mapped()
    {
        // another process (here: another handle) has it open for writing, so no read lease: mapping would be unguarded
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var path = d["w.safetensors"];
        using (var w = randn(16, 16)) SafeTensorsWriter.Save(path, [new("w", w)]);
        using var st = SafeTensorsFile.Open(path);
        using (new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
            Assert.Null(st.MapView("w"));
        Assert.Contains("open for writing", st.MapRefused);
    }
}
