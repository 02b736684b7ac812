using VarGpt.Training;

using VarGpt;

namespace VarGpt.Tests.Training;

public class TrainingConfigTests
{
    const string OfficialSftPath = "/work/official/VARGPT-family-training/examples/train_vargpt_qwen2vl_1_1/vargpt_pretraining_7b_v1_1_stage_sft.yaml";

    [Fact]
    public void Official_sft_yaml_parses_with_its_values_and_notes_the_ignored_keys()
    {
        var cfg = File.Exists(OfficialSftPath) ? TrainingConfig.Load(OfficialSftPath) : TrainingConfig.Parse(VarGpt.Fuzz.FuzzSeeds.OfficialSftYaml);
        Assert.Equal("VARGPT-family/VARGPT-v1.1", cfg.ModelNameOrPath);
        Assert.Equal(TrainingStage.Sft, cfg.Stage);
        Assert.Equal(FinetuningType.Full, cfg.FinetuningType);
        Assert.Equal("qwen2vl-v1.1", cfg.VargptVersion);
        Assert.Equal(3, cfg.VargptTrainStage);
        Assert.Equal(["train_vargpt_v1_1_demo"], cfg.Dataset);
        Assert.Equal(8192, cfg.CutoffLen);
        Assert.Equal(1000000000, cfg.MaxSamples);
        Assert.Equal(1, cfg.PerDeviceTrainBatchSize);
        Assert.Equal(2, cfg.GradientAccumulationSteps);
        Assert.Equal(5e-5, cfg.LearningRate);
        Assert.Equal(6.0, cfg.NumTrainEpochs);
        Assert.Equal(LrScheduler.Cosine, cfg.LrSchedulerType);
        Assert.Equal(0.1, cfg.WarmupRatio);
        Assert.True(cfg.Bf16);
        Assert.Equal(10, cfg.LoggingSteps);
        Assert.Equal(1000, cfg.SaveSteps);
        Assert.Equal("saves/vargpt_qwen2vl-7b-v1-1/full/stagex-pt-5e-5", cfg.OutputDir);
        // HF / LLaMA-Factory defaults for keys the yaml does not set
        Assert.Equal(1.0, cfg.MaxGradNorm);
        Assert.Equal(0.0, cfg.WeightDecay);
        Assert.Equal(42, cfg.Seed);
        Assert.Equal(-1, cfg.MaxSteps);
        Assert.Equal("data", cfg.DatasetDir);
        foreach (var k in new[] { "deepspeed", "do_train", "overwrite_cache", "preprocessing_num_workers", "plot_loss", "fp16", "ddp_timeout" })
            Assert.Contains(cfg.Notes, n => n.StartsWith(k + ":"));
        Assert.True(cfg.OverwriteOutputDir);   // a real key: the official yamls start over in their output_dir
    }

    [Fact]
    public void Unknown_keys_are_all_listed_by_name()
    {
        var ex = Assert.Throws<InvalidFileException>(() => TrainingConfig.Parse("""
            model_name_or_path: m
            dataset: a, b
            output_dir: o
            learning_rat: 1e-4
            lora_rnk: 4
            do_predict: true
            """, "x.yaml"));
        Assert.Contains("'learning_rat' (line 4)", ex.Message);
        Assert.Contains("'lora_rnk' (line 5)", ex.Message);
        Assert.Contains("'do_predict' (line 6)", ex.Message);
        Assert.StartsWith("x.yaml", ex.Message);
    }

    [Fact]
    public void Lora_and_dpo_keys_and_defaults()
    {
        var cfg = TrainingConfig.Parse("""
            model_name_or_path: m
            stage: dpo
            dataset: p1,p2
            output_dir: o
            finetuning_type: lora
            lora_rank: 4
            lora_target: q_proj, v_proj
            pref_beta: 0.2
            pref_loss: sigmoid
            dpo_label_smoothing: 0.1
            pref_ftx: 0.5
            lr_scheduler_type: constant
            max_steps: 7
            vargpt_freeze: vision_tower,projectors
            vargpt_freeze_modules: [lm_head, sos_embedding]
            vargpt_gen_text_loss: labels
            vargpt_bit_loss: scale_weighted
            vargpt_train_positions: mrope
            """);
        Assert.Equal(["p1", "p2"], cfg.Dataset);
        Assert.Equal(8.0, cfg.LoraAlpha); // default lora_rank * 2
        Assert.Equal(["q_proj", "v_proj"], cfg.LoraTarget);
        Assert.Equal(0.2, cfg.PrefBeta);
        Assert.Equal(0.1, cfg.DpoLabelSmoothing);
        Assert.Equal(0.5, cfg.PrefFtx);
        Assert.Equal(7, cfg.MaxSteps);
        Assert.Equal(["vision_tower", "projectors"], cfg.FreezeComponents);
        Assert.Equal(["lm_head", "sos_embedding"], cfg.FreezeModules);
        Assert.Equal(GenTextLoss.Labels, cfg.GenTextLoss);
        Assert.Equal(GenTextLoss.Official, TrainingConfig.Parse("model_name_or_path: m\ndataset: d\noutput_dir: o").GenTextLoss);
        Assert.Equal(BitLoss.ScaleWeighted, cfg.BitLoss);
        Assert.Equal(BitLoss.Official, TrainingConfig.Parse("model_name_or_path: m\ndataset: d\noutput_dir: o").BitLoss);
        Assert.Equal(TrainPositions.Mrope, cfg.TrainPositions);
        Assert.Equal(TrainPositions.Official, TrainingConfig.Parse("model_name_or_path: m\ndataset: d\noutput_dir: o").TrainPositions);
        Assert.Equal(FinetuningType.Lora, TrainingConfig.Parse("model_name_or_path: m\ndataset: d\noutput_dir: o").FinetuningType); // LLaMA-Factory default
    }

    [Theory]
    [InlineData("lr_scheduler_type: cosine_restarts", "'lr_scheduler_type' must be one of")]
    [InlineData("learning_rate: fast", "'learning_rate' must be a number")]
    [InlineData("bf16: yes please", "'bf16' must be true or false")]
    [InlineData("vargpt_train_stage: 6", "vargpt_train_stage must be 0-5")]
    [InlineData("vargpt_version: qwen2vl-v1.0", "'vargpt_version' must be one of qwen2vl-v1.1")]
    [InlineData("fp16: true", "fp16: true is not supported")]
    [InlineData("stage: dpo\npref_loss: hinge\ndpo_label_smoothing: 0.2", "dpo_label_smoothing is only valid")]
    [InlineData("vargpt_freeze: eyes", "unknown component 'eyes'")]
    [InlineData("vargpt_gen_text_loss: answers", "'vargpt_gen_text_loss' must be one of official, labels")]
    [InlineData("vargpt_bit_loss: weighted", "'vargpt_bit_loss' must be one of official, scale_weighted")]
    [InlineData("vargpt_train_positions: 2d", "'vargpt_train_positions' must be one of official, mrope")]
    public void Bad_values_are_rejected_naming_the_key(string extra, string expected)
    {
        var ex = Assert.Throws<InvalidFileException>(() => TrainingConfig.Parse("model_name_or_path: m\ndataset: d\noutput_dir: o\n" + extra));
        Assert.Contains(expected, ex.Message);
    }
}
