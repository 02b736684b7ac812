using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>Per-step record kept in trainer_state.json (and trainer_log.jsonl).</summary>
public sealed record TrainerStepLog(int Step, double Epoch, double Loss, double LearningRate, double GradNorm, long Tokens);

/// <summary>The resumable position of a run (trainer_state.json).</summary>
public sealed record TrainerState
{
    public int FormatVersion { get; init; } = 1;
    public int GlobalStep { get; init; }
    /// <summary>Epoch and micro-batch index the next update starts at.</summary>
    public int Epoch { get; init; }
    public int BatchInEpoch { get; init; }
    public int TotalSteps { get; init; }
    public int Seed { get; init; }
    public double ElapsedSeconds { get; init; }
    public long TokensSeen { get; init; }
    public List<string> TrainableNames { get; init; } = [];
    public List<TrainerStepLog> LogHistory { get; init; } = [];
}

/// <summary>
/// Checkpoint folders <c>output_dir/checkpoint-{step}</c> (HF Trainer layout) written atomically:
/// everything goes to <c>output_dir/.checkpoint-{step}.tmp-PID-…</c>, each file is fsynced, the folder is renamed, and only
/// then the <c>latest</c> pointer file is replaced (write + fsync + rename). A crash at any point leaves <c>latest</c>
/// naming a complete checkpoint and no partial checkpoint-N; the next run's <see cref="Sweep"/> removes the leftovers.
/// Contents: model.safetensors (official key names, model dtype, loadable for inference) + config.json;
/// trainable.safetensors (fp32 master copies of the trainable parameters — exact resume);
/// optimizer.safetensors (AdamW <c>{name}.exp_avg</c>, <c>{name}.exp_avg_sq</c>, <c>{name}.step</c>);
/// rng_state.safetensors (torch CPU generator + named generators); trainer_state.json (step, epoch, data position,
/// scheduler step = global step, seed, log history).
/// </summary>
public static class TrainerCheckpoint
{
    public const string LatestFile = "latest";
    public const string StateFile = "trainer_state.json";
    public const string ModelFile = "model.safetensors";
    public const string TrainableFile = "trainable.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string RngFile = "rng_state.safetensors";
    public const string TorchRngKey = "torch.cpu";

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static string DirName(int step) => $"checkpoint-{step}";

    /// <summary>
    /// Writes all files into a temporary folder beside the checkpoint (<see cref="AtomicFile.WriteFolder"/>: fsynced,
    /// renamed to checkpoint-{step}, an earlier copy of the same step swapped out), then replaces 'latest' (temp file +
    /// rename). A failure (a full disk) removes the temporary folder and leaves the earlier checkpoints and 'latest' as
    /// they were. Returns the folder.
    /// </summary>
    public static string Save(string outputDir, TrainerState state, Action<string> writeFiles)
    {
        AtomicFile.EnsureFolder(outputDir);
        var final = Path.Combine(outputDir, DirName(state.GlobalStep));
        AtomicFile.WriteFolder(final, tmp =>
        {
            writeFiles(tmp);
            FailPoints.Hit("checkpoint.state");
            WriteAllTextDurable(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state, Json));
        }, replace: true);
        FailPoints.Hit("checkpoint.before-latest");
        AtomicFile.WriteAllText(Path.Combine(outputDir, LatestFile), DirName(state.GlobalStep) + "\n");
        return final;
    }

    /// <summary>
    /// Start-up sweep of a run folder: removes the temporary files and folders of processes that no longer run (a killed
    /// or failed save) and puts back a checkpoint whose replacement was cut short. Returns one line per action.
    /// </summary>
    public static IReadOnlyList<string> Sweep(string outputDir)
    {
        var done = AtomicFile.SweepStale(outputDir).ToList();
        if (Directory.Exists(outputDir))
            foreach (var d in Directory.GetDirectories(outputDir, "checkpoint-*")) done.AddRange(AtomicFile.SweepStale(d));
        return done;
    }

    /// <summary>The checkpoint 'latest' points to, or null when there is none. Throws if the pointer names a broken folder.</summary>
    public static string? Latest(string outputDir)
    {
        var ptr = Path.Combine(outputDir, LatestFile);
        if (!File.Exists(ptr)) return null;
        var name = File.ReadAllText(ptr).Trim();
        var dir = Path.Combine(outputDir, name);
        if (!File.Exists(Path.Combine(dir, StateFile)))
            throw new InvalidFileException($"{ptr} names '{name}', which is missing or has no {StateFile}");
        return dir;
    }

    /// <summary>Deletes the oldest checkpoint-N folders beyond <paramref name="limit"/>, never the one 'latest' names.</summary>
    public static void Prune(string outputDir, int limit)
    {
        var latest = Latest(outputDir);
        var all = Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Dir: d, Ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out int s), Step: s))
            .Where(x => x.Ok).OrderBy(x => x.Step).ToList();
        foreach (var x in all.Take(Math.Max(0, all.Count - limit)))
            if (latest == null || Path.GetFullPath(x.Dir) != Path.GetFullPath(latest))
            {
                // renamed to a temporary name first: a crash mid-delete leaves garbage for the sweep, never a partial checkpoint-N
                var doomed = AtomicFile.TempPathFor(x.Dir);
                Directory.Move(x.Dir, doomed);
                FailPoints.Hit("checkpoint.prune");
                Directory.Delete(doomed, true);
            }
    }

    public static TrainerState ReadState(string checkpointDir)
    {
        var path = Path.Combine(checkpointDir, StateFile);
        if (!File.Exists(path)) throw new InvalidFileException($"{checkpointDir} is not a checkpoint folder: it has no {StateFile}");
        try { return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), Json) ?? throw new InvalidFileException($"{path}: empty"); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not a trainer state ({e.Message})", e); }
    }

    /// <summary>Whether a name in output_dir is a file or folder a training run writes (checkpoints, pointer, log, plot, exported model, adapter).</summary>
    public static bool IsRunFile(string name) =>
        name.StartsWith("checkpoint-", StringComparison.Ordinal) || name is LatestFile or TrainerLog.JsonlFile or TrainerLog.PlotFile or ModelFile or "adapter"
        || name == CheckpointReader.IndexFileName || System.Text.RegularExpressions.Regex.IsMatch(name, @"^model-\d{5}-of-\d{5}\.safetensors$");

    /// <summary>
    /// Removes an earlier run's files from output_dir (overwrite_output_dir): each is renamed to a temporary name
    /// first, so a crash midway leaves garbage for the sweep, never a partial checkpoint. Other files are left alone.
    /// </summary>
    public static void ClearRun(string outputDir)
    {
        foreach (var path in Directory.EnumerateFileSystemEntries(outputDir).Where(p => IsRunFile(Path.GetFileName(p))).ToList())
        {
            try
            {
                var doomed = AtomicFile.TempPathFor(path);
                if (Directory.Exists(path)) { Directory.Move(path, doomed); Directory.Delete(doomed, true); }
                else { File.Move(path, doomed); File.Delete(doomed); }
            }
            catch (Exception e) when (AtomicFile.IsEnvironmentError(e)) { throw AtomicFile.Wrap(path, e); }
        }
    }

    /// <summary>Copies <paramref name="baseModelDir"/>/config.json with torch_dtype set to the saved dtype.</summary>
    public static void WriteConfig(string dir, string? baseModelDir, ScalarType dtype)
    {
        if (baseModelDir == null) return;
        var src = Path.Combine(baseModelDir, "config.json");
        if (!File.Exists(src)) return;
        var node = JsonNode.Parse(File.ReadAllText(src)) as JsonObject ?? throw new InvalidFileException($"{src}: not a JSON object");
        node["torch_dtype"] = dtype switch
        {
            ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", ScalarType.Float32 => "float32",
            _ => dtype.ToString().ToLowerInvariant(),
        };
        WriteAllTextDurable(Path.Combine(dir, "config.json"), node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>
    /// Copies a model folder's descriptive files (tokenizer, processor, generation config, chat template...) into
    /// <paramref name="toDir"/>: not config.json (written with the output's dtype), not weights or their index, and not
    /// the artifacts of a run that produced the folder (logs, plots, markers).
    /// </summary>
    public static void CopyDescriptiveFiles(string fromDir, string toDir)
    {
        foreach (var f in Directory.GetFiles(fromDir))
        {
            var name = Path.GetFileName(f);
            var ext = Path.GetExtension(name);
            if (name == "config.json" || name.EndsWith(".safetensors.index.json") || !(ext is ".json" or ".txt" or ".jinja" or ".model")) continue;
            if (AtomicFile.ParseLeftover(name) is not null) continue;
            AtomicFile.Copy(f, Path.Combine(toDir, name));
        }
    }

    /// <summary>Saves AdamW moments per parameter name.</summary>
    public static void SaveOptimizer(string path, IReadOnlyList<(string Name, TorchSharp.Modules.AdamW.State State)> states)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using var scope = torch.NewDisposeScope();
        foreach (var (name, st) in states)
        {
            tensors.Add(new($"{name}.exp_avg", st.exp_avg));
            tensors.Add(new($"{name}.exp_avg_sq", st.exp_avg_sq));
            tensors.Add(new($"{name}.step", torch.tensor(new long[] { st.step })));
        }
        SafeTensorsWriter.Save(path, tensors);
    }

    /// <summary>Restores AdamW moments by name; every name must be present with the same shape.</summary>
    public static void LoadOptimizer(string path, IReadOnlyList<(string Name, TorchSharp.Modules.AdamW.State State)> states)
    {
        using var f = SafeTensorsFile.Open(path);
        var expected = states.SelectMany(s => new[] { $"{s.Name}.exp_avg", $"{s.Name}.exp_avg_sq", $"{s.Name}.step" }).ToHashSet();
        var missing = expected.Where(k => !f.Tensors.ContainsKey(k)).ToList();
        var extra = f.Tensors.Keys.Where(k => !expected.Contains(k)).ToList();
        if (missing.Count > 0 || extra.Count > 0)
            throw new InvalidFileException($"{path}: optimizer state does not match the trainable parameters (missing: {string.Join(", ", missing.Take(10))}; unexpected: {string.Join(", ", extra.Take(10))})");
        using var _ = torch.no_grad();
        foreach (var (name, st) in states)
        {
            using (var t = f.Load($"{name}.exp_avg")) CopyExact(st.exp_avg, t, path, name);
            using (var t = f.Load($"{name}.exp_avg_sq")) CopyExact(st.exp_avg_sq, t, path, name);
            using (var t = f.Load($"{name}.step")) st.step = t.item<long>();
        }
    }

    internal static void CopyExact(Tensor dst, Tensor src, string file, string name)
    {
        if (!dst.shape.SequenceEqual(src.shape))
            throw new InvalidFileException($"{file}: '{name}' has shape [{string.Join(",", src.shape)}], expected [{string.Join(",", dst.shape)}]");
        dst.copy_(src);
    }

    /// <summary>Writes a small file atomically (temp + fsync + rename).</summary>
    internal static void WriteAllTextDurable(string path, string text) => AtomicFile.WriteAllText(path, text);
}
