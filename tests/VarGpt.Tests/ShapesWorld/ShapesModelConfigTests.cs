using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt;

namespace VarGpt.Tests.ShapesWorld;

public class ShapesModelConfigTests(ITestOutputHelper output)
{
    static readonly Lazy<ByteLevelBpeTokenizer> Tokenizer = new(() => BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(), samples: 2000));

    [Fact]
    public void Model_folder_is_self_describing_and_fits_the_byte_budget()
    {
        TorchTestSetup.Init();
        var tok = Tokenizer.Value;
        var sizes = new ShapesModelConfig();
        using var dir = TestPaths.Temp();
        sizes.WriteModelFolder(dir.Path, tok);
        var cfg = VargptConfig.Load(dir.Path); // the custom scale schedule comes from config.json
        Assert.Equal(0, cfg.VocabSize % 64);
        Assert.InRange(cfg.VocabSize, tok.VocabSize, tok.VocabSize + 63);
        Assert.Equal(tok.SpecialTokenIds["<|image_gen_start|>"], cfg.ImageGen.StartId);
        Assert.Equal(tok.SpecialTokenIds["<|image_pad|>"], cfg.ImageTokenId);
        Assert.Equal(sizes.Pn, cfg.Pn);
        var sched = cfg.Schedules.Get(1.0, cfg.Pn);
        Assert.Equal((64, 64), sched.Pixels);
        Assert.Equal(121, sched.SequenceLength);
        Assert.Equal(121, sched.PaddedLength(cfg.Infinity.PadToMultiplier)); // pad_to_multiplier 1: no padding rows
        Assert.Equal(sizes.CodebookDim, cfg.Vae.CodebookDim);
        Assert.Equal(cfg.Infinity.EmbedDim, cfg.Infinity.TextChannels);

        // The processor turns a 64² render into 84² = 6×6 patches = 3×3 merged tokens, one per position; larger images shrink to it.
        var pre = PreprocessorConfig.Load(Path.Combine(dir.Path, PreprocessorConfig.FileName));
        foreach (int side in new[] { 64, 128, 512 })
        {
            var (h, w, _) = ImageProcessor.SmartResize(side, side, pre.Factor, pre.MinPixels, pre.MaxPixels);
            Assert.Equal((sizes.UnderstandingSide, sizes.UnderstandingSide), (h, w));
        }
        Assert.Equal(84, sizes.UnderstandingSide);

        // Parameter count on the meta device (no memory): bf16 weights ≤ 40 MB.
        using var model = new VargptForConditionalGeneration(cfg, META, ScalarType.BFloat16);
        long n = model.state_dict().Sum(kv => kv.Value.numel());
        output.WriteLine($"{n:N0} parameters = {n * 2 / 1e6:F2} MB in bf16; vocab {cfg.VocabSize}");
        Assert.True(n * 2 <= 40_000_000, $"{n * 2} bytes > 40 MB");
        Assert.True(File.Exists(Path.Combine(dir.Path, "tokenizer.json")));
        Assert.Equal(tok.SpecialTokenIds["<|im_end|>"], (int)GenerationConfig.Load(dir.Path + "/generation_config.json").EosTokenIds[0]);
    }

    [Fact]
    public void Text_maxlen_covers_the_longest_generation_context()
    {
        var tok = Tokenizer.Value;
        var sizes = new ShapesModelConfig();
        int imageTokens = sizes.UnderstandingSide / 14 * (sizes.UnderstandingSide / 14) / 4;
        int start = tok.SpecialTokenIds["<|image_gen_start|>"], pad = tok.SpecialTokenIds["<|image_pad|>"];
        int longest = 0;
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 5 });
        foreach (var split in new[] { ShapesSplit.Train, ShapesSplit.Eval })
            foreach (var s in gen.Samples(split, 1500))
            {
                if (s.Kind is not (ShapesTaskKind.TextToImage or ShapesTaskKind.Edit)) continue;
                var ids = tok.Encode(BpeTrainer.ChatText(s.User, s.Assistant));
                int at = Array.IndexOf(ids, start);
                Assert.True(at > 0);
                int lc = at + ids.Take(at).Count(i => i == pad) * (imageTokens - 1); // context = every token before <|image_gen_start|>
                longest = Math.Max(longest, lc);
            }
        output.WriteLine($"longest cross-attention context {longest} tokens; text_maxlen {sizes.TextMaxLen}");
        Assert.InRange(longest, 20, sizes.TextMaxLen);
    }

    [Fact]
    public void Invalid_sizes_are_rejected_with_the_rule_named()
    {
        Assert.Contains("multiple of 128", Assert.Throws<ArgumentException>(() => new ShapesModelConfig { InfinityEmbedDim = 192 }.Validate()).Message);
        Assert.Contains("mrope_section", Assert.Throws<ArgumentException>(() => new ShapesModelConfig { MropeSection = [8, 8, 8] }.Validate()).Message);
        Assert.Contains("GroupNorm", Assert.Throws<ArgumentException>(() => new ShapesModelConfig { VaeBaseCh = 16 }.Validate()).Message);
    }

    [Fact]
    public void Custom_pn_entries_register_once_and_conflicts_name_the_entry()
    {
        var json = """
            {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "rope_scaling": {"mrope_section": [2, 3, 3]}, "bos_token_id": 0, "eos_token_id": 1, "vision_start_token_id": 2,
             "vision_end_token_id": 3, "vision_token_id": 4, "image_token_id": 5, "video_token_id": 6,
             "special_tokens": {"image_gen_start_token_id": 7, "image_gen_end_token_id": 8, "image_gen_pad_token_id": 9},
             "vision_config": {"depth": 1, "embed_dim": 16, "num_heads": 1, "hidden_size": 32},
             "vargpt_gen_args": {"pn": "cfgtest3", "custom_pn_entries": {"1.0/cfgtest3": {"pixel": [64, 64], "scales": [[1,1,1],[2,2,2],[3,4,4]]}}}}
            """;
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        var c = VargptConfig.Parse(doc.RootElement, "test config");
        Assert.Single(c.CustomPns);
        Assert.Equal(21, c.Schedules.Get(1.0, "cfgtest3").SequenceLength);
        VargptConfig.Parse(doc.RootElement, "test config"); // same entry again: fine
        // the table belongs to the config: another checkpoint may give the same pn other scales, and both stand
        using var other = System.Text.Json.JsonDocument.Parse(json.Replace("[3,4,4]", "[3,5,5]").Replace("[64, 64]", "[80, 80]"));
        var c2 = VargptConfig.Parse(other.RootElement, "other config");
        Assert.Equal(1 + 4 + 25, c2.Schedules.Get(1.0, "cfgtest3").SequenceLength);
        Assert.Equal(21, c.Schedules.Get(1.0, "cfgtest3").SequenceLength);
        Assert.Throws<InvalidOptionException>(() => ScaleSchedules.Official.Get(1.0, "cfgtest3"));
        // an entry that redefines an official pn is an error naming its key
        using var bad = System.Text.Json.JsonDocument.Parse(json.Replace("1.0/cfgtest3", "1.0/0.06M"));
        var e = Assert.Throws<InvalidFileException>(() => VargptConfig.Parse(bad.RootElement, "bad config"));
        Assert.Contains("1.0/0.06M", e.Message);
    }
}
