using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Tests.Server;
using VarGpt.Text;

namespace VarGpt.Tests.Inference;

/// <summary>
/// The continuous-batching engine against single decoding on the shipped model: rows that join and leave a running
/// batch at different times get exactly the tokens each conversation gets alone (greedy, and seeded sampling).
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ContinuousBatchTests
{
    static readonly string[] Questions =
    [
        "What colour is the circle?",
        "How many shapes are there in the picture? Answer with one word.",
        "Is there a square?",
        "Draw a blue star at the top.",
        "What shape is on the left side of the image, and what colour is it?",
    ];

    static ChatBatchRequest Job(int i, VargptChatOptions options, bool withImage = false) =>
        new([withImage
            ? new ChatMessage("user", [ContentPart.FromImage(VarGpt.Vision.RgbImage.Decode(ServedModel.ScenePng())), ContentPart.FromText(Questions[i])])
            : ChatMessage.User(Questions[i])], options);

    [Fact]
    public void Rows_joining_and_leaving_a_running_batch_decode_exactly_as_alone()
    {
        using var model = VargptModel.Load(ShippedModel.Resolve());
        var greedy = new VargptChatOptions { MaxNewTokens = 20, GenerateImages = false };
        var sampled = new VargptChatOptions { MaxNewTokens = 20, GenerateImages = false, Temperature = 1.0, Seed = 5 };
        var jobs = new[] { Job(0, greedy, withImage: true), Job(1, greedy), Job(2, sampled), Job(3, greedy), Job(4, greedy, withImage: true) };
        var alone = jobs.Select(j => model.Chat(j.Messages, j.Options, TestContext.Current.CancellationToken).TokenIds.ToArray()).ToArray();

        using var batch = new ContinuousBatch(model);
        var rows = new List<ChatRow>();
        // staggered arrivals: two rows, a step, one more, two steps, two more; at most 4 run together (DecodeLinear's per-row kernel)
        rows.Add(batch.Admit(jobs[0], TestContext.Current.CancellationToken));
        rows.Add(batch.Admit(jobs[1], TestContext.Current.CancellationToken));
        batch.Step();
        rows.Add(batch.Admit(jobs[2], TestContext.Current.CancellationToken));
        batch.Step(); batch.Step();
        while (batch.Running >= 4) batch.Step();
        rows.Add(batch.Admit(jobs[3], TestContext.Current.CancellationToken));
        while (batch.Running >= 4) batch.Step();
        rows.Add(batch.Admit(jobs[4], TestContext.Current.CancellationToken));
        while (batch.Running > 0) batch.Step();
        for (int i = 0; i < jobs.Length; i++)
        {
            Assert.Equal(alone[i], rows[i].TokenIds.ToArray());
            Assert.NotNull(rows[i].Finish);
        }
    }

    [Fact]
    public void Rows_with_different_sampling_settings_in_one_step_choose_exactly_as_alone()
    {
        using var model = VargptModel.Load(ShippedModel.Resolve());
        // four groups of processor settings in one step; two seeded rows share a group (one sampling pass, two generators)
        var options = new[]
        {
            new VargptChatOptions { MaxNewTokens = 24, GenerateImages = false, RepetitionPenalty = 1.4 },
            new VargptChatOptions { MaxNewTokens = 24, GenerateImages = false, Temperature = 0.8, TopK = 20, Seed = 11 },
            new VargptChatOptions { MaxNewTokens = 24, GenerateImages = false, Temperature = 1.3, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 7 },
            new VargptChatOptions { MaxNewTokens = 24, GenerateImages = false, Temperature = 1.3, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 8 },
        };
        var jobs = options.Select((o, i) => Job(i, o, withImage: i == 1)).ToArray();
        var alone = jobs.Select(j => model.Chat(j.Messages, j.Options, TestContext.Current.CancellationToken).TokenIds.ToArray()).ToArray();
        Assert.NotEqual(alone[2], alone[3]);   // the two seeds really draw differently

        using var batch = new ContinuousBatch(model);
        var rows = jobs.Select(j => batch.Admit(j, TestContext.Current.CancellationToken)).ToList();
        while (batch.Running > 0) batch.Step();
        for (int i = 0; i < jobs.Length; i++) Assert.Equal(alone[i], rows[i].TokenIds.ToArray());

        // unseeded sampling rows draw together from the global generator: valid tokens, every row to its end
        var unseeded = new VargptChatOptions { MaxNewTokens = 12, GenerateImages = false, Temperature = 1.5 };
        var free = Enumerable.Range(0, 3).Select(i => batch.Admit(Job(i, unseeded) with { IgnoreEos = true }, TestContext.Current.CancellationToken)).ToList();
        while (batch.Running > 0) batch.Step();
        Assert.All(free, r => Assert.Equal(12, r.CompletionTokens));
        Assert.All(free.SelectMany(r => r.TokenIds), id => Assert.InRange(id, 0, model.Config.VocabSize - 1));
    }

    [Fact]
    public void A_batched_prefill_gives_every_row_its_single_prefill_logits_and_next_position()
    {
        using var model = VargptModel.Load(ShippedModel.Resolve());
        using var batch = new ContinuousBatch(model);
        var greedy = new VargptChatOptions { MaxNewTokens = 8, GenerateImages = false };
        // different lengths, two different images (M-RoPE image positions), text rows between them
        var jobs = new[]
        {
            Job(0, greedy, withImage: true), Job(1, greedy), Job(4, greedy), Job(2, greedy) with
            {
                Messages = [new ChatMessage("user", [ContentPart.FromImage(VarGpt.Vision.RgbImage.Decode(ServedModel.ScenePng(VarGpt.ShapesWorld.Shape.Square,
                    VarGpt.ShapesWorld.ShapeColor.Blue, VarGpt.ShapesWorld.Position.Right))), ContentPart.FromText(Questions[2])])],
            },
        };
        var prompts = jobs.Select(j => { var (m, images) = ChatMessages.SplitImages(j.Messages); return model.Prepare(m, images); }).ToList();
        try
        {
            Assert.True(prompts.Select(p => p.Length).Distinct().Count() > 1);
            using var together = batch.Prefill(prompts);
            Assert.True(together.Padded);
            var alone = prompts.Select(p => batch.Prefill([p])).ToList();
            try
            {
                for (int b = 0; b < prompts.Count; b++)
                {
                    Assert.Equal(alone[b].NextPositions[0], together.NextPositions[b]);
                    using var expected = alone[b].Logits[0];
                    using var actual = together.Logits[b];
                    Assert.True(actual.allclose(expected, rtol: 1e-4, atol: 1e-4), $"row {b}: max |diff| {(actual - expected).abs().max().item<float>()}");
                }
                // the rows' logits differ by far more than the tolerance, so a mixed-up row would fail
                using (var first = alone[0].Logits[0]) using (var second = alone[1].Logits[0])
                    Assert.False(first.allclose(second, rtol: 1e-4, atol: 1e-4));
            }
            finally { foreach (var a in alone) a.Dispose(); }
        }
        finally { foreach (var p in prompts) p.Dispose(); }
    }

    [Fact]
    public void Requests_admitted_together_run_to_their_ends_and_a_bad_one_does_not_hold_up_the_others()
    {
        using var model = VargptModel.Load(ShippedModel.Resolve());
        using var batch = new ContinuousBatch(model);
        var ct = TestContext.Current.CancellationToken;
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var run = new VargptChatOptions { MaxNewTokens = 16, GenerateImages = false };
        var admitted = batch.Admit([
            (Job(0, run, withImage: true) with { IgnoreEos = true }, ct),
            (Job(1, run with { MaxNewTokens = -1 }), ct),                    // refused: invalid options
            (Job(2, run) with { IgnoreEos = true }, cancelled.Token),       // refused: cancelled
            (Job(3, run with { MaxNewTokens = 5 }) with { IgnoreEos = true }, ct),
        ]);
        Assert.IsType<InvalidOptionException>(admitted[1].Error);
        Assert.IsAssignableFrom<OperationCanceledException>(admitted[2].Error);
        Assert.Null(admitted[1].Row);
        Assert.Equal(2, batch.Running);
        while (batch.Running > 0) batch.Step();
        Assert.Equal(16, admitted[0].Row!.CompletionTokens);
        Assert.Equal(5, admitted[3].Row!.CompletionTokens);
        Assert.All([admitted[0].Row!, admitted[3].Row!], r => Assert.Equal(VargptChatFinish.MaxNewTokens, r.Finish));
    }
}
