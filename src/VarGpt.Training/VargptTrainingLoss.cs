using TorchSharp;
using VarGpt.Generation;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Training;

/// <summary>The SFT loss and its parts (scalars, float32; <see cref="ImageLoss"/> null without generation targets).</summary>
public sealed record SftLoss(Tensor Loss, Tensor TextLoss, Tensor? ImageLoss) : IDisposable
{
    public void Dispose()
    {
        Loss.Dispose();
        TextLoss.Dispose();
        ImageLoss?.Dispose();
    }
}

/// <summary>
/// Losses of the v1.1 training forward, as the official code computes them (quirks included, reference §7.4):
/// <see cref="Sft"/> = get_gen_loss_1_1; <see cref="ImageLogProbs"/> = LLaMA-Factory's get_batch_image_logps (DPO).
/// </summary>
public static class VargptTrainingLoss
{
    /// <summary>lambda_loss of get_gen_loss_1_1.</summary>
    public const double LambdaImage = 3.0;

    /// <summary>
    /// get_gen_loss_1_1. With generation targets: text CE against <paramref name="inputIds"/> themselves with only the
    /// &lt;|image_gen_pad|&gt; positions ignored (the dataset labels are not used: prompt, special and padding tokens
    /// are all supervised), plus 3.0 × the image bit loss. Without: text CE against <paramref name="labels"/> (the
    /// plain Qwen2-VL branch). <paramref name="genTextOnLabels"/> (not official, vargpt_gen_text_loss: labels): the
    /// text CE uses <paramref name="labels"/> (image_gen_pad positions ignored) in batches with generation targets too.
    /// </summary>
    /// <param name="bitLoss">vargpt_bit_loss: Official = <see cref="ImageBitLoss"/>, ScaleWeighted = <see cref="ScaleWeightedBitLoss"/>.</param>
    public static SftLoss Sft(VargptTrainingOutput output, Tensor inputIds, Tensor labels, int imageGenPadId, bool genTextOnLabels = false, BitLoss bitLoss = BitLoss.Official)
    {
        using var scope = NewDisposeScope();
        if (output.GenLogits is null)
        {
            var t = TextCrossEntropy(output.Logits, labels);
            return new SftLoss(t.MoveToOuterDisposeScope(), t.alias().MoveToOuterDisposeScope(), null);
        }
        var text = TextCrossEntropy(output.Logits, OtherLabels(genTextOnLabels ? labels : inputIds, imageGenPadId));
        var image = bitLoss == BitLoss.ScaleWeighted
            ? ScaleWeightedBitLoss(output.GenLogits, output.ImageGenLabels!, output.Schedule!)
            : ImageBitLoss(output.GenLogits, output.ImageGenLabels!, output.Schedule!);
        var loss = text + LambdaImage * image;
        return new SftLoss(loss.MoveToOuterDisposeScope(), text.MoveToOuterDisposeScope(), image.MoveToOuterDisposeScope());
    }

    /// <summary>other_labels of process_image_gen_tokens_vargpt_v1_1: input_ids with the &lt;|image_gen_pad|&gt; positions set to -100.</summary>
    public static Tensor OtherLabels(Tensor inputIds, int imageGenPadId)
    {
        using var ids = inputIds.to(ScalarType.Int64);
        using var isPad = ids.eq(imageGenPadId);
        return ids.masked_fill(isPad, -100);
    }

    /// <summary>Next-token CE (logits [B, T, V] in float32, position t predicts target t+1), mean over targets != -100.</summary>
    public static Tensor TextCrossEntropy(Tensor logits, Tensor targets)
    {
        using var scope = NewDisposeScope();
        long V = logits.shape[^1], T = logits.shape[1];
        var shiftLogits = logits.narrow(1, 0, T - 1).to(ScalarType.Float32).reshape(-1, V);
        var shiftLabels = targets.to(ScalarType.Int64, logits.device).narrow(1, 1, T - 1).reshape(-1);
        return nn.functional.cross_entropy(shiftLogits, shiftLabels).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Official lw (reweight_loss_by_scale = 1): sqrt(last area) / sqrt(scale area) for every token of a scale, float32,
    /// divided by its float32 sum → [1, L].
    /// </summary>
    public static Tensor ScaleWeights(ScaleSchedule schedule, Device? device = null)
    {
        var last = schedule.Scales[^1];
        double lastArea = Math.Sqrt((double)last.T * last.H * last.W);
        var lw = new List<float>();
        foreach (var s in schedule.Scales)
        {
            double w = lastArea / Math.Sqrt((double)s.T * s.H * s.W); // numpy float64, then torch.tensor(float32)
            lw.AddRange(Enumerable.Repeat((float)w, s.T * s.H * s.W));
        }
        using var t = tensor(lw.ToArray(), device: device).unsqueeze(0);
        using var sum = t.sum();
        return t / sum;
    }

    /// <summary>
    /// The image term of get_gen_loss_1_1 (use_bit_label, bitloss_type 'mean', reweight_loss_by_scale 1): a mean-reduced
    /// CE over all G×L×d bits (logits [G, L, 2d] viewed [G, L, d, 2] → [G, 2, L, d] vs labels [G, L, d]); the
    /// subsequent .mean(-1), ×lw, .sum(-1), .mean() act on that scalar, so the result is the bit mean times the float32
    /// sum of the normalised weights (the scale re-weighting is a no-op, as in the official code).
    /// </summary>
    public static Tensor ImageBitLoss(Tensor genLogits, Tensor labels, ScaleSchedule schedule)
    {
        using var scope = NewDisposeScope();
        var ce = BitCrossEntropyMean(genLogits, labels);
        var lw = ScaleWeights(schedule, genLogits.device);
        return ce.mean([-1]).mul(lw).sum([-1]).mean().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// vargpt_bit_loss: scale_weighted, the weighting get_gen_loss_1_1 means to apply (Infinity's reweight_loss_by_scale):
    /// per-bit CE unreduced [G, L, d] → mean over bits [G, L] → × <see cref="ScaleWeights"/> → sum over tokens → mean
    /// over images.
    /// </summary>
    public static Tensor ScaleWeightedBitLoss(Tensor genLogits, Tensor labels, ScaleSchedule schedule)
    {
        using var scope = NewDisposeScope();
        var ce = BitLogProbs(genLogits, labels).neg(); // [G, L, d]
        var lw = ScaleWeights(schedule, genLogits.device);
        if (lw.shape[1] != ce.shape[1]) throw new ArgumentException($"bit logits have {ce.shape[1]} tokens, the schedule '{schedule.Pn}' {lw.shape[1]}");
        return ce.mean([-1]).mul(lw).sum([-1]).mean().MoveToOuterDisposeScope();
    }

    /// <summary>CrossEntropyLoss() over the bits: logits [G, L, 2d] → [G, 2, L, d] (float32) vs labels [G, L, d]; scalar mean.</summary>
    public static Tensor BitCrossEntropyMean(Tensor genLogits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        var (g, l) = (genLogits.shape[0], genLogits.shape[1]);
        var x = genLogits.to(ScalarType.Float32).reshape(g, l, -1, 2).permute(0, 3, 1, 2);
        return nn.functional.cross_entropy(x, labels.to(ScalarType.Int64, genLogits.device)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// get_batch_image_logps (bitloss_type 'sum'): per sample Σ over tokens and bits of log_softmax(bit pair)[label] → [G]
    /// float32. Text tokens do not enter the DPO log-probabilities.
    /// </summary>
    public static Tensor ImageLogProbs(Tensor genLogits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        return BitLogProbs(genLogits, labels).sum([-1]).sum([-1]).MoveToOuterDisposeScope();
    }

    /// <summary>log_softmax(bit pair)[label] of every bit, float32 [G, L, d] (logits [G, L, 2d], labels [G, L, d]).</summary>
    public static Tensor BitLogProbs(Tensor genLogits, Tensor labels)
    {
        using var scope = NewDisposeScope();
        var (g, l) = (genLogits.shape[0], genLogits.shape[1]);
        long bits = labels.shape[^1];
        var logp = genLogits.to(ScalarType.Float32).reshape(g, l, bits, 2).permute(0, 3, 1, 2).log_softmax(1);
        return logp.gather(1, labels.to(ScalarType.Int64, genLogits.device).unsqueeze(1)).squeeze(1).MoveToOuterDisposeScope();
    }
}
