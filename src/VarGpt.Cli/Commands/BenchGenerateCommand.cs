using System.CommandLine;
using VarGpt.Benchmarks;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Torch;
using VarGpt.Inference;
using VarGpt.Presets;
using VarGpt.ShapesWorld;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt bench generate --preset tiny|small|full: seconds per image and per scale, peak RSS, multiple of the FLOP bound.</summary>
public static class BenchGenerateCommand
{
    public static Command Create()
    {
        var preset = new Option<string?>("--preset") { Description = "Random checkpoint to create and time: tiny, small or full (released shapes, ~18.8 GB bf16 on disk)." };
        var modelDir = new Option<string?>("--model", "-m") { Description = $"Time an existing model folder instead of a preset. With neither --model nor --preset: ${ShippedModel.EnvironmentVariable} if set, else the shipped ShapesWorld model." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer folder for the small/full presets (Qwen2-VL layout with the <|image_gen_*|> tokens)." };
        var work = new Option<string?>("--work-dir") { Description = "Where the preset checkpoint is written (default: /tmp/vargpt-<preset>-gen); deleted afterwards unless --keep." };
        var keep = new Option<bool>("--keep") { Description = "Keep the preset checkpoint folder." };
        var dtype = new Option<string?>("--dtype") { Description = "Compute dtype (default: the preset's stored dtype; bf16 for small/full, float32 for tiny)." };
        var images = new Option<int>("--images") { Description = "Timed images.", DefaultValueFactory = _ => new GenerationBenchOptions().Images };
        var warmup = new Option<int>("--warmup") { Description = "Untimed images first.", DefaultValueFactory = _ => new GenerationBenchOptions().Warmup };
        var cfg = new Option<double>("--cfg") { Description = "Guidance (1 = one branch).", DefaultValueFactory = _ => new ImageOptions().Cfg };
        var pixels = new Option<string?>("--pixels") { Description = "Pixel budget (default: the checkpoint's: tiny5 / 0.06M / 0.25M)." };
        var json = BenchCommand.JsonOption();
        var threads = BenchCommand.ThreadsOption();
        var cmd = new Command("generate", "Time text-to-image generation: seconds per image and per scale, peak RSS, time as a multiple of the matmul FLOP bound.")
        { preset, modelDir, tokenizer, work, keep, dtype, images, warmup, cfg, pixels, json, threads };
        cmd.WithDetails(
            """
            With --preset the command writes a random checkpoint of that size (vargpt init), loads it (language model +
            generation half; no vision tower), forces <|image_gen_start|> (random weights never emit it), times
            GenerateImage with the official sampling settings and deletes the checkpoint. The FLOP bound is
            2 x active parameters per image token (LLM layers, projectors, Infinity; no embedding or lm_head)
            x image tokens x branches (2 with CFG) / measured matmul FLOP/s of the compute dtype; attention scores,
            the prefill and the VAE decode are not counted. 'full' needs ~19 GB of RAM and disk and takes long on a CPU.
            """);
        cmd.WithExamples(
            "vargpt bench generate --preset tiny",
            "vargpt bench generate --preset small --tokenizer ../shared/tokenizers/qwen2-vl --json",
            "vargpt bench generate --preset full --tokenizer ../shared/tokenizers/qwen2-vl   # the released shapes, 512x512",
            "vargpt bench generate --model ~/models/VARGPT-v1.1 --images 2");
        cmd.SetAction(parse =>
        {
            BenchCommand.ApplyThreads(parse.GetValue(threads));
            var o = parse.InvocationConfiguration.Output;
            var log = parse.InvocationConfiguration.Error;
            string? presetName = parse.GetValue(preset), dir = parse.GetValue(modelDir);
            if (presetName is not null && dir is not null) throw new VargptInputException("give either --preset tiny|small|full or --model DIR, not both");
            if (presetName is null) dir = ModelOptions.ResolveModelDir(dir); // neither: the shipped model
            int n = parse.GetValue(images), w = parse.GetValue(warmup);
            if (n < 1) throw new VargptInputException($"--images must be at least 1, got {n}");
            if (w < 0) throw new VargptInputException($"--warmup must be ≥ 0, got {w}");
            ModelPreset? p = null;
            bool created = false;
            if (presetName is not null)
            {
                p = ModelPresets.Get(presetName);
                dir = Path.GetFullPath(parse.GetValue(work) ?? Path.Combine(Path.GetTempPath(), $"vargpt-{p.Name}-gen"));
                log.WriteLine($"writing a random '{p.Name}' checkpoint to {dir}...");
                RandomCheckpoint.Create(p, dir, new RandomCheckpointOptions { TokenizerDir = parse.GetValue(tokenizer), DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer, Force = true }, log);
                created = true;
            }
            try
            {
                var dt = parse.GetValue(dtype) is { } s ? TorchRuntime.ParseDType(s) : p?.DefaultDType ?? TorchSharp.torch.ScalarType.BFloat16;
                log.WriteLine($"loading {dir} ({TorchRuntime.DTypeName(dt)})...");
                using var model = VargptModel.Load(Path.GetFullPath(dir!), new VargptModelOptions { DType = dt, Parts = ModelParts.LanguageModel | ModelParts.Generation });
                var options = new GenerationBenchOptions
                {
                    Images = n, Warmup = w,
                    Image = new ImageOptions { ForceImageStart = true, Seed = 0, Cfg = parse.GetValue(cfg), Pn = parse.GetValue(pixels) },
                };
                var r = VargptImagesBenchmark.Run(model, options, log);
                if (p is not null) r.Set("preset", p.Name);
                BenchCommand.Print(r, parse.GetValue(json), o);
                return ExitCodes.Ok;
            }
            finally
            {
                if (created && !parse.GetValue(keep))
                {
                    log.WriteLine($"deleting {dir}");
                    Directory.Delete(dir!, recursive: true);
                }
            }
        });
        return cmd;
    }
}
