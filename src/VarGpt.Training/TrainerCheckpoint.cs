using System.Runtime.InteropServices;
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
/// everything goes to <c>output_dir/.tmp-checkpoint-{step}</c>, each file is fsynced, the folder is renamed, and only then
/// the <c>latest</c> pointer file is replaced (write + fsync + rename). A crash at any point leaves <c>latest</c> naming a
/// complete checkpoint.
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

    /// <summary>Writes all files into a temp folder, renames it to checkpoint-{step}, then updates 'latest'. Returns the folder.</summary>
    public static string Save(string outputDir, TrainerState state, Action<string> writeFiles)
    {
        Directory.CreateDirectory(outputDir);
        var final = Path.Combine(outputDir, DirName(state.GlobalStep));
        var tmp = Path.Combine(outputDir, $".tmp-{DirName(state.GlobalStep)}-{Environment.ProcessId}");
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        writeFiles(tmp);
        WriteAllTextDurable(Path.Combine(tmp, StateFile), JsonSerializer.Serialize(state, Json));
        FsyncDirectory(tmp);
        if (Directory.Exists(final))
        {
            // Same step saved again (e.g. the final save of a resumed run): swap the old copy out first.
            var old = final + ".old-" + Environment.ProcessId;
            Directory.Move(final, old);
            Directory.Move(tmp, final);
            Directory.Delete(old, true);
        }
        else Directory.Move(tmp, final);
        FsyncDirectory(outputDir);
        var ptrTmp = Path.Combine(outputDir, LatestFile + ".tmp");
        WriteAllTextDurable(ptrTmp, DirName(state.GlobalStep) + "\n");
        File.Move(ptrTmp, Path.Combine(outputDir, LatestFile), overwrite: true);
        FsyncDirectory(outputDir);
        return final;
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
            if (latest == null || Path.GetFullPath(x.Dir) != Path.GetFullPath(latest)) Directory.Delete(x.Dir, true);
    }

    public static TrainerState ReadState(string checkpointDir)
    {
        var path = Path.Combine(checkpointDir, StateFile);
        return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), Json) ?? throw new InvalidFileException($"{path}: empty");
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
            File.Copy(f, Path.Combine(toDir, name), overwrite: true);
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

    internal static void WriteAllTextDurable(string path, string text)
    {
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        fs.Write(bytes);
        fs.Flush(true);
    }

    [DllImport("libc", SetLastError = true)] static extern int open(string path, int flags);
    [DllImport("libc", SetLastError = true)] static extern int fsync(int fd);
    [DllImport("libc", SetLastError = true)] static extern int close(int fd);

    /// <summary>fsync of a directory so a rename inside it is durable (POSIX only; a no-op on Windows).</summary>
    internal static void FsyncDirectory(string dir)
    {
        if (OperatingSystem.IsWindows()) return;
        int fd = open(dir, 0 /* O_RDONLY */);
        if (fd < 0) return;
        try { fsync(fd); } finally { close(fd); }
    }
}
