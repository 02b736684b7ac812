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
        File.WriteAllText(yaml, TinyVargpt.SftYaml(model, data, extra: """
            do_train: true
            template: vargpt_qwen2_vl
            cutoff_len: 1024
            gradient_accumulation_steps: 1
            """));
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
        var (rc3, _, e3) = Cli("train", "sft", yaml, "--overwrite");
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

    /// <summary>A tiny SFT run: model/, data/ (4 mixed samples) and a yaml in <paramref name="root"/>; paths in the yaml as given.</summary>
    static string SftYaml(string root, string output = "out", string model = "model", string data = "data", int steps = 3, int saveSteps = 2, string extra = "")
    {
        if (!Directory.Exists(Path.Combine(root, "model"))) ModelFolder(root);
        if (!Directory.Exists(Path.Combine(root, "data")))
        {
            Directory.CreateDirectory(Path.Combine(root, "data"));
            TinyVargpt.MixedRecords(Path.Combine(root, "data"));
        }
        var yaml = Path.Combine(root, "sft.yaml");
        File.WriteAllText(yaml, TinyVargpt.SftYaml(model, data, output, steps, saveSteps, extra: extra));
        return yaml;
    }

    static string Sha(string path) => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(path)));

    static int[] LoggedSteps(string dir) => File.ReadAllLines(Path.Combine(dir, TrainerLog.JsonlFile))
        .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("current_steps").GetInt32()).ToArray();

    [Fact]
    public void A_lora_run_is_the_same_in_any_process_whatever_the_global_random_state_before_it()
    {
        // found by the kill harness: lora_A's init drew from the unseeded global generator, so two runs of one yaml differed
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var yaml = SftYaml(tmp.Path, steps: 2, saveSteps: 1000);
        File.WriteAllText(yaml, File.ReadAllText(yaml).Replace("finetuning_type: full", "finetuning_type: lora"));
        var adapters = new List<string>();
        foreach (var noise in new[] { 1L, 99L })
        {
            manual_seed(noise);
            var (rc, o, e) = Cli("train", "sft", yaml, "--overwrite");
            Assert.True(rc == 0, o + e);
            adapters.Add(Sha(Path.Combine(tmp.Path, "out", "adapter", "adapter_model.safetensors")));
        }
        Assert.Equal(adapters[0], adapters[1]);
    }

    [Fact]
    public void An_output_dir_that_is_or_contains_an_input_is_refused_before_anything_is_written()
    {
        // issue 18 finding 1: output_dir = model_name_or_path trained, overwrote the base model.safetensors, then crashed
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var yaml = SftYaml(tmp.Path, output: "model");
        var model = Path.Combine(tmp.Path, "model");
        var before = Directory.GetFiles(model).ToDictionary(f => f, Sha);
        var (rc, o, e) = Cli("train", "sft", yaml);
        Assert.Equal(ExitCodes.UserError, rc);
        Assert.Equal($"error: output_dir {model} is the model_name_or_path folder: training would overwrite its own input; choose another output_dir", e.Trim());
        Assert.Equal(before, Directory.GetFiles(model).ToDictionary(f => f, Sha));
        Assert.DoesNotContain("loaded", o);

        // a folder that holds the data (an --overwrite would clear around it)
        yaml = SftYaml(tmp.Path, output: ".");
        (rc, _, e) = Cli("train", "sft", yaml);
        Assert.Equal(ExitCodes.UserError, rc);
        Assert.Contains($"output_dir {tmp.Path} contains the model_name_or_path folder {model}", e);
    }

    [Fact]
    public void A_rerun_into_an_output_dir_that_holds_a_run_asks_for_overwrite_or_resumes_as_the_yaml_says()
    {
        // issue 18 finding 5: a rerun without the resume key retrained silently and appended duplicate log steps
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var yaml = SftYaml(tmp.Path);
        var outDir = Path.Combine(tmp.Path, "out");
        Assert.Equal(0, Cli("train", "sft", yaml).Code);
        var model1 = Sha(Path.Combine(outDir, TrainerCheckpoint.ModelFile));

        var (rc, o, e) = Cli("train", "sft", yaml);
        Assert.Equal(ExitCodes.UserError, rc);
        Assert.Contains($"output_dir {outDir} already holds a run (checkpoint-2, latest, model.safetensors, trainer_log.jsonl)", e);
        Assert.Contains("resume_from_checkpoint: latest", e);
        Assert.Contains("--overwrite", e);
        Assert.DoesNotContain("loaded", o);

        // --overwrite: the earlier run's files go, the new run's log has its own steps only (same seed, same weights)
        File.WriteAllText(Path.Combine(outDir, "notes.txt"), "mine");
        (rc, o, e) = Cli("train", "sft", yaml, "--overwrite");
        Assert.True(rc == 0, o + e);
        Assert.Contains($"overwrite: removing {Path.Combine(outDir, "checkpoint-2")}", o);
        Assert.Equal([1, 2, 3], LoggedSteps(outDir));
        Assert.Equal(model1, Sha(Path.Combine(outDir, TrainerCheckpoint.ModelFile)));
        Assert.Equal("mine", File.ReadAllText(Path.Combine(outDir, "notes.txt")));

        // resume_from_checkpoint: true (the LLaMA-Factory spelling) continues from checkpoint-2
        File.WriteAllText(yaml, File.ReadAllText(yaml) + "resume_from_checkpoint: true\n");
        (rc, o, e) = Cli("train", "sft", yaml);
        Assert.True(rc == 0, o + e);
        Assert.Contains($"resumed from {Path.Combine(outDir, "checkpoint-2")} at step 2/3", o);
        Assert.Equal([1, 2, 3], LoggedSteps(outDir));
        Assert.Equal(model1, Sha(Path.Combine(outDir, TrainerCheckpoint.ModelFile)));

        File.WriteAllText(yaml, File.ReadAllText(yaml).Replace("resume_from_checkpoint: true", "resume_from_checkpoint: out/checkpoint-7"));
        (rc, _, e) = Cli("train", "sft", yaml);
        Assert.Equal(ExitCodes.UserError, rc);
        Assert.Contains($"resume_from_checkpoint out/checkpoint-7 ({Path.Combine(outDir, "checkpoint-7")}) is not a checkpoint folder", e);
    }

    [Fact]
    public void Relative_paths_of_the_yaml_resolve_against_its_folder_not_the_working_directory()
    {
        // issue 18 finding 7: dataset_dir: data was looked up in the working directory first, so a ./data there was read instead
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var run = Path.Combine(tmp.Path, "run");
        Directory.CreateDirectory(run);
        var yaml = SftYaml(run, steps: 1, saveSteps: 1);
        var cwd = Path.Combine(tmp.Path, "elsewhere");
        Directory.CreateDirectory(Path.Combine(cwd, "data"));
        File.WriteAllText(Path.Combine(cwd, "data", "dataset_info.json"), """{"other": {"file_name": "other.json"}}""");
        Directory.CreateDirectory(Path.Combine(cwd, "model"));
        var (rc, o, e) = CliProcess.Run(["train", "sft", yaml], workingDir: cwd);
        Assert.True(rc == 0, o + e);
        Assert.Contains("data: 4 sample(s) from tiny", o);
        Assert.True(File.Exists(Path.Combine(run, "out", TrainerCheckpoint.ModelFile)));
        Assert.False(Directory.Exists(Path.Combine(cwd, "out")));
        Assert.Equal(Path.Combine(run, "x"), VargptFineTuning.ResolvePath("x", run));
        Assert.Equal("/abs/x", VargptFineTuning.ResolvePath("/abs/x", run));
        Assert.Equal(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), "m"), VargptFineTuning.ResolvePath("~/m", run));
    }

    [Theory]
    [InlineData(15, 143)]
    [InlineData(2, 130)]
    public void A_signal_during_training_saves_a_checkpoint_at_the_next_step_and_the_resumed_run_ends_where_an_uninterrupted_one_does(int signal, int exitCode)
    {
        // issue 18 finding 5: Ctrl-C / SIGTERM exited at once without saving (up to save_steps - 1 steps lost)
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        const int steps = 40;
        var yaml = SftYaml(tmp.Path, steps: steps, saveSteps: 1000, extra: "resume_from_checkpoint: latest");
        var outDir = Path.Combine(tmp.Path, "out");
        int stoppedAt;
        using (var p = new CliProcess(["train", "sft", yaml]))
        {
            Assert.True(p.WaitForOutput($"step 2/{steps}", TimeSpan.FromSeconds(120)), p.Out + p.Err);
            p.Signal(signal);
            int rc = p.WaitForExit(TimeSpan.FromSeconds(120));
            output.WriteLine(p.Out + p.Err);
            Assert.Equal(exitCode, rc);
            Assert.Contains("stopping after the current step (a checkpoint is saved)", p.Out);
            var m = System.Text.RegularExpressions.Regex.Match(p.Out, @"interrupted: saving a checkpoint at step (\d+)");
            Assert.True(m.Success, p.Out);
            stoppedAt = int.Parse(m.Groups[1].Value);
            Assert.InRange(stoppedAt, 2, steps - 1);
            Assert.Equal($"checkpoint-{stoppedAt}", File.ReadAllText(Path.Combine(outDir, "latest")).Trim());
            Assert.Contains($"training stopped at step {stoppedAt}/{steps}", p.Out);
        }
        var (rc2, o2, e2) = CliProcess.Run(["train", "sft", yaml]);
        Assert.True(rc2 == 0, o2 + e2);
        Assert.Contains($"resumed from {Path.Combine(outDir, $"checkpoint-{stoppedAt}")} at step {stoppedAt}/{steps}", o2);

        // the same run without the interruption
        using var whole = TestPaths.Temp();
        var (rc3, o3, e3) = CliProcess.Run(["train", "sft", SftYaml(whole.Path, steps: steps, saveSteps: 1000)]);
        Assert.True(rc3 == 0, o3 + e3);
        Assert.Equal(Sha(Path.Combine(whole.Path, "out", TrainerCheckpoint.ModelFile)), Sha(Path.Combine(outDir, TrainerCheckpoint.ModelFile)));
        static string Losses(string dir) => string.Join(",", File.ReadAllLines(Path.Combine(dir, TrainerLog.JsonlFile))
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).Select(r => $"{r.GetProperty("current_steps")}:{r.GetProperty("loss")}:{r.GetProperty("lr")}:{r.GetProperty("grad_norm")}"));
        Assert.Equal(Losses(Path.Combine(whole.Path, "out")), Losses(outDir));
    }
}
