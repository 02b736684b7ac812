using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.LanguageModel;

public class LogitsProcessorsTests
{
    static float[] F(Tensor t) => t.data<float>().ToArray();

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_scores_of_seen_tokens()
    {
        TorchTestSetup.Init();
        using var scores = tensor(new float[] { 2f, -2f, 1f, 0.5f, 3f, -1f }, [2, 3]);
        using var ids = tensor(new long[] { 0, 1, 1, 2, 2, 2 }, [2, 3]);
        using var r = LogitsProcessors.RepetitionPenalty(ids, scores, 2.0);
        Assert.Equal(new[] { 1f, -4f, 1f, 0.5f, 3f, -2f }, F(r));
        Assert.Equal(new[] { 2f, -2f, 1f, 0.5f, 3f, -1f }, F(scores));   // not in place
    }

    [Fact]
    public void Top_k_keeps_the_k_largest_and_ties_with_the_kth()
    {
        TorchTestSetup.Init();
        using var scores = tensor(new float[] { 1f, 5f, 3f, 3f, 0f }, [1, 5]);
        using var r = LogitsProcessors.TopK(scores, 2);
        Assert.Equal(new[] { float.NegativeInfinity, 5f, 3f, 3f, float.NegativeInfinity }, F(r));
        using var all = LogitsProcessors.TopK(scores, 50);                 // k above the vocabulary keeps everything
        Assert.Equal(F(scores), F(all));
    }

    [Fact]
    public void Top_p_removes_the_tail_whose_cumulative_probability_is_at_most_1_minus_p()
    {
        TorchTestSetup.Init();
        using var scores = tensor(new[] { 0.5f, 0.3f, 0.15f, 0.05f }, [1, 4]).log();
        using var r = LogitsProcessors.TopP(scores, 0.8);                    // ascending cumsum 0.05, 0.2, 0.5, 1.0
        var v = F(r);
        Assert.True(float.IsNegativeInfinity(v[2]) && float.IsNegativeInfinity(v[3]));
        Assert.False(float.IsInfinity(v[0]) || float.IsInfinity(v[1]));
        using var one = LogitsProcessors.TopP(scores, 0.0);                  // the largest token is always kept
        Assert.Equal(1, F(one).Count(x => !float.IsInfinity(x)));
        Assert.False(float.IsInfinity(F(one)[0]));
    }

    [Fact]
    public void Processors_run_in_transformers_order_and_warpers_only_when_sampling()
    {
        TorchTestSetup.Init();
        using var scores = tensor(new float[] { 4f, -2f, 1f, 2f }, [1, 4]);
        using var ids = tensor(new long[] { 0, 1 }, [1, 2]);
        var greedy = new GenerationConfig { RepetitionPenalty = 2, Temperature = 0.5, TopK = 1 };
        using var g = LogitsProcessors.Apply(greedy, ids, scores);
        Assert.Equal(new[] { 2f, -4f, 1f, 2f }, F(g));                     // penalty only
        var sample = greedy with { DoSample = true, TopK = 2 };
        using var s = LogitsProcessors.Apply(sample, ids, scores);
        // penalty -> [2,-4,1,2]; temperature 0.5 -> [4,-8,2,4]; top-2 keeps the two 4s
        Assert.Equal(new[] { 4f, float.NegativeInfinity, float.NegativeInfinity, 4f }, F(s));
    }
}
