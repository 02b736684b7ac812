using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using VarGpt.Checkpoint;
using VarGpt.Torch;
using VarGpt.Presets;
using VarGpt.ShapesWorld;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt init --preset tiny|small|full --out DIR: a complete checkpoint folder with seeded random weights.</summary>
public static class InitCommand
{
    public static Command Create()
    {
        var preset = new Option<string>("--preset") { Description = "Model size: tiny, small or full (see docs/notes/presets.md).", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "Folder to create (must be absent or empty unless --force).", Required = true };
        var dtype = new Option<string?>("--dtype") { Description = "Stored dtype of the weights and config torch_dtype: bf16 or float32 (default: bf16 for small/full, float32 for tiny)." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Folder with the tokenizer files to copy (Qwen2-VL layout incl. the <|image_gen_*|> tokens). Required for small/full; tiny defaults to the ShapesWorld BPE tokenizer." };
        var seed = new Option<long>("--seed") { Description = "Seed of the random weights (each tensor has its own stream derived from the seed and its name).", DefaultValueFactory = _ => 0 };
        var pn = new Option<string?>("--pn") { Description = "Default generation resolution written to vargpt_gen_args.pn (default: the preset's, e.g. 0.06M for small)." };
        var force = new Option<bool>("--force") { Description = "Write into a non-empty folder, overwriting the checkpoint files." };
        var cmd = new Command("init", "Write a checkpoint folder with random weights for a preset size (official layout and key names).")
        { preset, output, dtype, tokenizer, seed, pn, force };
        cmd.WithDetails(
            """
            Writes config.json (official VARGPTQwen2VLConfig fields; non-released sizes add vargpt_gen_config,
            vae_config and vargpt_gen_args), generation_config.json, preprocessor_config.json, the tokenizer files and
            the weights under the official names (model.safetensors, or shards + model.safetensors.index.json above
            5 GB). Weights are N(0, 0.02), norms 1/0, buffers exact; they stream to disk tensor by tensor, so even
            'full' (10.9B parameters, 21.9 GB in bf16) needs little memory (3.5 GB peak measured).
            Presets: tiny = test-sized (ShapesWorld tokenizer by default, pn tiny5 = 128x128);
                     small = Qwen2-0.5B-shaped LM + ViT depth 8 + infinity_layer12 + BSQ-VAE d32, pn 0.06M;
                     full = the released VARGPT-v1.1 shapes (vocab 152064, pn 0.25M).
            """);
        cmd.WithExamples(
            "vargpt init --preset tiny --out /tmp/vargpt-tiny",
            "vargpt init --preset small --tokenizer ../shared/tokenizers/qwen2-vl --out ~/models/vargpt-small",
            "vargpt init --preset full --tokenizer ../shared/tokenizers/qwen2-vl --out /data/vargpt-random --seed 1");
        cmd.SetAction(parse => Run(parse.GetRequiredValue(preset), parse.GetRequiredValue(output), parse.GetValue(dtype), parse.GetValue(tokenizer),
            parse.GetValue(seed), parse.GetValue(pn), parse.GetValue(force), parse.InvocationConfiguration.Output));
        return cmd;
    }

    static int Run(string presetName, string outDir, string? dtype, string? tokenizer, long seed, string? pn, bool force, TextWriter o)
    {
        var preset = ModelPresets.Get(presetName);
        var options = new RandomCheckpointOptions
        {
            DType = dtype is null ? null : TorchRuntime.ParseDType(dtype),
            TokenizerDir = tokenizer,
            DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer,
            Seed = seed,
            Pn = pn,
            Force = force,
        };
        var clock = Stopwatch.StartNew();
        o.WriteLine($"preset {preset.Name}: {preset.Summary}");
        var r = RandomCheckpoint.Create(preset, outDir, options, o);
        var c = r.Config;
        o.WriteLine($"wrote {r.Dir} in {clock.Elapsed.TotalSeconds.ToString("F1", CultureInfo.InvariantCulture)} s: {r.Parameters.ToString("N0", CultureInfo.InvariantCulture)} parameters, " +
            $"{(r.Bytes / 1e9).ToString("F3", CultureInfo.InvariantCulture)} GB {TorchRuntime.DTypeName(r.DType)} in {r.WeightFiles.Count(f => f.EndsWith(".safetensors", StringComparison.Ordinal))} safetensors file(s)");
        o.WriteLine($"vocab {c.VocabSize}, image_gen start/end/pad {c.ImageGen.StartId}/{c.ImageGen.EndId}/{c.ImageGen.PadId}, pn {c.Pn}, seed {seed}");
        o.WriteLine($"inspect it with: vargpt info {r.Dir}");
        return ExitCodes.Ok;
    }
}
