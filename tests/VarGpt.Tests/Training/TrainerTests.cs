using SkiaSharp;
using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Training;
using static TorchSharp.torch;

namespace VarGpt.Tests.Training;

[Collection(nameof(GlobalRngCollection))]
public class TrainerTests
{
    /// <summary>2-layer MLP regression with dropout (uses the torch generator) and a LayerNorm (no weight decay).</summary>
    sealed class Mlp : nn.Module<Tensor, Tensor>
    {
        public readonly nn.Module<Tensor, Tensor> fc1, fc2;
        public readonly LayerNorm norm;
        public readonly Dropout drop;
        public Mlp(int seed, ScalarType dtype = ScalarType.Float32) : base("Mlp")
        {
            torch.manual_seed(seed);
            fc1 = nn.Linear(4, 16); norm = nn.LayerNorm(16); fc2 = nn.Linear(16, 1); drop = nn.Dropout(0.2);
            RegisterComponents();
            if (dtype != ScalarType.Float32) this.to(dtype);
        }
        public override Tensor forward(Tensor x) => fc2.forward(drop.forward(nn.functional.gelu(norm.forward(fc1.forward(x)))));
    }

    sealed class Regression(Mlp model, Func<int, bool>? onCall = null, float? poisonAt = null) : ITrainingObjective<IReadOnlyList<(float[] X, float Y)>>
    {
        public int Calls;
        public ObjectiveOutput Compute(IReadOnlyList<(float[] X, float Y)> batch)
        {
            Calls++;
            onCall?.Invoke(Calls);
            var dtype = model.fc1 is Linear l ? l.weight!.dtype : ScalarType.Float32;
            var x = torch.tensor(batch.SelectMany(b => b.X).ToArray(), [batch.Count, 4]).to(dtype);
            var y = torch.tensor(batch.Select(b => b.Y).ToArray(), [batch.Count, 1]).to(dtype);
            if (poisonAt is float p && Calls >= p) y = y * float.NaN;
            var loss = nn.functional.mse_loss(model.forward(x).to(ScalarType.Float32), y.to(ScalarType.Float32));
            return new ObjectiveOutput(loss, batch.Count);
        }
    }

    static List<(float[] X, float Y)> Data(int n)
    {
        var rng = new VarGpt.Training.Data.SplitMix64(7);
        float U() => (float)(rng.Next() % 2000) / 1000f - 1f;
        return Enumerable.Range(0, n).Select(_ => { var x = new[] { U(), U(), U(), U() }; return (x, x[0] * 2 - x[1] * x[2] + 0.5f * x[3]); }).ToList();
    }

    static TrainerOptions Options(string dir, int saveSteps = 1000) => new()
    {
        OutputDir = dir, LearningRate = 1e-2, LrSchedulerType = LrScheduler.Cosine, WarmupRatio = 0.1, NumTrainEpochs = 3,
        GradientAccumulationSteps = 2, MaxGradNorm = 0.5, WeightDecay = 0.01, LoggingSteps = 2, SaveSteps = saveSteps, Seed = 3,
        Output = TextWriter.Null, IsTerminal = false,
    };

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void Resume_from_latest_reproduces_the_uninterrupted_loss_curve_exactly(ScalarType dtype)
    {
        TorchTestSetup.Init();
        var data = Data(10); // 5 batches of 2 per epoch, GA 2 -> 3 updates per epoch (last one partial), 9 steps
        using var full = TestPaths.Temp();
        using var m1 = new Mlp(1, dtype);
        var batches = new ShuffledBatches<(float[], float)>(data, 2, seed: 5);
        TrainingResult r1;
        using (var t1 = new Trainer<IReadOnlyList<(float[], float)>>(m1, new Regression(m1), batches, Options(full.Path)))
            r1 = t1.Train(cancel: TestContext.Current.CancellationToken);
        Assert.True(r1.Completed);
        Assert.Equal(9, r1.TotalSteps);
        Assert.Equal(9, r1.Steps.Count);
        Assert.All(r1.Steps, s => Assert.True(double.IsFinite(s.Loss)));

        using var part = TestPaths.Temp();
        using var cts = new CancellationTokenSource();
        using var m2 = new Mlp(1, dtype);
        TrainingResult r2a;
        // "Kill" after 4 steps (2+2+1+2 = 7 micro-batches: step 3 is the partial last group of epoch 0); checkpoints every 2 steps, so the latest is checkpoint-4.
        using (var t2 = new Trainer<IReadOnlyList<(float[], float)>>(m2, new Regression(m2, c => { if (c == 7) cts.Cancel(); return true; }), batches, Options(part.Path, saveSteps: 2)))
            r2a = t2.Train(cancel: cts.Token);
        Assert.False(r2a.Completed);
        Assert.Equal(4, r2a.GlobalStep);
        Assert.Equal("checkpoint-4", File.ReadAllText(Path.Combine(part.Path, "latest")).Trim());

        // Fresh process state: a differently initialised model and a scrambled global generator.
        torch.manual_seed(12345);
        using var m3 = new Mlp(99, dtype);
        TrainingResult r2b;
        using (var t3 = new Trainer<IReadOnlyList<(float[], float)>>(m3, new Regression(m3), new ShuffledBatches<(float[], float)>(data, 2, seed: 5), Options(part.Path, saveSteps: 2)))
            r2b = t3.Train(resumeFrom: "latest", cancel: TestContext.Current.CancellationToken);
        Assert.True(r2b.Completed);
        Assert.Equal(r1.Steps.Select(s => s.Loss), r2b.Steps.Select(s => s.Loss));          // exact, bitwise doubles
        Assert.Equal(r1.Steps.Select(s => s.GradNorm), r2b.Steps.Select(s => s.GradNorm));
        Assert.Equal(r1.Steps.Select(s => s.LearningRate), r2b.Steps.Select(s => s.LearningRate));
        foreach (var ((n1, p1), (n3, p3)) in m1.named_parameters().Zip(m3.named_parameters()))
        {
            Assert.Equal(n1, n3);
            Assert.Equal(dtype, p3.dtype);
            Assert.True(p1.equal(p3).all().item<bool>(), $"{n1} differs after resume");
        }
        // the JSONL log of the resumed run has one line per logging step, none duplicated
        var steps = File.ReadAllLines(Path.Combine(part.Path, TrainerLog.JsonlFile)).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("current_steps").GetInt32());
        Assert.Equal([2, 4, 6, 8, 9], steps);
    }

    [Fact]
    public void Bf16_model_trains_through_fp32_master_weights()
    {
        TorchTestSetup.Init();
        using var dir = TestPaths.Temp();
        using var m = new Mlp(1, ScalarType.BFloat16);
        // A tiny lr: each update is far below bf16 resolution of the weights, so only an fp32 master accumulates it.
        var o = Options(dir.Path) with { LearningRate = 1e-5, LrSchedulerType = LrScheduler.Constant, WarmupRatio = 0, MaxSteps = 6, WeightDecay = 0 };
        using var before = ((Linear)m.fc1).weight!.detach().clone();
        using (var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new Regression(m), new ShuffledBatches<(float[], float)>(Data(8), 2, 1), o))
        {
            t.Train(cancel: TestContext.Current.CancellationToken);
            Assert.Equal(ScalarType.BFloat16, ((Linear)m.fc1).weight!.dtype);
        }
        // Each of the 6 Adam steps moves a weight by ~lr (1e-5); bf16 spacing near 0.3 is ~2e-3, so single-step bf16
        // updates would round away. Weights close to zero can move; the check is that the master copy was written back.
        using var after = ((Linear)m.fc1).weight!.detach();
        Assert.False(before.equal(after).all().item<bool>(), "no weight changed: master weights were not written back");
    }

    [Fact]
    public void Nan_loss_stops_training_and_keeps_the_last_good_checkpoint()
    {
        TorchTestSetup.Init();
        using var dir = TestPaths.Temp();
        using var m = new Mlp(1);
        var sw = new StringWriter();
        var o = Options(dir.Path, saveSteps: 2) with { Output = sw };
        using var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new Regression(m, poisonAt: 7), new ShuffledBatches<(float[], float)>(Data(10), 2, 1), o);
        var ex = Assert.Throws<TrainingDivergedException>(() => t.Train(cancel: TestContext.Current.CancellationToken));
        Assert.Equal(4, ex.Step);
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-2"), ex.LastGoodCheckpoint);
        Assert.Contains("loss is NaN", ex.Message);
        Assert.Contains("checkpoint-2", ex.Message);
        Assert.Contains("last good checkpoint", sw.ToString());
        Assert.Equal("checkpoint-2", File.ReadAllText(Path.Combine(dir.Path, "latest")).Trim());
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "checkpoint-4")));
    }

    [Fact]
    public void Checkpoint_holds_official_weights_config_optimizer_rng_and_state_and_logs_are_written()
    {
        TorchTestSetup.Init();
        using var dir = TestPaths.Temp();
        var baseDir = Directory.CreateDirectory(Path.Combine(dir.Path, "base")).FullName;
        File.WriteAllText(Path.Combine(baseDir, "config.json"), """{"model_type": "vargpt_qwen2_vl", "torch_dtype": "float32"}""");
        File.WriteAllText(Path.Combine(baseDir, "tokenizer.json"), "{}");
        using var m = new Mlp(1, ScalarType.BFloat16);
        var sw = new StringWriter();
        var o = Options(Path.Combine(dir.Path, "out"), saveSteps: 3) with { BaseModelDir = baseDir, Output = sw, SaveTotalLimit = 2 };
        using var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new Regression(m), new ShuffledBatches<(float[], float)>(Data(10), 2, 1), o);
        var r = t.Train(cancel: TestContext.Current.CancellationToken);
        t.ExportModel(o.OutputDir);

        var ck = Path.Combine(o.OutputDir, "checkpoint-9");
        Assert.Equal(ck, r.LastCheckpoint);
        Assert.False(Directory.Exists(Path.Combine(o.OutputDir, "checkpoint-3")));   // pruned by save_total_limit 2
        Assert.True(Directory.Exists(Path.Combine(o.OutputDir, "checkpoint-6")));
        using (var f = SafeTensorsFile.Open(Path.Combine(ck, "model.safetensors")))
        {
            Assert.Equal(m.state_dict().Keys.Order(), f.Tensors.Keys.Order());
            Assert.Equal("BF16", f.Tensors["fc1.weight"].DType);
        }
        using (var f = SafeTensorsFile.Open(Path.Combine(ck, "trainable.safetensors")))
            Assert.All(f.Tensors.Values, v => Assert.Equal("F32", v.DType));
        using (var f = SafeTensorsFile.Open(Path.Combine(ck, "optimizer.safetensors")))
        {
            Assert.Contains("fc1.weight.exp_avg", f.Tensors.Keys);
            Assert.Contains("norm.bias.exp_avg_sq", f.Tensors.Keys);
            using var stepT = f.Load("fc2.bias.step");
            Assert.Equal(9L, stepT.item<long>());
        }
        using (var f = SafeTensorsFile.Open(Path.Combine(ck, "rng_state.safetensors"))) Assert.Contains("torch.cpu", f.Tensors.Keys);
        Assert.Contains("\"torch_dtype\": \"bfloat16\"", File.ReadAllText(Path.Combine(ck, "config.json")));
        var state = TrainerCheckpoint.ReadState(ck);
        Assert.Equal(9, state.GlobalStep);
        Assert.Equal(9, state.LogHistory.Count);
        Assert.Equal(5, state.BatchInEpoch);
        // final export
        Assert.True(File.Exists(Path.Combine(o.OutputDir, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(o.OutputDir, "tokenizer.json")));
        // logs: plain progress lines (no carriage returns without a terminal), JSONL, decodable PNG
        var text = sw.ToString();
        Assert.DoesNotContain('\r', text);
        Assert.Contains("step 2/9 | epoch", text);
        Assert.Contains("tok/s", text);
        Assert.Contains("ETA", text);
        Assert.Equal(5, File.ReadAllLines(Path.Combine(o.OutputDir, TrainerLog.JsonlFile)).Length);
        using var bmp = SKBitmap.Decode(Path.Combine(o.OutputDir, TrainerLog.PlotFile));
        Assert.Equal(800, bmp.Width);
    }

    [Fact]
    public void A_crash_while_saving_never_moves_the_latest_pointer()
    {
        using var dir = TestPaths.Temp();
        TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 5 }, tmp => File.WriteAllText(Path.Combine(tmp, "x"), "ok"));
        Assert.Throws<IOException>(() => TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 10 }, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "x"), "half");
            throw new IOException("disk full");
        }));
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-5"), TrainerCheckpoint.Latest(dir.Path));
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "checkpoint-10")));
        // A later successful save of the same step replaces the leftover temp folder.
        TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 10 }, tmp => { });
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-10"), TrainerCheckpoint.Latest(dir.Path));
    }

    [Fact]
    public void Schedules_follow_the_transformers_formulas()
    {
        // Official SFT demo: 2 records, batch 1, GA 2, 6 epochs -> 6 steps, warmup ceil(0.6) = 1.
        var cos = TrainerSchedule.Create(LrScheduler.Cosine, 6, 0.1);
        Assert.Equal(1, cos.WarmupSteps);
        Assert.Equal(0.0, cos.Lambda(0));                 // the first update runs at lr 0, as in HF
        Assert.Equal(1.0, cos.Lambda(1));
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * 2 / 5)), cos.Lambda(3), 15);
        var lin = TrainerSchedule.Create(LrScheduler.Linear, 10, 0, warmupSteps: 2);
        Assert.Equal([0.0, 0.5, 1.0, 7 / 8.0, 0.0], new[] { 0, 1, 2, 3, 10 }.Select(lin.Lambda));
        Assert.Equal(1.0, TrainerSchedule.Create(LrScheduler.Constant, 10, 0.5).Lambda(0));
        Assert.Equal(0.2, TrainerSchedule.Create(LrScheduler.ConstantWithWarmup, 10, 0.5).Lambda(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => TrainerSchedule.Create((LrScheduler)99, 10, 0));   // (a yaml name: TrainingConfigTests)
    }

    [Fact]
    public void Shuffled_batches_are_a_deterministic_permutation_per_epoch()
    {
        var items = Enumerable.Range(0, 7).ToList();
        var b = new ShuffledBatches<int>(items, 3, seed: 1);
        Assert.Equal(3, b.BatchesPerEpoch);
        var e0 = Enumerable.Range(0, 3).SelectMany(i => b.GetBatch(0, i)).ToList();
        var e1 = Enumerable.Range(0, 3).SelectMany(i => b.GetBatch(1, i)).ToList();
        Assert.Equal(items, e0.Order());
        Assert.Equal(items, e1.Order());
        Assert.NotEqual(e0, e1);
        Assert.Single(b.GetBatch(0, 2));
        Assert.Equal(e0, Enumerable.Range(0, 3).SelectMany(i => new ShuffledBatches<int>(items, 3, seed: 1).GetBatch(0, i)));
    }
}
