using VarGpt.Checkpoint;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Training;

/// <summary>A training configuration that cannot run (bad paths, data, stage/freeze combination); the message says why.</summary>
public sealed class TrainingSetupException(string message) : VargptInputException(message);

/// <summary>How <see cref="VargptFineTuning.Run"/> runs a configuration (what the yaml does not say).</summary>
public sealed record FineTuningOptions
{
    public Device Device { get; init; } = CPU;
    /// <summary>DPO: compute the reference log-probs once per pair before training, then free the reference model.</summary>
    public bool PrecomputeReference { get; init; }
    /// <summary>Folder that relative paths of the configuration are resolved against (the yaml's folder); null = current directory.</summary>
    public string? BaseDir { get; init; }
    /// <summary>Start over in an output_dir that holds an earlier run (`vargpt train --overwrite`; the yaml's overwrite_output_dir does the same).</summary>
    public bool Overwrite { get; init; }
    public TextWriter Output { get; init; } = TextWriter.Null;
}

/// <param name="ModelPath">OUTPUT/model.safetensors (adapters merged), or null when the run stopped early</param>
/// <param name="AdapterDir">OUTPUT/adapter (PEFT layout) for LoRA runs</param>
public sealed record FineTuningResult(TrainingResult Training, string OutputDir, string? ModelPath, string? AdapterDir);

/// <summary>
/// One LLaMA-Factory style training run of VARGPT (what `vargpt train sft|dpo CONFIG.yaml` does, and what the ShapesWorld
/// recipe runs per stage): load the sharegpt data, encode it with the official template and collator, load the model,
/// freeze by vargpt_train_stage (or wrap LoRA adapters), then the <see cref="Trainer{TBatch}"/> with the SFT loss
/// (text CE + image bit CE, get_gen_loss_1_1) or image DPO against a frozen copy of the starting model.
/// </summary>
public static class VargptFineTuning
{
    /// <summary>lora_target "all" wraps the language model's projections (the layers the port can wrap).</summary>
    public static readonly IReadOnlyList<string> LanguageModelLinears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public static FineTuningResult Run(TrainingConfig cfg, FineTuningOptions options, CancellationToken ct = default)
    {
        var o = options.Output;
        string Resolve(string p) => ResolvePath(p, options.BaseDir);
        var stage = cfg.Stage;
        var modelDir = Resolve(cfg.ModelNameOrPath);
        if (!Directory.Exists(modelDir)) throw new TrainingSetupException($"model_name_or_path '{cfg.ModelNameOrPath}' is not a folder{Where(cfg.ModelNameOrPath, modelDir)} (download the checkpoint and point at it)");
        var dtype = cfg.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var outputDir = Resolve(cfg.OutputDir);
        string? resume = cfg.ResumeFromCheckpoint is null or "latest" ? cfg.ResumeFromCheckpoint : Resolve(cfg.ResumeFromCheckpoint);
        CheckOutputDir(cfg, outputDir, resume, options.Overwrite || cfg.OverwriteOutputDir,
            [("model_name_or_path", modelDir), ("dataset_dir", Resolve(cfg.DatasetDir)), .. cfg.ImageDir is { } id ? new[] { ("image_dir", Resolve(id)) } : []], o);

        // configs and tokenizer first: the data is encoded (and its errors reported) before the long weight load
        var folder = ModelFolder.Read(modelDir);
        var (modelCfg, tokenizer, processor) = (folder.Config, folder.Tokenizer, folder.Preprocessor);
        var records = DatasetLoader.Load(cfg.Dataset, new DatasetLoadOptions
        {
            DatasetDir = Resolve(cfg.DatasetDir), ImageDir = cfg.ImageDir is { } idir ? Resolve(idir) : null, Ranking = stage == TrainingStage.Dpo, MaxSamples = cfg.MaxSamples, Seed = cfg.Seed,
        });
        var collator = new VargptCollator(tokenizer, modelCfg, new VargptCollatorOptions
        {
            CutoffLen = cfg.CutoffLen, ImageResolution = cfg.ImageResolution, ImageGenResolution = cfg.ImageGenResolution, Seed = cfg.Seed, Processor = processor,
            TargetAugment = cfg.ImageGenAugment,
        });
        var ds = collator.EncodeAll(records, stage);
        o.WriteLine($"data: {ds.Items.Count} {(stage == TrainingStage.Dpo ? "pair(s)" : "sample(s)")} from {string.Join(", ", cfg.Dataset)}; targets {collator.GenSchedule.Pixels.H}x{collator.GenSchedule.Pixels.W} ({collator.GenSchedule.Pn}, {collator.ImageGenTokenCount} <|image_gen_pad|> tokens each)");
        if (ds.Skipped.Count > 0) o.WriteLine($"warning: {ds.SkippedSummary()}");

        using var loaded = LoadModel(folder, options.Device, dtype, o);
        var model = loaded.Module;
        LoraOptions? lora = null;
        if (cfg.FinetuningType == FinetuningType.Lora)
        {
            var targets = cfg.LoraTarget is ["all"] ? LanguageModelLinears : cfg.LoraTarget;
            lora = LoraOptions.FromConfig(cfg) with { Targets = targets };
            var forbidden = cfg.FreezeModules;
            var frozenComponents = cfg.FreezeComponents.Select(ModelComponents.Get).Append(ModelComponents.Vae).ToList();
            // the adapters' random init (lora_A) comes from the run's seed, as LLaMA-Factory's set_seed(training_args.seed)
            // before load_model makes it: the same yaml gives the same run in any process
            manual_seed(cfg.Seed);
            Lora.Apply(model, lora, name => Freezing.IsForbidden(name, forbidden) || frozenComponents.Any(c => c.Owns(name)));
        }
        else Freezing.Apply(model, Freezing.Plan(model.named_parameters().Select(p => p.name), cfg));
        o.WriteLine(Freezing.Summary(model));
        // the parts a text-only batch trains through: the language model and the vision tower
        bool textTrainable = model.named_parameters().Any(p => p.parameter.requires_grad &&
            (ModelComponents.LanguageModel.Owns(p.name) || ModelComponents.VisionTower.Owns(p.name)));
        var textOnly = ds.Items.Where(i => !i.Chosen.HasTarget).ToList();
        if (!textTrainable && textOnly.Count > 0)
            throw new TrainingSetupException($"{textOnly.Count} sample(s) have no generation target (e.g. {textOnly[0].Record.Where}) but this configuration freezes the language model, lm_head and vision tower " +
                $"(vargpt_train_stage {cfg.VargptTrainStage}, finetuning_type {cfg.FinetuningType}), so a batch of them has no trainable parameter (the official trainer fails on such a batch too); " +
                "remove them or use a stage that trains the language model (2, 4 or 5)");

        var fwd = new VargptTrainingOptions { Seed = cfg.Seed, MropePositions = cfg.TrainPositions == TrainPositions.Mrope };
        ITrainingObjective<VargptBatch> objective;
        VargptModel? reference = null;
        try
        {
            if (stage == TrainingStage.Dpo)
            {
                var dpo = DpoOptions.FromConfig(cfg);
                dpo.Validate();
                reference = LoadModel(folder, options.Device, dtype, o);
                var d = new VargptDpoObjective(model, reference.Module, dpo, fwd);
                if (options.PrecomputeReference)
                {
                    o.WriteLine($"computing reference log-probs for {ds.Items.Count} pair(s)...");
                    d.PrecomputeReference(collator, ds.Items);
                    reference.Dispose();
                    reference = null;
                }
                objective = d;
            }
            else objective = new VargptSftObjective(model, fwd, cfg.GenTextLoss == GenTextLoss.Labels, cfg.BitLoss);

            var trainerOptions = TrainerOptions.FromConfig(cfg) with
            {
                OutputDir = outputDir, BaseModelDir = modelDir, Output = o,
                ExportWeights = lora != null ? () => Lora.MergedStateDict(model) : null,
            };
            using var trainer = new Trainer<VargptBatch>(model, objective, new VargptData(collator, ds.Items, cfg.PerDeviceTrainBatchSize, cfg.Seed), trainerOptions);
            var result = trainer.Train(resume, ct);
            if (objective is VargptDpoObjective dm && dm.LastMetrics.Count > 0)
                o.WriteLine("last batch: " + string.Join(", ", dm.LastMetrics.Select(kv => $"{kv.Key} {kv.Value:G4}")));
            if (!result.Completed) return new FineTuningResult(result, trainerOptions.OutputDir, null, null);
            trainer.ExportModel(trainerOptions.OutputDir);
            string? adapterDir = null;
            if (lora != null)
            {
                adapterDir = Path.Combine(trainerOptions.OutputDir, "adapter");
                var extra = Lora.SaveAdapter(adapterDir, model, lora, modelDir);
                o.WriteLine($"adapter: {adapterDir}" + (extra.Count > 0 ? $" (the {extra.Count} fully trained non-adapter tensors are only in the merged model.safetensors)" : ""));
            }
            var modelPath = Path.Combine(trainerOptions.OutputDir, TrainerCheckpoint.ModelFile);
            o.WriteLine($"model: {modelPath}");
            return new FineTuningResult(result, trainerOptions.OutputDir, modelPath, adapterDir);
        }
        finally { reference?.Dispose(); }
    }

    /// <summary>
    /// A path of the training yaml: absolute as written, "~/" from the home folder, anything else relative to
    /// <paramref name="baseDir"/> (the yaml's own folder), never to the working directory first: a run reads the same
    /// files wherever it is started from.
    /// </summary>
    public static string ResolvePath(string path, string? baseDir)
    {
        if (path == "~" || path.StartsWith("~/", StringComparison.Ordinal))
            path = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), path.Length > 2 ? path[2..] : "");
        return Path.GetFullPath(Path.IsPathRooted(path) || baseDir is null ? path : Path.Combine(baseDir, path));
    }

    static string Where(string written, string resolved) => written == resolved ? "" : $" ({resolved})";

    /// <summary>The files a run writes into output_dir; their presence means the folder holds a run.</summary>
    static bool HoldsRun(string dir) =>
        Directory.Exists(dir) && (Directory.EnumerateDirectories(dir, "checkpoint-*").Any() ||
            new[] { TrainerCheckpoint.LatestFile, TrainerLog.JsonlFile, TrainerCheckpoint.ModelFile, CheckpointReader.IndexFileName }.Any(f => File.Exists(Path.Combine(dir, f))) ||
            Directory.Exists(Path.Combine(dir, "adapter")));

    /// <summary>
    /// Before any long work: output_dir must not be (or contain) an input, must be writable, and must not hold an
    /// earlier run unless the configuration resumes it or overwrites it (then the earlier run's files are removed).
    /// </summary>
    static void CheckOutputDir(TrainingConfig cfg, string outputDir, string? resume, bool overwrite, IEnumerable<(string Key, string Path)> inputs, TextWriter o)
    {
        static string Norm(string p) => Path.TrimEndingDirectorySeparator(Path.GetFullPath(p)) + Path.DirectorySeparatorChar;
        foreach (var (key, path) in inputs)
        {
            if (Norm(path) == Norm(outputDir))
                throw new TrainingSetupException($"output_dir {outputDir} is the {key} folder: training would overwrite its own input; choose another output_dir");
            if (Norm(path).StartsWith(Norm(outputDir), StringComparison.Ordinal))
                throw new TrainingSetupException($"output_dir {outputDir} contains the {key} folder {path}: a run must not write around its own input; choose another output_dir");
        }
        AtomicFile.CheckWritableFolder(outputDir, "output_dir");
        if (resume is null && HoldsRun(outputDir))
        {
            if (!overwrite)
                throw new TrainingSetupException($"output_dir {outputDir} already holds a run ({string.Join(", ", RunFiles(outputDir).Take(4))}): " +
                    "set resume_from_checkpoint: latest to continue it, or pass --overwrite (yaml: overwrite_output_dir: true) to start over; the earlier run's files are then removed");
            foreach (var f in RunFiles(outputDir)) o.WriteLine($"overwrite: removing {Path.Combine(outputDir, f)}");
            TrainerCheckpoint.ClearRun(outputDir);
        }
        if (resume is not null and not "latest" && !File.Exists(Path.Combine(resume, TrainerCheckpoint.StateFile)))
            throw new TrainingSetupException($"resume_from_checkpoint {cfg.ResumeFromCheckpoint}{Where(cfg.ResumeFromCheckpoint!, resume)} is not a checkpoint folder (it has no {TrainerCheckpoint.StateFile}); use 'latest' or a checkpoint-N folder");
    }

    static IEnumerable<string> RunFiles(string dir) =>
        Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Where(n => TrainerCheckpoint.IsRunFile(n!)).Order(StringComparer.Ordinal)!;

    /// <summary>
    /// The starting weights, through the one load path, with two deliberate differences from inference: an adapter/
    /// in the folder is not merged (LLaMA-Factory starts from model_name_or_path and takes an adapter only through
    /// adapter_name_or_path, which this port rejects), and the weights are copied, not memory-mapped (the optimizer
    /// writes them).
    /// </summary>
    static VargptModel LoadModel(ModelFolder folder, Device device, ScalarType dtype, TextWriter o)
    {
        var model = VargptModel.Load(folder, new VargptModelOptions { Device = device, DType = dtype, MemoryMap = false, MergeAdapter = false });
        o.WriteLine($"loaded {model.Module.state_dict().Count} tensors from {folder.Directory} ({dtype.ToString().ToLowerInvariant()} on {device})");
        if (new VargptModelOptions().ResolveAdapter(folder.Directory) is { } adapter)
            o.WriteLine($"note: {adapter} is not merged: training starts from the folder's base weights");
        return model;
    }
}
