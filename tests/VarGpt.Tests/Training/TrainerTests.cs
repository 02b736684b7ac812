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
    internal sealed class Mlp : nn.Module<Tensor, Tensor>
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

    internal sealed class Regression(Mlp model, Func<int, bool>? onCall = null, float? poisonAt = null) : ITrainingObjective<IReadOnlyList<(float[] X, float Y)>>
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

    internal static List<(float[] X, float Y)> Data(int n)
    {
        var rng = new VarGpt.Training.Data.SplitMix64(7);
        float U() => (float)(rng.Next() % 2000) / 1000f - 1f;
        return Enumerable.Range(0, n).Select(_ => { var x = new[] { U(), U(), U(), U() }; return (x, x[0] * 2 - x[1] * x[2] + 0.5f * x[3]); }).ToList();
    }

    internal static TrainerOptions Options(string dir, int saveSteps = 1000) => new()
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
    public void A_failed_save_never_moves_the_latest_pointer_and_leaves_no_temporary_folder()
    {
        using var dir = TestPaths.Temp();
        TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 5 }, tmp => File.WriteAllText(Path.Combine(tmp, "x"), "ok"));
        var e = Assert.Throws<OutputWriteException>(() => TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 10 }, tmp =>
        {
            File.WriteAllText(Path.Combine(tmp, "x"), "half");
            throw new IOException("No space left on device : '" + Path.Combine(tmp, "x") + "'", 28);
        }));
        Assert.Equal($"cannot write {Path.Combine(dir.Path, "checkpoint-10")}: no space left on device (the disk is full)", e.Message);
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-5"), TrainerCheckpoint.Latest(dir.Path));
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "checkpoint-10")));
        // issue 18 finding 4: the temporary folder of the failed save is gone (it kept a full disk full)
        Assert.Equal(["checkpoint-5", "latest"], Directory.EnumerateFileSystemEntries(dir.Path).Select(p => Path.GetFileName(p)).Order().ToArray());
        TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 10 }, tmp => { });
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-10"), TrainerCheckpoint.Latest(dir.Path));
    }

    /// <summary>A process id that no process has now (a child that has exited).</summary>
    internal static int DeadPid()
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("true") { UseShellExecute = false })!;
        p.WaitForExit();
        return p.Id;
    }

    [Fact]
    public void The_start_up_sweep_removes_temporaries_of_dead_processes_and_puts_back_a_checkpoint_whose_swap_was_cut_short()
    {
        using var dir = TestPaths.Temp();
        int dead = DeadPid(), live = Environment.ProcessId;
        TrainerCheckpoint.Save(dir.Path, new TrainerState { GlobalStep = 2 }, tmp => File.WriteAllText(Path.Combine(tmp, "x"), "two"));
        // killed mid-swap of checkpoint-2 (old copy renamed aside, new one not yet in place)
        Directory.Move(Path.Combine(dir.Path, "checkpoint-2"), Path.Combine(dir.Path, $".checkpoint-2.old-{dead}-0123abcd"));
        Directory.CreateDirectory(Path.Combine(dir.Path, $".checkpoint-4.tmp-{dead}-89abcdef"));   // killed while writing checkpoint-4
        Directory.CreateDirectory(Path.Combine(dir.Path, $".tmp-checkpoint-6-{dead}"));            // the spelling before issue 18
        File.WriteAllText(Path.Combine(dir.Path, $"model.safetensors.tmp-{dead}-0badf00d"), "partial");
        File.WriteAllText(Path.Combine(dir.Path, $".trainer_log.jsonl.tmp-{live}-00000000"), "someone is writing this");
        File.WriteAllText(Path.Combine(dir.Path, "notes.tmp-1.txt"), "the user's");
        var done = TrainerCheckpoint.Sweep(dir.Path);
        Assert.Equal(4, done.Count);
        Assert.Equal([".trainer_log.jsonl.tmp-" + live + "-00000000", "checkpoint-2", "latest", "notes.tmp-1.txt"],
            Directory.EnumerateFileSystemEntries(dir.Path).Select(p => Path.GetFileName(p)).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal("two", File.ReadAllText(Path.Combine(TrainerCheckpoint.Latest(dir.Path)!, "x")));
    }

    [Fact]
    public void Cancelling_saves_a_checkpoint_at_the_step_boundary_and_the_resumed_run_logs_what_an_uninterrupted_one_does()
    {
        // issue 18 finding 5: Ctrl-C lost up to save_steps - 1 steps; now the step in flight finishes and is saved
        TorchTestSetup.Init();
        var data = Data(10);
        using var full = TestPaths.Temp();
        using var m1 = new Mlp(1);
        TrainingResult r1;
        using (var t1 = new Trainer<IReadOnlyList<(float[], float)>>(m1, new Regression(m1), new ShuffledBatches<(float[], float)>(data, 2, seed: 5), Options(full.Path)))
            r1 = t1.Train(cancel: TestContext.Current.CancellationToken);

        using var part = TestPaths.Temp();
        using var cts = new CancellationTokenSource();
        using var m2 = new Mlp(1);
        TrainingResult r2a;
        // cancelled during the 3rd update (micro-batch 5): no save_steps checkpoint before, logging every 2 steps
        using (var t2 = new Trainer<IReadOnlyList<(float[], float)>>(m2, new Regression(m2, c => { if (c == 5) cts.Cancel(); return true; }),
            new ShuffledBatches<(float[], float)>(data, 2, seed: 5), Options(part.Path)))
            r2a = t2.Train(resumeFrom: "latest", cancel: cts.Token);
        Assert.False(r2a.Completed);
        Assert.Equal(3, r2a.GlobalStep);
        Assert.Equal(Path.Combine(part.Path, "checkpoint-3"), r2a.LastCheckpoint);
        Assert.Equal("checkpoint-3", File.ReadAllText(Path.Combine(part.Path, "latest")).Trim());

        torch.manual_seed(12345);
        using var m3 = new Mlp(99);
        TrainingResult r2b;
        using (var t3 = new Trainer<IReadOnlyList<(float[], float)>>(m3, new Regression(m3), new ShuffledBatches<(float[], float)>(data, 2, seed: 5), Options(part.Path)))
            r2b = t3.Train(resumeFrom: "latest", cancel: TestContext.Current.CancellationToken);
        Assert.Equal(r1.Steps.Select(s => s.Loss), r2b.Steps.Select(s => s.Loss));
        foreach (var ((n1, p1), (_, p3)) in m1.named_parameters().Zip(m3.named_parameters()))
            Assert.True(p1.equal(p3).all().item<bool>(), $"{n1} differs after resume");
        // the logged mean losses cover the same steps (a window that restarted at step 3 would give another mean at step 4)
        static double[] Logged(string dir) => File.ReadAllLines(Path.Combine(dir, TrainerLog.JsonlFile))
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble()).ToArray();
        Assert.Equal(Logged(full.Path), Logged(part.Path));
    }

    [Fact]
    public void A_run_that_starts_from_scratch_drops_the_log_lines_of_an_abandoned_attempt()
    {
        // issue 18 finding 5: a kill before the first checkpoint left stale lines ([10, 10, 20])
        TorchTestSetup.Init();
        using var dir = TestPaths.Temp();
        File.WriteAllText(Path.Combine(dir.Path, TrainerLog.JsonlFile), "{\"current_steps\": 2, \"loss\": 9.9}\n{\"current_steps\": 4, \"lo");
        using var m = new Mlp(1);
        using (var t = new Trainer<IReadOnlyList<(float[], float)>>(m, new Regression(m), new ShuffledBatches<(float[], float)>(Data(10), 2, seed: 5), Options(dir.Path)))
            t.Train(resumeFrom: "latest", cancel: TestContext.Current.CancellationToken);
        var steps = File.ReadAllLines(Path.Combine(dir.Path, TrainerLog.JsonlFile)).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("current_steps").GetInt32());
        Assert.Equal([2, 4, 6, 8, 9], steps);
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
