using VarGpt.Checkpoint;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.LanguageModel;

/// <summary>
/// The transformers 4.46 logits processors the VARGPT text path can use, applied in transformers' order:
/// repetition penalty (also in greedy mode), then, only when sampling, temperature, top-k and top-p.
/// scores are float32 [B, V]; inputIds [B, T] is the whole sequence so far (prompt, padding included).
/// </summary>
public static class LogitsProcessors
{
    public static Tensor Apply(GenerationConfig g, Tensor inputIds, Tensor scores)
    {
        using var scope = NewDisposeScope();
        var s = scores;
        if (g.RepetitionPenalty != 1.0) s = RepetitionPenalty(inputIds, s, g.RepetitionPenalty);
        if (g.DoSample)
        {
            if (g.Temperature != 1.0) s = Temperature(s, g.Temperature);
            if (g.TopK != 0) s = TopK(s, g.TopK);
            if (g.TopP < 1.0) s = TopP(s, g.TopP);
        }
        return (ReferenceEquals(s, scores) ? s.alias() : s).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The settings <see cref="Apply"/> reads: rows whose settings are equal can go through <see cref="Apply"/> (and one
    /// sampling op) together, row by row the same numbers as alone.
    /// </summary>
    public static (double RepetitionPenalty, bool DoSample, double Temperature, int TopK, double TopP) Settings(GenerationConfig g) =>
        g.DoSample ? (g.RepetitionPenalty, true, g.Temperature, g.TopK, g.TopP) : (g.RepetitionPenalty, false, 1.0, 0, 1.0);

    /// <summary>RepetitionPenaltyLogitsProcessor: every token id present in inputIds gets score*p if negative, score/p otherwise.</summary>
    public static Tensor RepetitionPenalty(Tensor inputIds, Tensor scores, double penalty)
    {
        using var scope = NewDisposeScope();
        var score = scores.gather(1, inputIds);
        score = where(score.lt(0), score * penalty, score / penalty);
        return scores.scatter(1, inputIds, score).MoveToOuterDisposeScope();
    }

    /// <summary>TemperatureLogitsWarper: scores / temperature.</summary>
    public static Tensor Temperature(Tensor scores, double temperature) => scores / temperature;

    /// <summary>TopKLogitsWarper: scores below the k-th largest become -inf (ties with the k-th are kept).</summary>
    public static Tensor TopK(Tensor scores, int k, int minTokensToKeep = 1)
    {
        using var scope = NewDisposeScope();
        int kk = (int)Math.Min(Math.Max(k, minTokensToKeep), scores.shape[^1]);
        var kth = scores.topk(kk).values.narrow(-1, kk - 1, 1);
        return scores.masked_fill(scores.lt(kth), double.NegativeInfinity).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// TopPLogitsWarper: sort ascending, softmax, cumulative sum; tokens whose cumulative probability is &lt;= 1 - top_p
    /// are removed (-inf), the largest minTokensToKeep always kept.
    /// </summary>
    public static Tensor TopP(Tensor scores, double topP, int minTokensToKeep = 1)
    {
        using var scope = NewDisposeScope();
        var (sorted, indices) = scores.sort(-1, descending: false);
        var cumulative = sorted.softmax(-1).cumsum(-1);
        var remove = cumulative.le(1 - topP);
        remove.narrow(-1, remove.shape[^1] - minTokensToKeep, minTokensToKeep).fill_(false);
        var toRemove = remove.scatter(1, indices, remove);
        return scores.masked_fill(toRemove, double.NegativeInfinity).MoveToOuterDisposeScope();
    }
}
