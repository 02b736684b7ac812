using System.Globalization;
using VarGpt.Checkpoint;
using VarGpt.Training;
using VarGpt.Vision;
using TorchSharp;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.ShapesWorld;

/// <summary>Settings of the ShapesWorld vision-tower pretraining (defaults: the shipped recipe; docs/shapesworld.md).</summary>
public sealed record VisionPretrainingOptions
{
    /// <summary>Model folder whose visual.* weights are the starting point (the random initial model).</summary>
    public required string ModelDir { get; init; }
    /// <summary>Output: a model folder, the input with the pretrained visual.* weights.</summary>
    public required string OutputDir { get; init; }
    public int Seed { get; init; }
    public int Steps { get; init; } = 300;
    public int BatchSize { get; init; } = 16;
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>Also train the probe to name the covering object's position (left/right/top/bottom/centre).</summary>
    public bool ProbePosition { get; init; } = true;
    public int LoggingSteps { get; init; } = 10;
    /// <summary>Held-out scenes (Eval split, each with a held-out shape×colour×position) the trained probe is scored on.</summary>
    public int EvalScenes { get; init; } = 200;
    public TextWriter? Output { get; init; }
    /// <summary>Stops the run at the next step boundary with a checkpoint saved (Ctrl-C / SIGTERM); the output folder is then not written.</summary>
    public CancellationToken Cancel { get; init; }
}

/// <summary>The probe read on held-out scenes: per attribute, the share of object-covered tokens named right, and the
/// share of tokens whose object/background verdict is right (<see cref="VisionPretraining.EvaluateProbe"/>).</summary>
public sealed record VisionProbeEvaluation(int Scenes, int ObjectTokens, double Color, double Shape, double Size, double Position, double Occupancy)
{
    /// <summary>The lowest of the per-attribute accuracies (the gate compares it with its threshold).</summary>
    public double Min => new[] { Color, Shape, Size, Position, Occupancy }.Min();

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Scenes} held-out scenes, {ObjectTokens} object tokens: colour {Color:P1}, shape {Shape:P1}, size {Size:P1}, position {Position:P1}, object/background {Occupancy:P1}");
}

/// <summary>
/// Pretrains the Qwen2-VL vision tower (the official <see cref="Qwen2VisionTransformerPretrainedModel"/>, loaded from
/// and written back as visual.*) before any language-model stage. VARGPT starts from Qwen2-VL's pretrained ViT; ours
/// starts from random weights, and a random ViT hands the language model 16 near-identical tokens per image (measured:
/// the tokens of different scenes differed along one direction after a whole SFT run, and understanding stayed at
/// chance). A linear probe per merged token, trained to name the colour, shape, size and position of the object covering
/// its 2×2-patch window (<see cref="ShapesRenderer.CellLabels"/>), makes each token say what is there in a few hundred
/// steps (measured: colour read right on 94% of object tokens after 200 steps). The probe is discarded afterwards.
/// </summary>
public static class VisionPretraining
{
    public const string EvalFile = "probe_eval.json";

    /// <summary>Trains the tower and its probe, writes the output model folder and the probe's held-out reading (OUT/probe_eval.json);
    /// an interrupted run (<see cref="VisionPretrainingOptions.Cancel"/>) returns with no evaluation and writes neither.</summary>
    public static (TrainingResult Training, VisionProbeEvaluation? Eval) Run(VisionPretrainingOptions o)
    {
        var config = VargptConfig.Load(o.ModelDir);
        var processor = new ImageProcessor(PreprocessorConfig.Load(o.ModelDir));
        var world = new ShapesWorldGenerator(ShapesTraining.ReadWorld(o.ModelDir));
        var source = Path.Combine(o.ModelDir, TrainerCheckpoint.ModelFile);
        Directory.CreateDirectory(o.OutputDir);

        using var visual = new Qwen2VisionTransformerPretrainedModel(config.Vision);
        StateDict.Load(visual, source, new StateDictOptions { Prefix = Prefix }); // only visual.* take part
        torch.manual_seed(o.Seed); // the probe's initial weights
        using var probe = new TokenProbe(config.Vision.HiddenSize, o.ProbePosition);
        using var model = new ProbedVisionTower(visual, probe);
        int side = world.Options.ImageSize;
        var grid = MergedGrid(processor, side);
        var data = new SceneBatches(world, o);
        var objective = new TokenProbeObjective(visual, probe, processor, side, grid);
        var options = new TrainerOptions
        {
            OutputDir = o.OutputDir, LearningRate = o.LearningRate, LrSchedulerType = LrScheduler.Cosine, WarmupRatio = 0.05, MaxSteps = o.Steps,
            NumTrainEpochs = 1, MaxGradNorm = 1.0, AdamBeta1 = 0.9, AdamBeta2 = 0.95, WeightDecay = 0, LoggingSteps = o.LoggingSteps,
            SaveSteps = 100, SaveTotalLimit = 1, Seed = o.Seed, Output = o.Output,
            ExportWeights = () => visual.state_dict().Select(kv => new KeyValuePair<string, Tensor>(Prefix + kv.Key, kv.Value)),
        };
        TrainingResult result;
        using (var trainer = new Trainer<IReadOnlyList<Scene>>(model, objective, data, options))
            result = trainer.Train(TrainerCheckpoint.Latest(o.OutputDir) is not null ? "latest" : null, o.Cancel);
        if (!result.Completed) return (result, null); // interrupted: no evaluation, no output folder
        var eval = EvaluateProbe(visual, probe, processor, world, side, grid, o.EvalScenes);
        o.Output?.WriteLine("vision probe: " + eval);
        AtomicFile.WriteAllText(Path.Combine(o.OutputDir, EvalFile), System.Text.Json.JsonSerializer.Serialize(eval,
            new System.Text.Json.JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower }) + "\n");

        // the output model folder: every file of the input, visual.* replaced
        foreach (var f in Directory.GetFiles(o.ModelDir).Where(f => Path.GetFileName(f) != TrainerCheckpoint.ModelFile))
            AtomicFile.Copy(f, Path.Combine(o.OutputDir, Path.GetFileName(f)));
        var trained = visual.state_dict();
        using (var st = SafeTensorsFile.Open(source))
        {
            var tensors = st.Tensors.Keys.Select(k => new KeyValuePair<string, Tensor>(k,
                k.StartsWith(Prefix, StringComparison.Ordinal) ? trained[k[Prefix.Length..]].detach().clone() : st.Load(k))).ToList();
            try { SafeTensorsWriter.Save(Path.Combine(o.OutputDir, TrainerCheckpoint.ModelFile), tensors, new Dictionary<string, string> { ["format"] = "pt" }); }
            finally { foreach (var t in tensors) t.Value.Dispose(); }
        }
        return (result, eval);
    }

    static readonly string Prefix = ModelComponents.VisionTower.Prefix;

    /// <summary>The probe's held-out reading from DIR/probe_eval.json.</summary>
    public static VisionProbeEvaluation ReadEvaluation(string dir)
    {
        var path = Path.Combine(dir, EvalFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} not found: the vision stage writes it at its end (delete {dir}.done to redo the stage)", path);
        return System.Text.Json.JsonSerializer.Deserialize<VisionProbeEvaluation>(File.ReadAllText(path),
            new System.Text.Json.JsonSerializerOptions { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower })
            ?? throw new InvalidDataException($"{path}: empty");
    }

    /// <summary>
    /// Scores the probe on the scenes of <paramref name="count"/> held-out (Eval split) description samples, rendered as the
    /// dataset renders them (no jitter): every token covered by an object must name its colour, shape, size and position,
    /// and every token must say object or background right.
    /// </summary>
    static VisionProbeEvaluation EvaluateProbe(Qwen2VisionTransformerPretrainedModel visual, TokenProbe probe, ImageProcessor processor,
        ShapesWorldGenerator world, int side, int grid, int count)
    {
        using var ng = no_grad();
        visual.eval();
        var scenes = world.Samples(ShapesSplit.Eval, count, ShapesTaskKind.Description).Select(s => s.Images[0]).ToList();
        int objects = 0, color = 0, shape = 0, size = 0, position = 0, occupancy = 0, tokens = 0;
        for (int start = 0; start < scenes.Count; start += 16)
        {
            using var scope = NewDisposeScope();
            var part = scenes.Skip(start).Take(16).ToList();
            var labels = part.SelectMany(s => ShapesRenderer.CellLabels(s, LabelSide(processor, grid), grid)).ToList();
            using var pi = processor.Preprocess(part.Select(s => new RgbImage(side, side, ShapesRenderer.RenderRgb(s, side))).ToList());
            var f = visual.forward(pi.PixelValues, pi.ImageGridThw);
            long[] Arg(TorchSharp.Modules.Linear head) => head.forward(f).argmax(1).data<long>().ToArray();
            var c = Arg(probe.color); var sh = Arg(probe.shape); var sz = Arg(probe.size);
            var ps = probe.position is { } head ? Arg(head) : null;
            for (int i = 0; i < labels.Count; i++)
            {
                var l = labels[i];
                tokens++;
                if ((l.Color == 0) == (c[i] == 0)) occupancy++;
                if (l.Color == 0) continue;
                objects++;
                if (c[i] == l.Color) color++;
                if (sh[i] == l.Shape) shape++;
                if (sz[i] == l.Size) size++;
                if (ps is null || ps[i] == l.Position) position++;
            }
        }
        double Frac(int k) => objects == 0 ? 0 : (double)k / objects;
        return new VisionProbeEvaluation(scenes.Count, objects, Frac(color), Frac(shape), Frac(size), Frac(position), tokens == 0 ? 0 : (double)occupancy / tokens);
    }

    /// <summary>Cell labels are computed on the processor's resized side (grid × patch × merge px), where every merged
    /// token covers exactly one cell (the render's own side need not be a multiple of the grid: 64 px → 84 px, 3×3).</summary>
    static int LabelSide(ImageProcessor processor, int grid) => grid * processor.Settings.PatchSize * processor.Settings.MergeSize;

    /// <summary>Merged-token grid side of a side×side render after the processor's smart_resize (128 → 112 → 4).</summary>
    static int MergedGrid(ImageProcessor processor, int side)
    {
        var s = processor.Settings;
        var (h, w, _) = ImageProcessor.SmartResize(side, side, s.Factor, s.MinPixels, s.MaxPixels);
        if (h != w) throw new InvalidFileException($"a square {side}² render resizes to {w}×{h}: the token probe needs a square grid");
        return h / s.PatchSize / s.MergeSize;
    }

    /// <summary>Batch (epoch, index) = BatchSize dataset-like random scenes without held-out triples, a function of the seed only.</summary>
    sealed class SceneBatches(ShapesWorldGenerator world, VisionPretrainingOptions o) : ITrainingData<IReadOnlyList<Scene>>
    {
        public int BatchesPerEpoch => o.Steps;

        public IReadOnlyList<Scene> GetBatch(int epoch, int index)
        {
            var rng = new ShapesRng(ShapesRng.Mix(ShapesRng.Mix((ulong)o.Seed ^ 0x564954UL) ^ ShapesRng.Mix((ulong)epoch + 1) * 31 ^ (ulong)index));
            return Enumerable.Range(0, o.BatchSize).Select(_ => world.RandomTrainingScene(rng)).ToList();
        }
    }

    /// <summary>Renders → processor → vision tower → per-token colour/shape/size(/position) cross-entropy.</summary>
    sealed class TokenProbeObjective(Qwen2VisionTransformerPretrainedModel visual, TokenProbe probe, ImageProcessor processor, int side, int grid)
        : ITrainingObjective<IReadOnlyList<Scene>>
    {
        public ObjectiveOutput Compute(IReadOnlyList<Scene> scenes)
        {
            var images = scenes.Select(s => new RgbImage(side, side, ShapesRenderer.RenderRgb(s, side))).ToList();
            // merged tokens come in window raster order = the label grid's row-major order
            var labels = scenes.SelectMany(s => ShapesRenderer.CellLabels(s, LabelSide(processor, grid), grid)).ToList();
            using var pi = processor.Preprocess(images);
            var features = visual.forward(pi.PixelValues, pi.ImageGridThw); // [B·grid², hidden]
            using var c = tensor(labels.Select(l => (long)l.Color).ToArray());
            using var s2 = tensor(labels.Select(l => (long)l.Shape).ToArray());
            using var z = tensor(labels.Select(l => (long)l.Size).ToArray());
            var loss = nn.functional.cross_entropy(probe.color.forward(features), c)
                + nn.functional.cross_entropy(probe.shape.forward(features), s2)
                + nn.functional.cross_entropy(probe.size.forward(features), z);
            if (probe.position is { } head)
            {
                // the ViT has only relative (rotary) positions: where an object is must be learnt from the image borders
                using var p = tensor(labels.Select(l => (long)l.Position).ToArray());
                loss = loss + nn.functional.cross_entropy(head.forward(features), p);
            }
            return new ObjectiveOutput(loss, scenes.Count);
        }
    }

    /// <summary>Training-only linear read-outs of a merged vision token.</summary>
    sealed class TokenProbe : nn.Module
    {
        public readonly TorchSharp.Modules.Linear color, shape, size;
        /// <summary>Present only with <see cref="VisionPretrainingOptions.ProbePosition"/>; its presence decides the loss term.</summary>
        public readonly TorchSharp.Modules.Linear? position;

        public TokenProbe(int hidden, bool withPosition) : base(nameof(TokenProbe))
        {
            color = nn.Linear(hidden, CellLabel.ColorClasses);
            shape = nn.Linear(hidden, CellLabel.ShapeClasses);
            size = nn.Linear(hidden, CellLabel.SizeClasses);
            if (withPosition) position = nn.Linear(hidden, CellLabel.PositionClasses);
            RegisterComponents();
        }
    }

    /// <summary>The tower and its probe as one module, so the trainer optimises and checkpoints both.</summary>
    sealed class ProbedVisionTower : nn.Module
    {
        public readonly Qwen2VisionTransformerPretrainedModel visual;
        public readonly TokenProbe probe;

        public ProbedVisionTower(Qwen2VisionTransformerPretrainedModel visual, TokenProbe probe) : base(nameof(ProbedVisionTower))
        {
            this.visual = visual; this.probe = probe;
            RegisterComponents();
        }
    }
}
