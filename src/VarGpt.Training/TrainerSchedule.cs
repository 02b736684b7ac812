namespace VarGpt.Training;

/// <summary>`lr_scheduler_type`: the transformers schedules this port implements.</summary>
public enum LrScheduler { Cosine, Linear, Constant, ConstantWithWarmup }

/// <summary>
/// Learning-rate multipliers with the semantics of transformers' schedulers (optimization.py,
/// get_scheduler): LambdaLR over optimizer steps, so update k (0-based) uses <c>base_lr * Lambda(k)</c> — with warmup
/// the very first update runs at lr 0, exactly as in HF. Warmup steps = warmup_steps if > 0 else
/// ceil(warmup_ratio * total_steps) (TrainingArguments.get_warmup_steps).
/// </summary>
public sealed record TrainerSchedule(LrScheduler Type, int TotalSteps, int WarmupSteps)
{
    public static TrainerSchedule Create(LrScheduler type, int totalSteps, double warmupRatio, int warmupSteps = 0)
    {
        if (!Enum.IsDefined(type)) throw new ArgumentOutOfRangeException(nameof(type), type, "unknown lr_scheduler_type");
        if (totalSteps <= 0) throw new ArgumentException($"total steps must be > 0, got {totalSteps}");
        int warm = warmupSteps > 0 ? warmupSteps : (int)Math.Ceiling(totalSteps * warmupRatio);
        return new TrainerSchedule(type, totalSteps, warm);
    }

    /// <summary>Multiplier of the base lr for optimizer step <paramref name="step"/> (0-based).</summary>
    public double Lambda(int step) => Type switch
    {
        // get_constant_schedule: ignores warmup.
        LrScheduler.Constant => 1.0,
        LrScheduler.ConstantWithWarmup => step < WarmupSteps ? (double)step / Math.Max(1, WarmupSteps) : 1.0,
        // get_linear_schedule_with_warmup
        LrScheduler.Linear => step < WarmupSteps
            ? (double)step / Math.Max(1, WarmupSteps)
            : Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps)),
        // get_cosine_schedule_with_warmup, num_cycles = 0.5
        LrScheduler.Cosine => step < WarmupSteps
            ? (double)step / Math.Max(1, WarmupSteps)
            : Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 2.0 * 0.5 * ((double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps))))),
        _ => throw new InvalidOperationException(Type.ToString()),
    };
}
