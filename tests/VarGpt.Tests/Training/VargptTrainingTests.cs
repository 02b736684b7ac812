using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Training;
using VarGpt.Training.Data;
using static TorchSharp.torch;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Training;

/// <summary>The real objectives on a random tiny VARGPT: overfitting, DPO accuracy, exact resume, and the error paths.</summary>
[Collection(nameof(GlobalRngCollection))]
public class VargptTrainingTests(ITestOutputHelper output)
{
    static TrainerOptions Options(string dir, int steps, double lr, int saveSteps = 1000, LrScheduler schedule = LrScheduler.Constant) => new()
    {
        OutputDir = dir, LearningRate = lr, LrSchedulerType = schedule, WarmupRatio = schedule == LrScheduler.Cosine ? 0.05 : 0, MaxSteps = steps, MaxGradNorm = 1.0,
        LoggingSteps = 1000, SaveSteps = saveSteps, Seed = 7, Output = TextWriter.Null, IsTerminal = false,
    };

    static void FreezeVae(nn.Module model) => Freezing.Apply(model, Freezing.Plan(model.named_parameters().Select(p => p.name), Freezing.ForbiddenModules("qwen2vl-v1.1", 5)));

    [Fact]
    public void Sft_overfits_a_mixed_batch_of_generation_understanding_editing_and_text()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        Assert.Equal([RecordKind.Generation, RecordKind.Understanding, RecordKind.Editing, RecordKind.Text], records.Select(r => r.Kind));
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var ds = collator.EncodeAll(records, TrainingStage.Sft);
        Assert.Empty(ds.Skipped);
        using var model = TinyVargpt.Model(cfg, 1);
        FreezeVae(model);
        var objective = new VargptSftObjective(model, new VargptTrainingOptions { NoiseApplyStrength = 0 });
        using var trainer = new Trainer<VargptBatch>(model, objective, new FixedBatch(collator, ds.Items), Options(tmp["out"], 120, 6e-3, schedule: LrScheduler.Cosine));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var r = trainer.Train(cancel: TestContext.Current.CancellationToken);
        var losses = r.Steps.Select(s => s.Loss).ToList();
        double floor;
        using (var b = collator.Collate(ds.Items, 0, 0)) floor = TextLossFloor(b, cfg.ImageGen.PadId);
        output.WriteLine($"text-loss floor (shared prefixes, identical input images) {floor:F4}");
        output.WriteLine(string.Join(" ", losses.Where((_, i) => i % 10 == 0).Select(l => l.ToString("F3"))));
        output.WriteLine($"{losses.Count} steps in {sw.Elapsed.TotalSeconds:F1}s; loss {losses[0]:F4} -> {losses[^1]:F4}; last parts text {objective.LastParts.Text:F4} image {objective.LastParts.Image:F4}");
        Assert.True(losses[0] > 3, $"initial loss {losses[0]}");
        // "near zero": the image loss, and the text loss down to what identical prefixes make unavoidable
        Assert.True(objective.LastParts.Image < 0.01, $"image loss {objective.LastParts.Image}");
        Assert.True(objective.LastParts.Text < floor + 0.04, $"text loss {objective.LastParts.Text} vs floor {floor}");
        Assert.True(losses[^1] < floor + 0.05 && losses[^1] < 0.01 * losses[0], $"final loss {losses[^1]} (from {losses[0]}, floor {floor})");
    }

    /// <summary>The mixed 4-sample SFT set (images written to <paramref name="dir"/>) collated as one batch.</summary>
    static VargptBatch MixedSftBatch(string dir, VarGpt.Configuration.VargptConfig cfg)
    {
        var collator = TinyVargpt.Collator(cfg);
        return collator.Collate(collator.EncodeAll(TinyVargpt.MixedRecords(dir), TrainingStage.Sft).Items, 0, 0);
    }

    [Fact]
    public void Gen_text_loss_labels_supervises_only_the_answers_in_a_batch_with_generation_targets()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var cfg = TinyVargpt.Config();
        using var model = TinyVargpt.Model(cfg, 1);
        using var b = MixedSftBatch(tmp.Path, cfg);
        using var _ = no_grad();
        using var output = VargptTraining.Forward(model, b.Inputs, new VargptTrainingOptions { NoiseApplyStrength = 0 });
        int pad = cfg.ImageGen.PadId;
        using var official = VargptTrainingLoss.Sft(output, b.InputIds, b.Labels, pad);
        using var answers = VargptTrainingLoss.Sft(output, b.InputIds, b.Labels, pad, genTextOnLabels: true);
        using var targets = VargptTrainingLoss.OtherLabels(b.Labels, pad);
        using var expected = VargptTrainingLoss.TextCrossEntropy(output.Logits, targets);
        // the answers' CE (gen pads ignored), the same image term, and a different text term than the official one
        Assert.Equal(expected.item<float>(), answers.TextLoss.item<float>(), 5);
        Assert.Equal(official.ImageLoss!.item<float>(), answers.ImageLoss!.item<float>(), 6);
        Assert.NotEqual(official.TextLoss.item<float>(), answers.TextLoss.item<float>(), 3);
        using var isTarget = targets.ne(-100);
        using var officialTargets = VargptTrainingLoss.OtherLabels(b.InputIds, pad).ne(-100);
        Assert.True(isTarget.sum().item<long>() < officialTargets.sum().item<long>() / 2, "labels should leave the prompts out");
    }

    [Fact]
    public void Train_positions_mrope_gives_the_rows_the_positions_inference_gives_them()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var cfg = TinyVargpt.Config();
        using var b = MixedSftBatch(tmp.Path, cfg);
        long B = b.InputIds.shape[0], T = b.InputIds.shape[1];
        var ids = b.InputIds.data<long>().ToArray();
        var firstPad = Enumerable.Range(0, (int)B).Select(r => Array.IndexOf(ids, (long)cfg.ImageGen.PadId, r * (int)T, (int)T) is var i and >= 0 ? i - r * (int)T : -1).ToArray();
        Assert.Contains(firstPad, f => f >= 0);
        using var pos = VargptTraining.InferencePositions(b.InputIds, b.ImageGridThw, b.AttentionMask, cfg, firstPad);
        var (rope, deltas) = VarGpt.LanguageModel.RopeIndex.GetRopeIndex(b.InputIds, b.ImageGridThw, b.AttentionMask, cfg);
        using var _r = rope; using var _d = deltas;
        var p = pos.data<long>().ToArray();
        var q = rope.data<long>().ToArray();
        bool anyImageRowDiffersFrom1D = false;
        for (int r = 0; r < B; r++)
            for (int t = 0; t < T; t++)
                for (int k = 0; k < 3; k++)
                {
                    long got = p[(k * B + r) * T + t];
                    // before the generation block: get_rope_index; from its first pad on: the raw (cache) index
                    Assert.Equal(firstPad[r] >= 0 && t >= firstPad[r] ? t : q[(k * B + r) * T + t], got);
                    if (b.AttentionMask.data<long>()[r * T + t] == 1 && got != t) anyImageRowDiffersFrom1D = true;
                }
        Assert.True(anyImageRowDiffersFrom1D, "a row with an understanding image should get M-RoPE positions, not its 1-D index");

        // and the forward uses them: the text logits change, the generation rows' positions are what inference uses
        using var model = TinyVargpt.Model(cfg, 1);
        using var ng = no_grad();
        using var official = VargptTraining.Forward(model, b.Inputs, new VargptTrainingOptions { NoiseApplyStrength = 0 });
        using var mrope = VargptTraining.Forward(model, b.Inputs, new VargptTrainingOptions { NoiseApplyStrength = 0, MropePositions = true });
        Assert.False(official.Logits.allclose(mrope.Logits, 1e-4, 1e-4), "mrope positions must change the forward of rows with images");
    }

    /// <summary>
    /// The smallest mean text CE any model can reach on a generation batch (targets = input_ids, gen pads ignored):
    /// rows that share a prefix (here: the same input image too) but continue differently cannot all be predicted.
    /// </summary>
    static double TextLossFloor(VargptBatch b, int genPadId)
    {
        using var tl = VargptTrainingLoss.OtherLabels(b.InputIds, genPadId);
        long B = b.InputIds.shape[0], T = b.InputIds.shape[1];
        var ids = b.InputIds.data<long>().ToArray();
        var tg = tl.data<long>().ToArray();
        var counts = new Dictionary<string, Dictionary<long, int>>();
        var events = new List<(string Key, long Next)>();
        for (int r = 0; r < B; r++)
            for (int t = 0; t + 1 < T; t++)
            {
                long next = tg[r * T + t + 1];
                if (next == -100) continue;
                var key = string.Join(",", ids.Skip(r * (int)T).Take(t + 1));
                if (!counts.TryGetValue(key, out var d)) counts[key] = d = [];
                d[next] = d.GetValueOrDefault(next) + 1;
                events.Add((key, next));
            }
        return events.Sum(e => -Math.Log((double)counts[e.Key][e.Next] / counts[e.Key].Values.Sum())) / events.Count;
    }

    [Fact]
    public void Dpo_raises_preference_accuracy_on_its_training_pairs_to_100_percent()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        TinyVargpt.WriteImage(tmp.Path, "sun.png", 64, 64, (250, 120, 20), (200, 40, 40));
        TinyVargpt.WriteImage(tmp.Path, "sea.png", 64, 64, (20, 60, 220));
        TinyVargpt.WriteImage(tmp.Path, "grey.png", 64, 64, (128, 128, 128), (10, 10, 10));
        TinyVargpt.WriteDataset(tmp.Path, new JsonArray(
            TinyVargpt.Pair("paint a sunset", "Here is a sunset.<image_gen>", "Here is a sunset.<image_gen>", "sun.png", "sea.png"),
            TinyVargpt.Pair("draw a blue circle", "Here is a blue circle.<image_gen>", "Here is a blue circle.<image_gen>", "sea.png", "grey.png")), ranking: true);
        var records = DatasetLoader.Load(["tiny"], new DatasetLoadOptions { DatasetDir = tmp.Path, Ranking = true });
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var ds = collator.EncodeAll(records, TrainingStage.Dpo);
        using var policy = TinyVargpt.Model(cfg, 3);
        using var reference = TinyVargpt.Model(cfg, 3);
        FreezeVae(policy);
        var fwd = new VargptTrainingOptions { NoiseApplyStrength = 0 };
        var objective = new VargptDpoObjective(policy, reference, new DpoOptions(), fwd);
        var data = new FixedBatch(collator, ds.Items);

        double Accuracy()
        {
            using var ng = no_grad();
            using var scope = NewDisposeScope();
            objective.Compute(data.GetBatch(0, 0));
            return objective.LastMetrics["rewards/accuracies"];
        }
        Assert.Equal(0.0, Accuracy()); // policy == reference: every reward is 0, chosen > rejected never holds
        using (var trainer = new Trainer<VargptBatch>(policy, objective, data, Options(tmp["out"], 15, 1e-3)))
            trainer.Train(cancel: TestContext.Current.CancellationToken);
        policy.eval();
        double acc = Accuracy();
        output.WriteLine($"after 15 steps: {string.Join(", ", objective.LastMetrics.Select(kv => $"{kv.Key} {kv.Value:F3}"))}");
        Assert.Equal(1.0, acc);
        Assert.True(objective.LastMetrics["rewards/margins"] > 0);
    }

    [Fact]
    public void Dpo_with_precomputed_reference_logps_matches_the_live_reference()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        TinyVargpt.WriteImage(tmp.Path, "a.png", 64, 64, (250, 120, 20));
        TinyVargpt.WriteImage(tmp.Path, "b.png", 64, 64, (20, 60, 220));
        TinyVargpt.WriteDataset(tmp.Path, new JsonArray(TinyVargpt.Pair("paint a sunset", "Here is a sunset.<image_gen>", "<image_gen>", "a.png", "b.png")), ranking: true);
        var records = DatasetLoader.Load(["tiny"], new DatasetLoadOptions { DatasetDir = tmp.Path, Ranking = true });
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var items = collator.EncodeAll(records, TrainingStage.Dpo).Items;
        using var policy = TinyVargpt.Model(cfg, 4);
        using var reference = TinyVargpt.Model(cfg, 5);
        var fwd = new VargptTrainingOptions { NoiseApplyStrength = 0 };
        var live = new VargptDpoObjective(policy, reference, new DpoOptions { LossType = PrefLoss.Ipo }, fwd);
        var cached = new VargptDpoObjective(policy, reference, new DpoOptions { LossType = PrefLoss.Ipo }, fwd);
        cached.PrecomputeReference(collator, items);
        using var ng = no_grad();
        using var scope = NewDisposeScope();
        var a = live.Compute(collator.Collate(items, 0, 0)).Loss.item<float>();
        var b = cached.Compute(collator.Collate(items, 0, 0)).Loss.item<float>();
        Assert.Equal(a, b, 5);
        Assert.NotEqual(0f, a);
    }

    [Fact]
    public void Killed_and_resumed_sft_run_reproduces_the_losses_exactly_and_checkpoints_load_strictly()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        var cfg = TinyVargpt.Config(noisy: true); // cond dropout + drop-path on, and bit-flip noise below
        var collator = TinyVargpt.Collator(cfg, seed: 11);
        var items = collator.EncodeAll(records, TrainingStage.Sft).Items;
        var fwd = new VargptTrainingOptions { NoiseApplyStrength = 0.3 };
        TrainingResult Run(string dir, string? resume, Func<int, bool>? stopAfter = null)
        {
            using var model = TinyVargpt.Model(cfg, 2);
            FreezeVae(model);
            using var cts = new CancellationTokenSource();
            var inner = new VargptSftObjective(model, fwd);
            int calls = 0;
            var obj = new CallbackObjective(b => { var o = inner.Compute(b); if (stopAfter?.Invoke(++calls) == true) cts.Cancel(); return o; });
            using var t = new Trainer<VargptBatch>(model, obj, new VargptData(collator, items, 2, seed: 5), Options(dir, 6, 2e-3, saveSteps: 2) with { GradientAccumulationSteps = 1 });
            return t.Train(resume, cts.Token);
        }
        var full = Run(tmp["full"], null);
        Assert.True(full.Completed);
        var a = Run(tmp["part"], null, calls => calls == 3); // interrupted during step 3: the trainer saves checkpoint-3 (save_steps 2)
        Assert.False(a.Completed);
        Assert.Equal("checkpoint-3", File.ReadAllText(Path.Combine(tmp["part"], "latest")).Trim());
        torch.manual_seed(999); // scramble the global generator: the checkpoint must restore it
        var b = Run(tmp["part"], "latest");
        Assert.True(b.Completed);
        output.WriteLine("losses: " + string.Join(", ", full.Steps.Select(s => s.Loss.ToString("F6"))));
        Assert.Equal(full.Steps.Select(s => s.Loss), b.Steps.Select(s => s.Loss));
        Assert.Equal(full.Steps.Select(s => s.GradNorm), b.Steps.Select(s => s.GradNorm));
        Assert.True(full.Steps.Select(s => s.Loss).Distinct().Count() > 1);

        // the saved weights load back into a fresh model with no missing or unexpected key
        using var fresh = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        var report = StateDict.Load(fresh, Path.Combine(tmp["full"], "checkpoint-6", TrainerCheckpoint.ModelFile));
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
        Assert.Equal(fresh.state_dict().Count, report.Loaded.Count);
    }

    [Fact]
    public void Nan_loss_stops_training_and_keeps_the_last_good_checkpoint()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var items = collator.EncodeAll(records, TrainingStage.Sft).Items;
        using var model = TinyVargpt.Model(cfg, 1);
        FreezeVae(model);
        var inner = new VargptSftObjective(model, new VargptTrainingOptions { NoiseApplyStrength = 0 });
        int calls = 0;
        var obj = new CallbackObjective(b =>
        {
            if (++calls == 3) using (no_grad()) ((TorchSharp.Modules.Linear)model.lm_head).weight![0, 0] = float.NaN; // a diverged weight
            return inner.Compute(b);
        });
        using var t = new Trainer<VargptBatch>(model, obj, new FixedBatch(collator, items), Options(tmp["out"], 5, 1e-3, saveSteps: 1));
        var ex = Assert.Throws<TrainingDivergedException>(() => t.Train(cancel: TestContext.Current.CancellationToken));
        Assert.Contains("loss is NaN at step 3", ex.Message);
        Assert.Equal(3, ex.Step);
        Assert.EndsWith("checkpoint-2", ex.LastGoodCheckpoint);
        Assert.False(Directory.Exists(Path.Combine(tmp["out"], "checkpoint-3")));
        using var fresh = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        var report = StateDict.Load(fresh, Path.Combine(ex.LastGoodCheckpoint!, TrainerCheckpoint.ModelFile));
        Assert.Empty(report.Missing);
        Assert.True(((TorchSharp.Modules.Linear)fresh.lm_head).weight!.isfinite().all().item<bool>());
    }

    [Fact]
    public void Lora_on_the_language_model_trains_with_the_real_objective_and_merges_to_official_names()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var items = collator.EncodeAll(records, TrainingStage.Sft).Items;
        using var model = TinyVargpt.Model(cfg, 6);
        var wrapped = Lora.Apply(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] });
        Assert.Equal(2 * 7, wrapped.Count);
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.weight", trainable);
        Assert.DoesNotContain("model.layers.0.self_attn.q_proj.base_layer.weight", trainable);
        Assert.Contains(trainable, n => n.StartsWith("vargpt_gen.")); // official quirk: Infinity and the projectors train fully
        Assert.DoesNotContain(trainable, n => n.StartsWith("visual.") || n.StartsWith("vae_local.") || n.StartsWith("lm_head."));
        var fwd = new VargptTrainingOptions { NoiseApplyStrength = 0 };
        var objective = new VargptSftObjective(model, fwd);
        TrainingResult r;
        using (var t = new Trainer<VargptBatch>(model, objective, new FixedBatch(collator, items), Options(tmp["out"], 8, 3e-3) with { ExportWeights = () => Lora.MergedStateDict(model) }))
        {
            r = t.Train(cancel: TestContext.Current.CancellationToken);
            Directory.CreateDirectory(tmp["merged"]);
            t.ExportWeights(tmp["merged"]);
        }
        Assert.True(r.Steps[^1].Loss < r.Steps[0].Loss, $"loss {r.Steps[0].Loss} -> {r.Steps[^1].Loss}");
        var (_, q) = Lora.Layers(model).First();
        Assert.True(q.lora_B.weight!.abs().sum().item<float>() > 0, "lora_B moved");

        // the merged export has the official names only and reproduces the LoRA model's loss
        model.eval();
        using var fresh = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        var report = StateDict.Load(fresh, Path.Combine(tmp["merged"], TrainerCheckpoint.ModelFile));
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
        fresh.eval();
        using var ng = no_grad();
        using var scope = NewDisposeScope();
        var batch = collator.Collate(items, 0, 0);
        float a = new VargptSftObjective(model, fwd).Compute(batch).Loss.item<float>();
        float b = new VargptSftObjective(fresh, fwd).Compute(batch).Loss.item<float>();
        Assert.Equal(a, b, 4);
    }

    sealed class CallbackObjective(Func<VargptBatch, ObjectiveOutput> f) : ITrainingObjective<VargptBatch>
    {
        public ObjectiveOutput Compute(VargptBatch batch) => f(batch);
    }
}
