using VarGpt.LanguageModel;
using static TorchSharp.torch;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.LanguageModel;

/// <summary>
/// Qwen2VLModel.ForwardCfgPair (both CFG rows of an image scale in one pass) against the official two calls it
/// replaces: the conditional row on the generation cache and the unconditional row with no cache.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class CfgPairTests
{
    [Theory]
    [InlineData(AttentionImplementation.Sdpa, 0)]
    [InlineData(AttentionImplementation.Eager, 0)]
    [InlineData(AttentionImplementation.Sdpa, 12)]   // sliding window shorter than prompt + scales: masks on both rows
    [InlineData(AttentionImplementation.Eager, 12)]
    public void Batched_rows_equal_the_separate_conditional_and_unconditional_passes(AttentionImplementation impl, int slidingWindow)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var ng = no_grad();
        var config = TinyLm.Config();
        if (slidingWindow > 0) config = config with { SlidingWindow = slidingWindow };
        using var model = TinyLm.Load(config: config);
        var lm = model.model;
        lm.AttentionImplementation = impl;
        int layers = config.NumHiddenLayers;
        using var batched = new KVCache(layers);
        using var separate = new KVCache(layers);

        var prompt = model.EmbedInputs(tensor(TinyLm.RandomIds(3, 7, 200), [1, 7]));
        lm.forward(prompt, cache: batched);
        lm.forward(prompt, cache: separate);

        manual_seed(11);
        foreach (int n in new[] { 1, 4, 9 })                                     // scales 1×1, 2×2, 3×3 in order
        {
            var x = randn(2, n, config.HiddenSize);                              // [2, n, H]: conditional row, unconditional row
            var pair = lm.ForwardCfgPair(x, batched);
            var cond = lm.forward(x.narrow(0, 0, 1), null, null, separate);
            var uncond = lm.forward(x.narrow(0, 1, 1));
            AssertClose(cond, pair.narrow(0, 0, 1), $"conditional row, n = {n}");
            AssertClose(uncond, pair.narrow(0, 1, 1), $"unconditional row, n = {n}");
            Assert.Equal(separate.Length, batched.Length);                       // only the conditional row's K/V are cached
        }

        // the caches hold the same keys: one more conditional token sees the same context
        var probe = randn(1, 1, config.HiddenSize);
        AssertClose(lm.forward(probe, null, null, separate), lm.forward(probe, null, null, batched), "next token on the cache");
    }

    /// <summary>fp32 on both paths: only the summation order of the linears differs (2n rows instead of n).</summary>
    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        double err = (actual - expected).abs().max().item<float>();
        double scale = expected.abs().max().item<float>();
        Assert.True(err <= 1e-5 + 1e-5 * scale, $"{what}: max |Δ| {err:G3} (max |expected| {scale:G3})");
    }
}
