using System.Globalization;
using VarGpt.Model;
using YamlDotNet.RepresentationModel;

namespace VarGpt.Training;

/// <summary>
/// The training yaml of the official fork (LLaMA-Factory keys; examples/train_vargpt_qwen2vl_1_1/*.yaml), restricted to
/// keys that mean something to this port. Defaults are the official ones (HF TrainingArguments / LLaMA-Factory hparams)
/// except where noted. Unknown keys are rejected by name (all listed at once); keys that only configure the official
/// GPU stack are accepted, ignored and reported in <see cref="Notes"/>.
/// </summary>
public sealed record TrainingConfig
{
    // model / method
    public string ModelNameOrPath { get; init; } = "";
    public string Stage { get; init; } = "sft";                 // sft | dpo
    public string FinetuningType { get; init; } = "lora";       // full | lora (LLaMA-Factory default: lora)
    public int VargptTrainStage { get; init; }                  // 0-5, the get_forbidden_modules map
    /// <summary>Official default is "qwen2vl-v1.0"; this port only implements v1.1, so v1.1 is the default here.</summary>
    public string VargptVersion { get; init; } = "qwen2vl-v1.1";
    public string Template { get; init; } = "vargpt_qwen2_vl";

    // data
    public IReadOnlyList<string> Dataset { get; init; } = [];
    public string DatasetDir { get; init; } = "data";
    public string? ImageDir { get; init; }
    public int CutoffLen { get; init; } = 2048;
    public int? MaxSamples { get; init; }
    /// <summary>Max pixels of understanding images (model_args.image_resolution, 512*512).</summary>
    public int ImageResolution { get; init; } = 512 * 512;
    /// <summary>Side of the square generation targets (hard-coded 512 in VargptQwen2vlPlugin; 256 for the 0.06M schedule).</summary>
    public int ImageGenResolution { get; init; } = 512;
    /// <summary>vargpt_gen_augment (VarGpt.NET key): the official train_aug on generation targets (1.125x resize +
    /// random crop). false = resize straight to image_gen_resolution (for data already at that size, e.g. ShapesWorld,
    /// where a crop would shift and rescale the objects the prompt places).</summary>
    public bool ImageGenAugment { get; init; } = true;
    /// <summary>vargpt_gen_text_loss (VarGpt.NET key): the text targets of a batch with generation targets. "official"
    /// (default) = get_gen_loss_1_1: the input ids themselves, so prompts, role and padding tokens are supervised too;
    /// "labels" = the dataset labels (answers only), as the text-only branch. Not an official option: a small model
    /// trained with "official" learns to continue user turns after the assistant's first token (docs/shapesworld.md).</summary>
    public string GenTextLoss { get; init; } = "official";
    /// <summary>vargpt_train_positions (VarGpt.NET key): position ids of the training forward. "official" (default) =
    /// none passed, so every token gets its 1-D index (the official forward never calls get_rope_index in training);
    /// "mrope" = the positions inference uses: get_rope_index over the prompt (an image's tokens take (t, row, column)
    /// and the text after it resumes at max + 1) and the raw index for the image-generation rows (the cache index
    /// autoregressive_infer_cfg gives them). Not an official option: a model trained from scratch with 1-D positions
    /// meets M-RoPE positions for the first time at inference (docs/shapesworld.md).</summary>
    public string TrainPositions { get; init; } = "official";

    // optimisation (HF TrainingArguments defaults)
    public int PerDeviceTrainBatchSize { get; init; } = 8;
    public int GradientAccumulationSteps { get; init; } = 1;
    public double LearningRate { get; init; } = 5e-5;
    public double NumTrainEpochs { get; init; } = 3.0;
    public int MaxSteps { get; init; } = -1;
    public string LrSchedulerType { get; init; } = "linear";   // cosine | linear | constant | constant_with_warmup
    public double WarmupRatio { get; init; }
    public int WarmupSteps { get; init; }
    public double WeightDecay { get; init; }
    public double MaxGradNorm { get; init; } = 1.0;
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    public bool Bf16 { get; init; }
    public int Seed { get; init; } = 42;

    // output
    public string OutputDir { get; init; } = "";
    public int LoggingSteps { get; init; } = 500;
    public int SaveSteps { get; init; } = 500;
    public int? SaveTotalLimit { get; init; }
    /// <summary>resume_from_checkpoint: a checkpoint folder, or "true"/"latest" for output_dir's latest.</summary>
    public string? ResumeFromCheckpoint { get; init; }

    // LoRA
    public int LoraRank { get; init; } = 8;
    public double LoraAlpha { get; init; } = 16;  // default lora_rank * 2 (finetuning_args.__post_init__)
    public double LoraDropout { get; init; }
    public IReadOnlyList<string> LoraTarget { get; init; } = ["all"];

    // DPO (finetuning_args RLHFArguments)
    public double PrefBeta { get; init; } = 0.1;
    public double PrefFtx { get; init; }
    public string PrefLoss { get; init; } = "sigmoid";
    public double DpoLabelSmoothing { get; init; }

    // explicit freezing on top of vargpt_train_stage (this port's keys)
    /// <summary>vargpt_freeze: component groups to freeze (vision_tower, language_model, infinity, projectors, vae).</summary>
    public IReadOnlyList<string> FreezeComponents { get; init; } = [];
    /// <summary>vargpt_freeze_modules: extra parameter-name substrings to freeze (same rule as get_forbidden_modules).</summary>
    public IReadOnlyList<string> FreezeModules { get; init; } = [];

    /// <summary>One line per accepted-but-ignored key.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>Keys that only configure the official GPU/DeepSpeed/HF stack: accepted and ignored, with a note.</summary>
    public static readonly IReadOnlyDictionary<string, string> IgnoredKeys = new Dictionary<string, string>
    {
        ["deepspeed"] = "DeepSpeed/ZeRO is not used (single-process TorchSharp trainer)",
        ["preprocessing_num_workers"] = "preprocessing runs in-process",
        ["preprocessing_batch_size"] = "preprocessing runs in-process",
        ["dataloader_num_workers"] = "batches are built in-process",
        ["overwrite_cache"] = "no HF datasets cache is used",
        ["ddp_timeout"] = "no distributed training",
        ["ddp_find_unused_parameters"] = "no distributed training",
        ["report_to"] = "logs go to trainer_log.jsonl and stdout only",
        ["run_name"] = "logs go to trainer_log.jsonl and stdout only",
        ["logging_dir"] = "logs go to output_dir",
        ["plot_loss"] = "the loss curve is always written to output_dir/training_loss.png",
        ["overwrite_output_dir"] = "output_dir is reused; checkpoints are resumed only when resume_from_checkpoint is set",
        ["do_train"] = "`vargpt train` always trains",
        ["trust_remote_code"] = "no remote code is loaded",
        ["flash_attn"] = "attention kernels are chosen by the port",
        ["fp16"] = "only `fp16: false` is accepted (bf16 or fp32 training)",
        ["tf32"] = "CPU/TorchSharp numerics",
        ["cache_dir"] = "models are loaded from local folders",
        ["hf_hub_token"] = "models are loaded from local folders",
        ["optim"] = "the optimizer is always AdamW (adamw_torch)",
        ["include_num_input_tokens_seen"] = "tokens/s is always logged",
        ["freeze_vision_tower"] = "no effect for vargpt_qwen2_vl full/LoRA tuning in the official code (it adds 'vision_tower', which matches no VARGPT parameter); use vargpt_freeze",
        ["mix_strategy"] = "only 'concat' is implemented",
        ["val_size"] = "only 0 is accepted (no evaluation split)",
        ["gradient_checkpointing"] = "not implemented",
        ["disable_gradient_checkpointing"] = "not implemented",
        ["max_samples_per_dataset"] = "use max_samples",
    };

    /// <summary>Keys of the official predict/eval yamls: rejected with a pointer rather than silently ignored.</summary>
    static readonly IReadOnlyDictionary<string, string> UnsupportedKeys = new Dictionary<string, string>
    {
        ["do_predict"] = "prediction is not part of `vargpt train`; use the generate/chat commands",
        ["do_eval"] = "evaluation during training is not implemented",
        ["predict_with_generate"] = "prediction is not part of `vargpt train`",
        ["eval_dataset"] = "evaluation during training is not implemented",
        ["per_device_eval_batch_size"] = "evaluation during training is not implemented",
        ["eval_steps"] = "evaluation during training is not implemented",
        ["eval_strategy"] = "evaluation during training is not implemented",
        ["adapter_name_or_path"] = "loading existing adapters is not implemented; merge them first",
        ["ref_model"] = "DPO uses a frozen copy of model_name_or_path as the reference (the official default)",
        ["use_dora"] = "DoRA is not implemented", ["use_rslora"] = "rsLoRA is not implemented",
        ["pissa_init"] = "PiSSA is not implemented", ["quantization_bit"] = "quantized training is not implemented",
        ["packing"] = "sequence packing is not implemented", ["streaming"] = "streaming datasets are not implemented",
    };

    static readonly HashSet<string> KnownKeys =
    [
        "model_name_or_path", "stage", "finetuning_type", "vargpt_train_stage", "vargpt_version", "template",
        "dataset", "dataset_dir", "image_dir", "cutoff_len", "max_samples", "image_resolution", "image_gen_resolution",
        "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs", "max_steps",
        "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2",
        "adam_epsilon", "bf16", "seed", "output_dir", "logging_steps", "save_steps", "save_total_limit", "resume_from_checkpoint",
        "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing",
        "vargpt_freeze", "vargpt_freeze_modules", "vargpt_gen_augment", "vargpt_gen_text_loss", "vargpt_train_positions",
    ];

    public static readonly IReadOnlyList<string> GenTextLosses = ["official", "labels"];
    public static readonly IReadOnlyList<string> TrainPositionModes = ["official", "mrope"];
    public static readonly IReadOnlyList<string> SchedulerTypes = ["cosine", "linear", "constant", "constant_with_warmup"];
    public static readonly IReadOnlyList<string> PrefLosses = ["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"];

    public static TrainingConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"training config not found: {path}", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses yaml text; <paramref name="source"/> names the file in error messages.</summary>
    public static TrainingConfig Parse(string yaml, string source = "<yaml>")
    {
        var stream = new YamlStream();
        try { stream.Load(new StringReader(yaml)); }
        catch (YamlDotNet.Core.YamlException e) { throw new InvalidDataException($"{source}: invalid yaml at line {e.Start.Line}: {e.Message}"); }
        if (stream.Documents.Count == 0) throw new InvalidDataException($"{source}: empty config");
        if (stream.Documents[0].RootNode is not YamlMappingNode root) throw new InvalidDataException($"{source}: the config must be a mapping of key: value");

        var values = new Dictionary<string, (string Value, int Line)>(StringComparer.Ordinal);
        var unknown = new List<string>();
        var unsupported = new List<string>();
        var notes = new List<string>();
        foreach (var (k, v) in root.Children)
        {
            string key = ((YamlScalarNode)k).Value ?? "";
            int line = (int)k.Start.Line;
            string value = v switch
            {
                YamlScalarNode s => s.Value ?? "",
                YamlSequenceNode seq => string.Join(",", seq.Children.Select(c => (c as YamlScalarNode)?.Value ?? throw new InvalidDataException($"{source}:{line}: '{key}' must be a list of scalars"))),
                _ => throw new InvalidDataException($"{source}:{line}: '{key}' must be a scalar or a list"),
            };
            if (values.ContainsKey(key)) throw new InvalidDataException($"{source}:{line}: key '{key}' appears twice");
            if (KnownKeys.Contains(key)) values[key] = (value, line);
            else if (IgnoredKeys.TryGetValue(key, out var why)) { notes.Add($"{key}: ignored ({why})"); values[key] = (value, line); }
            else if (UnsupportedKeys.TryGetValue(key, out var reason)) unsupported.Add($"'{key}' (line {line}): {reason}");
            else unknown.Add($"'{key}' (line {line})");
        }
        if (unknown.Count > 0 || unsupported.Count > 0)
        {
            var parts = new List<string>();
            if (unknown.Count > 0) parts.Add($"unknown key(s): {string.Join(", ", unknown)}");
            if (unsupported.Count > 0) parts.Add($"unsupported key(s): {string.Join("; ", unsupported)}");
            throw new InvalidDataException($"{source}: {string.Join("; ", parts)}");
        }

        var r = new Reader(values, source);
        // Ignored keys whose value would change the math must have the harmless value.
        if (r.Bool("fp16", false)) throw new InvalidDataException($"{source}: fp16: true is not supported; use bf16: true");
        if (values.ContainsKey("val_size") && r.Double("val_size", 0) != 0) throw new InvalidDataException($"{source}: val_size must be 0 (no evaluation split)");
        if (values.TryGetValue("mix_strategy", out var mix) && mix.Value != "concat") throw new InvalidDataException($"{source}: mix_strategy '{mix.Value}' is not implemented (only concat)");
        if (values.TryGetValue("optim", out var optim) && optim.Value is not ("adamw_torch" or "adamw_hf"))
            throw new InvalidDataException($"{source}: optim '{optim.Value}' is not implemented (AdamW only)");
        if (values.TryGetValue("gradient_checkpointing", out var gc) && gc.Value.Equals("true", StringComparison.OrdinalIgnoreCase))
            notes.Add("gradient_checkpointing: true requested but not implemented; activations are kept (more memory)");

        int loraRank = r.Int("lora_rank", 8);
        var cfg = new TrainingConfig
        {
            ModelNameOrPath = r.Str("model_name_or_path", ""),
            Stage = r.OneOf("stage", "sft", ["sft", "dpo"]),
            FinetuningType = r.OneOf("finetuning_type", "lora", ["full", "lora"]),
            VargptTrainStage = r.Int("vargpt_train_stage", 0),
            VargptVersion = r.OneOf("vargpt_version", "qwen2vl-v1.1", ["qwen2vl-v1.1"]),
            Template = r.OneOf("template", "vargpt_qwen2_vl", ["vargpt_qwen2_vl"]),
            Dataset = r.List("dataset"),
            DatasetDir = r.Str("dataset_dir", "data"),
            ImageDir = r.StrOrNull("image_dir") is { Length: > 0 } idir ? idir : null,
            CutoffLen = r.Int("cutoff_len", 2048),
            MaxSamples = r.IntOrNull("max_samples"),
            ImageResolution = r.Int("image_resolution", 512 * 512),
            ImageGenResolution = r.Int("image_gen_resolution", 512),
            ImageGenAugment = r.Bool("vargpt_gen_augment", true),
            GenTextLoss = r.OneOf("vargpt_gen_text_loss", "official", GenTextLosses),
            TrainPositions = r.OneOf("vargpt_train_positions", "official", TrainPositionModes),
            PerDeviceTrainBatchSize = r.Int("per_device_train_batch_size", 8),
            GradientAccumulationSteps = r.Int("gradient_accumulation_steps", 1),
            LearningRate = r.Double("learning_rate", 5e-5),
            NumTrainEpochs = r.Double("num_train_epochs", 3.0),
            MaxSteps = r.Int("max_steps", -1),
            LrSchedulerType = r.OneOf("lr_scheduler_type", "linear", SchedulerTypes),
            WarmupRatio = r.Double("warmup_ratio", 0),
            WarmupSteps = r.Int("warmup_steps", 0),
            WeightDecay = r.Double("weight_decay", 0),
            MaxGradNorm = r.Double("max_grad_norm", 1.0),
            AdamBeta1 = r.Double("adam_beta1", 0.9),
            AdamBeta2 = r.Double("adam_beta2", 0.999),
            AdamEpsilon = r.Double("adam_epsilon", 1e-8),
            Bf16 = r.Bool("bf16", false),
            Seed = r.Int("seed", 42),
            OutputDir = r.Str("output_dir", ""),
            LoggingSteps = r.Int("logging_steps", 500),
            SaveSteps = r.Int("save_steps", 500),
            SaveTotalLimit = r.IntOrNull("save_total_limit"),
            ResumeFromCheckpoint = r.StrOrNull("resume_from_checkpoint"),
            LoraRank = loraRank,
            LoraAlpha = r.Double("lora_alpha", loraRank * 2),
            LoraDropout = r.Double("lora_dropout", 0),
            LoraTarget = r.List("lora_target", ["all"]),
            PrefBeta = r.Double("pref_beta", 0.1),
            PrefFtx = r.Double("pref_ftx", 0),
            PrefLoss = r.OneOf("pref_loss", "sigmoid", PrefLosses),
            DpoLabelSmoothing = r.Double("dpo_label_smoothing", 0),
            FreezeComponents = r.List("vargpt_freeze", []),
            FreezeModules = r.List("vargpt_freeze_modules", []),
            Notes = notes,
        };
        cfg.Validate(source);
        return cfg;
    }

    /// <summary>Range and consistency checks (finetuning_args.__post_init__ and the trainer's needs); throws naming the key.</summary>
    public void Validate(string source = "<config>")
    {
        var errors = new List<string>();
        void Need(bool ok, string msg) { if (!ok) errors.Add(msg); }
        Need(ModelNameOrPath.Length > 0, "model_name_or_path is required");
        Need(OutputDir.Length > 0, "output_dir is required");
        Need(Dataset.Count > 0, "dataset is required (comma-separated dataset_info.json names)");
        Need(VargptTrainStage is >= 0 and <= 5, $"vargpt_train_stage must be 0-5, got {VargptTrainStage}");
        Need(CutoffLen > 0, "cutoff_len must be > 0");
        Need(MaxSamples is null or > 0, "max_samples must be > 0");
        Need(PerDeviceTrainBatchSize > 0, "per_device_train_batch_size must be > 0");
        Need(GradientAccumulationSteps > 0, "gradient_accumulation_steps must be > 0");
        Need(LearningRate >= 0, "learning_rate must be >= 0");
        Need(MaxSteps > 0 || NumTrainEpochs > 0, "num_train_epochs must be > 0 when max_steps is not set");
        Need(WarmupRatio is >= 0 and <= 1, "warmup_ratio must be in [0, 1]");
        Need(WarmupSteps >= 0, "warmup_steps must be >= 0");
        Need(WeightDecay >= 0, "weight_decay must be >= 0");
        Need(MaxGradNorm >= 0, "max_grad_norm must be >= 0 (0 disables clipping)");
        Need(AdamBeta1 is >= 0 and < 1 && AdamBeta2 is >= 0 and < 1, "adam_beta1/adam_beta2 must be in [0, 1)");
        Need(LoggingSteps > 0, "logging_steps must be > 0");
        Need(SaveSteps > 0, "save_steps must be > 0");
        Need(SaveTotalLimit is null or > 0, "save_total_limit must be > 0");
        Need(ImageResolution > 0, "image_resolution must be > 0");
        // VARGPT-v1.1 trained at 256 and 512; any side a registered template-1.0 schedule produces is accepted (checked by the collator)
        Need(ImageGenResolution > 0, $"image_gen_resolution must be > 0, got {ImageGenResolution}");
        Need(LoraRank > 0, "lora_rank must be > 0");
        Need(LoraDropout is >= 0 and < 1, "lora_dropout must be in [0, 1)");
        Need(PrefBeta > 0, "pref_beta must be > 0");
        Need(DpoLabelSmoothing is >= 0 and <= 0.5, "dpo_label_smoothing must be in [0, 0.5]");
        if (Stage == "dpo" && PrefLoss != "sigmoid" && DpoLabelSmoothing > 1e-6)
            errors.Add("dpo_label_smoothing is only valid for pref_loss: sigmoid");
        foreach (var c in FreezeComponents)
            if (!ModelComponents.All.Any(k => k.Key == c)) errors.Add($"vargpt_freeze: unknown component '{c}' (known: {string.Join(", ", ModelComponents.All.Select(k => k.Key))})");
        if (errors.Count > 0) throw new InvalidDataException($"{source}: " + string.Join("; ", errors));
    }

    sealed class Reader(Dictionary<string, (string Value, int Line)> values, string source)
    {
        Exception Bad(string key, string what) => new InvalidDataException($"{source}:{values[key].Line}: '{key}' must be {what}, found '{values[key].Value}'");
        public string Str(string key, string dflt) => values.TryGetValue(key, out var v) ? v.Value.Trim() : dflt;
        public string? StrOrNull(string key) => values.TryGetValue(key, out var v) ? v.Value.Trim() : null;
        public int Int(string key, int dflt) => IntOrNull(key) ?? dflt;
        public int? IntOrNull(string key)
        {
            if (!values.TryGetValue(key, out var v) || v.Value.Trim().Length == 0 || v.Value.Trim() is "null" or "~") return null;
            return int.TryParse(v.Value.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) ? i : throw Bad(key, "an integer");
        }
        public double Double(string key, double dflt)
        {
            if (!values.TryGetValue(key, out var v)) return dflt;
            return double.TryParse(v.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d) ? d : throw Bad(key, "a number");
        }
        public bool Bool(string key, bool dflt)
        {
            if (!values.TryGetValue(key, out var v)) return dflt;
            return v.Value.Trim().ToLowerInvariant() switch { "true" => true, "false" => false, _ => throw Bad(key, "true or false") };
        }
        public string OneOf(string key, string dflt, IReadOnlyList<string> allowed)
        {
            var s = Str(key, dflt);
            return allowed.Contains(s) ? s : throw Bad(key, $"one of {string.Join(", ", allowed)}");
        }
        public IReadOnlyList<string> List(string key, IReadOnlyList<string>? dflt = null) =>
            values.TryGetValue(key, out var v)
                ? v.Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                : dflt ?? [];
    }
}
