using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Cli;
using VarGpt.Model;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt.Cli.Runner;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Cli;

/// <summary>`vargpt train sft|dpo CONFIG.yaml` end to end on a tiny model folder.</summary>
[Collection(nameof(GlobalRngCollection))]
public class TrainCommandTests(ITestOutputHelper output)
{
    /// <summary>A model folder: config.json, model.safetensors, the tiny tokenizer (the tiny-model builder).</summary>
    static string ModelFolder(string root)
    {
        var dir = Path.Combine(root, "model");
        TinyModels.Write(TinyVargpt.Folder(seed: 8), dir);
        return dir;
    }

    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = CliRunner.Run(Program.BuildRoot(), args, o, e);
        return (rc, o.ToString(), e.ToString());
    }

    [Fact]
    public void Train_sft_runs_from_a_yaml_and_writes_a_strictly_loadable_model()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var model = ModelFolder(tmp.Path);
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        TinyVargpt.MixedRecords(data);
        var yaml = Path.Combine(tmp.Path, "sft.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            stage: sft
            do_train: true
            finetuning_type: full
            vargpt_train_stage: 4
            dataset: tiny
            dataset_dir: {data}
            template: vargpt_qwen2_vl
            cutoff_len: 1024
            image_gen_resolution: 64
            per_device_train_batch_size: 2
            gradient_accumulation_steps: 1
            learning_rate: 1.0e-3
            max_steps: 3
            lr_scheduler_type: cosine
            warmup_ratio: 0.1
            logging_steps: 1
            save_steps: 2
            output_dir: out
            """);
        var (rc, o, e) = Cli("train", "sft", yaml);
        output.WriteLine(o + e);
        Assert.True(rc == 0, o + e);
        Assert.Contains("data: 4 sample(s) from tiny; targets 64x64 (t64, 24 <|image_gen_pad|> tokens each)", o);
        Assert.Contains("training finished: 3 steps", o);
        var outDir = Path.Combine(tmp.Path, "out");
        Assert.True(File.Exists(Path.Combine(outDir, "checkpoint-2", TrainerCheckpoint.ModelFile)));
        Assert.Equal(3, File.ReadAllLines(Path.Combine(outDir, TrainerLog.JsonlFile)).Length);
        using var fresh = new VargptForConditionalGeneration(VargptConfig.Load(outDir), CPU, ScalarType.Float32);
        var report = StateDict.Load(fresh, Path.Combine(outDir, TrainerCheckpoint.ModelFile));
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer.json")));

        // stage 3 trains only the generation side: understanding/text samples are refused before training
        File.WriteAllText(yaml, File.ReadAllText(yaml).Replace("vargpt_train_stage: 4", "vargpt_train_stage: 3"));
        var (rc3, _, e3) = Cli("train", "sft", yaml);
        Assert.Equal(ExitCodes.UserError, rc3);
        Assert.Contains("2 sample(s) have no generation target", e3);
        Assert.Contains("vargpt_train_stage 3", e3);

        // the wrong subcommand for the yaml's stage is a usage error
        var (rc2, _, e2) = Cli("train", "dpo", yaml);
        Assert.Equal(ExitCodes.UserError, rc2);
        Assert.Contains("stage is 'sft' but the command is 'train dpo'", e2);
    }

    [Fact]
    public void Train_dpo_with_lora_and_precomputed_reference()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var model = ModelFolder(tmp.Path);
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        TinyVargpt.WriteImage(data, "a.png", 64, 64, (250, 120, 20));
        TinyVargpt.WriteImage(data, "b.png", 64, 64, (20, 60, 220));
        TinyVargpt.WriteDataset(data, new JsonArray(TinyVargpt.Pair("paint a sunset", "Here is a sunset.<image_gen>", "Here is a sunset.<image_gen>", "a.png", "b.png")), ranking: true);
        var yaml = Path.Combine(tmp.Path, "dpo.yaml");
        File.WriteAllText(yaml, $"""
            model_name_or_path: {model}
            stage: dpo
            finetuning_type: lora
            lora_rank: 4
            lora_target: all
            pref_beta: 0.1
            pref_loss: sigmoid
            dataset: tiny
            dataset_dir: {data}
            image_gen_resolution: 64
            per_device_train_batch_size: 1
            learning_rate: 1.0e-3
            max_steps: 2
            logging_steps: 1
            save_steps: 100
            output_dir: {Path.Combine(tmp.Path, "out")}
            """);
        var (rc, o, e) = Cli("train", "dpo", yaml, "--precompute-ref");
        output.WriteLine(o + e);
        Assert.True(rc == 0, o + e);
        Assert.Contains("computing reference log-probs for 1 pair(s)", o);
        Assert.Contains("rewards/accuracies", o);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "out", "adapter", "adapter_model.safetensors")));
        using var fresh = new VargptForConditionalGeneration(TinyVargpt.Config(), CPU, ScalarType.Float32);
        var report = StateDict.Load(fresh, Path.Combine(tmp.Path, "out", TrainerCheckpoint.ModelFile));
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
    }
}
