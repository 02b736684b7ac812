using VarGpt.Checkpoint;
using VarGpt.Golden;
using VarGpt.Golden.Kinds;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.LanguageModel;

public class TextGenerationTests
{
    const long Pad = 300, Eos = 302;
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static GenerationConfig Greedy(int maxNew, params long[] eos) => new() { MaxNewTokens = maxNew, EosTokenIds = eos, PadTokenId = Pad };

    static long[] Row(Tensor t, int b) => t[b].data<long>().ToArray();

    static long[] GreedyTokens(VargptForConditionalGeneration m, long[] prompt, int maxNew, params long[] eos)
    {
        using var ids = tensor(prompt).unsqueeze(0);
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids), Greedy(maxNew, eos), cancellationToken: Ct);
        return Row(r.GeneratedIds, 0);
    }

    [Theory]
    [InlineData(AttentionImplementation.Sdpa)]
    [InlineData(AttentionImplementation.Eager)]
    public void Left_padded_batch_gives_the_same_tokens_and_logits_as_one_by_one(AttentionImplementation impl)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var config = TinyLm.Config();
        using var m = TinyLm.Load();
        m.AttentionImplementation = impl;
        long vs = config.VisionStartTokenId, ve = config.VisionEndTokenId, img = config.ImageTokenId;
        var rowA = TinyLm.RandomIds(1, 7, 300);
        var rowB = TinyLm.RandomIds(2, 3, 300).Concat([vs]).Concat(Enumerable.Repeat(img, 6)).Concat([ve]).Concat(TinyLm.RandomIds(3, 4, 300)).ToArray();
        var rowC = TinyLm.RandomIds(4, 12, 300);
        var grid = tensor(new long[] { 1, 4, 6 }, [1, 3]);
        var g = manual_seed(5);
        var imageEmbeds = randn(6, config.HiddenSize);
        // batches never take the image-generation branch (official: batch size 1 only), so compare without it
        var opts = new GenerationOptions { RecordStepLogits = true, InterceptImageGeneration = false };
        const int maxNew = 6;

        var (ids, mask) = TinyLm.LeftPad([rowA, rowB, rowC], Pad);
        using var batch = TextGeneration.Generate(m, new GenerationInputs(ids, mask, imageEmbeds, grid), Greedy(maxNew, Eos), opts, cancellationToken: Ct);

        var rows = new[] { rowA, rowB, rowC };
        for (int b = 0; b < 3; b++)
        {
            bool hasImage = b == 1;
            using var single = TextGeneration.Generate(m, new GenerationInputs(tensor(rows[b]).unsqueeze(0), null,
                hasImage ? imageEmbeds : null, hasImage ? grid : null), Greedy(maxNew, Eos), opts, cancellationToken: Ct);
            var s = Row(single.GeneratedIds, 0);
            var bt = Row(batch.GeneratedIds, b);
            Assert.Equal(s, bt.Take(s.Length).ToArray());
            Assert.All(bt.Skip(s.Length), t => Assert.Equal(Pad, t));          // rows that finished early are padded
            var sl = single.StepLogits!.select(1, 0);                           // [n, V]
            var bl = batch.StepLogits!.select(1, b).narrow(0, 0, s.Length);
            Assert.True(sl.allclose(bl, rtol: 1e-4, atol: 1e-4), $"row {b}: max |diff| {(sl - bl).abs().max().item<float>()}");
        }
    }

    [Fact]
    public void Sampling_with_the_same_seed_gives_the_same_tokens()
    {
        TorchTestSetup.Init();
        using var m = TinyLm.Load();
        using var ids = tensor(TinyLm.RandomIds(11, 9, 300)).unsqueeze(0);
        var cfg = new GenerationConfig { DoSample = true, Temperature = 1.5, TopK = 0, MaxNewTokens = 16, PadTokenId = Pad };
        long[] Run(long seed)
        {
            using var r = TextGeneration.Generate(m, new GenerationInputs(ids), cfg, new GenerationOptions { Seed = seed }, cancellationToken: Ct);
            return Row(r.GeneratedIds, 0);
        }
        var a = Run(7);
        Assert.Equal(a, Run(7));
        Assert.NotEqual(a, Run(8));
        Assert.Equal(16, a.Length);
    }

    [Fact]
    public void Sampling_with_top_k_1_is_greedy()
    {
        TorchTestSetup.Init();
        using var m = TinyLm.Load();
        var prompt = TinyLm.RandomIds(12, 10, 300);
        using var ids = tensor(prompt).unsqueeze(0);
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids),
            new GenerationConfig { DoSample = true, TopK = 1, MaxNewTokens = 8 }, new GenerationOptions { Seed = 3 }, cancellationToken: Ct);
        Assert.Equal(GreedyTokens(m, prompt, 8), Row(r.GeneratedIds, 0));
    }

    [Fact]
    public void Repetition_penalty_is_applied_in_greedy_mode_over_the_whole_sequence()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var m = TinyLm.Load();
        var (ids, mask) = TinyLm.LeftPad([TinyLm.RandomIds(21, 6, 300), TinyLm.RandomIds(22, 10, 300)], Pad);
        const double penalty = 1.7;
        var cfg = Greedy(10) with { RepetitionPenalty = penalty };
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids, mask), cfg, new GenerationOptions { RecordStepLogits = true }, cancellationToken: Ct);
        long L = ids.shape[1];
        for (int t = 0; t < 10; t++)
        {
            // the processor sees prompt (padding included) + tokens chosen so far, and greedy takes its argmax
            var seen = r.Sequences.narrow(1, 0, L + t);
            var expected = LogitsProcessors.RepetitionPenalty(seen, r.StepLogits![t], penalty).argmax(-1);
            Assert.Equal(expected.data<long>().ToArray(), r.Sequences.select(1, L + t).data<long>().ToArray());
        }

        // a prompt that contains the plain greedy token (with a positive logit): a strong penalty must change the choice
        for (int seed = 100; ; seed++)
        {
            Assert.True(seed < 400, "no prompt found whose greedy token occurs in it");
            var prompt = TinyLm.RandomIds(seed, 40, 300);
            using var one = tensor(prompt).unsqueeze(0);
            using var plain = TextGeneration.Generate(m, new GenerationInputs(one), Greedy(1), new GenerationOptions { RecordStepLogits = true }, cancellationToken: Ct);
            long t0 = plain.GeneratedIds[0, 0].item<long>();
            if (!prompt.Contains(t0) || plain.StepLogits![0, 0, t0].item<float>() <= 0) continue;
            using var penalized = TextGeneration.Generate(m, new GenerationInputs(one), Greedy(1) with { RepetitionPenalty = 1000 }, cancellationToken: Ct);
            Assert.NotEqual(t0, penalized.GeneratedIds[0, 0].item<long>());
            break;
        }
    }

    [Fact]
    public void Generation_stops_at_any_eos_id_and_pads_finished_rows()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var m = TinyLm.Load();
        var p0 = TinyLm.RandomIds(31, 8, 300);
        var p1 = TinyLm.RandomIds(32, 5, 300);
        var free0 = GreedyTokens(m, p0, 8);
        // the first position k >= 1 whose token did not occur earlier: make it an EOS id (next to an unused one)
        int k = Enumerable.Range(1, 7).First(i => !free0.Take(i).Contains(free0[i]));
        long eos = free0[k];

        var single = GreedyTokens(m, p0, 8, 299 == eos ? 298 : 299, eos);
        Assert.Equal(free0.Take(k + 1).ToArray(), single);
        using (var ids0 = tensor(p0).unsqueeze(0))
        using (var r0 = TextGeneration.Generate(m, new GenerationInputs(ids0), Greedy(8, eos), cancellationToken: Ct))
            Assert.Equal(StopReason.Eos, r0.StopReason);

        var expected1 = GreedyTokens(m, p1, 8, eos);
        var (ids, mask) = TinyLm.LeftPad([p0, p1], Pad);
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids, mask), Greedy(8, eos), cancellationToken: Ct);
        int n = Math.Max(k + 1, expected1.Length);
        Assert.Equal(free0.Take(k + 1).Concat(Enumerable.Repeat(Pad, n - k - 1)).ToArray(), Row(r.GeneratedIds, 0));
        Assert.Equal(expected1.Concat(Enumerable.Repeat(Pad, n - expected1.Length)).ToArray(), Row(r.GeneratedIds, 1));
        Assert.Equal(expected1.Length == 8 && expected1[^1] != eos ? StopReason.MaxLength : StopReason.Eos, r.StopReason);
    }

    [Fact]
    public void Max_new_tokens_bounds_the_forward_passes_and_max_length_is_the_default()
    {
        TorchTestSetup.Init();
        using var m = TinyLm.Load();
        using var ids = tensor(TinyLm.RandomIds(41, 15, 300)).unsqueeze(0);
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids), Greedy(5), new GenerationOptions { RecordStepLogits = true }, cancellationToken: Ct);
        Assert.Equal(5, r.GeneratedIds.shape[1]);
        Assert.Equal(5, r.StepLogits!.shape[0]);
        Assert.Equal(StopReason.MaxLength, r.StopReason);
        // transformers' default max_length = 20 counts the prompt
        using var d = TextGeneration.Generate(m, new GenerationInputs(ids), new GenerationConfig(), cancellationToken: Ct);
        Assert.Equal(20, d.Sequences.shape[1]);
    }

    [Fact]
    public void Cached_decoding_matches_a_full_forward_over_the_final_sequence()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var config = TinyLm.Config();
        using var m = TinyLm.Load();
        long vs = config.VisionStartTokenId, ve = config.VisionEndTokenId, img = config.ImageTokenId;
        var withImage = TinyLm.RandomIds(51, 2, 300).Concat([vs]).Concat(Enumerable.Repeat(img, 4)).Concat([ve]).Concat(TinyLm.RandomIds(52, 3, 300)).ToArray();
        var (ids, mask) = TinyLm.LeftPad([withImage, TinyLm.RandomIds(53, 4, 300)], Pad);
        var grid = tensor(new long[] { 1, 4, 4 }, [1, 3]);
        using var r = TextGeneration.Generate(m, new GenerationInputs(ids, mask, null, grid), Greedy(6),
            new GenerationOptions { RecordStepLogits = true, RecordPositions = true }, cancellationToken: Ct);
        long L = ids.shape[1];
        var positions = cat([r.PrefillPositionIds!, r.DecodePositionIds!.squeeze(-1).permute(1, 2, 0)], 2);   // [3, B, L + 5]
        var seq = r.Sequences.narrow(1, 0, L + 5);
        var fullMask = cat([mask, ones(2, 5, ScalarType.Int64)], 1);
        var full = m.Forward(m.EmbedInputs(seq), positions, fullMask).Logits;                                   // [B, L + 5, V]
        for (int t = 0; t < 6; t++)
        {
            var a = full.select(1, L - 1 + t);
            Assert.True(a.allclose(r.StepLogits![t], rtol: 1e-4, atol: 1e-4), $"step {t}: max |diff| {(a - r.StepLogits![t]).abs().max().item<float>()}");
        }
    }

    [Fact]
    public void Image_gen_start_forwards_it_chooses_one_more_token_and_stops()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var prompt = TinyLm.RandomIds(61, 9, 300);
        long[] free;
        using (var plain = TinyLm.Load()) free = GreedyTokens(plain, prompt, 3);
        var config = TinyLm.Config() with { ImageGen = new(StartId: (int)free[0], EndId: 315, PadId: 316) };
        using var m = TinyLm.Load(config: config);
        using var ids = tensor(prompt).unsqueeze(0);
        using var g = new TextGeneration(m, new GenerationInputs(ids), Greedy(10, Eos), new GenerationOptions { KeepHiddenStates = true });
        var steps = g.Run(Ct).ToList();
        Assert.Equal(2, steps.Count);
        Assert.True(steps[0].IsImageGenerationStart);
        Assert.Equal(free[0], steps[0].Tokens[0]);
        Assert.Equal(free[1], steps[1].Tokens[0]);                 // chosen from the logits of the forwarded start token
        Assert.Equal(StopReason.ImageGeneration, g.StopReason);
        Assert.Equal(prompt.Length + 2, g.Length);                  // start + the never-forwarded token
        Assert.Equal(prompt.Length + 1, g.Cache.Length);
        Assert.Equal(prompt.Length + 1, g.HiddenStates.shape[1]);
        Assert.Equal(prompt.Length + 2, g.AttentionMask.shape[1]);

        // with interception off it is an ordinary token
        using var g2 = new TextGeneration(m, new GenerationInputs(ids), Greedy(3, Eos), new GenerationOptions { InterceptImageGeneration = false });
        Assert.Equal(free, g2.Run(Ct).Select(s => s.Tokens[0]).ToArray());
    }

    [Fact]
    public async Task Streaming_yields_the_same_tokens_and_honours_cancellation()
    {
        TorchTestSetup.Init();
        using var m = TinyLm.Load();
        var prompt = TinyLm.RandomIds(71, 6, 300);
        var expected = GreedyTokens(m, prompt, 7);
        using var ids = tensor(prompt).unsqueeze(0);
        var got = new List<long>();
        using (var g = new TextGeneration(m, new GenerationInputs(ids), Greedy(7)))
            await foreach (var t in g.StreamTokensAsync(TestContext.Current.CancellationToken)) got.Add(t);
        Assert.Equal(expected, got);

        using var cts = new CancellationTokenSource();
        using var g3 = new TextGeneration(m, new GenerationInputs(ids), Greedy(7));
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var t in g3.StreamTokensAsync(cts.Token)) { seen++; cts.Cancel(); }
        });
        Assert.Equal(1, seen);
        Assert.Equal(StopReason.Cancelled, g3.StopReason);
    }

    [Fact]
    public void Image_feature_count_must_match_the_image_tokens()
    {
        TorchTestSetup.Init();
        var config = TinyLm.Config();
        using var m = TinyLm.Load();
        using var ids = tensor(new long[] { 1, config.VisionStartTokenId, config.ImageTokenId, config.ImageTokenId, config.VisionEndTokenId }).unsqueeze(0);
        using var three = randn(3, config.HiddenSize);
        var e = Assert.Throws<ArgumentException>(() => m.EmbedInputs(ids, three));
        Assert.Contains("tokens: 2", e.Message);
        Assert.Contains("features 3", e.Message);
        using var two = randn(2, config.HiddenSize);
        using var emb = m.EmbedInputs(ids, two);
        Assert.True(TinyLm.Same(emb[0, 2], two[0]) && TinyLm.Same(emb[0, 3], two[1]));
    }
}
