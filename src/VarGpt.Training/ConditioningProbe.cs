using System.Globalization;
using System.Text;
using VarGpt.Model;
using VarGpt.Training.Data;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>Teacher-forced bit prediction of one scale: with each target's own prompt and with another record's prompt.</summary>
/// <param name="Scale">index in the schedule (0 = the 1×1 scale)</param>
/// <param name="Tokens">tokens of the scale (h·w)</param>
/// <param name="Accuracy">share of bits whose argmax equals the clean label, own prompt</param>
/// <param name="AccuracyOtherPrompt">the same bits, the target paired with another record's prompt</param>
/// <param name="CrossEntropy">mean bit CE (nats), own prompt</param>
/// <param name="CrossEntropyOtherPrompt">mean bit CE, another record's prompt</param>
public sealed record ScaleConditioning(int Scale, int Tokens, double Accuracy, double AccuracyOtherPrompt, double CrossEntropy, double CrossEntropyOtherPrompt)
{
    /// <summary>How much the prompt helps: CE with another prompt minus CE with the own one (0 = the text is ignored).</summary>
    public double Gap => CrossEntropyOtherPrompt - CrossEntropy;
}

/// <summary>Result of <see cref="ConditioningProbe.Run"/> over a set of generation records.</summary>
public sealed record ConditioningProbeResult(int Records, IReadOnlyList<ScaleConditioning> Scales)
{
    public double CrossEntropy => Weighted(s => s.CrossEntropy);
    public double CrossEntropyOtherPrompt => Weighted(s => s.CrossEntropyOtherPrompt);
    public double Accuracy => Weighted(s => s.Accuracy);
    public double AccuracyOtherPrompt => Weighted(s => s.AccuracyOtherPrompt);

    double Weighted(Func<ScaleConditioning, double> f) => Scales.Sum(s => f(s) * s.Tokens) / Scales.Sum(s => s.Tokens);

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"teacher-forced bits of {Records} targets: own prompt vs another record's prompt\n");
        sb.Append("scale  tokens  bit acc own / other   bit CE own / other   gap (nats)\n");
        foreach (var s in Scales)
            sb.Append(CultureInfo.InvariantCulture, $"{s.Scale,5}  {s.Tokens,6}  {s.Accuracy,7:P1} / {s.AccuracyOtherPrompt,-7:P1}   {s.CrossEntropy,6:F4} / {s.CrossEntropyOtherPrompt,-6:F4}    {s.Gap,8:F4}\n");
        sb.Append(CultureInfo.InvariantCulture, $"  all  {Scales.Sum(s => s.Tokens),6}  {Accuracy,7:P1} / {AccuracyOtherPrompt,-7:P1}   {CrossEntropy,6:F4} / {CrossEntropyOtherPrompt,-6:F4}    {CrossEntropyOtherPrompt - CrossEntropy,8:F4}");
        return sb.ToString();
    }
}

/// <summary>
/// Does the image generator use the text? For each generation record, the training forward (clean teacher forcing:
/// no bit-flip noise, eval mode so no cond dropout) scores the target's bits per scale twice: after its own prompt, and
/// after the prompt of another record (record i's target with record (i + n/2) mod n's prompt). A generator that reads
/// the prompt predicts its own target better; equal figures mean it draws the average image whatever it is asked.
/// Model-agnostic: the same forward and labels as <see cref="VargptSftObjective"/>, so it probes any VARGPT.
/// </summary>
public static class ConditioningProbe
{
    public static ConditioningProbeResult Run(VargptForConditionalGeneration model, VargptCollator collator, IReadOnlyList<TrainingRecord> records, int batchSize = 8)
    {
        var gen = records.Where(r => r.Kind == RecordKind.Generation && r.Images.Count == 1).ToList();
        if (gen.Count < 2) throw new ArgumentException($"the conditioning probe needs at least 2 text-to-image records (one <image_gen> target each), got {gen.Count}");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), "must be > 0");
        int n = gen.Count;
        // record i's prompt and system with record j's target: the same targets are scored both ways
        var other = gen.Select((r, i) => gen[(i + n / 2) % n] with { Images = r.Images }).ToList();
        bool wasTraining = model.training;
        model.eval();
        try
        {
            var own = Score(model, collator, gen, batchSize);
            var swapped = Score(model, collator, other, batchSize);
            var scales = own.Select((s, k) => new ScaleConditioning(k, s.Tokens, s.Correct / s.Bits, swapped[k].Correct / swapped[k].Bits,
                s.Ce / s.Bits, swapped[k].Ce / swapped[k].Bits)).ToList();
            return new ConditioningProbeResult(n, scales);
        }
        finally { model.train(wasTraining); }
    }

    sealed record Tally(int Tokens) { public double Correct, Ce, Bits; }

    static List<Tally> Score(VargptForConditionalGeneration model, VargptCollator collator, IReadOnlyList<TrainingRecord> records, int batchSize)
    {
        List<Tally>? tallies = null;
        var items = records.Select(r => new EncodedItem(collator.EncodeSft(r))).ToList();
        using var _ = no_grad();
        for (int start = 0; start < items.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            using var batch = collator.Collate(items.Skip(start).Take(batchSize).ToList(), 0, start / batchSize);
            using var output = VargptTraining.Forward(model, batch.Inputs, new VargptTrainingOptions { NoiseApplyStrength = 0 });
            var schedule = output.Schedule!;
            tallies ??= schedule.Scales.Select(s => new Tally(s.Tokens)).ToList();
            var (g, l) = (output.GenLogits!.shape[0], output.GenLogits.shape[1]);
            var labels = output.ImageGenLabels!.to(ScalarType.Int64);                                       // [G, L, d]
            var picked = VargptTrainingLoss.BitLogProbs(output.GenLogits, labels);                            // [G, L, d]
            var right = output.GenLogits.to(ScalarType.Float32).reshape(g, l, labels.shape[^1], 2).argmax(-1).eq(labels);
            int offset = 0;
            foreach (var t in tallies)
            {
                using var ce = picked.narrow(1, offset, t.Tokens).sum();
                using var ok = right.narrow(1, offset, t.Tokens).sum();
                t.Ce -= ce.item<float>();
                t.Correct += ok.item<long>();
                t.Bits += (double)g * t.Tokens * labels.shape[^1];
                offset += t.Tokens;
            }
        }
        return tallies!;
    }
}
