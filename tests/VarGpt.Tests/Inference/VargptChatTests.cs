using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;
using VarGpt.Inference;
using VarGpt.LanguageModel;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Inference;

/// <remarks>Loads whole pipelines: runs apart from the parallel tests, which it would slow.</remarks>
[Collection(nameof(TorchDefaultsCollection))]
public class VargptChatTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A deterministic test picture (gradient + checker) of the given size.</summary>
    internal static RgbImage Picture(int w, int h, int seed = 0)
    {
        var data = new byte[3 * w * h];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int o = 3 * (y * w + x);
                data[o] = (byte)(x * 255 / Math.Max(1, w - 1));
                data[o + 1] = (byte)(y * 255 / Math.Max(1, h - 1));
                data[o + 2] = (byte)(((x / 8 + y / 8 + seed) % 2) * 200);
            }
        return new RgbImage(w, h, data);
    }

    [Fact]
    public async Task Streaming_yields_whole_utf8_characters_across_token_boundaries_and_matches_chat()
    {
        TorchTestSetup.Init();
        const string text = "é😀ok你";                              // 11 distinct bytes: 2 + 4 + 1 + 1 + 3
        using var chat0 = VargptModel.Load(TinyCheckpoint.Dir);
        var ids = ScriptedModel.BytesOf(chat0.Tokenizer, text);
        using var chat = ScriptedModel.Load(ids);
        var pieces = new List<string>();
        await foreach (var p in chat.ChatStreamingAsync([ChatMessage.User("hi")], cancellationToken: Ct)) pieces.Add(p);
        Assert.Equal(text, string.Concat(pieces));
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
        Assert.Contains("😀", pieces);                                     // 4 tokens, one piece
        Assert.Contains("你", pieces);
        var reply = chat.Chat([ChatMessage.User("hi")], cancellationToken: Ct);
        Assert.Equal(text, reply.Text);
        Assert.Equal(VargptChatFinish.EndOfTurn, reply.Finish);
        Assert.Equal(ids.Length + 1, reply.GeneratedTokens);              // + <|im_end|>
    }

    [Fact]
    public void Greedy_default_follows_generation_config_and_matches_the_pipeline()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        var file = chat.GenerationConfig;
        Assert.True(file.DoSample);                                   // Qwen2-VL's shipped file says do_sample true ...
        var g = new VargptChatOptions().Resolve(file);
        Assert.False(g.DoSample);                                     // ... the official scripts pass do_sample=False
        Assert.Equal(1.05, g.RepetitionPenalty);                      // and HF still applies the file's repetition penalty
        Assert.Equal(VargptChatOptions.DefaultMaxNewTokens, g.MaxNewTokens);
        var s = new VargptChatOptions { Temperature = 0.7 }.Resolve(file);
        Assert.True(s.DoSample);
        Assert.Equal(0.7, s.Temperature);
        Assert.Equal(1, s.TopK);                                      // unset fields come from the file, as in HF generate
        Assert.Equal(0.001, s.TopP);
        Assert.False(new VargptChatOptions { Temperature = 0 }.Resolve(file).DoSample);

        var messages = new[] { ChatMessage.User("what is red") };
        var reply = chat.Chat(messages, new VargptChatOptions { MaxNewTokens = 12 }, Ct);
        using var prompt = chat.Prepare(messages, []);
        using var official = TextGeneration.Generate(chat.Module, prompt.ToGenerationInputs(), chat.DefaultTextGeneration(12), cancellationToken: Ct);
        var officialIds = official.GeneratedIds[0].data<long>().Select(i => (int)i).ToList();
        Assert.Equal(officialIds, reply.TokenIds);
        Assert.Equal(chat.Tokenizer.Decode(officialIds, skipSpecialTokens: true), reply.Text);
        Assert.Equal(prompt.Length, reply.PromptTokens);
        Assert.Equal(VargptChatFinish.MaxNewTokens, reply.Finish);
        Assert.Equal(12, reply.GeneratedTokens);
    }

    [Fact]
    public void Same_seed_same_sampled_reply_and_another_seed_differs()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        VargptChatReply Run(long seed) => chat.Chat([ChatMessage.User("a blue circle")],
            new VargptChatOptions { Temperature = 1.5, TopK = 0, TopP = 1.0, Seed = seed, MaxNewTokens = 16 }, Ct);
        var a = Run(7);
        Assert.Equal(a.TokenIds, Run(7).TokenIds);
        Assert.NotEqual(a.TokenIds, Run(8).TokenIds);
    }

    [Fact]
    public void Batched_chat_gives_exactly_the_tokens_of_one_by_one()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        var conversations = new IReadOnlyList<ChatMessage>[]
        {
            [ChatMessage.User("hi")],
            [ChatMessage.User(ContentPart.FromImage(Picture(64, 48)), ContentPart.FromText("what shape is this and what colour"))],
            [ChatMessage.System("be brief"), ChatMessage.User("one"), ChatMessage.Assistant("two"), ChatMessage.User("three four five six")],
        };
        // the file's repetition penalty (1.05) is on: padding must not change which tokens it penalises
        var options = new VargptChatOptions { MaxNewTokens = 10, GenerateImages = false };
        var batch = chat.ChatBatch(conversations, options, Ct);
        Assert.Equal(3, batch.Count);
        for (int b = 0; b < conversations.Length; b++)
        {
            var single = chat.Chat(conversations[b], options, Ct);
            Assert.Equal(single.TokenIds, batch[b].TokenIds);
            Assert.Equal(single.Text, batch[b].Text);
            Assert.Equal(single.Finish, batch[b].Finish);
            Assert.Equal(single.PromptTokens, batch[b].PromptTokens);
        }
    }

    [Fact]
    public async Task Cancellation_stops_streaming()
    {
        TorchTestSetup.Init();
        var chat = TinyCheckpoint.Chat;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        int n = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in chat.ChatUpdatesAsync([ChatMessage.User("go")], new VargptChatOptions { MaxNewTokens = 500 }, cts.Token))
                if (++n == 3) cts.Cancel();
        });
        Assert.Equal(3, n);
    }

    [Fact]
    public async Task Stop_sequences_end_the_reply_before_them_and_are_never_streamed()
    {
        TorchTestSetup.Init();
        using var probe = VargptModel.Load(TinyCheckpoint.Dir);
        var ids = ScriptedModel.BytesOf(probe.Tokenizer, "abc|def");
        using var chat = ScriptedModel.Load(ids);
        var options = new VargptChatOptions { StopSequences = ["|de", "zz"] };
        var pieces = new List<string>();
        VargptChatReply? reply = null;
        await foreach (var u in chat.ChatUpdatesAsync([ChatMessage.User("q")], options, Ct))
        {
            pieces.Add(u.Text);
            reply ??= u.Reply;
        }
        Assert.Equal("abc", string.Concat(pieces));
        Assert.Equal("abc", reply!.Text);
        Assert.Equal(VargptChatFinish.StopSequence, reply.Finish);
        Assert.Equal(6, reply.GeneratedTokens);                       // stopped after "e": 'a','b','c','|','d','e'
        // a stop sequence that never completes holds nothing back at the end
        Assert.Equal("abc|def", chat.Chat([ChatMessage.User("q")], new VargptChatOptions { StopSequences = ["f!"] }, Ct).Text);
    }

    [Fact]
    public void A_reply_that_starts_an_image_returns_the_image()
    {
        TorchTestSetup.Init();
        using var probe = VargptModel.Load(TinyCheckpoint.Dir);
        var tok = probe.Tokenizer;
        var ids = ScriptedModel.BytesOf(tok, "ok").Append(tok.TokenToId(SpecialTokens.ImageGenStart)).Append(ScriptedModel.ByteToken(tok, (byte)'z')).ToArray();
        using var chat = ScriptedModel.Load(ids, endWithEos: false);
        var reply = chat.Chat([ChatMessage.User("draw a red square")], new VargptChatOptions { Seed = 3 }, Ct);
        Assert.Equal(VargptChatFinish.Image, reply.Finish);
        Assert.Equal("ok", reply.Text);
        Assert.Equal(3, reply.TokenIds.Count);                        // 'o', 'k', <|image_gen_start|>; the never-forwarded token is not part of the reply
        Assert.NotNull(reply.Image);
        Assert.Equal((128, 128), (reply.Image!.Width, reply.Image.Height));   // tiny5 schedule
        Assert.Equal(3, reply.ImageSeed);
        var again = chat.Chat([ChatMessage.User("draw a red square")], new VargptChatOptions { Seed = 3 }, Ct);
        Assert.Equal(reply.Image.Data, again.Image!.Data);            // the seed fixes the image too
        var noImage = chat.Chat([ChatMessage.User("draw a red square")], new VargptChatOptions { GenerateImages = false }, Ct);
        Assert.Equal(VargptChatFinish.Image, noImage.Finish);
        Assert.Null(noImage.Image);
    }
}
