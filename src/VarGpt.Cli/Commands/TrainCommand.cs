using System.CommandLine;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Training;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt train sft|dpo CONFIG.yaml: fine-tune from an official-style LLaMA-Factory yaml.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var cmd = new Command("train", "Fine-tune VARGPT (SFT or image DPO) from a LLaMA-Factory style yaml, as the official VARGPT-family-training does.");
        cmd.Subcommands.Add(Stage(TrainingStage.Sft, "Supervised fine-tuning: text CE + 3 x image bit CE (get_gen_loss_1_1)."));
        cmd.Subcommands.Add(Stage(TrainingStage.Dpo, $"Image DPO against a frozen copy of the starting model (trl {TrainingConfig.Names<PrefLoss>().Replace(", ", "/")})."));
        cmd.WithExamples(
            $"vargpt train sft {ExamplesDir}/shapesworld_sft.yaml        # fine-tune the shipped model (after 'vargpt shapes data --out {ExamplesDir}/data')",
            $"vargpt train dpo {ExamplesDir}/vargpt_v1_1_dpo_lora.yaml   # the official checkpoint (edit model_name_or_path)",
            "vargpt train sft my_sft.yaml --overwrite                     # start over in an output_dir that holds a run");
        return cmd;
    }

    static Command Stage(TrainingStage value, string description)
    {
        var stage = TrainingConfig.YamlName(value);
        var config = new Argument<string>("CONFIG") { Description = "Training yaml (official keys: model_name_or_path, dataset, dataset_dir, output_dir, vargpt_train_stage, finetuning_type, ...)." };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N (default cpu).", DefaultValueFactory = _ => "cpu" };
        var overwrite = new Option<bool>("--overwrite") { Description = "Start over in an output_dir that holds an earlier run: its checkpoints, log, plot, model and adapter are removed first (yaml: overwrite_output_dir: true). Without it such an output_dir is refused unless the yaml resumes (resume_from_checkpoint: latest)." };
        var precompute = new Option<bool>("--precompute-ref") { Description = "DPO: compute the reference log-probs once per pair before training, then free the reference model (half the weights in memory; the reference sees the epoch-0 crop and noise draw)." };
        var cmd = new Command(stage, description) { config, device, overwrite };
        if (value == TrainingStage.Dpo) cmd.Options.Add(precompute);
        cmd.WithDetails(
            $"""
            The yaml's `stage` must be '{stage}' (or absent). The model folder (model_name_or_path) needs config.json,
            the safetensors weights and the tokenizer files; preprocessor_config.json is used when present.
            Data: dataset_info.json under dataset_dir, sharegpt formatting; samples longer than cutoff_len are skipped
            and counted. finetuning_type full freezes by vargpt_train_stage (official map; the VAE always frozen);
            lora wraps the language model's q/k/v/o/gate/up/down projections ('all' = those) and, as the official
            code does, also trains Infinity and both projectors fully. Progress: loss, lr, tokens/s, ETA; the log is
            output_dir/trainer_log.jsonl and the loss curve output_dir/training_loss.png. A NaN/inf loss stops the run
            and keeps the last good checkpoint. resume_from_checkpoint: a checkpoint folder or 'latest'. Ctrl-C or
            SIGTERM stops after the current step with a checkpoint saved (exit 130 / 143; a second signal stops at once);
            rerun with resume_from_checkpoint: latest to continue. Relative paths in the yaml (model_name_or_path,
            dataset_dir, image_dir, output_dir, resume_from_checkpoint) are relative to the yaml's own folder, not to the
            working directory; "~/" is the home folder. output_dir must not be (or contain) the model or data folder.
            Examples to copy (SFT, DPO, LoRA; for the shipped ShapesWorld model and for the official checkpoint):
            {ExamplesDir}/.
            Keys of this port (not in the official code): vargpt_freeze (component groups: {string.Join(", ", ModelComponents.All.Select(c => c.Key))}),
            vargpt_freeze_modules (parameter-name substrings), vargpt_gen_augment (false: no 1.125x resize + crop of
            generation targets), vargpt_gen_text_loss ({TrainingConfig.Names<GenTextLoss>()}; official: in a batch with
            generation targets the text CE covers every token but the image-gen pads, prompts included, as
            get_gen_loss_1_1; labels: the answers only), vargpt_bit_loss ({TrainingConfig.Names<BitLoss>()}; official: the
            plain mean over all bits, as get_gen_loss_1_1 computes it; scale_weighted: the per-scale weighting it intends,
            sqrt(last area / scale area) per token), vargpt_train_positions ({TrainingConfig.Names<TrainPositions>()};
            official: 1-D position ids, as the official training forward; mrope: the positions inference uses,
            get_rope_index over the prompt and the cache index for image-generation rows). Defaults of the yaml keys: lr_scheduler_type
            {TrainingConfig.YamlName(TrainingConfig.Defaults.LrSchedulerType)} ({TrainingConfig.Names<LrScheduler>()}), learning_rate
            {TrainingConfig.Defaults.LearningRate.ToString(System.Globalization.CultureInfo.InvariantCulture)}, finetuning_type {TrainingConfig.YamlName(TrainingConfig.Defaults.FinetuningType)}, per_device_train_batch_size
            {TrainingConfig.Defaults.PerDeviceTrainBatchSize}, cutoff_len {TrainingConfig.Defaults.CutoffLen}, image_gen_resolution {TrainingConfig.Defaults.ImageGenResolution}.
            """);
        cmd.WithExamples($"vargpt train {stage} {ExamplesDir}/shapesworld_{stage}.yaml", $"vargpt train {stage} my_{stage}.yaml --overwrite");
        cmd.SetAction(parse =>
        {
            using var stop = new GracefulStop(parse.InvocationConfiguration.Output);
            int code = Run(value, parse.GetRequiredValue(config), parse.GetValue(device) ?? "cpu",
                value == TrainingStage.Dpo && parse.GetValue(precompute), parse.GetValue(overwrite), parse.InvocationConfiguration.Output, stop.Token);
            return stop.Signal is null ? code : stop.ExitCode;
        });
        return cmd;
    }

    /// <summary>The example training yamls (repository folder; `vargpt train --help` points here).</summary>
    public const string ExamplesDir = "examples/train";

    static int Run(TrainingStage stage, string configPath, string deviceName, bool precomputeRef, bool overwrite, TextWriter o, CancellationToken ct)
    {
        TrainerReproducibility.RequestStrictBlas();
        var cfg = TrainingConfig.Load(configPath);
        if (cfg.Stage != stage)
            throw new VargptInputException($"{configPath}: stage is '{TrainingConfig.YamlName(cfg.Stage)}' but the command is 'train {TrainingConfig.YamlName(stage)}'; use 'vargpt train {TrainingConfig.YamlName(cfg.Stage)}'");
        foreach (var n in cfg.Notes) o.WriteLine($"note: {n}");
        var options = new FineTuningOptions
        {
            Device = TorchRuntime.ParseDevice(deviceName), PrecomputeReference = precomputeRef, Output = o, Overwrite = overwrite,
            BaseDir = Path.GetDirectoryName(Path.GetFullPath(configPath))!,
        };
        try
        {
            var r = VargptFineTuning.Run(cfg, options, ct);
            return r.ModelPath is null ? ExitCodes.Failed : ExitCodes.Ok;
        }
        catch (TrainingDivergedException e)
        {
            o.WriteLine(e.Message);
            return ExitCodes.Failed;
        }
    }
}
