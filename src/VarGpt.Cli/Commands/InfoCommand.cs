using System.CommandLine;
using System.Globalization;
using VarGpt.Checkpoint;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt info DIR: what a checkpoint folder holds (configs, and parameters/bytes/dtypes per component).</summary>
public static class InfoCommand
{
    /// <summary>Components of the official state dict by key prefix (VARGPTQwen2VLForConditionalGeneration attributes).</summary>
    internal static readonly (string Name, string[] Prefixes)[] Components =
    [
        ("language model", ["model.", "lm_head."]),
        ("vision tower", ["visual."]),
        ("Infinity decoder", ["vargpt_gen."]),
        ("VAE", ["vae_local."]),
        ("projectors", ["image_gen_projector"]),
        ("sos embedding", ["sos_embedding."]),
    ];

    public static Command Create()
    {
        var dir = new Argument<string>("DIR") { Description = "Checkpoint folder: config.json, generation_config.json, preprocessor_config.json, model.safetensors or a sharded model.safetensors.index.json." };
        var cmd = new Command("info", "Summarise a checkpoint folder (configs; parameters, bytes and dtypes per component) without loading weights.")
        { dir };
        cmd.WithDetails(
            """
            Reads config.json, generation_config.json and preprocessor_config.json when present, and only the
            safetensors headers. Components by key prefix: language model = model.* + lm_head.*,
            vision tower = visual.*, Infinity decoder = vargpt_gen.*, VAE = vae_local.*,
            projectors = image_gen_projector* (both directions), sos embedding = sos_embedding.*;
            anything else is listed as "other".
            """);
        cmd.WithExamples("vargpt info ~/models/VARGPT-v1.1");
        cmd.SetAction(parse => Run(parse.GetRequiredValue(dir), parse.InvocationConfiguration.Output));
        return cmd;
    }

    static int Run(string dir, TextWriter o)
    {
        var full = Path.GetFullPath(dir);
        if (!Directory.Exists(full)) throw new UserErrorException($"checkpoint folder not found: {full}");
        bool hasConfig = File.Exists(Path.Combine(full, "config.json"));
        bool hasWeights = File.Exists(Path.Combine(full, CheckpointReader.IndexFileName)) || File.Exists(Path.Combine(full, CheckpointReader.SingleFileName));
        if (!hasConfig && !hasWeights)
            throw new UserErrorException($"{full} has neither config.json nor {CheckpointReader.SingleFileName}/{CheckpointReader.IndexFileName}: not a checkpoint folder");

        o.WriteLine($"checkpoint: {full}");
        if (hasConfig) PrintConfig(VargptConfig.Load(full), o);
        else o.WriteLine("config.json: absent");
        var gen = Path.Combine(full, GenerationConfig.FileName);
        if (File.Exists(gen)) PrintGeneration(GenerationConfig.Load(gen), o);
        var pre = Path.Combine(full, PreprocessorConfig.FileName);
        if (File.Exists(pre)) PrintPreprocessor(PreprocessorConfig.Load(pre), o);

        if (!hasWeights) { o.WriteLine("weights: absent"); return ExitCodes.Ok; }
        using var r = CheckpointReader.Open(full);
        PrintWeights(r, o);
        return ExitCodes.Ok;
    }

    static void PrintConfig(VargptConfig c, TextWriter o)
    {
        o.WriteLine("config.json:");
        o.WriteLine($"  language model   {c.NumHiddenLayers} layers, hidden {c.HiddenSize}, intermediate {c.IntermediateSize}, heads {c.NumAttentionHeads} (kv {c.NumKeyValueHeads}), head_dim {c.HeadDim}, vocab {c.VocabSize}, mrope [{string.Join(",", c.MropeSection)}], rope_theta {F(c.RopeTheta)}");
        o.WriteLine($"  vision tower     {c.Vision.Depth} blocks, embed {c.Vision.EmbedDim}, heads {c.Vision.NumHeads}, patch {c.Vision.PatchSize}, merge {c.Vision.SpatialMergeSize}, act {c.Vision.HiddenAct}");
        o.WriteLine($"  Infinity decoder {c.Infinity.Depth} blocks, embed {c.Infinity.EmbedDim}, heads {c.Infinity.NumHeads}, codebook_dim {c.Infinity.CodebookDim}{(c.Raw.ContainsKey("vargpt_gen_config") ? "" : " (released defaults; no vargpt_gen_config)")}");
        o.WriteLine($"  VAE              base_ch {c.Vae.BaseCh}, ch_mult [{string.Join(",", c.Vae.EncoderChMult)}], codebook_dim {c.Vae.CodebookDim}{(c.Raw.ContainsKey("vae_config") ? "" : " (released defaults; no vae_config)")}");
        o.WriteLine($"  tokens           bos {c.BosTokenId}, eos [{string.Join(",", c.EosTokenIds)}], pad {c.PadTokenId}, image {c.ImageTokenId}, vision_start {c.VisionStartTokenId}, image_gen start/end/pad {c.ImageGen.StartId}/{c.ImageGen.EndId}/{c.ImageGen.PadId}");
        o.WriteLine($"  torch_dtype      {c.TorchDtype}; default generation resolution {c.Pn}");
    }

    static void PrintGeneration(GenerationConfig g, TextWriter o)
    {
        o.WriteLine($"{GenerationConfig.FileName}:");
        o.WriteLine($"  do_sample {g.DoSample.ToString().ToLowerInvariant()}, temperature {F(g.Temperature)}, top_k {g.TopK}, top_p {F(g.TopP)}, repetition_penalty {F(g.RepetitionPenalty)}, max_new_tokens {g.MaxNewTokens?.ToString(CultureInfo.InvariantCulture) ?? "unset"}");
        o.WriteLine($"  eos [{string.Join(",", g.EosTokenIds)}], pad {g.PadTokenId?.ToString(CultureInfo.InvariantCulture) ?? "unset"}"
            + (g.ImageGen is { } t ? $", image_gen start/end/pad {t.StartId}/{t.EndId}/{t.PadId}" : ""));
    }

    static void PrintPreprocessor(PreprocessorConfig p, TextWriter o)
    {
        o.WriteLine($"{PreprocessorConfig.FileName}:");
        o.WriteLine($"  pixels {p.MinPixels}..{p.MaxPixels}, patch {p.PatchSize}, temporal_patch {p.TemporalPatchSize}, merge {p.MergeSize}, mean [{string.Join(",", p.ImageMean.Select(F))}], std [{string.Join(",", p.ImageStd.Select(F))}]");
    }

    static void PrintWeights(CheckpointReader r, TextWriter o)
    {
        o.WriteLine($"weights: {r.Files.Count} file{(r.Files.Count == 1 ? "" : "s")}{(r.IndexPath != null ? " (sharded, " + CheckpointReader.IndexFileName + ")" : "")}, {r.Tensors.Count} tensors, {Count(r.Tensors.Values.Sum(t => t.ElementCount))} parameters, {Bytes(r.TotalBytes)}");
        var groups = r.Tensors.Values.GroupBy(t => ComponentOf(t.Name)).ToDictionary(g => g.Key, g => g.ToList());
        var rows = Components.Select(c => c.Name).Append("other").Where(groups.ContainsKey).ToList();
        int w = rows.Max(n => n.Length);
        o.WriteLine($"  {"component".PadRight(w)}  {"tensors",8}  {"parameters",14}  {"bytes",10}  dtypes");
        foreach (var name in rows)
        {
            var ts = groups[name];
            var dtypes = string.Join(", ", ts.GroupBy(t => t.DType).OrderByDescending(g => g.Count()).Select(g => $"{g.Key} x{g.Count()}"));
            o.WriteLine($"  {name.PadRight(w)}  {ts.Count,8}  {Count(ts.Sum(t => t.ElementCount)),14}  {Bytes(ts.Sum(t => t.ByteLength)),10}  {dtypes}");
        }
        if (groups.TryGetValue("other", out var other))
            o.WriteLine($"  other = keys outside the VARGPT prefixes, e.g. {string.Join(", ", other.Select(t => t.Name).Order(StringComparer.Ordinal).Take(3))}");
    }

    internal static string ComponentOf(string key)
    {
        foreach (var (name, prefixes) in Components)
            if (prefixes.Any(p => key.StartsWith(p, StringComparison.Ordinal))) return name;
        return "other";
    }

    static string F(double x) => x.ToString("G6", CultureInfo.InvariantCulture);
    static string Count(long n) => n.ToString("N0", CultureInfo.InvariantCulture);

    static string Bytes(long b) => b switch
    {
        >= 1L << 30 => string.Create(CultureInfo.InvariantCulture, $"{b / (double)(1L << 30):F2} GiB"),
        >= 1L << 20 => string.Create(CultureInfo.InvariantCulture, $"{b / (double)(1L << 20):F1} MiB"),
        >= 1L << 10 => string.Create(CultureInfo.InvariantCulture, $"{b / 1024.0:F1} KiB"),
        _ => $"{b} B",
    };
}
