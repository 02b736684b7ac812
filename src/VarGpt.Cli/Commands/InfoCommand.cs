using System.CommandLine;
using System.Globalization;
using VarGpt.Checkpoint;
using VarGpt.Torch;
using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Model;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt info [DIR]: what a checkpoint folder holds (configs, and parameters/bytes/dtypes per component).</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var dir = new Argument<string?>("DIR")
        {
            Description = "Checkpoint folder: config.json, generation_config.json, preprocessor_config.json, model.safetensors or a sharded model.safetensors.index.json. " +
                $"Default: ${ShippedModel.EnvironmentVariable} if set, else the shipped ShapesWorld model ({ShippedModel.RelativePath}).",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var strict = new Option<bool>("--strict") { Description = "Exit with code 1 if the weights do not match the architecture of config.json (missing/unexpected keys, shape mismatches)." };
        var cmd = new Command("info", "Summarise a checkpoint folder (configs; parameters, bytes and dtypes per component; key audit) without loading weights.")
        { dir, strict };
        cmd.WithDetails(
            """
            Reads config.json, generation_config.json and preprocessor_config.json when present, and only the
            safetensors headers. Components by key prefix: language model = model.* + lm_head.*,
            vision tower = visual.*, Infinity decoder = vargpt_gen.*, VAE = vae_local.*,
            projectors = image_gen_projector* (both directions), sos embedding = sos_embedding.*;
            anything else is listed as "other".
            With a config.json, the architecture it describes is built on the META device (no memory) and the files
            are checked against it: the "architecture" column gives the expected parameters per component, then
            missing/unexpected keys and shape mismatches are listed (exit code 1 with --strict), and floating
            tensors stored in a dtype other than config torch_dtype.
            """);
        cmd.WithExamples("vargpt info ~/models/VARGPT-v1.1", "vargpt info --strict /tmp/vargpt-tiny   # exit 1 unless every key and shape matches");
        cmd.SetAction(parse => Run(ModelOptions.ResolveModelDir(parse.GetValue(dir)), parse.GetValue(strict), parse.InvocationConfiguration.Output));
        return cmd;
    }

    static int Run(string dir, bool strict, TextWriter o)
    {
        var full = Path.GetFullPath(dir);
        if (!Directory.Exists(full)) throw new VargptInputException($"checkpoint folder not found: {full}");
        bool hasConfig = File.Exists(Path.Combine(full, "config.json"));
        bool hasWeights = File.Exists(Path.Combine(full, CheckpointReader.IndexFileName)) || File.Exists(Path.Combine(full, CheckpointReader.SingleFileName));
        if (!hasConfig && !hasWeights)
            throw new VargptInputException($"{full} has neither config.json nor {CheckpointReader.SingleFileName}/{CheckpointReader.IndexFileName}: not a checkpoint folder");

        o.WriteLine($"checkpoint: {full}");
        VargptConfig? config = hasConfig ? VargptConfig.Load(full) : null;
        if (config != null) PrintConfig(config, o);
        else o.WriteLine("config.json: absent");
        var gen = Path.Combine(full, GenerationConfig.FileName);
        if (File.Exists(gen)) PrintGeneration(GenerationConfig.Load(gen), o);
        var pre = Path.Combine(full, PreprocessorConfig.FileName);
        if (File.Exists(pre)) PrintPreprocessor(PreprocessorConfig.Load(pre), o);

        // The architecture config.json describes, enumerated on the META device (no weights allocated).
        IReadOnlyList<ArchitectureTensor>? arch = null;
        if (config != null)
        {
            try { arch = ModelArchitecture.Enumerate(config, TorchRuntime.ParseDType(config.TorchDtype)); }
            catch (VargptInputException e)
            {
                o.WriteLine($"architecture: cannot be built from config.json ({e.Message})");
                return strict ? ExitCodes.Failed : ExitCodes.Ok;
            }
        }

        if (arch != null)
        {
            o.WriteLine($"architecture from config.json: {arch.Count} tensors, {Count(arch.Sum(t => t.ElementCount))} parameters, {Bytes(arch.Sum(t => t.Entry.ByteLength))} in {config!.TorchDtype}");
            PrintComponents(arch.Select(t => (t.Name, t.ElementCount, t.Entry.ByteLength, SafeTensorsFile.FromScalarType(t.DType))).ToList(), o);
        }
        if (!hasWeights) { o.WriteLine("weights: absent"); return ExitCodes.Ok; }
        using var r = CheckpointReader.Open(full);
        o.WriteLine($"weights: {r.Files.Count} file{(r.Files.Count == 1 ? "" : "s")}{(r.IndexPath != null ? " (sharded, " + CheckpointReader.IndexFileName + ")" : "")}, {r.Tensors.Count} tensors, {Count(r.Tensors.Values.Sum(t => t.ElementCount))} parameters, {Bytes(r.TotalBytes)}");
        PrintComponents(r.Tensors.Values.Select(t => (t.Name, t.ElementCount, t.ByteLength, t.DType)).ToList(), o);
        bool match = arch == null || PrintAudit(config!, arch, r, o);
        return strict && !match ? ExitCodes.Failed : ExitCodes.Ok;
    }

    /// <summary>Missing/unexpected keys and shape mismatches against the architecture, and floating dtypes other than torch_dtype.</summary>
    static bool PrintAudit(VargptConfig config, IReadOnlyList<ArchitectureTensor> arch, CheckpointReader r, TextWriter o)
    {
        var cmp = StateDict.Compare(arch.ToDictionary(t => t.Name, t => t.Shape, StringComparer.Ordinal),
            r.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.Shape, StringComparer.Ordinal));
        o.WriteLine($"keys vs architecture: {cmp.Matched.Count} matched, {cmp.Missing.Count} missing, {cmp.Unexpected.Count} unexpected, {cmp.ShapeMismatches.Count} shape mismatches");
        List("missing (the architecture has them, the files do not)", cmp.Missing, o);
        List("unexpected (in the files, not in the architecture)", cmp.Unexpected, o);
        List("shape mismatches", cmp.ShapeMismatches.Select(m => m.ToString()).ToList(), o);
        string want = SafeTensorsFile.FromScalarType(TorchRuntime.ParseDType(config.TorchDtype));
        var otherDtype = r.Tensors.Values.Where(t => t.DType is "F64" or "F32" or "F16" or "BF16" && t.DType != want).OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        if (otherDtype.Count > 0)
            List($"floating tensors not stored as torch_dtype {config.TorchDtype} ({want}; converted on load)", otherDtype.Select(t => $"{t.Name} {t.DType}").ToList(), o);
        return cmp.IsMatch;
    }

    static void List(string title, IReadOnlyList<string> items, TextWriter o, int max = 20)
    {
        if (items.Count == 0) return;
        o.WriteLine($"  {title}: {items.Count}");
        foreach (var x in items.Take(max)) o.WriteLine($"    {x}");
        if (items.Count > max) o.WriteLine($"    ... and {items.Count - max} more");
    }

    static void PrintConfig(VargptConfig c, TextWriter o)
    {
        o.WriteLine("config.json:");
        o.WriteLine($"  language model   {c.NumHiddenLayers} layers, hidden {c.HiddenSize}, intermediate {c.IntermediateSize}, heads {c.NumAttentionHeads} (kv {c.NumKeyValueHeads}), head_dim {c.HeadDim}, vocab {c.VocabSize}, mrope [{string.Join(",", c.MropeSection)}], rope_theta {F(c.RopeTheta)}");
        o.WriteLine($"  vision tower     {c.Vision.Depth} blocks, embed {c.Vision.EmbedDim}, heads {c.Vision.NumHeads}, patch {c.Vision.PatchSize}, merge {c.Vision.SpatialMergeSize}, act {c.Vision.HiddenAct}");
        o.WriteLine($"  Infinity decoder {c.Infinity.Depth} blocks, embed {c.Infinity.EmbedDim}, heads {c.Infinity.NumHeads}, codebook_dim {c.Infinity.CodebookDim}{(c.Infinity == new InfinityConfig() ? " (the released infinity_2b shape)" : "")}");
        o.WriteLine($"  VAE              base_ch {c.Vae.BaseCh}, ch_mult [{string.Join(",", c.Vae.EncoderChMult)}], codebook_dim {c.Vae.CodebookDim}{(ConfigJson.Serialize(c.Vae) == ConfigJson.Serialize(new VaeConfig()) ? " (the released d32 VAE)" : "")}");
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

    /// <summary>Tensors/parameters/bytes/dtypes per component.</summary>
    static void PrintComponents(IReadOnlyList<(string Name, long Elements, long Bytes, string DType)> tensors, TextWriter o)
    {
        var groups = tensors.GroupBy(t => ComponentOf(t.Name)).ToDictionary(g => g.Key, g => g.ToList());
        var rows = ModelComponents.All.Select(c => c.Title).Append("other").Where(groups.ContainsKey).ToList();
        int w = Math.Max("component".Length, rows.Max(n => n.Length));
        o.WriteLine($"  {"component".PadRight(w)}  {"tensors",8}  {"parameters",14}  {"bytes",10}  dtypes");
        foreach (var name in rows)
        {
            var ts = groups[name];
            var dtypes = string.Join(", ", ts.GroupBy(t => t.DType).OrderByDescending(g => g.Count()).Select(g => $"{g.Key} x{g.Count()}"));
            o.WriteLine($"  {name.PadRight(w)}  {ts.Count,8}  {Count(ts.Sum(t => t.Elements)),14}  {Bytes(ts.Sum(t => t.Bytes)),10}  {dtypes}");
        }
        o.WriteLine($"  {"total".PadRight(w)}  {tensors.Count,8}  {Count(tensors.Sum(t => t.Elements)),14}  {Bytes(tensors.Sum(t => t.Bytes)),10}");
        if (groups.TryGetValue("other", out var other))
            o.WriteLine($"  other = keys outside the VARGPT prefixes, e.g. {string.Join(", ", other.Select(t => t.Name).Order(StringComparer.Ordinal).Take(3))}");
    }

    static string ComponentOf(string key) => ModelComponents.Of(key)?.Title ?? "other";

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
