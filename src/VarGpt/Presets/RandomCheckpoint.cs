using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Model;
using VarGpt.Checkpoint;
using VarGpt.Text;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Presets;

/// <summary>Options of <see cref="RandomCheckpoint.Create"/> (`vargpt init`).</summary>
public sealed record RandomCheckpointOptions
{
    /// <summary>Stored dtype of floating tensors (and config torch_dtype); null = the preset's default.</summary>
    public ScalarType? DType { get; init; }
    /// <summary>Folder with the tokenizer files to copy; null = <see cref="DefaultTokenizer"/> (presets with a default tokenizer only).</summary>
    public string? TokenizerDir { get; init; }
    /// <summary>
    /// Writes tokenizer files into the output folder when <see cref="TokenizerDir"/> is null, for presets with
    /// <see cref="ModelPreset.HasDefaultTokenizer"/>. The library ships no vocabulary: the CLI and the tests pass the
    /// ShapesWorld BPE trainer (VarGpt.ShapesWorld.BpeTrainer.WriteShapesWorldTokenizer).
    /// </summary>
    public Action<string>? DefaultTokenizer { get; init; }
    public long Seed { get; init; }
    /// <summary>Default generation resolution written to vargpt_gen_args.pn; null = the preset's.</summary>
    public string? Pn { get; init; }
    /// <summary>Write into a non-empty folder (overwriting our files; stale weight shards are removed).</summary>
    public bool Force { get; init; }
    public long MaxShardBytes { get; init; } = SafeTensorsWriter.DefaultMaxShardBytes;
}

public sealed record RandomCheckpointResult(string Dir, VargptConfig Config, ScalarType DType, IReadOnlyList<string> WeightFiles, long Parameters, long Bytes);

/// <summary>
/// Writes a complete checkpoint folder in the official layout with seeded random weights: config.json,
/// generation_config.json, preprocessor_config.json, the tokenizer files, and safetensors under the official key
/// names (sharded with model.safetensors.index.json above 5 GB). Weights are generated tensor by tensor and in
/// 8M-element pieces straight into the file, so even the 9B `full` preset needs little memory.
/// </summary>
public static class RandomCheckpoint
{
    /// <summary>Tokenizer files copied from --tokenizer (those present; tokenizer.json or vocab.json + merges.txt required).</summary>
    public static readonly string[] TokenizerFiles =
        ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json", "chat_template.json"];

    /// <summary>Standard deviation of the normal init of weights and biases (HF initializer_range).</summary>
    public const double InitStd = 0.02;
    const long PieceElements = 8L << 20;

    public static RandomCheckpointResult Create(ModelPreset preset, string outDir, RandomCheckpointOptions options, TextWriter? log = null)
    {
        outDir = Path.GetFullPath(outDir);
        if (File.Exists(outDir)) throw new InvalidOptionException($"output path {outDir} is a file, not a folder");
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any() && !options.Force)
            throw new InvalidOptionException($"output folder {outDir} exists and is not empty (use --force to write into it)");
        string? tokDir = options.TokenizerDir is null ? null : Path.GetFullPath(options.TokenizerDir);
        if (tokDir is null && !(preset.HasDefaultTokenizer && options.DefaultTokenizer is not null))
            throw new InvalidOptionException($"preset '{preset.Name}' needs --tokenizer DIR: a Qwen2-VL tokenizer folder that includes <|image_gen_start|>, <|image_gen_end|>, <|image_gen_pad|> (e.g. ../shared/tokenizers/qwen2-vl)");
        if (tokDir is not null && !Directory.Exists(tokDir)) throw new InputNotFoundException($"tokenizer folder not found: {tokDir}");
        var dtype = options.DType ?? preset.DefaultDType;
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new InvalidOptionException($"dtype {dtype} is not a floating checkpoint dtype (float32, bfloat16 or float16)");

        var pns = ScaleSchedules.Official.With(preset.CustomPns).PnsOf(1.0);
        if (options.Pn is { } pn && !pns.Contains(pn))
            throw new InvalidOptionException($"unknown pn '{pn}' for preset '{preset.Name}'; registered for template 1.0: {string.Join(", ", pns)}");

        Directory.CreateDirectory(outDir);
        // Tokenizer first: config.json's vocabulary size and special ids are read from the files.
        if (tokDir is null)
        {
            log?.WriteLine("writing the preset's default tokenizer (no --tokenizer given)");
            options.DefaultTokenizer!(outDir);
        }
        else
        {
            var present = TokenizerFiles.Where(f => File.Exists(Path.Combine(tokDir, f))).ToList();
            if (!present.Contains("tokenizer.json") && !(present.Contains("vocab.json") && present.Contains("merges.txt")))
                throw new InputNotFoundException($"tokenizer folder {tokDir} has no tokenizer.json and no vocab.json + merges.txt pair");
            if (!SameDir(tokDir, outDir))
                foreach (var f in present)
                {
                    // copy the bytes, not the mode: a read-only source (e.g. a shared folder) must not make the copy read-only
                    using var src = File.OpenRead(Path.Combine(tokDir, f));
                    using var dst = new FileStream(Path.Combine(outDir, f), FileMode.Create, FileAccess.Write);
                    src.CopyTo(dst);
                }
        }
        var tokenizer = QwenTokenizer.FromDirectory(outDir);
        var ids = TokenizerIds.From(tokenizer, tokDir ?? outDir);

        var configJson = preset.ConfigJson(ids, tokDir ?? outDir, dtype, options.Pn);
        var config = VargptConfig.Parse(JsonDocument.Parse(configJson.ToJsonString()).RootElement, "config.json of preset " + preset.Name);
        var indented = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        WriteJson(Path.Combine(outDir, "config.json"), configJson, indented);
        WriteJson(Path.Combine(outDir, GenerationConfig.FileName), ModelPreset.GenerationConfigJson(ids), indented);
        WriteJson(Path.Combine(outDir, PreprocessorConfig.FileName), preset.PreprocessorConfigJson(), indented);

        var arch = ModelArchitecture.Enumerate(config, dtype);
        long parameters = arch.Sum(t => t.ElementCount), bytes = arch.Sum(t => t.Entry.ByteLength);
        log?.WriteLine($"writing {arch.Count} tensors, {parameters:N0} parameters, {bytes / 1e9:F2} GB ({TorchSharpName(dtype)})");
        var files = WriteWeights(outDir, arch, options.Seed, options.MaxShardBytes, log);
        return new RandomCheckpointResult(outDir, config, dtype, files, parameters, bytes);
    }

    /// <summary>Streams seeded random values for every entry into (sharded) safetensors in <paramref name="dir"/>.</summary>
    public static IReadOnlyList<string> WriteWeights(string dir, IReadOnlyList<ArchitectureTensor> arch, long seed,
        long maxShardBytes = SafeTensorsWriter.DefaultMaxShardBytes, TextWriter? log = null)
    {
        var byName = arch.ToDictionary(t => t.Name, StringComparer.Ordinal);
        long total = arch.Sum(t => t.Entry.ByteLength), done = 0, nextReport = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        return SafeTensorsWriter.SaveShardedStreaming(dir, arch.Select(t => t.Entry).ToList(), (e, sink) =>
        {
            Fill(byName[e.Name], seed, sink);
            done += e.ByteLength;
            if (log != null && done >= nextReport && total >= 1L << 30)
            {
                log.WriteLine($"  {done / 1e9:F1} / {total / 1e9:F1} GB written ({clock.Elapsed.TotalSeconds:F0} s)");
                nextReport = done + total / 10;
            }
        }, maxShardBytes);
    }

    /// <summary>
    /// Init values by role, like a fresh model: weights and biases N(0, 0.02); norm scales 1 and shifts 0;
    /// Infinity's cosine-attention scale_mul_1H11 ln 4 (its official init); buffers exact (lfq.mask = 2^(d-1)..2^0,
    /// zero_k_bias = 0). Each tensor has its own generator seeded from (seed, name), so its values do not depend on
    /// the order or sharding of the file.
    /// </summary>
    public static void Fill(ArchitectureTensor t, long seed, TensorSink sink)
    {
        long n = t.ElementCount;
        if (t.Role == TensorRole.Buffer)
        {
            if (t.Name.EndsWith("zero_k_bias", StringComparison.Ordinal)) { Constant(n, 0, sink); return; }
            if (t.Name.EndsWith("quantizer.lfq.mask", StringComparison.Ordinal) && t.Shape.Length == 1)
            {
                using var mask = pow(tensor(2L), arange(n - 1, -1, -1, ScalarType.Int64));
                sink(mask);
                return;
            }
            throw new NotSupportedException($"no init rule for buffer '{t.Name}' [{string.Join(", ", t.Shape)}]; add one to RandomCheckpoint.Fill");
        }
        if (t.Role == TensorRole.NormWeight) { Constant(n, 1, sink); return; }
        if (t.Role == TensorRole.NormBias) { Constant(n, 0, sink); return; }
        if (t.Name.EndsWith("scale_mul_1H11", StringComparison.Ordinal)) { Constant(n, Math.Log(4), sink); return; }
        using var g = new Generator(TensorSeed(seed, t.Name), CPU);
        for (long s = 0; s < n; s += PieceElements)
        {
            using var piece = empty(Math.Min(PieceElements, n - s), ScalarType.Float32).normal_(0, InitStd, g);
            sink(piece);
        }
    }

    static void Constant(long n, double value, TensorSink sink)
    {
        for (long s = 0; s < n; s += PieceElements)
        {
            using var piece = full(Math.Min(PieceElements, n - s), value, ScalarType.Float32);
            sink(piece);
        }
    }

    /// <summary>FNV-1a of the name mixed with the seed: a stable per-tensor stream.</summary>
    public static ulong TensorSeed(long seed, string name)
    {
        ulong h = 14695981039346656037UL ^ (ulong)seed * 0x9E3779B97F4A7C15UL;
        foreach (char c in name) { h ^= c; h *= 1099511628211UL; }
        return h;
    }

    static void WriteJson(string path, JsonObject obj, JsonSerializerOptions options)
    {
        var tmp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, obj.ToJsonString(options) + "\n");
        File.Move(tmp, path, overwrite: true);
    }

    static bool SameDir(string a, string b) =>
        string.Equals(Path.TrimEndingDirectorySeparator(a), Path.TrimEndingDirectorySeparator(b), StringComparison.Ordinal);

    static string TorchSharpName(ScalarType t) => Torch.TorchRuntime.DTypeName(t);
}
