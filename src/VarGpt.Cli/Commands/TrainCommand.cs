using System.CommandLine;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Training;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt train sft|dpo CONFIG.yaml: fine-tune from an official-style LLaMA-Factory yaml.</summary>
public static class TrainCommand
{
    /// <summary>lora_target "all" wraps the language model's projections (the layers the port can wrap; see Details).</summary>
    internal static readonly IReadOnlyList<string> LanguageModelLinears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    public static Command Create()
    {
        var cmd = new Command("train", "Fine-tune VARGPT (SFT or image DPO) from a LLaMA-Factory style yaml, as the official VARGPT-family-training does.");
        cmd.Subcommands.Add(Stage("sft", "Supervised fine-tuning: text CE + 3 x image bit CE (get_gen_loss_1_1)."));
        cmd.Subcommands.Add(Stage("dpo", "Image DPO against a frozen copy of the starting model (trl sigmoid/hinge/ipo)."));
        cmd.WithExamples(
            "vargpt train sft examples/train_vargpt_qwen2vl_1_1/vargpt_pretraining_7b_v1_1_stage_sft.yaml",
            "vargpt train dpo my_dpo.yaml --device cuda");
        return cmd;
    }

    static Command Stage(string stage, string description)
    {
        var config = new Argument<string>("CONFIG") { Description = "Training yaml (official keys: model_name_or_path, dataset, dataset_dir, output_dir, vargpt_train_stage, finetuning_type, ...)." };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N (default cpu).", DefaultValueFactory = _ => "cpu" };
        var precompute = new Option<bool>("--precompute-ref") { Description = "DPO: compute the reference log-probs once per pair before training, then free the reference model (half the weights in memory; the reference sees the epoch-0 crop and noise draw)." };
        var cmd = new Command(stage, description) { config, device };
        if (stage == "dpo") cmd.Options.Add(precompute);
        cmd.WithDetails(
            $"""
            The yaml's `stage` must be '{stage}' (or absent). The model folder (model_name_or_path) needs config.json,
            the safetensors weights and the tokenizer files; preprocessor_config.json is used when present.
            Data: dataset_info.json under dataset_dir, sharegpt formatting; samples longer than cutoff_len are skipped
            and counted. finetuning_type full freezes by vargpt_train_stage (official map; the VAE always frozen);
            lora wraps the language model's q/k/v/o/gate/up/down projections ('all' = those) and, as the official
            code does, also trains Infinity and both projectors fully. Progress: loss, lr, tokens/s, ETA; the log is
            output_dir/trainer_log.jsonl and the loss curve output_dir/training_loss.png. A NaN/inf loss stops the run
            and keeps the last good checkpoint. resume_from_checkpoint: a checkpoint folder or 'latest'.
            """);
        cmd.WithExamples($"vargpt train {stage} {stage}.yaml");
        cmd.SetAction((parse, ct) => Task.FromResult(Run(stage, parse.GetRequiredValue(config), parse.GetValue(device) ?? "cpu",
            stage == "dpo" && parse.GetValue(precompute), parse.InvocationConfiguration.Output, ct)));
        return cmd;
    }

    static int Run(string stage, string configPath, string deviceName, bool precomputeRef, TextWriter o, CancellationToken ct)
    {
        TrainerReproducibility.RequestStrictBlas();
        var cfg = TrainingConfig.Load(configPath);
        if (cfg.Stage != stage) throw new UserErrorException($"{configPath}: stage is '{cfg.Stage}' but the command is 'train {stage}'; use 'vargpt train {cfg.Stage}'");
        foreach (var n in cfg.Notes) o.WriteLine($"note: {n}");
        var yamlDir = Path.GetDirectoryName(Path.GetFullPath(configPath))!;
        string Resolve(string p) => Path.IsPathRooted(p) || Directory.Exists(p) || File.Exists(p) ? p : Path.Combine(yamlDir, p);
        var modelDir = Resolve(cfg.ModelNameOrPath);
        if (!Directory.Exists(modelDir)) throw new UserErrorException($"model_name_or_path '{cfg.ModelNameOrPath}' is not a folder (download the checkpoint and point at it)");
        var device = TorchRuntime.ParseDevice(deviceName);
        var dtype = cfg.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;

        var modelCfg = VargptConfig.Load(modelDir);
        var tokenizer = QwenTokenizer.FromDirectory(modelDir);
        var pre = Path.Combine(modelDir, PreprocessorConfig.FileName);
        var processor = File.Exists(pre) ? PreprocessorConfig.Load(pre) : new PreprocessorConfig();
        IReadOnlyList<TrainingRecord> records;
        try
        {
            records = DatasetLoader.Load(cfg.Dataset, new DatasetLoadOptions
            {
                DatasetDir = Resolve(cfg.DatasetDir), ImageDir = cfg.ImageDir is { } idir ? Resolve(idir) : null, Stage = stage, MaxSamples = cfg.MaxSamples, Seed = cfg.Seed,
            });
        }
        catch (Exception e) when (e is DatasetValidationException or MissingImagesException or NotSupportedException or ArgumentException) { throw new UserErrorException(e.Message); }
        VargptCollator collator;
        EncodedDataset ds;
        try
        {
            collator = new VargptCollator(tokenizer, modelCfg, new VargptCollatorOptions
            {
                CutoffLen = cfg.CutoffLen, ImageResolution = cfg.ImageResolution, ImageGenResolution = cfg.ImageGenResolution, Seed = cfg.Seed, Processor = processor,
            });
            ds = collator.EncodeAll(records, stage);
        }
        catch (ArgumentException e) { throw new UserErrorException(e.Message); }
        o.WriteLine($"data: {ds.Items.Count} {(stage == "dpo" ? "pair(s)" : "sample(s)")} from {string.Join(", ", cfg.Dataset)}; targets {collator.GenSchedule.Pixels.H}x{collator.GenSchedule.Pixels.W} ({collator.GenSchedule.Pn}, {collator.ImageGenTokenCount} <|image_gen_pad|> tokens each)");
        if (ds.Skipped.Count > 0) o.WriteLine($"warning: {ds.SkippedSummary()}");

        using var model = LoadModel(modelCfg, modelDir, device, dtype, o);
        LoraOptions? lora = null;
        if (cfg.FinetuningType == "lora")
        {
            var targets = cfg.LoraTarget is ["all"] ? LanguageModelLinears : cfg.LoraTarget;
            lora = LoraOptions.FromConfig(cfg) with { Targets = targets };
            var forbidden = cfg.FreezeModules;
            var frozenComponents = cfg.FreezeComponents.ToHashSet();
            Lora.Apply(model, lora, name => Freezing.IsForbidden(name, forbidden) || (Freezing.ComponentOf(name) is { } c && frozenComponents.Contains(c)) || name.StartsWith("vae_local.", StringComparison.Ordinal));
        }
        else Freezing.Apply(model, Freezing.Plan(model.named_parameters().Select(p => p.name), cfg));
        o.WriteLine(Freezing.Summary(model));
        bool textTrainable = model.named_parameters().Any(p => p.parameter.requires_grad &&
            (p.name.StartsWith("model.", StringComparison.Ordinal) || p.name.StartsWith("lm_head.", StringComparison.Ordinal) || p.name.StartsWith("visual.", StringComparison.Ordinal)));
        var textOnly = ds.Items.Where(i => !i.Chosen.HasTarget).ToList();
        if (!textTrainable && textOnly.Count > 0)
            throw new UserErrorException($"{textOnly.Count} sample(s) have no generation target (e.g. {textOnly[0].Record.Where}) but this configuration freezes the language model, lm_head and vision tower " +
                $"(vargpt_train_stage {cfg.VargptTrainStage}, finetuning_type {cfg.FinetuningType}), so a batch of them has no trainable parameter (the official trainer fails on such a batch too); " +
                "remove them or use a stage that trains the language model (2, 4 or 5)");

        var fwd = new VargptTrainingOptions { Seed = cfg.Seed };
        ITrainingObjective<VargptBatch> objective;
        VargptForConditionalGeneration? reference = null;
        if (stage == "dpo")
        {
            var dpo = DpoOptions.FromConfig(cfg);
            try { dpo.Validate(); } catch (Exception e) when (e is NotSupportedException or ArgumentException) { throw new UserErrorException(e.Message); }
            reference = LoadModel(modelCfg, modelDir, device, dtype, o);
            var d = new VargptDpoObjective(model, reference, dpo, fwd);
            if (precomputeRef)
            {
                o.WriteLine($"computing reference log-probs for {ds.Items.Count} pair(s)...");
                d.PrecomputeReference(collator, ds.Items);
                reference.Dispose();
                reference = null;
            }
            objective = d;
        }
        else objective = new VargptSftObjective(model, fwd);

        var options = TrainerOptions.FromConfig(cfg) with
        {
            OutputDir = Resolve(cfg.OutputDir), BaseModelDir = modelDir, Output = o,
            ExportWeights = lora != null ? () => Lora.MergedStateDict(model) : null,
        };
        try
        {
            using var trainer = new Trainer<VargptBatch>(model, objective, new VargptData(collator, ds.Items, cfg.PerDeviceTrainBatchSize, cfg.Seed), options);
            var result = trainer.Train(cfg.ResumeFromCheckpoint, ct);
            if (objective is VargptDpoObjective dm && dm.LastMetrics.Count > 0)
                o.WriteLine("last batch: " + string.Join(", ", dm.LastMetrics.Select(kv => $"{kv.Key} {kv.Value:G4}")));
            if (!result.Completed) return ExitCodes.Failed;
            trainer.ExportModel(options.OutputDir);
            if (lora != null)
            {
                var extra = Lora.SaveAdapter(Path.Combine(options.OutputDir, "adapter"), model, lora, modelDir);
                o.WriteLine($"adapter: {Path.Combine(options.OutputDir, "adapter")}" + (extra.Count > 0 ? $" (the {extra.Count} fully trained non-adapter tensors are only in the merged model.safetensors)" : ""));
            }
            o.WriteLine($"model: {Path.Combine(options.OutputDir, TrainerCheckpoint.ModelFile)}");
            return ExitCodes.Ok;
        }
        catch (TrainingDivergedException e)
        {
            o.WriteLine(e.Message);
            return ExitCodes.Failed;
        }
        finally { reference?.Dispose(); }
    }

    static VargptForConditionalGeneration LoadModel(VargptConfig cfg, string dir, Device device, ScalarType dtype, TextWriter o)
    {
        var model = new VargptForConditionalGeneration(cfg, device, dtype);
        using var reader = CheckpointReader.Open(dir);
        var report = StateDict.Load(model, reader);
        o.WriteLine($"loaded {report.Loaded.Count} tensors from {dir} ({dtype.ToString().ToLowerInvariant()} on {device})");
        return model;
    }
}
