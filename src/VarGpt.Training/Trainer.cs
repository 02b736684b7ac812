using System.Diagnostics;
using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>Loss of one micro-batch: a scalar with its graph attached, plus the number of tokens it covered (for tok/s).</summary>
public sealed record ObjectiveOutput(Tensor Loss, long Tokens = 0);

/// <summary>
/// "Compute the loss for this batch": the only model-specific piece of a training run. The SFT objective
/// (CE_text + 3·CE_bits, get_gen_loss_1_1) and the DPO objective (sigmoid DPO on image-bit log-probs vs a frozen
/// reference) implement it; the trainer owns backward, accumulation, clipping, stepping and checkpoints.
/// </summary>
public interface ITrainingObjective<in TBatch>
{
    ObjectiveOutput Compute(TBatch batch);
}

/// <summary>
/// Micro-batches addressed by (epoch, index) so a resumed run can jump straight to where it stopped and see exactly the
/// same batches. Any randomness in building a batch (crops, shuffles) must be a function of (epoch, index) and the seed.
/// </summary>
public interface ITrainingData<out TBatch>
{
    int BatchesPerEpoch { get; }
    TBatch GetBatch(int epoch, int index);
}

/// <summary>
/// Items shuffled per epoch with a seeded SplitMix64 permutation (stable across .NET versions) and cut into batches
/// of <c>batchSize</c>; the last batch may be smaller (drop_last = false, as the HF sampler).
/// Not bit-identical to torch's RandomSampler order — no port can reproduce that stream.
/// </summary>
public sealed class ShuffledBatches<T>(IReadOnlyList<T> items, int batchSize, int seed, bool shuffle = true) : ITrainingData<IReadOnlyList<T>>
{
    public int BatchesPerEpoch { get; } = items.Count == 0 ? 0 : (items.Count + batchSize - 1) / batchSize;
    int[]? _perm;
    int _permEpoch = -1;

    public IReadOnlyList<T> GetBatch(int epoch, int index)
    {
        if (index < 0 || index >= BatchesPerEpoch) throw new ArgumentOutOfRangeException(nameof(index));
        if (_permEpoch != epoch) { _perm = Permutation(items.Count, seed, epoch, shuffle); _permEpoch = epoch; }
        int start = index * batchSize, end = Math.Min(start + batchSize, items.Count);
        var batch = new T[end - start];
        for (int i = start; i < end; i++) batch[i - start] = items[_perm![i]];
        return batch;
    }

    public static int[] Permutation(int n, int seed, int epoch, bool shuffle = true)
    {
        var p = Enumerable.Range(0, n).ToArray();
        if (!shuffle) return p;
        var rng = new Data.SplitMix64(((ulong)(uint)seed << 32) ^ (ulong)(uint)epoch ^ 0xA5A5_0000_0000_0000UL);
        for (int i = n - 1; i > 0; i--) { int j = (int)rng.NextBelow((ulong)(i + 1)); (p[i], p[j]) = (p[j], p[i]); }
        return p;
    }
}

/// <summary>Trainer settings (HF TrainingArguments semantics); defaults = the training yaml's (<see cref="TrainingConfig.Defaults"/>); build from a yaml with <see cref="FromConfig"/>.</summary>
public sealed record TrainerOptions
{
    static readonly TrainingConfig D = TrainingConfig.Defaults;

    public required string OutputDir { get; init; }
    public double LearningRate { get; init; } = D.LearningRate;
    public LrScheduler LrSchedulerType { get; init; } = D.LrSchedulerType;
    public double WarmupRatio { get; init; } = D.WarmupRatio;
    public int WarmupSteps { get; init; } = D.WarmupSteps;
    public double NumTrainEpochs { get; init; } = D.NumTrainEpochs;
    public int MaxSteps { get; init; } = D.MaxSteps;
    public int GradientAccumulationSteps { get; init; } = D.GradientAccumulationSteps;
    /// <summary>Global-norm clipping threshold; 0 disables clipping (the norm is still computed and logged).</summary>
    public double MaxGradNorm { get; init; } = D.MaxGradNorm;
    public double WeightDecay { get; init; } = D.WeightDecay;
    public double AdamBeta1 { get; init; } = D.AdamBeta1;
    public double AdamBeta2 { get; init; } = D.AdamBeta2;
    public double AdamEpsilon { get; init; } = D.AdamEpsilon;
    public int LoggingSteps { get; init; } = D.LoggingSteps;
    public int SaveSteps { get; init; } = D.SaveSteps;
    public int? SaveTotalLimit { get; init; } = D.SaveTotalLimit;
    public int Seed { get; init; } = D.Seed;
    /// <summary>Folder of the starting checkpoint: its config.json is copied (torch_dtype updated) and, on the final export, its tokenizer/processor files.</summary>
    public string? BaseModelDir { get; init; }
    /// <summary>Write model.safetensors into each checkpoint (official names; for inference from a checkpoint). Resume never needs it.</summary>
    public bool SaveModelWeights { get; init; } = true;
    /// <summary>The weights to export under official names (default: the model's state_dict; LoRA passes the merged view).</summary>
    public Func<IEnumerable<KeyValuePair<string, Tensor>>>? ExportWeights { get; init; }
    /// <summary>Extra generators (e.g. an objective's own) whose state is checkpointed with the torch CPU generator.</summary>
    public IReadOnlyDictionary<string, Generator> Generators { get; init; } = new Dictionary<string, Generator>();
    public TextWriter? Output { get; init; }
    public bool? IsTerminal { get; init; }

    public static TrainerOptions FromConfig(TrainingConfig c) => new()
    {
        OutputDir = c.OutputDir, LearningRate = c.LearningRate, LrSchedulerType = c.LrSchedulerType, WarmupRatio = c.WarmupRatio,
        WarmupSteps = c.WarmupSteps, NumTrainEpochs = c.NumTrainEpochs, MaxSteps = c.MaxSteps,
        GradientAccumulationSteps = c.GradientAccumulationSteps, MaxGradNorm = c.MaxGradNorm, WeightDecay = c.WeightDecay,
        AdamBeta1 = c.AdamBeta1, AdamBeta2 = c.AdamBeta2, AdamEpsilon = c.AdamEpsilon, LoggingSteps = c.LoggingSteps,
        SaveSteps = c.SaveSteps, SaveTotalLimit = c.SaveTotalLimit, Seed = c.Seed,
        BaseModelDir = Directory.Exists(c.ModelNameOrPath) ? c.ModelNameOrPath : null,
    };
}

public sealed record TrainingResult(int GlobalStep, int TotalSteps, IReadOnlyList<TrainerStepLog> Steps, string? LastCheckpoint, bool Completed);

/// <summary>A non-finite loss or gradient norm stopped training; nothing was written after the last good checkpoint.</summary>
public sealed class TrainingDivergedException(string message, int step, string? lastGoodCheckpoint) : Exception(message)
{
    public int Step { get; } = step;
    public string? LastGoodCheckpoint { get; } = lastGoodCheckpoint;
}

/// <summary>
/// Model-agnostic training loop (HF Trainer semantics where they matter): AdamW with decoupled weight decay (no decay for
/// names containing "bias" and for LayerNorm parameters, as get_decay_parameter_names), LR schedule per optimizer step,
/// gradient accumulation (each micro-batch loss scaled by 1/GA, also in a partial last group of an epoch, as accelerate
/// does), global-norm clipping, atomic resumable checkpoints. Updates per epoch = ceil(batches / GA) and total steps =
/// max_steps or ceil(epochs · updates per epoch); HF uses floor(batches / GA) for the total, which only differs when
/// batches is not a multiple of GA (then HF ends before the last epoch is complete).
/// <para>Mixed precision: TorchSharp has no autocast, so when trainable parameters are bf16/fp16 the trainer keeps an
/// fp32 master copy of each, converts the gradients into it after backward, clips and steps the fp32 copy and writes
/// it back (rounded) into the model. AdamW moments are fp32. The forward/backward run in the model dtype.</para>
/// </summary>
public sealed class Trainer<TBatch> : IDisposable
{
    sealed class Slot
    {
        public required string Name;
        public required Parameter Param;
        public required Parameter Master;  // == Param when Param is fp32
        public bool Shadow => !ReferenceEquals(Param, Master);
    }

    readonly nn.Module _model;
    readonly ITrainingObjective<TBatch> _objective;
    readonly ITrainingData<TBatch> _data;
    readonly TrainerOptions _o;
    readonly List<Slot> _slots = [];
    readonly AdamW _opt;
    readonly List<(string Name, AdamW.State State)> _states = [];
    readonly TrainerLog _log;
    public TrainerSchedule Schedule { get; }
    public int TotalSteps => Schedule.TotalSteps;
    public int GroupsPerEpoch { get; }

    public Trainer(nn.Module model, ITrainingObjective<TBatch> objective, ITrainingData<TBatch> data, TrainerOptions options)
    {
        _model = model; _objective = objective; _data = data; _o = options;
        if (data.BatchesPerEpoch <= 0) throw new ArgumentException("the training data has no batches");
        if (options.GradientAccumulationSteps <= 0) throw new ArgumentException("gradient_accumulation_steps must be > 0");
        GroupsPerEpoch = (data.BatchesPerEpoch + options.GradientAccumulationSteps - 1) / options.GradientAccumulationSteps;
        int total = options.MaxSteps > 0 ? options.MaxSteps : (int)Math.Ceiling(options.NumTrainEpochs * GroupsPerEpoch);
        Schedule = TrainerSchedule.Create(options.LrSchedulerType, total, options.WarmupRatio, options.WarmupSteps);

        var noDecay = NoDecayNames(model);
        foreach (var (name, p) in model.named_parameters())
        {
            if (!p.requires_grad) continue;
            Parameter master = p;
            if (p.dtype != ScalarType.Float32)
            {
                if (!torch.is_floating_point(p)) throw new ArgumentException($"trainable parameter '{name}' has non-float dtype {p.dtype}");
                using var _ = torch.no_grad();
                master = new Parameter(p.detach().to(ScalarType.Float32).clone(), true);
            }
            _slots.Add(new Slot { Name = name, Param = p, Master = master });
        }
        if (_slots.Count == 0) throw new ArgumentException("the model has no trainable parameters (check the freezing configuration)");
        var decay = _slots.Where(s => !noDecay.Contains(s.Name)).ToList();
        var nodecay = _slots.Where(s => noDecay.Contains(s.Name)).ToList();
        var groups = new List<AdamW.ParamGroup>();
        foreach (var (list, wd) in new[] { (decay, options.WeightDecay), (nodecay, 0.0) })
            if (list.Count > 0)
                groups.Add(new AdamW.ParamGroup(list.Select(s => s.Master), options.LearningRate, options.AdamBeta1, options.AdamBeta2, options.AdamEpsilon, wd, false, false));
        _opt = new AdamW(groups, options.LearningRate, options.AdamBeta1, options.AdamBeta2, options.AdamEpsilon, options.WeightDecay);
        var order = decay.Concat(nodecay).ToList();
        var st = _opt.state_dict().State;
        for (int i = 0; i < order.Count; i++) _states.Add((order[i].Name, (AdamW.State)st[i]));
        _log = new TrainerLog(options.OutputDir, options.Output, options.IsTerminal);
    }

    /// <summary>HF get_decay_parameter_names: no decay for parameters of LayerNorm modules and names containing "bias".</summary>
    static HashSet<string> NoDecayNames(nn.Module model)
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (mname, m) in model.named_modules())
            if (m is LayerNorm)
                foreach (var (pname, _) in m.named_parameters()) set.Add(mname.Length == 0 ? pname : $"{mname}.{pname}");
        foreach (var (name, _) in model.named_parameters()) if (name.Contains("bias", StringComparison.Ordinal)) set.Add(name);
        return set;
    }

    public IReadOnlyList<string> TrainableNames => _slots.Select(s => s.Name).ToList();

    /// <summary>
    /// Runs until the schedule's last step, <paramref name="cancel"/> (checked after every update; nothing is saved on
    /// cancel beyond the regular save_steps checkpoints), or a non-finite loss (<see cref="TrainingDivergedException"/>).
    /// <paramref name="resumeFrom"/>: a checkpoint folder, or "latest" for output_dir's latest pointer.
    /// </summary>
    public TrainingResult Train(string? resumeFrom = null, CancellationToken cancel = default)
    {
        var history = new List<TrainerStepLog>();
        int step = 0, epoch = 0, batch = 0;
        double elapsedBefore = 0;
        long tokensSeen = 0;
        string? lastCheckpoint = null;
        if (resumeFrom != null)
        {
            var dir = resumeFrom == "latest" ? TrainerCheckpoint.Latest(_o.OutputDir) : resumeFrom;
            if (dir != null)
            {
                var s = Resume(dir);
                (step, epoch, batch, elapsedBefore, tokensSeen) = (s.GlobalStep, s.Epoch, s.BatchInEpoch, s.ElapsedSeconds, s.TokensSeen);
                history.AddRange(s.LogHistory);
                lastCheckpoint = dir;
                _log.TruncateJsonlAfter(step);
                _log.Line($"resumed from {dir} at step {step}/{TotalSteps} (epoch {epoch}, batch {batch})");
            }
            else _log.Line($"no checkpoint in {_o.OutputDir}; starting from scratch");
        }
        if (resumeFrom == null || lastCheckpoint == null) torch.manual_seed(_o.Seed);

        _model.train();
        int ga = _o.GradientAccumulationSteps, perEpoch = _data.BatchesPerEpoch;
        var clock = Stopwatch.StartNew();
        double lastLogTime = 0; long lastLogTokens = 0; int lastLogStep = step;
        while (step < TotalSteps && !cancel.IsCancellationRequested)
        {
            if (batch >= perEpoch) { epoch++; batch = 0; }
            int end = Math.Min(batch + ga, perEpoch);
            ZeroGrads();
            double lossSum = 0; long tokens = 0; int n = 0;
            for (int i = batch; i < end; i++)
            {
                using var scope = torch.NewDisposeScope();
                var output = _objective.Compute(_data.GetBatch(epoch, i));
                double lv;
                using (var d = output.Loss.detach().to(ScalarType.Float64)) lv = d.item<double>();
                if (!double.IsFinite(lv)) throw Diverged(step + 1, $"loss is {lv} at step {step + 1} (epoch {epoch}, micro-batch {i})", lastCheckpoint);
                output.Loss.div(ga).backward();
                lossSum += lv; tokens += output.Tokens; n++;
            }
            double gradNorm = ApplyUpdate(step);
            if (!double.IsFinite(gradNorm)) throw Diverged(step + 1, $"gradient norm is {gradNorm} at step {step + 1} (epoch {epoch}); the update was not applied", lastCheckpoint);
            // (the update is skipped above: ApplyUpdate checks the norm before stepping)
            step++; batch = end; tokensSeen += tokens;
            double lr = _o.LearningRate * Schedule.Lambda(step - 1);
            double epochF = epoch + (double)batch / perEpoch;
            history.Add(new TrainerStepLog(step, Math.Round(epochF, 6), lossSum / n, lr, gradNorm, tokens));

            double now = clock.Elapsed.TotalSeconds;
            if (step % _o.LoggingSteps == 0 || step == TotalSteps)
            {
                var window = history.Skip(history.Count - (step - lastLogStep)).ToList();
                double meanLoss = window.Average(h => h.Loss);
                double tps = (tokensSeen - lastLogTokens) / Math.Max(1e-9, now - lastLogTime);
                var line = TrainerLog.Progress(step, TotalSteps, epochF, meanLoss, lr, gradNorm, tps, elapsedBefore + now);
                _log.Line(line);
                _log.AppendJsonl(step, TotalSteps, epochF, meanLoss, lr, gradNorm, tps, elapsedBefore + now);
                (lastLogTime, lastLogTokens, lastLogStep) = (now, tokensSeen, step);
            }
            else _log.Status(TrainerLog.Progress(step, TotalSteps, epochF, lossSum / n, lr, gradNorm, 0, elapsedBefore + now));

            if (step % _o.SaveSteps == 0)
                lastCheckpoint = SaveCheckpoint(new TrainerState
                {
                    GlobalStep = step, Epoch = epoch, BatchInEpoch = batch, TotalSteps = TotalSteps, Seed = _o.Seed,
                    ElapsedSeconds = elapsedBefore + now, TokensSeen = tokensSeen, TrainableNames = TrainableNames.ToList(), LogHistory = history.ToList(),
                });
        }
        bool completed = step >= TotalSteps;
        if (history.Count > 0) TrainerLog.PlotLoss(Path.Combine(_o.OutputDir, TrainerLog.PlotFile), history.Select(h => (h.Step, h.Loss)).ToList());
        if (completed) _log.Line($"training finished: {step} steps; last checkpoint: {lastCheckpoint ?? "(none)"}");
        else _log.Line($"training stopped at step {step}/{TotalSteps}; last checkpoint: {lastCheckpoint ?? "(none)"}");
        return new TrainingResult(step, TotalSteps, history, lastCheckpoint, completed);
    }

    TrainingDivergedException Diverged(int step, string what, string? lastCheckpoint)
    {
        string msg = $"training stopped: {what}. " + (lastCheckpoint != null
            ? $"The last good checkpoint is {lastCheckpoint} (left untouched); resume from it with a lower learning_rate or check the data."
            : "No checkpoint had been saved yet.");
        _log.Line(msg);
        return new TrainingDivergedException(msg, step, lastCheckpoint);
    }

    void ZeroGrads()
    {
        foreach (var s in _slots)
        {
            s.Param.grad = null;
            if (s.Shadow) s.Master.grad = null;
        }
    }

    /// <summary>Copies grads to the fp32 masters, clips, steps AdamW at the scheduled lr, writes the masters back. Returns the pre-clip global norm.</summary>
    double ApplyUpdate(int step)
    {
        using var scope = torch.NewDisposeScope();
        using (torch.no_grad())
            foreach (var s in _slots.Where(s => s.Shadow))
                if (s.Param.grad is { } g)
                {
                    using var g32 = g.to(ScalarType.Float32);
                    s.Master.grad = g32;
                }
        var withGrad = _slots.Where(s => s.Master.grad is not null).Select(s => s.Master).ToList();
        double norm = withGrad.Count == 0 ? 0 : nn.utils.clip_grad_norm_(withGrad, _o.MaxGradNorm > 0 ? _o.MaxGradNorm : double.PositiveInfinity);
        if (!double.IsFinite(norm)) return norm;
        double lr = _o.LearningRate * Schedule.Lambda(step);
        foreach (var g in _opt.ParamGroups) g.LearningRate = lr;
        _opt.step();
        using (torch.no_grad())
            foreach (var s in _slots.Where(s => s.Shadow)) s.Param.copy_(s.Master);
        return norm;
    }

    string SaveCheckpoint(TrainerState state)
    {
        var dir = TrainerCheckpoint.Save(_o.OutputDir, state, tmp =>
        {
            if (_o.SaveModelWeights) ExportWeights(tmp);
            SafeTensorsWriter.Save(Path.Combine(tmp, TrainerCheckpoint.TrainableFile), _slots.Select(s => new KeyValuePair<string, Tensor>(s.Name, s.Master)));
            TrainerCheckpoint.SaveOptimizer(Path.Combine(tmp, TrainerCheckpoint.OptimizerFile), _states);
            var rng = new List<KeyValuePair<string, Tensor>> { new(TrainerCheckpoint.TorchRngKey, torch.get_rng_state()) };
            rng.AddRange(_o.Generators.Select(g => new KeyValuePair<string, Tensor>("generator." + g.Key, g.Value.get_state())));
            SafeTensorsWriter.Save(Path.Combine(tmp, TrainerCheckpoint.RngFile), rng);
            foreach (var t in rng) t.Value.Dispose();
        });
        if (_o.SaveTotalLimit is int limit) TrainerCheckpoint.Prune(_o.OutputDir, limit);
        TrainerLog.PlotLoss(Path.Combine(_o.OutputDir, TrainerLog.PlotFile), state.LogHistory.Select(h => (h.Step, h.Loss)).ToList());
        _log.Line($"saved {dir}");
        return dir;
    }

    /// <summary>Writes model.safetensors (official names, model dtype) + config.json into <paramref name="dir"/>.</summary>
    public void ExportWeights(string dir)
    {
        var weights = (_o.ExportWeights ?? (() => _model.state_dict()))().ToList();
        SafeTensorsWriter.Save(Path.Combine(dir, TrainerCheckpoint.ModelFile), weights);
        var dtype = weights.Select(w => w.Value.dtype).Where(d => d is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float64).GroupBy(d => d).OrderByDescending(g => g.Count()).Select(g => g.Key).FirstOrDefault(ScalarType.Float32);
        TrainerCheckpoint.WriteConfig(dir, _o.BaseModelDir, dtype);
    }

    /// <summary>The final model in output_dir: model.safetensors + config.json + the base folder's tokenizer/processor files.</summary>
    public void ExportModel(string dir)
    {
        Directory.CreateDirectory(dir);
        ExportWeights(dir);
        if (_o.BaseModelDir != null) TrainerCheckpoint.CopyDescriptiveFiles(_o.BaseModelDir, dir);
    }

    TrainerState Resume(string dir)
    {
        var state = TrainerCheckpoint.ReadState(dir);
        var names = TrainableNames;
        if (!state.TrainableNames.SequenceEqual(names))
        {
            var missing = state.TrainableNames.Except(names).Take(10);
            var extra = names.Except(state.TrainableNames).Take(10);
            throw new InvalidFileException($"{dir}: the checkpoint's trainable parameters differ from this run's (only in checkpoint: {string.Join(", ", missing)}; only in this run: {string.Join(", ", extra)}); use the same freezing/LoRA settings");
        }
        if (state.TotalSteps != TotalSteps)
            throw new InvalidFileException($"{dir}: the run had {state.TotalSteps} total steps, this configuration gives {TotalSteps}; resuming would change the learning-rate schedule");
        var trainable = Path.Combine(dir, TrainerCheckpoint.TrainableFile);
        using (var f = SafeTensorsFile.Open(trainable))
        using (torch.no_grad())
            foreach (var s in _slots)
            {
                if (!f.Tensors.ContainsKey(s.Name)) throw new InvalidFileException($"{trainable}: missing '{s.Name}'");
                using var t = f.Load(s.Name);
                TrainerCheckpoint.CopyExact(s.Master, t, trainable, s.Name);
                if (s.Shadow) s.Param.copy_(s.Master);
            }
        TrainerCheckpoint.LoadOptimizer(Path.Combine(dir, TrainerCheckpoint.OptimizerFile), _states);
        using (var r = SafeTensorsFile.Open(Path.Combine(dir, TrainerCheckpoint.RngFile)))
        {
            using (var t = r.Load(TrainerCheckpoint.TorchRngKey)) torch.set_rng_state(t);
            foreach (var (k, g) in _o.Generators)
            {
                var key = "generator." + k;
                if (!r.Tensors.ContainsKey(key)) throw new InvalidFileException($"{dir}: rng state has no generator '{k}'");
                using var t = r.Load(key);
                g.set_state(t);
            }
        }
        return state;
    }

    public void Dispose()
    {
        _opt.Dispose();
        foreach (var s in _slots.Where(s => s.Shadow)) s.Master.Dispose();
    }
}
