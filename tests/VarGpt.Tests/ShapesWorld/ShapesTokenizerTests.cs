using System.Text.Json.Nodes;
using VarGpt.ShapesWorld;

namespace VarGpt.Tests.ShapesWorld;

public class ShapesTokenizerTests(ITestOutputHelper output)
{
    static readonly Lazy<ByteLevelBpeTokenizer> Trained = new(() => BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(), samples: 3000, vocabSize: 1024));

    static readonly string[] Arbitrary =
    [
        "", " ", "  leading and trailing  ", "don't STOP: it's 12345 + 67.8%", "tabs\tand\nnew\r\nlines\n\n\n",
        "héllo wörld — “quotes” ½ ∑", "日本語のテキスト", "emoji 😀👍🏽 mixed", "e\u0301 (NFD é) vs é", "<|im_start|> not special <|im_end|>x",
        "A large red circle on the left and a small blue star at the top.", "zzqx vocabulary-free wordz", "\u0000\u0001 control",
    ];

    [Fact]
    public void RoundTripsArbitraryText()
    {
        var tok = Trained.Value;
        foreach (var s in Arbitrary)
        {
            var ids = tok.Encode(s);
            Assert.Equal(s.Normalize(System.Text.NormalizationForm.FormC), tok.Decode(ids));
        }
        // Special tokens are single ids, appended after the BPE vocabulary in the official order.
        var specials = ByteLevelBpeTokenizer.SpecialTokens;
        Assert.Equal(tok.Vocab.Count + specials.Length, tok.VocabSize);
        for (int k = 0; k < specials.Length; k++) Assert.Equal(tok.Vocab.Count + k, tok.SpecialTokenIds[specials[k]]);
        var chat = BpeTrainer.ChatText("<image>What color is the star?", "red");
        var chatIds = tok.Encode(chat);
        Assert.Equal(chat, tok.Decode(chatIds));
        Assert.Equal(6, chatIds.Count(i => i == tok.SpecialTokenIds["<|im_start|>"] || i == tok.SpecialTokenIds["<|im_end|>"]));
        Assert.Single(chatIds, tok.SpecialTokenIds["<|image_pad|>"]);
        Assert.DoesNotContain("<|im_start|>", tok.Decode(chatIds, skipSpecialTokens: true));
    }

    [Fact]
    public void VocabularyIsSmallAndCompressesShapesText()
    {
        var tok = Trained.Value;
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 123 });
        long chars = 0, tokens = 0;
        foreach (var s in gen.Samples(ShapesSplit.Eval, 200))
        {
            var t = BpeTrainer.ChatText(s.User, s.Assistant);
            chars += t.Length; tokens += tok.Encode(t).Length;
        }
        output.WriteLine($"BPE vocab {tok.Vocab.Count} (256 bytes + {tok.Merges.Count} merges), total {tok.VocabSize}; {chars / (double)tokens:F2} chars/token on held-out ShapesWorld chat text");
        Assert.InRange(tok.Vocab.Count, 256 + 100, 1024);
        Assert.True(chars / (double)tokens > 3.0);
        // Frequent whole words are single tokens.
        foreach (var w in new[] { " circle", " red", " assistant", "You", " helpful" }) Assert.Single(tok.Encode(w));
    }

    [Fact]
    public void SavedTokenizerJsonMatchesHuggingFaceTokenizers()
    {
        var tok = Trained.Value;
        using var tmp = TestPaths.Temp();
        tok.Save(tmp.Path);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json" })
            Assert.True(File.Exists(tmp[f]), f);

        // Same layout as the Qwen2-VL tokenizer.json (normalizer, pre-tokenizer pattern, decoder, model flags).
        var qwenPath = Path.Combine(TestPaths.QwenTokenizer, "tokenizer.json");
        Assert.True(File.Exists(qwenPath), $"Qwen2-VL tokenizer.json expected at {qwenPath}");
        {
            var qwen = JsonNode.Parse(File.ReadAllText(qwenPath))!;
            var ours = JsonNode.Parse(File.ReadAllText(tmp["tokenizer.json"]))!;
            foreach (var key in new[] { "normalizer", "pre_tokenizer", "post_processor", "decoder" })
                Assert.True(JsonNode.DeepEquals(qwen[key], ours[key]), $"{key} differs from Qwen2-VL's");
            var qm = qwen["model"]!.AsObject(); var om = ours["model"]!.AsObject();
            foreach (var (k, v) in qm) if (k is not ("vocab" or "merges")) Assert.True(JsonNode.DeepEquals(v, om[k]), $"model.{k} differs");
            Assert.Equal(qwen["added_tokens"]!.AsArray().Select(t => (string)t!["content"]!), ours["added_tokens"]!.AsArray().Select(t => (string)t!["content"]!));
        }

        // Our loader reads it back identically.
        var reloaded = ByteLevelBpeTokenizer.Load(tmp["tokenizer.json"]);
        Assert.Equal(tok.VocabSize, reloaded.VocabSize);

        // The Rust HF tokenizers library encodes/decodes exactly as we do.
        using var hf = new Tokenizers.DotNet.Tokenizer(vocabPath: tmp["tokenizer.json"]);
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 77 });
        var texts = gen.Samples(ShapesSplit.Train, 150).SelectMany(s => new[] { BpeTrainer.ChatText(s.User, s.Assistant), s.User, s.Assistant })
            .Concat(Arbitrary).ToList();
        foreach (var text in texts)
        {
            var ours = tok.Encode(text);
            Assert.Equal(ours, reloaded.Encode(text));
            var theirs = hf.Encode(text).Select(i => (int)i).ToArray();
            Assert.True(ours.SequenceEqual(theirs), $"ids differ for {System.Text.Json.JsonSerializer.Serialize(text)}:\n ours   [{string.Join(",", ours)}]\n theirs [{string.Join(",", theirs)}]");
            var hfText = hf.Decode(ours.Select(i => (uint)i).ToArray());
            Assert.True(tok.Decode(ours) == hfText || tok.Decode(ours, skipSpecialTokens: true) == hfText, $"decode differs for {System.Text.Json.JsonSerializer.Serialize(text)}: '{hfText}'");
        }
    }
}
