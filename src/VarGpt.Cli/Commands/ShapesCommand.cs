using VarGpt.Checkpoint;
using System.CommandLine;
using System.Globalization;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Inference;
using VarGpt.Configuration;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt shapes data | train-vae | eval-vae | eval | bench: the ShapesWorld toy world and the recipe of the shipped small model (docs/shapesworld.md).</summary>
public static class ShapesCommand
{
    public static Command Create()
    {
        var cmd = new Command("shapes", "ShapesWorld: synthetic understanding / text-to-image / editing data and the small model trained on it.")
        {
            DataCommand(), TrainCommand(), TrainVaeCommand(), EvalVaeCommand(), EvalCommand(), BenchCommand(),
        };
        cmd.Subcommands.Add(MineDpoCommand());
        cmd.Subcommands.Add(ProbeTextCommand());
        cmd.WithExamples(
            "vargpt shapes data --out data/shapes --train 20000 --eval 500 --seed 0",
            "vargpt shapes train-vae --out runs/vae --seed 0",
            "vargpt shapes eval --fast --report report.html",
            "vargpt shapes bench");
        return cmd;
    }

    static Option<int> SeedOption() => new("--seed") { Description = "Seed: the output depends only on it (and the other options).", DefaultValueFactory = _ => 0 };
    static Option<int> ThreadsOption() => new("--threads") { Description = "libtorch intra-op threads (default: all cores).", DefaultValueFactory = _ => Environment.ProcessorCount };

    /// <summary>--jitter: box-centre jitter of rendered scenes, a fraction of the image side in [0, ShapesPalette.MaxJitter].</summary>
    static Option<float> JitterOption(string what, float defaultValue) => new("--jitter")
    {
        Description = $"{what}, fraction of the image side, 0 to {ShapesPalette.MaxJitter.ToString(CultureInfo.InvariantCulture)}.",
        DefaultValueFactory = _ => defaultValue,
    };

    /// <summary>The value of <paramref name="jitter"/>, or a user error naming the option when it is out of range.</summary>
    static float Jitter(ParseResult p, Option<float> jitter)
    {
        float j = p.GetValue(jitter);
        if (j is < 0 or > ShapesPalette.MaxJitter)
            throw new InvalidOptionException(string.Create(CultureInfo.InvariantCulture, $"--jitter must be in [0, {ShapesPalette.MaxJitter}], got {j}"), "--jitter");
        return j;
    }

    static Command DataCommand()
    {
        var output = new Option<string>("--out") { Description = "Dataset folder to write (created if missing).", Required = true };
        var train = new Option<int>("--train") { Description = "Number of training samples.", DefaultValueFactory = _ => 10000 };
        var eval = new Option<int>("--eval") { Description = "Number of held-out samples (each shows a held-out shape×colour×position).", DefaultValueFactory = _ => 500 };
        var seed = SeedOption();
        var size = new Option<int>("--image-size") { Description = "Side of the rendered PNGs.", DefaultValueFactory = _ => 128 };
        var jitter = JitterOption("Uniform box-centre jitter of the rendered scenes", 0f);
        var task = new Option<string?>("--task") { Description = "Only samples of one task: understanding, description, text-to-image or edit (default: the task mix)." };
        task.AcceptOnlyFromAmong(TaskNames.Keys.ToArray());
        var cmd = new Command("data",
            """
            Write a ShapesWorld dataset in the official LLaMA-Factory sharegpt layout: dataset_info.json,
            shapesworld_train.json / shapesworld_eval.json (messages with <image> / <image_gen> placeholders,
            image paths relative to the folder), PNGs under images/, and *_truth.json (scenes, requested spec,
            edit, exact answer) for scoring. Task mix: 30% understanding, 10% description, 35% text-to-image,
            25% editing, or one task with --task.
            """)
        { output, train, eval, seed, size, jitter, task };
        cmd.WithExamples("vargpt shapes data --out data/shapes --train 20000 --eval 500 --seed 0",
            "vargpt shapes data --out data/t2i --task text-to-image --image-size 64 --train 20000 --eval 200");
        cmd.SetAction(p =>
        {
            var o = p.InvocationConfiguration.Output;
            int nTrain = p.GetValue(train), nEval = p.GetValue(eval);
            if (nTrain < 0 || nEval < 0) throw new VargptInputException("--train and --eval must be ≥ 0");
            float j = Jitter(p, jitter);
            if (p.GetValue(size) < 16) throw new VargptInputException("--image-size must be at least 16");
            var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = p.GetValue(seed), ImageSize = p.GetValue(size), PositionJitter = j });
            var dir = Path.GetFullPath(p.GetRequiredValue(output));
            AtomicFile.CheckWritableFolder(dir, "--out");
            var sw = System.Diagnostics.Stopwatch.StartNew();
            ShapesDataset.Write(dir, gen, nTrain, nEval, p.GetValue(task) is { } t ? TaskNames[t] : null);
            foreach (var (name, n) in new[] { (ShapesDataset.TrainName, nTrain), (ShapesDataset.EvalName, nEval) })
            {
                var truth = ShapesDataset.ReadTruth(dir, name);
                var kinds = string.Join(", ", truth.GroupBy(s => s.Kind).OrderBy(g => g.Key).Select(g => $"{g.Key} {g.Count()}"));
                o.WriteLine($"{name}: {n} samples ({kinds}), {truth.Sum(s => s.Images.Count)} images");
            }
            o.WriteLine($"wrote {dir} in {sw.Elapsed.TotalSeconds:F1} s");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static readonly Dictionary<string, ShapesTaskKind> TaskNames = new()
    {
        ["understanding"] = ShapesTaskKind.Understanding, ["description"] = ShapesTaskKind.Description,
        ["text-to-image"] = ShapesTaskKind.TextToImage, ["edit"] = ShapesTaskKind.Edit,
    };

    static Command TrainCommand()
    {
        var d = new ShapesTrainingOptions { OutputDir = "" };
        var output = new Option<string>("--out") { Description = "Run folder (data/, base/, vae/, vision/, understanding/, align/, generation/, sft/, dpo_data/, dpo/, model/ and one yaml per stage). Rerunning the same command resumes.", Required = true };
        var seed = SeedOption();
        var threads = ThreadsOption();
        var train = new Option<int>("--train-samples") { Description = "Mixed-task training samples.", DefaultValueFactory = _ => d.TrainSamples };
        var vae = new Option<int>("--vae-steps") { Description = "BSQ-VAE optimizer steps.", DefaultValueFactory = _ => d.VaeSteps };
        var vision = new Option<int>("--vision-steps") { Description = "Vision-tower pretraining steps (per-token probe).", DefaultValueFactory = _ => d.VisionSteps };
        var und = new Option<int>("--understanding-steps") { Description = "Understanding-stage steps (questions and descriptions).", DefaultValueFactory = _ => d.UnderstandingSteps };
        var align = new Option<int>("--align-steps") { Description = "Alignment-stage steps (caption pairs).", DefaultValueFactory = _ => d.AlignSteps };
        var gen = new Option<int>("--generation-steps") { Description = $"Generation-stage steps (text-to-image pairs, {d.GenerationBatchSize} per step).", DefaultValueFactory = _ => d.GenerationSteps };
        var sft = new Option<int>("--sft-steps") { Description = "SFT steps (all tasks).", DefaultValueFactory = _ => d.SftSteps };
        var dpo = new Option<int>("--dpo-steps") { Description = $"DPO steps at most: fewer when {d.DpoMaxEpochs:0.#} passes over the mined pairs take fewer.", DefaultValueFactory = _ => d.DpoSteps };
        var batch = new Option<int>("--batch") { Description = "Samples per alignment/SFT step.", DefaultValueFactory = _ => d.BatchSize };
        var ignoreGates = new Option<bool>("--ignore-gates") { Description = "Measure and record every gate (OUT/gates.json) but go on when one fails (for short smoke runs); by default the run stops at a failed gate." };
        var cmd = new Command("train",
            """
            Train the ShapesWorld VARGPT from scratch, end to end: data + BPE tokenizer, the BSQ-VAE, the vision
            tower's pretraining, then the LLaMA-Factory style stages (understanding on questions and descriptions,
            alignment on caption pairs, generation on text-to-image pairs, SFT on all tasks, DPO on sampled text-to-image pairs as a LoRA adapter), each from a yaml written into the run folder (rerun one with
            `vargpt train sft|dpo FILE`). Finished stages are skipped and an interrupted one resumes from its last
            checkpoint when the command is run again. The result is OUT/model, a model folder every command takes
            with --model. After the VAE, vision, understanding and SFT stages a gate measures the stage on held-out
            data (VAE round trips read right by the scorer, the vision tower's token probe, held-out questions,
            text-to-image before DPO), prints it and writes it to OUT/gates.json; the run stops at a failed gate.
            """)
        { output, seed, threads, train, vae, vision, und, align, gen, sft, dpo, batch, ignoreGates };
        cmd.WithExamples("vargpt shapes train --out runs/shapes --seed 0", "vargpt shapes train --out runs/quick --vae-steps 20 --vision-steps 10 --understanding-steps 10 --align-steps 10 --generation-steps 10 --sft-steps 20 --dpo-steps 5 --ignore-gates");
        cmd.SetAction(p =>
        {
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            foreach (var (name, v) in new[] { ("--train-samples", p.GetValue(train)), ("--vae-steps", p.GetValue(vae)), ("--vision-steps", p.GetValue(vision)), ("--understanding-steps", p.GetValue(und)), ("--align-steps", p.GetValue(align)), ("--generation-steps", p.GetValue(gen)), ("--sft-steps", p.GetValue(sft)), ("--dpo-steps", p.GetValue(dpo)), ("--batch", p.GetValue(batch)) })
                if (v < 1) throw new VargptInputException($"{name} must be ≥ 1, got {v}");
            var o = new ShapesTrainingOptions
            {
                OutputDir = p.GetRequiredValue(output), Seed = p.GetValue(seed), TrainSamples = p.GetValue(train), VaeSteps = p.GetValue(vae),
                VisionSteps = p.GetValue(vision), UnderstandingSteps = p.GetValue(und), AlignSteps = p.GetValue(align), GenerationSteps = p.GetValue(gen), SftSteps = p.GetValue(sft), DpoSteps = p.GetValue(dpo), BatchSize = p.GetValue(batch),
                StopAtFailedGate = !p.GetValue(ignoreGates), Output = p.InvocationConfiguration.Output,
            };
            using var stop = new GracefulStop(p.InvocationConfiguration.Output);
            try { ShapesTraining.Run(o, cancellationToken: stop.Token); }
            catch (OperationCanceledException e) when (stop.Signal is not null)
            {
                p.InvocationConfiguration.Output.WriteLine(e.Message);
                return stop.ExitCode;
            }
            catch (ShapesGateFailedException e)
            {
                p.InvocationConfiguration.Error.WriteLine($"stopped at a failed gate: {e.Message}");
                return ExitCodes.Failed;
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static Command TrainVaeCommand()
    {
        var output = new Option<string>("--out") { Description = "Run folder: checkpoints, train_log.jsonl, loss plot, vae.safetensors, vae_eval.json.", Required = true };
        var seed = SeedOption();
        var minutes = new Option<double?>("--minutes") { Description = "Wall-clock cap; the run stops early (weights still written, --resume continues)." };
        var d = new VaeTrainingOptions { OutputDir = "" };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => d.Steps };
        var batch = new Option<int>("--batch") { Description = "Images per step (rendered on the fly).", DefaultValueFactory = _ => d.BatchSize };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (AdamW β 0.9/0.95, warmup 5%, cosine).", DefaultValueFactory = _ => d.LearningRate };
        var evalN = new Option<int>("--eval-images") { Description = "Held-out renders for the final evaluation.", DefaultValueFactory = _ => d.EvalImages };
        var jitter = JitterOption("Box-centre jitter of the training renders (the dataset and the evaluation render jitter-free)", d.PositionJitter);
        var stars = new Option<double>("--small-star-share") { Description = "Share of training objects redrawn as small stars (the shape the round trip misses most), 0 to 1.", DefaultValueFactory = _ => d.SmallStarShare };
        var resume = new Option<bool>("--resume") { Description = "Continue from the latest checkpoint in --out." };
        var threads = ThreadsOption();
        var cmd = new Command("train-vae",
            """
            Train the ShapesWorld BSQ-VAE (the vae_local of the small model: sizes from ShapesModelConfig) from scratch
            on rendered scenes: encoder → multi-scale BSQ with straight-through bits → decoder, loss = L1 + L2 +
            0.5·edge + 0.25·commitment. Then evaluates held-out renders through encode → bits → decode (PSNR, ShapesScorer
            accuracy, bit stability under input noise, scorer accuracy with 2% of the bits flipped) for fp32 and bf16
            weights. Deterministic from --seed for a fixed thread count; resumable.
            """)
        { output, seed, minutes, steps, batch, lr, evalN, jitter, stars, resume, threads };
        cmd.WithExamples("vargpt shapes train-vae --out runs/vae --seed 0", "vargpt shapes train-vae --out runs/vae --resume");
        cmd.SetAction(p =>
        {
            TrainerReproducibility.RequestStrictBlas();
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            if (p.GetValue(steps) < 1 || p.GetValue(batch) < 1) throw new VargptInputException("--steps and --batch must be ≥ 1");
            if (p.GetValue(stars) is < 0 or > 1) throw new InvalidOptionException(string.Create(CultureInfo.InvariantCulture, $"--small-star-share must be in [0, 1], got {p.GetValue(stars)}"), "--small-star-share");
            float j = Jitter(p, jitter);
            var opts = new VaeTrainingOptions
            {
                OutputDir = Path.GetFullPath(p.GetRequiredValue(output)), Seed = p.GetValue(seed), Minutes = p.GetValue(minutes),
                Steps = p.GetValue(steps), BatchSize = p.GetValue(batch), LearningRate = p.GetValue(lr), EvalImages = p.GetValue(evalN), PositionJitter = j, SmallStarShare = p.GetValue(stars),
                Output = p.InvocationConfiguration.Output,
            };
            var r = VaeTraining.Train(new ShapesModelConfig(), opts, p.GetValue(resume));
            return r.Training.Completed ? ExitCodes.Ok : ExitCodes.Failed;
        });
        return cmd;
    }

    static Command EvalVaeCommand()
    {
        var weights = new Argument<string>("WEIGHTS") { Description = "vae.safetensors, a trainer checkpoint folder (its model.safetensors) or any safetensors with vae_local.* keys." };
        var seed = SeedOption();
        var evalN = new Option<int>("--eval-images") { Description = "Held-out renders.", DefaultValueFactory = _ => 200 };
        var threads = ThreadsOption();
        var cmd = new Command("eval-vae", "Evaluate ShapesWorld VAE weights on held-out renders (PSNR, scorer accuracy, bit stability, robustness to flipped bits) in fp32 and bf16.")
        { weights, seed, evalN, threads };
        cmd.WithExamples("vargpt shapes eval-vae runs/vae/vae.safetensors", "vargpt shapes eval-vae runs/vae/checkpoint-100");
        cmd.SetAction(p =>
        {
            var o = p.InvocationConfiguration.Output;
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            var path = Path.GetFullPath(p.GetRequiredValue(weights));
            if (Directory.Exists(path)) path = Path.Combine(path, TrainerCheckpoint.ModelFile);
            if (!File.Exists(path)) throw new VargptInputException($"weights not found: {path}");
            // weights inside a model folder (the shipped model's model.safetensors) are read with that folder's VAE
            // config and schedule; bare VAE weights with the recipe's (ShapesModelConfig) sizes
            var sizes = new ShapesModelConfig();
            var cfg = VaeTraining.VaeConfigOf(sizes);
            IReadOnlyList<Scale> schedule = sizes.Scales.Select(s => s with { T = 1 }).ToArray();
            int side = sizes.ImageSize;
            var folder = Path.GetDirectoryName(path)!;
            if (File.Exists(Path.Combine(folder, "config.json")))
            {
                var model = VargptConfig.Load(folder);
                var sched = model.Schedules.Get(ShapesModelConfig.Template, model.Pn);
                (cfg, schedule, side) = (model.Vae, sched.Scales, sched.Pixels.H);
                o.WriteLine($"VAE config and {side}×{side} schedule from {Path.Combine(folder, "config.json")}");
            }
            using var f = VarGpt.Checkpoint.SafeTensorsFile.Open(path);
            var sd = f.Tensors.Keys.Where(k => k.StartsWith(ModelComponents.Vae.Prefix, StringComparison.Ordinal)).ToDictionary(k => k, k => f.Load(k));
            var world = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = p.GetValue(seed), ImageSize = side });
            foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var vae = new VarGpt.Generation.BsqVae(cfg, dtype: dt);
                StateDict.Load(vae, sd, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix });
                o.WriteLine(VaeTraining.Evaluate(vae, schedule, world, p.GetValue(evalN), p.GetValue(seed)));
            }
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static Command EvalCommand()
    {
        var model = new ModelOptions(defaultDType: "float32"); // figures CI gates: the same on every CPU
        var json = new Option<bool>("--json") { Description = "Print exactly one JSON object (accuracies as fractions 0-1, counts, breakdowns, seconds) instead of the table; progress goes to stderr." };
        var report = new Option<string?>("--report") { Description = "Write a self-contained HTML report (image grids, examples, training curves) to this file." };
        var fast = new Option<bool>("--fast") { Description = $"{ShapesEvaluationOptions.FastCount} samples per task (CI preset) instead of {ShapesEvaluationOptions.DefaultCount}." };
        var count = new Option<int?>("--count") { Description = $"Samples per task (default {ShapesEvaluationOptions.DefaultCount})." };
        var seed = new Option<long>("--seed") { Description = "Image sampler seed base: sample i uses seed + i (the same with and without the adapter).", DefaultValueFactory = _ => 0 };
        var examples = new Option<int>("--examples") { Description = "Samples per task shown in the report.", DefaultValueFactory = _ => 16 };
        var force = new Option<bool>("--force-image-start") { Description = "Begin every image reply with <|image_gen_start|> instead of waiting for the model to emit it (diagnostic; not the product path)." };
        var onlyTask = new Option<string?>("--task") { Description = "Evaluate one task only: understanding, description, text-to-image or edit (default: all four)." };
        onlyTask.AcceptOnlyFromAmong(TaskNames.Keys.ToArray());
        var cfgScale = new Option<double?>("--cfg") { Description = $"Classifier-free guidance of text-to-image and editing (default: the official {new ImageOptions().Cfg}; 1 = no unconditional branch)." };
        var threads = ThreadsOption();
        var cmd = new Command("eval",
            $"""
            Evaluate a ShapesWorld model folder on held-out samples regenerated from its {ShapesTraining.WorldFile}
            (seed and world options): understanding and description (greedy answer = the exact answer), text-to-image
            (every requested shape/colour/size/position right, ShapesScorer), editing (the change made and the rest kept),
            each through the product path (chat / generate / edit). When the folder has an adapter/ (the DPO stage as a
            LoRA adapter), text-to-image is measured again without it on the same prompts and seeds: dpo_gain =
            generation_acc - generation_acc_before_dpo. Deterministic for a given folder, count and seed.
            """)
        { json, report, fast, count, seed, examples, force, onlyTask, cfgScale, threads };
        model.AddTo(cmd);
        cmd.WithExamples(
            "vargpt shapes eval                                   # the shipped model, 200 samples per task",
            "vargpt shapes eval --fast --cfg 1                    # drawing without classifier-free guidance",
            "vargpt shapes eval --task text-to-image --count 100  # one task only",
            "vargpt shapes eval --fast --json",
            "vargpt shapes eval --model runs/shapes/model --report report.html");
        cmd.SetAction(p =>
        {
            var o = p.InvocationConfiguration.Output;
            var log = p.InvocationConfiguration.Error;
            if (p.GetValue(fast) && p.GetValue(count) is not null) throw new VargptInputException("--fast and --count cannot be combined");
            int n = p.GetValue(count) ?? (p.GetValue(fast) ? ShapesEvaluationOptions.FastCount : ShapesEvaluationOptions.DefaultCount);
            if (n < 1) throw new VargptInputException($"--count must be at least 1, got {n}");
            if (p.GetValue(examples) < 0) throw new VargptInputException("--examples must be ≥ 0");
            if (p.GetValue(cfgScale) is < 1) throw new VargptInputException($"--cfg must be ≥ 1, got {p.GetValue(cfgScale)}");
            var dir = model.ResolveModelDir(p);
            // the report's path is checked before the evaluation (minutes), not after it
            if (p.GetValue(report) is { } rp) AtomicFile.CheckWritable(rp, "--report");
            var perTask = p.GetValue(onlyTask) is { } t ? ShapesEvaluationOptions.Only(TaskNames[t], n) : ShapesEvaluationOptions.PerTask(n);
            var options = perTask with
            {
                ImageSeed = p.GetValue(seed),
                Examples = p.GetValue(report) is null ? 0 : p.GetValue(examples),
                Image = new ShapesEvaluationOptions().Image with { ForceImageStart = p.GetValue(force), Cfg = p.GetValue(cfgScale) ?? new ImageOptions().Cfg },
                Load = model.LoadOptions(p),
            };
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            var r = ShapesEvaluation.Run(dir, options, log);
            if (p.GetValue(report) is { } reportPath)
            {
                ShapesReport.Write(reportPath, r);
                log.WriteLine($"report written to {Path.GetFullPath(reportPath)}");
            }
            if (p.GetValue(json)) o.WriteLine(r.ToJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            else o.Write(r.ToTable());
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static Command ProbeTextCommand()
    {
        var model = new ModelOptions(defaultDType: "float32");
        var count = new Option<int>("--count") { Description = "Text-to-image samples per split.", DefaultValueFactory = _ => 64 };
        var threads = ThreadsOption();
        var cmd = new Command("probe-text",
            """
            Does the image generator use the prompt? Scores the bits of text-to-image targets by teacher forcing (the
            training forward without bit-flip noise or cond dropout), per scale, after each target's own prompt and after
            another sample's prompt, on held-out and on training combinations. A gap near 0 nats means the generator
            draws the same image whatever it is asked.
            """)
        { count, threads };
        model.AddTo(cmd);
        cmd.WithExamples("vargpt shapes probe-text", "vargpt shapes probe-text --model runs/shapes/sft --count 128");
        cmd.SetAction(p =>
        {
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            ShapesConditioning.Run(model.ResolveModelDir(p), p.GetValue(count), model.LoadOptions(p), p.InvocationConfiguration.Output);
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static Command BenchCommand()
    {
        var repeats = new Option<int>("--repeats") { Description = "Timed repetitions per workload (median; one warm-up first).", DefaultValueFactory = _ => 3 };
        var threads = ThreadsOption();
        var cmd = new Command("bench",
            """
            Build the ShapesWorld VARGPT from ShapesModelConfig with random weights (float32, CPU) and print its
            parameters and bf16 bytes per component, then the median forward and forward+backward time of each part
            (VAE step, vision tower, LM on understanding and text-to-image batches, Infinity, a whole text-to-image SFT
            step) and of one generated image. Trains the ShapesWorld tokenizer first (a few seconds) for the vocabulary.
            """)
        { repeats, threads };
        cmd.WithExamples("vargpt shapes bench --threads 2");
        cmd.SetAction(p =>
        {
            var o = p.InvocationConfiguration.Output;
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            var sizes = new ShapesModelConfig();
            var tok = BpeTrainer.TrainShapesWorld();
            var cfg = sizes.ToVargptConfig(tok);
            manual_seed(0);
            using var model = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
            PrintParameters(model, o);
            o.WriteLine($"threads {get_num_threads()}");
            ShapesModelBenchmark.Run(model, sizes, Math.Max(1, p.GetValue(repeats)), o);
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static Command MineDpoCommand()
    {
        var model = new ModelOptions(defaultDType: "float32"); // the recipe's pairs: the same on every CPU
        var image = new ImageCommandOptions(); // reuse the sampling options of `vargpt generate` (same names, defaults, help)
        var d = new ShapesDpoMiningOptions();
        var output = new Option<string>("--out") { Description = "Dataset folder to write (created if missing; other datasets in its dataset_info.json are kept).", Required = true };
        var prompts = new Option<int>("--prompts") { Description = "Text-to-image train prompts to sample.", DefaultValueFactory = _ => d.Prompts };
        var samples = new Option<int>("--samples", "-k") { Description = "Images per prompt (≥ 2).", DefaultValueFactory = _ => d.SamplesPerPrompt };
        var pairs = new Option<int>("--pairs") { Description = "At most this many (correct, wrong) pairs per prompt.", DefaultValueFactory = _ => d.PairsPerPrompt };
        var start = new Option<long>("--start") { Description = "First train index (default keeps clear of SFT data written by 'shapes data').", DefaultValueFactory = _ => d.Start };
        var seed = new Option<int>("--seed") { Description = "ShapesWorld seed: must be the --seed of 'shapes data' so the held-out combinations stay out of the pairs.", DefaultValueFactory = _ => 0 };
        var sampleSeed = new Option<long?>("--sample-seed") { Description = "Seed of the image sampler (default: --seed)." };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Text tokens allowed before the image must start (ShapesWorld answers are < 30).", DefaultValueFactory = _ => 64 };
        var modelAnswer = new Option<bool>("--model-answer") { Description = "Answer of the pairs = the model's own text + <image_gen> (the exact context the images were drawn under) instead of the sample's answer." };
        var name = new Option<string>("--name") { Description = "Dataset name in dataset_info.json.", DefaultValueFactory = _ => ShapesDpoPairs.DatasetName };
        var threads = ThreadsOption();
        var cmd = new Command("mine-dpo",
            """
            Mine DPO pairs from a ShapesWorld model (stage E of docs/shapesworld.md): for each train text-to-image prompt
            draw K images with fixed seeds, score them with ShapesScorer, and pair a correct image (chosen) with a wrong
            one (rejected). Writes a LLaMA-Factory sharegpt ranking dataset for 'vargpt train dpo' (stage dpo,
            image_gen_resolution 128): NAME.json (messages + chosen + rejected, images [chosen, rejected]), PNGs under
            images/NAME/, NAME_truth.json (prompt spec, seeds and scorer readings) and the dataset_info.json entry.
            Prints the model's train-prompt accuracy and how many prompts were all correct / all wrong.
            """)
        { output, prompts, samples, pairs, start, seed, sampleSeed, image.Cfg, image.Tau, image.TopK, image.TopP, image.ForceImageStart, maxNew, modelAnswer, name, threads };
        model.AddTo(cmd);
        cmd.WithExamples("vargpt shapes mine-dpo --model runs/sft --out data/shapes --prompts 250 --samples 4 --seed 0");
        cmd.SetAction(p =>
        {
            var o = p.InvocationConfiguration.Output;
            var log = p.InvocationConfiguration.Error;
            set_num_threads(Math.Max(1, p.GetValue(threads)));
            var opts = new ShapesDpoMiningOptions
            {
                Prompts = p.GetValue(prompts), SamplesPerPrompt = p.GetValue(samples), PairsPerPrompt = p.GetValue(pairs), Start = p.GetValue(start),
                Seed = p.GetValue(sampleSeed) ?? p.GetValue(seed), ModelAnswer = p.GetValue(modelAnswer),
                Image = new ImageOptions
                {
                    Cfg = p.GetValue(image.Cfg), Tau = p.GetValue(image.Tau), TopK = p.GetValue(image.TopK), TopP = p.GetValue(image.TopP),
                    ForceImageStart = p.GetValue(image.ForceImageStart), MaxNewTokens = p.GetValue(maxNew),
                },
            };
            opts.Validate();
            var world = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = p.GetValue(seed) });
            var dir = Path.GetFullPath(p.GetRequiredValue(output));
            AtomicFile.CheckWritableFolder(dir, "--out");
            using var images = model.Load(p, log, ModelParts.LanguageModel | ModelParts.Generation);
            var r = ShapesDpoPairs.Mine(images, world, opts, log);
            o.WriteLine(r.Stats);
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"train-prompt accuracy {r.Stats.FractionCorrect:P1} ({r.Stats.CorrectImages}/{r.Stats.Images} images)"));
            if (r.Pairs.Count == 0)
            {
                log.WriteLine("no pairs: no prompt had both a correct and a wrong image; nothing written (more prompts or samples, or a higher --tau, give more).");
                return ExitCodes.Failed;
            }
            ShapesDpoPairs.Write(dir, r.Pairs, p.GetValue(name)!);
            o.WriteLine($"wrote {r.Pairs.Count} pairs as dataset '{p.GetValue(name)}' in {dir}");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    /// <summary>Parameters and bf16 bytes per component (same grouping as 'vargpt info').</summary>
    internal static void PrintParameters(VargptForConditionalGeneration model, TextWriter o)
    {
        var counts = ModelComponents.All.ToDictionary(c => c.Title, _ => (N: 0L, Bytes: 0L));
        (long N, long Bytes) total = (0, 0);
        foreach (var (name, t) in model.state_dict())
        {
            var comp = ModelComponents.Of(name)?.Title ?? "other";
            long bytes = t.numel() * (t.is_floating_point() ? 2 : t.ElementSize); // floats stored as bf16; the I64 lfq.mask stays I64
            var c = counts.GetValueOrDefault(comp);
            counts[comp] = (c.N + t.numel(), c.Bytes + bytes);
            total = (total.N + t.numel(), total.Bytes + bytes);
        }
        foreach (var (name, c) in counts.Append(new("total", total)))
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name,-18} {c.N,12:N0} params {c.Bytes / 1e6,8:F2} MB bf16"));
    }
}
