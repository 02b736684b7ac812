using System.Globalization;
using System.Reflection;
using System.Runtime.Serialization;
using VarGpt.Model;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.RepresentationModel;
using YamlDotNet.Serialization;
using YamlDotNet.Serialization.NamingConventions;

namespace VarGpt.Training;

/// <summary>`stage`: supervised fine-tuning or image DPO.</summary>
public enum TrainingStage { Sft, Dpo }

/// <summary>`finetuning_type`.</summary>
public enum FinetuningType { Full, Lora }

/// <summary>`pref_loss`: the preference losses of trl 0.9.6 dpo_loss this port implements (the list of allowed values, once).</summary>
public enum PrefLoss { Sigmoid, Hinge, Ipo }

/// <summary>`vargpt_gen_text_loss` (this port's key): the text targets of a batch with generation targets.</summary>
public enum GenTextLoss
{
    /// <summary>get_gen_loss_1_1: the input ids themselves, so prompts, role and padding tokens are supervised too.</summary>
    Official,
    /// <summary>The dataset labels (answers only), as the text-only branch.</summary>
    Labels,
}

/// <summary>`vargpt_bit_loss` (this port's key): how the image bit CE of a batch is averaged.</summary>
public enum BitLoss
{
    /// <summary>get_gen_loss_1_1: the plain mean over every bit of every token (its per-scale re-weighting acts on an
    /// already-reduced scalar, so it is a no-op).</summary>
    Official,
    /// <summary>What Infinity's reweight_loss_by_scale intends: each token's mean bit CE weighted by
    /// sqrt(last area / its scale's area), weights normalised to sum 1, so the coarse scales (few tokens, where the
    /// layout and colours a prompt asks for are decided) weigh more than their token count.</summary>
    ScaleWeighted,
}

/// <summary>`vargpt_train_positions` (this port's key): the position ids of the training forward.</summary>
public enum TrainPositions
{
    /// <summary>None passed, so every token gets its 1-D index: the official forward never calls get_rope_index in training.</summary>
    Official,
    /// <summary>The positions inference uses: get_rope_index over the prompt (an image's tokens take (t, row, column), the
    /// text after it resumes at max + 1) and the raw cache index for the image-generation rows (autoregressive_infer_cfg).</summary>
    Mrope,
}

/// <summary>
/// The training yaml of the official fork (LLaMA-Factory keys; examples/train_vargpt_qwen2vl_1_1/*.yaml), restricted to
/// keys that mean something to this port, read by YamlDotNet's deserializer onto this record: a key is the snake_case
/// name of a property, and each default is stated once, here (HF TrainingArguments / LLaMA-Factory hparams, except
/// where noted). Unknown keys are rejected by name (all listed at once; the known ones are this record's properties);
/// keys that only configure the official GPU stack are accepted, ignored and reported in <see cref="Notes"/>.
/// </summary>
public sealed record TrainingConfig
{
    // model / method
    public string ModelNameOrPath { get; init; } = "";
    public TrainingStage Stage { get; init; } = TrainingStage.Sft;
    /// <summary>LLaMA-Factory default: lora.</summary>
    public FinetuningType FinetuningType { get; init; } = FinetuningType.Lora;
    /// <summary>0-5, the get_forbidden_modules map.</summary>
    public int VargptTrainStage { get; init; }
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
    [YamlMember(Alias = "vargpt_gen_augment")] public bool ImageGenAugment { get; init; } = true;
    /// <summary>vargpt_gen_text_loss (VarGpt.NET key; see <see cref="Training.GenTextLoss"/>). Not an official option: a small
    /// model trained with "official" learns to continue user turns after the assistant's first token (docs/shapesworld-notes.md).</summary>
    [YamlMember(Alias = "vargpt_gen_text_loss")] public GenTextLoss GenTextLoss { get; init; } = GenTextLoss.Official;
    /// <summary>vargpt_bit_loss (VarGpt.NET key; see <see cref="Training.BitLoss"/>). Not an official option.</summary>
    [YamlMember(Alias = "vargpt_bit_loss")] public BitLoss BitLoss { get; init; } = BitLoss.Official;
    /// <summary>vargpt_train_positions (VarGpt.NET key; see <see cref="Training.TrainPositions"/>). Not an official option: a model
    /// trained from scratch with 1-D positions meets M-RoPE positions for the first time at inference (docs/shapesworld-notes.md).</summary>
    [YamlMember(Alias = "vargpt_train_positions")] public TrainPositions TrainPositions { get; init; } = TrainPositions.Official;

    // optimisation (HF TrainingArguments defaults; TrainerOptions takes its defaults from here)
    public int PerDeviceTrainBatchSize { get; init; } = 8;
    public int GradientAccumulationSteps { get; init; } = 1;
    public double LearningRate { get; init; } = 5e-5;
    public double NumTrainEpochs { get; init; } = 3.0;
    public int MaxSteps { get; init; } = -1;
    public LrScheduler LrSchedulerType { get; init; } = LrScheduler.Linear;
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
    /// <summary>resume_from_checkpoint: a checkpoint folder, or "latest" (also "true") for output_dir's latest; "false" = none.</summary>
    public string? ResumeFromCheckpoint { get; init; }
    /// <summary>
    /// overwrite_output_dir: start over in an output_dir that holds an earlier run (its checkpoints, log, loss plot,
    /// model and adapter are removed first). Without it and without resume_from_checkpoint such an output_dir is refused
    /// (LLaMA-Factory would resume silently) rather than mixed with the new run. `vargpt train --overwrite` sets it.
    /// </summary>
    public bool OverwriteOutputDir { get; init; }

    // LoRA
    public int LoraRank { get; init; } = 8;
    /// <summary>Default lora_rank * 2 (finetuning_args.__post_init__).</summary>
    public double LoraAlpha { get => _loraAlpha ?? LoraRank * 2; init => _loraAlpha = value; }
    double? _loraAlpha;
    public double LoraDropout { get; init; }
    public IReadOnlyList<string> LoraTarget { get; init; } = ["all"];

    // DPO (finetuning_args RLHFArguments)
    public double PrefBeta { get; init; } = 0.1;
    public double PrefFtx { get; init; }
    public PrefLoss PrefLoss { get; init; } = PrefLoss.Sigmoid;
    public double DpoLabelSmoothing { get; init; }

    // explicit freezing on top of vargpt_train_stage (this port's keys)
    /// <summary>vargpt_freeze: component groups to freeze (<see cref="ModelComponents"/> keys).</summary>
    [YamlMember(Alias = "vargpt_freeze")] public IReadOnlyList<string> FreezeComponents { get; init; } = [];
    /// <summary>vargpt_freeze_modules: extra parameter-name substrings to freeze (same rule as get_forbidden_modules).</summary>
    [YamlMember(Alias = "vargpt_freeze_modules")] public IReadOnlyList<string> FreezeModules { get; init; } = [];

    /// <summary>One line per accepted-but-ignored key.</summary>
    [YamlIgnore] public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>Defaults of every key (what an empty yaml gives).</summary>
    public static TrainingConfig Defaults { get; } = new();

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

    /// <summary>Values of pref_loss that LLaMA-Factory knows but this port does not implement, with the reason.</summary>
    static readonly IReadOnlyDictionary<string, string> UnimplementedPrefLosses = new Dictionary<string, string>
    {
        ["orpo"] = "needs no reference model and is not part of VARGPT's image DPO",
        ["simpo"] = "needs no reference model and is not part of VARGPT's image DPO",
        ["kto_pair"] = "needs no reference model and is not part of VARGPT's image DPO",
    };

    /// <summary>Every key this record reads: its properties' yaml names.</summary>
    public static IReadOnlyDictionary<string, PropertyInfo> KnownKeys { get; } = typeof(TrainingConfig)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Where(p => p.CanWrite && p.GetCustomAttribute<YamlIgnoreAttribute>() is null)
        .ToDictionary(p => p.GetCustomAttribute<YamlMemberAttribute>()?.Alias ?? UnderscoredNamingConvention.Instance.Apply(p.Name), p => p, StringComparer.Ordinal);

    static readonly IDeserializer Yaml = new DeserializerBuilder()
        .WithNamingConvention(UnderscoredNamingConvention.Instance)
        .WithEnumNamingConvention(UnderscoredNamingConvention.Instance)
        .WithTypeConverter(new StringListConverter())
        .IgnoreUnmatchedProperties()   // the ignored keys; unknown ones were rejected before
        .Build();

    public static TrainingConfig Load(string path)
    {
        if (!File.Exists(path)) throw new InputNotFoundException($"training config not found: {path}", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses yaml text; <paramref name="source"/> names the file in error messages.</summary>
    public static TrainingConfig Parse(string yaml, string source = "<yaml>")
    {
        var stream = new YamlStream();
        try { stream.Load(new StringReader(yaml)); }
        catch (YamlException e) { throw new InvalidFileException($"{source}: invalid yaml at line {e.Start.Line}: {e.Message}"); }
        // YamlDotNet's scanner and node loader throw these for some malformed documents too (found by fuzzing: fuzz/regressions/yaml)
        catch (Exception e) when (e is InvalidOperationException or ArgumentException) { throw new InvalidFileException($"{source}: invalid yaml ({e.Message})"); }
        if (stream.Documents.Count == 0) throw new InvalidFileException($"{source}: empty config");
        if (stream.Documents[0].RootNode is not YamlMappingNode root) throw new InvalidFileException($"{source}: the config must be a mapping of key: value");

        // the keys first: every unknown one listed at once, the ignored ones noted
        var values = new Dictionary<string, (string Value, int Line)>(StringComparer.Ordinal);
        var unknown = new List<string>();
        var unsupported = new List<string>();
        var notes = new List<string>();
        foreach (var (k, v) in root.Children)
        {
            int line = (int)k.Start.Line;
            if (k is not YamlScalarNode keyNode) throw new InvalidFileException($"{source}:{line}: a key must be a plain name, found a {(k is YamlMappingNode ? "mapping" : "list")}");
            string key = keyNode.Value ?? "";
            if (values.ContainsKey(key)) throw new InvalidFileException($"{source}:{line}: key '{key}' appears twice");
            values[key] = (v is YamlScalarNode s ? s.Value ?? "" : "", line);
            if (KnownKeys.ContainsKey(key)) continue;
            if (IgnoredKeys.TryGetValue(key, out var why)) notes.Add($"{key}: ignored ({why})");
            else if (UnsupportedKeys.TryGetValue(key, out var reason)) unsupported.Add($"'{key}' (line {line}): {reason}");
            else unknown.Add($"'{key}' (line {line})");
        }
        if (unknown.Count > 0 || unsupported.Count > 0)
        {
            var parts = new List<string>();
            if (unknown.Count > 0) parts.Add($"unknown key(s): {string.Join(", ", unknown)}");
            if (unsupported.Count > 0) parts.Add($"unsupported key(s): {string.Join("; ", unsupported)}");
            throw new InvalidFileException($"{source}: {string.Join("; ", parts)}");
        }
        // ignored keys whose value would change the math must have the harmless value
        string? Ignored(string key) => values.TryGetValue(key, out var v) ? v.Value.Trim() : null;
        if (Ignored("fp16") is "true" or "True") throw new InvalidFileException($"{source}: fp16: true is not supported; use bf16: true");
        if (Ignored("val_size") is { } vs && !(double.TryParse(vs, CultureInfo.InvariantCulture, out double val) && val == 0)) throw new InvalidFileException($"{source}: val_size must be 0 (no evaluation split)");
        if (Ignored("mix_strategy") is { } mix && mix != "concat") throw new InvalidFileException($"{source}: mix_strategy '{mix}' is not implemented (only concat)");
        if (Ignored("optim") is { } optim && optim is not ("adamw_torch" or "adamw_hf")) throw new InvalidFileException($"{source}: optim '{optim}' is not implemented (AdamW only)");
        if (Ignored("gradient_checkpointing") is { } gc && gc.Equals("true", StringComparison.OrdinalIgnoreCase))
            notes.Add("gradient_checkpointing: true requested but not implemented; activations are kept (more memory)");
        if (Ignored("pref_loss") is { } pl && UnimplementedPrefLosses.TryGetValue(pl, out var plWhy))
            throw new InvalidFileException($"{source}:{values["pref_loss"].Line}: pref_loss '{pl}' {plWhy}; implemented: {Names<PrefLoss>()}");

        TrainingConfig cfg;
        try { cfg = Yaml.Deserialize<TrainingConfig>(yaml) ?? new TrainingConfig(); }
        catch (YamlException e)
        {
            // the key on the failing line, and what its property takes
            var at = values.FirstOrDefault(kv => kv.Value.Line == e.Start.Line);
            if (at.Key is null || !KnownKeys.TryGetValue(at.Key, out var prop)) throw new InvalidFileException($"{source}:{e.Start.Line}: {e.Message}", e);
            throw new InvalidFileException($"{source}:{at.Value.Line}: '{at.Key}' must be {Kind(prop.PropertyType)}, found '{at.Value.Value}'", e);
        }
        // "key:" / "key: ~" / "key: null" make YamlDotNet store null even where the record has no null (found by fuzzing)
        foreach (var (key, prop) in KnownKeys)
            if (values.ContainsKey(key) && prop.GetValue(cfg) is null && new NullabilityInfoContext().Create(prop).ReadState == NullabilityState.NotNull)
                throw new InvalidFileException($"{source}:{values[key].Line}: '{key}' has no value; give {Kind(prop.PropertyType)} or remove the key");
        cfg = cfg with
        {
            Notes = notes, ImageDir = string.IsNullOrEmpty(cfg.ImageDir) ? null : cfg.ImageDir,
            ResumeFromCheckpoint = cfg.ResumeFromCheckpoint?.Trim() switch
            {
                null or "" or "false" or "False" or "none" or "None" or "null" => null,
                "true" or "True" or "latest" => "latest",
                var path => path,
            },
        };
        cfg.Validate(source);
        return cfg;
    }

    /// <summary>The yaml spelling of an enum value (TrainingStage.Sft → "sft", LrScheduler.ConstantWithWarmup → "constant_with_warmup").</summary>
    public static string YamlName(Enum value) => UnderscoredNamingConvention.Instance.Apply(value.ToString());

    /// <summary>Every value of an enum key, as the yaml spells them.</summary>
    public static string Names<T>() where T : struct, Enum => string.Join(", ", Enum.GetValues<T>().Select(v => YamlName(v)));

    static string Kind(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        if (t == typeof(int)) return "an integer";
        if (t == typeof(double)) return "a number";
        if (t == typeof(bool)) return "true or false";
        if (t.IsEnum) return "one of " + string.Join(", ", Enum.GetNames(t).Select(UnderscoredNamingConvention.Instance.Apply));
        if (t == typeof(IReadOnlyList<string>)) return "a list (a, b or [a, b])";
        return "a string";
    }

    /// <summary>Range and consistency checks (finetuning_args.__post_init__ and the trainer's needs); throws naming the key.</summary>
    public void Validate(string source = "<config>")
    {
        var errors = new List<string>();
        void Need(bool ok, string msg) { if (!ok) errors.Add(msg); }
        Need(ModelNameOrPath.Length > 0, "model_name_or_path is required");
        Need(OutputDir.Length > 0, "output_dir is required");
        Need(Dataset.Count > 0, "dataset is required (comma-separated dataset_info.json names)");
        Need(VargptVersion == "qwen2vl-v1.1", $"'vargpt_version' must be one of qwen2vl-v1.1, found '{VargptVersion}'");
        Need(Template == "vargpt_qwen2_vl", $"'template' must be one of vargpt_qwen2_vl, found '{Template}'");
        Need(VargptTrainStage is >= 0 and <= 5, $"vargpt_train_stage must be 0-5, got {VargptTrainStage}");
        Need(CutoffLen > 0, "cutoff_len must be > 0");
        Need(MaxSamples is null or > 0, "max_samples must be > 0");
        Need(PerDeviceTrainBatchSize > 0, "per_device_train_batch_size must be > 0");
        Need(GradientAccumulationSteps > 0, "gradient_accumulation_steps must be > 0");
        Need(LearningRate >= 0 && double.IsFinite(LearningRate), "learning_rate must be >= 0");
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
        // VARGPT-v1.1 trained at 256 and 512; any side a template-1.0 schedule of the model produces is accepted (checked by the collator)
        Need(ImageGenResolution > 0, $"image_gen_resolution must be > 0, got {ImageGenResolution}");
        Need(LoraRank > 0, "lora_rank must be > 0");
        Need(LoraDropout is >= 0 and < 1, "lora_dropout must be in [0, 1)");
        Need(PrefBeta > 0, "pref_beta must be > 0");
        Need(DpoLabelSmoothing is >= 0 and <= 0.5, "dpo_label_smoothing must be in [0, 0.5]");
        if (Stage == TrainingStage.Dpo && PrefLoss != PrefLoss.Sigmoid && DpoLabelSmoothing > 1e-6)
            errors.Add("dpo_label_smoothing is only valid for pref_loss: sigmoid");
        foreach (var c in FreezeComponents)
            if (!ModelComponents.All.Any(k => k.Key == c)) errors.Add($"vargpt_freeze: unknown component '{c}' (known: {string.Join(", ", ModelComponents.All.Select(k => k.Key))})");
        if (errors.Count > 0) throw new InvalidFileException($"{source}: " + string.Join("; ", errors));
    }

    /// <summary>A list key: a yaml sequence ([a, b]) or the LLaMA-Factory comma form (a, b). Hand-written because YamlDotNet reads one shape per type.</summary>
    sealed class StringListConverter : IYamlTypeConverter
    {
        public bool Accepts(Type type) => type == typeof(IReadOnlyList<string>);

        public object? ReadYaml(IParser parser, Type type, ObjectDeserializer rootDeserializer)
        {
            if (parser.TryConsume<Scalar>(out var scalar))
                return scalar.Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            parser.Consume<SequenceStart>();
            var list = new List<string>();
            while (!parser.TryConsume<SequenceEnd>(out _)) list.Add(parser.Consume<Scalar>().Value);
            return list;
        }

        public void WriteYaml(IEmitter emitter, object? value, Type type, ObjectSerializer serializer) =>
            throw new NotSupportedException("training configs are read, not written");
    }
}
