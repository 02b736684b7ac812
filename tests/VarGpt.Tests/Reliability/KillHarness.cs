using System.Diagnostics;
using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Tests.Cli;
using VarGpt.Tests.TestModels;
using VarGpt.Training;

namespace VarGpt.Tests.Reliability;

/// <summary>
/// The kill -9 harness of issue 18 (docs/reliability.md): a short `vargpt train sft` job on a tiny model is killed
/// with SIGKILL again and again — at a fail point (<see cref="FailPoints"/>: a step, each file of a checkpoint, the
/// folder rename, the 'latest' update, pruning, a log line, the log truncation on resume, the model export, the
/// adapter save) or after a random delay — and rerun with resume_from_checkpoint: latest each time. After every kill
/// each checkpoint on disk must be complete and loadable and 'latest' must name one; when a run finally completes,
/// its model, adapter and loss log must equal those of an uninterrupted run, byte for byte.
/// </summary>
public sealed class KillHarness(string root, bool lora, Action<string> log)
{
    public const int Steps = 9, SaveSteps = 2;

    /// <summary>Kills so far by where they happened ("point:NAME" or "random").</summary>
    public Dictionary<string, int> KillsAt { get; } = new(StringComparer.Ordinal);
    public int Kills => KillsAt.Values.Sum();
    public int Resumes { get; private set; }
    public int Episodes { get; private set; }
    public int CheckpointsChecked { get; private set; }
    public TimeSpan ReferenceTime { get; private set; }

    string? _referenceDir;
    readonly List<string> _episodeKills = [];
    IReadOnlyDictionary<string, int>? _points;   // fail point → times an uninterrupted run reaches it

    string Yaml(string dir)
    {
        var data = Path.Combine(root, "data");
        var model = Path.Combine(root, "model");
        if (!Directory.Exists(model)) TinyModels.Write(TinyVargpt.Folder(seed: 8), model);
        if (!Directory.Exists(data)) { Directory.CreateDirectory(data); TinyVargpt.MixedRecords(data); }
        Directory.CreateDirectory(dir);
        var yaml = Path.Combine(dir, "sft.yaml");
        File.WriteAllText(yaml, TinyVargpt.SftYaml(model, data, steps: Steps, saveSteps: SaveSteps, finetuningType: lora ? "lora" : "full", extra: """
            lora_rank: 4
            save_total_limit: 2
            resume_from_checkpoint: latest
            seed: 3
            """));
        return yaml;
    }

    /// <summary>The uninterrupted run (and the fail points it reaches, from VARGPT_FAILPOINT_TRACE).</summary>
    public void Reference()
    {
        var dir = Path.Combine(root, "reference");
        var trace = Path.Combine(root, "trace.txt");
        var sw = Stopwatch.StartNew();
        var (code, o, e) = CliProcess.Run(["train", "sft", Yaml(dir)], env: new Dictionary<string, string> { ["VARGPT_FAILPOINT_TRACE"] = trace });
        ReferenceTime = sw.Elapsed;
        Assert.True(code == 0, o + e);
        _referenceDir = Path.Combine(dir, "out");
        _points = File.ReadAllLines(trace).GroupBy(l => l).ToDictionary(g => g.Key, g => g.Count());
        log($"reference run ({(lora ? "lora" : "full")}): {ReferenceTime.TotalSeconds:F1} s; fail points reached: {string.Join(", ", _points.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key}×{p.Value}"))}");
    }

    /// <summary>One episode: a fresh output folder, up to <paramref name="maxKills"/> kills, then a run to the end, compared with the reference.</summary>
    public void Episode(Random rng, int maxKills, double pointShare = 0.7)
    {
        if (_referenceDir is null) Reference();
        Episodes++;
        var dir = Path.Combine(root, $"episode-{Episodes}");
        var yaml = Yaml(dir);
        var outDir = Path.Combine(dir, "out");
        int kills = 0;
        _episodeKills.Clear();
        while (true)
        {
            bool kill = kills < maxKills;
            string? where = null;
            var env = new Dictionary<string, string>();
            if (kill && rng.NextDouble() < pointShare)
            {
                // VARGPT_KILL_HARNESS_POINTS=a,b: only those points (a run aimed at points the random choice missed)
                var only = Environment.GetEnvironmentVariable("VARGPT_KILL_HARNESS_POINTS")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                var candidates = _points!.Where(p => only is null || only.Contains(p.Key)).ToList();
                var (name, count) = candidates[rng.Next(candidates.Count)];
                env["VARGPT_FAILPOINT"] = $"{name}#{rng.Next(1, count + 1)}";
                where = "point:" + name;
            }
            using var p = new CliProcess(["train", "sft", yaml], env: env);
            if (kill && where is null)
            {
                // a random moment of the run (start-up, steps, saves, export alike)
                var delay = TimeSpan.FromSeconds(rng.NextDouble() * ReferenceTime.TotalSeconds);
                if (!p.WaitForExitOrTimeout(delay)) { p.Signal(9); where = "random"; }
            }
            int code = p.WaitForExit(TimeSpan.FromSeconds(300));
            if (code == 0)
            {
                // finished (a fail point a resumed run no longer reaches, or a delay longer than the run): compare
                CheckOnDisk(outDir, complete: true);
                CompareWithReference(outDir);
                return;
            }
            Assert.True(code == 128 + 9, $"run ended with exit {code} (expected SIGKILL at {where}):\n{p.Out}\n{p.Err}");
            kills++;
            KillsAt[where!] = KillsAt.GetValueOrDefault(where!) + 1;
            _episodeKills.Add(env.TryGetValue("VARGPT_FAILPOINT", out var fp) ? fp : where!);
            CheckOnDisk(outDir, complete: false);
            Resumes++;
        }
    }

    /// <summary>Every checkpoint complete and loadable, 'latest' naming one, an exported model and adapter loadable when present.</summary>
    void CheckOnDisk(string outDir, bool complete)
    {
        if (!Directory.Exists(outDir)) return;
        foreach (var ckpt in Directory.GetDirectories(outDir, "checkpoint-*"))
        {
            var state = TrainerCheckpoint.ReadState(ckpt);
            Assert.Equal(Path.GetFileName(ckpt), TrainerCheckpoint.DirName(state.GlobalStep));
            foreach (var f in new[] { TrainerCheckpoint.ModelFile, TrainerCheckpoint.TrainableFile, TrainerCheckpoint.OptimizerFile, TrainerCheckpoint.RngFile, "config.json" })
                Assert.True(File.Exists(Path.Combine(ckpt, f)), $"{ckpt} lacks {f}: a partial checkpoint");
            foreach (var f in Directory.GetFiles(ckpt, "*.safetensors")) LoadAll(f);
            CheckpointsChecked++;
        }
        var latest = Path.Combine(outDir, TrainerCheckpoint.LatestFile);
        if (File.Exists(latest)) Assert.True(Directory.Exists(Path.Combine(outDir, File.ReadAllText(latest).Trim())), "'latest' names a missing checkpoint");
        var model = Path.Combine(outDir, TrainerCheckpoint.ModelFile);
        if (File.Exists(model)) LoadAll(model);
        var adapter = Path.Combine(outDir, "adapter");
        if (Directory.Exists(adapter))
        {
            LoadAll(Path.Combine(adapter, "adapter_model.safetensors"));
            using var _ = JsonDocument.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")));
        }
        if (File.Exists(Path.Combine(outDir, TrainerLog.JsonlFile)))
            foreach (var line in File.ReadAllLines(Path.Combine(outDir, TrainerLog.JsonlFile)).Where(l => l.Length > 0))
                if (complete) using (JsonDocument.Parse(line)) { }
        if (complete)
        {
            var leftovers = Directory.EnumerateFileSystemEntries(outDir, "*", SearchOption.AllDirectories)
                .Where(p => AtomicFile.ParseLeftover(Path.GetFileName(p)) is not null).ToList();
            Assert.True(leftovers.Count == 0, "temporary files left after a completed run: " + string.Join(", ", leftovers));
        }
    }

    static void LoadAll(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        foreach (var name in f.Tensors.Keys) f.Load(name).Dispose();
    }

    void CompareWithReference(string outDir)
    {
        var what = $"episode {Episodes} ({(lora ? "lora" : "full")}) after kills [{string.Join(", ", _episodeKills)}]: ";
        Assert.True(Losses(_referenceDir!) == Losses(outDir), what + "loss log differs:\n" + Losses(_referenceDir!) + "\n---\n" + Losses(outDir));
        Assert.True(Sha(Path.Combine(_referenceDir!, TrainerCheckpoint.ModelFile)) == Sha(Path.Combine(outDir, TrainerCheckpoint.ModelFile)), what + "model.safetensors differs");
        if (lora) Assert.True(Sha(Path.Combine(_referenceDir!, "adapter", "adapter_model.safetensors")) == Sha(Path.Combine(outDir, "adapter", "adapter_model.safetensors")), what + "adapter differs");
        log($"episode {Episodes} ({(lora ? "lora" : "full")}): kills [{string.Join(", ", _episodeKills)}] -> identical model, adapter and loss log");
    }

    static string Sha(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)));

    /// <summary>The loss log without its clock fields: step, epoch, loss, lr, grad norm per line.</summary>
    public static string Losses(string dir) => string.Join("\n", File.ReadAllLines(Path.Combine(dir, TrainerLog.JsonlFile))
        .Select(l => JsonDocument.Parse(l).RootElement)
        .Select(r => $"{r.GetProperty("current_steps")}:{r.GetProperty("epoch")}:{r.GetProperty("loss")}:{r.GetProperty("lr")}:{r.GetProperty("grad_norm")}"));

    public string Summary() =>
        $"{(lora ? "lora" : "full")} SFT, {Steps} steps, save_steps {SaveSteps}: {Kills} kills ({string.Join(", ", KillsAt.OrderBy(k => k.Key, StringComparer.Ordinal).Select(k => $"{k.Key} {k.Value}"))}), " +
        $"{Resumes} resumes, {Episodes} episodes all identical to the uninterrupted run, {CheckpointsChecked} checkpoint inspections all complete; reference run {ReferenceTime.TotalSeconds:F1} s";
}
