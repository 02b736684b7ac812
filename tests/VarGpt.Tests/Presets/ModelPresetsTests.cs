using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.Text;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Presets;

using VarGpt.ShapesWorld;

using VarGpt;

namespace VarGpt.Tests.Presets;

/// <summary>vargpt init's library side: presets, config.json, random weights streamed to disk, architecture audit.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ModelPresetsTests
{
    static RandomCheckpointResult InitTiny(string dir, long seed = 0) =>
        RandomCheckpoint.Create(ModelPresets.Tiny, dir, new RandomCheckpointOptions { DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer, Seed = seed });

    [Fact]
    public void Tiny_folder_has_the_official_layout_and_matches_its_architecture()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var r = InitTiny(d["tiny"]);
        foreach (var f in new[] { "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "model.safetensors" })
            Assert.True(File.Exists(Path.Combine(r.Dir, f)), $"{f} missing");

        // config.json round trip: the preset's sizes, and the token ids of the tokenizer written beside it.
        var c = VargptConfig.Load(r.Dir);
        var p = ModelPresets.Tiny;
        Assert.Equal((p.HiddenSize, p.IntermediateSize, p.NumHiddenLayers, p.NumAttentionHeads, p.NumKeyValueHeads),
            (c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads));
        Assert.Equal(p.MropeSection, c.MropeSection);
        Assert.Equal(p.Vision with { HiddenSize = p.HiddenSize }, c.Vision);
        Assert.Equal(p.Infinity, c.Infinity);
        Assert.Equal(p.Vae.BaseCh, c.Vae.BaseCh);
        Assert.Equal(p.Vae.EncoderChMult, c.Vae.EncoderChMult);
        Assert.Equal("tiny5", c.Pn);
        Assert.Equal("float32", c.TorchDtype);
        var tok = QwenTokenizer.FromDirectory(r.Dir);
        Assert.Equal(tok.VocabularySize, c.VocabSize);
        Assert.Equal(tok.TokenToId("<|image_gen_start|>"), c.ImageGen.StartId);
        Assert.Equal(tok.TokenToId("<|image_gen_pad|>"), c.ImageGen.PadId);
        Assert.Equal(tok.TokenToId("<|image_pad|>"), c.ImageTokenId);
        Assert.Equal(tok.TokenToId("<|im_end|>"), c.EosTokenIds.Single());
        Assert.Equal("vargpt_qwen2_vl", c.Extra!["model_type"].GetString());
        Assert.Equal("default", c.RopeScaling.RopeType);
        var gen = GenerationConfig.Load(r.Dir);
        Assert.Equal(c.ImageGen, gen.ImageGen);

        // Every key of the architecture, no other, same shapes.
        using var ckpt = CheckpointReader.Open(r.Dir);
        var arch = ModelArchitecture.Enumerate(c, ScalarType.Float32);
        var cmp = StateDict.Compare(arch.ToDictionary(t => t.Name, t => t.Shape), ckpt.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.Shape));
        Assert.True(cmp.IsMatch, $"{cmp.Missing.Count} missing, {cmp.Unexpected.Count} unexpected, {cmp.ShapeMismatches.Count} shape mismatches");
        Assert.Equal(arch.Count, cmp.Matched.Count);
        Assert.Equal(arch.Sum(t => t.ElementCount), r.Parameters);
    }

    [Fact]
    public void Tiny_folder_loads_strictly_into_the_model_with_init_values_by_role()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var r = InitTiny(d["tiny"], seed: 7);
        using var scope = NewDisposeScope();
        using var model = new VargptForConditionalGeneration(r.Config, CPU, ScalarType.Float32);
        var report = StateDict.Load(model, r.Dir);
        Assert.Empty(report.Missing);
        Assert.Empty(report.Unexpected);
        var sd = model.state_dict();
        int bits = r.Config.Vae.CodebookDim;
        Assert.Equal(Enumerable.Range(0, bits).Select(i => 1L << (bits - 1 - i)).ToArray(), sd["vae_local.quantizer.lfq.mask"].data<long>().ToArray());
        Assert.True(sd["model.norm.weight"].eq(1).all().item<bool>());
        Assert.True(sd["visual.blocks.0.norm1.bias"].eq(0).all().item<bool>());
        var zk = sd.Keys.First(k => k.EndsWith("zero_k_bias", StringComparison.Ordinal));
        Assert.True(sd[zk].eq(0).all().item<bool>());
        var sm = sd.Keys.First(k => k.EndsWith("scale_mul_1H11", StringComparison.Ordinal));
        Assert.True(sd[sm].sub(Math.Log(4)).abs().max().item<float>() < 1e-6);
        var emb = sd["model.embed_tokens.weight"];
        double std = emb.std().item<float>();
        Assert.InRange(std, 0.018, 0.022);
        // The loaded language model runs and gives finite logits.
        using var ng = no_grad();
        var ids = tensor(new long[] { r.Config.BosTokenId, 5, 6, 7 }).unsqueeze(0);
        var logits = model.Forward(model.EmbedInputs(ids)).Logits;
        Assert.Equal(new long[] { 1, 4, r.Config.VocabSize }, logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());
    }

    [Fact]
    public void Weights_depend_on_the_seed_only_and_each_tensor_has_its_own_stream()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var a = InitTiny(d["a"], seed: 3);
        var b = InitTiny(d["b"], seed: 3);
        var c = InitTiny(d["c"], seed: 4);
        var fa = File.ReadAllBytes(Path.Combine(a.Dir, "model.safetensors"));
        Assert.Equal(fa, File.ReadAllBytes(Path.Combine(b.Dir, "model.safetensors")));
        Assert.NotEqual(fa, File.ReadAllBytes(Path.Combine(c.Dir, "model.safetensors")));
        // Order/sharding independence: one tensor written alone equals its bytes in the full file.
        var arch = ModelArchitecture.Enumerate(a.Config, ScalarType.Float32);
        var one = arch.First(t => t.Name == "lm_head.weight");
        RandomCheckpoint.WriteWeights(d["one"], [one], seed: 3);
        using var full = CheckpointReader.Open(a.Dir);
        using var alone = CheckpointReader.Open(d["one"]);
        using var x = full.Load("lm_head.weight");
        using var y = alone.Load("lm_head.weight");
        Assert.True(x.eq(y).all().item<bool>());
    }

    [Fact]
    public void Bf16_and_sharding_follow_the_options()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var r = RandomCheckpoint.Create(ModelPresets.Tiny, d["t"], new RandomCheckpointOptions { DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer, DType = ScalarType.BFloat16, MaxShardBytes = 1_000_000 });
        Assert.True(File.Exists(Path.Combine(r.Dir, CheckpointReader.IndexFileName)));
        Assert.True(r.WeightFiles.Count(f => f.EndsWith(".safetensors", StringComparison.Ordinal)) > 1);
        using var ckpt = CheckpointReader.Open(r.Dir);
        Assert.All(ckpt.Tensors.Values, t => Assert.Contains(t.DType, new[] { "BF16", "I64" }));
        Assert.Equal("I64", ckpt.Tensors["vae_local.quantizer.lfq.mask"].DType);
        Assert.Equal("bfloat16", VargptConfig.Load(r.Dir).TorchDtype);
        Assert.Equal(r.Bytes, ckpt.TotalBytes);
    }

    [Fact]
    public void Custom_pn_registers_from_config_json_alone()
    {
        using var d = TestPaths.Temp();
        var tok = new TokenizerIds(600, 1, 2, 1, 10, 11, 12, 13, 14, new ImageGenTokens(20, 21, 22), null);
        var json = ModelPresets.Tiny.ConfigJson(tok, "test", ScalarType.Float32);
        // a pn name no other test registers, so that the registration must come from this file
        var entries = json["vargpt_gen_args"]!["custom_pn_entries"]!.AsObject();
        var e = entries["1.0/tiny5"]!.DeepClone();
        entries.Add("0.5/cfgtest3", new JsonObject { ["pixel"] = new JsonArray(64, 32), ["scales"] = new JsonArray(new JsonArray(1, 1, 1), new JsonArray(2, 2, 1), new JsonArray(3, 4, 2)) });
        json["vargpt_gen_args"]!["pn"] = "cfgtest3";
        File.WriteAllText(d["config.json"], json.ToJsonString());
        Assert.Throws<InvalidOptionException>(() => ScaleSchedules.Official.Get(0.5, "cfgtest3"));
        var c = VargptConfig.Load(d.Path);
        Assert.Equal("cfgtest3", c.Pn);
        var s = c.Schedules.Get(0.5, "cfgtest3");
        Assert.Equal((64, 32), s.Pixels);
        Assert.Equal([new Scale(1, 1, 1), new Scale(1, 2, 1), new Scale(1, 4, 2)], s.Scales);
        Assert.Equal(1 + 2 + 8, s.SequenceLength);
        var tiny5 = c.Schedules.Get(1.0, "tiny5");
        Assert.Equal([1, 2, 4, 6, 8], tiny5.Scales.Select(x => x.H));
        Assert.Equal(2, c.CustomPns.Count);

        // A clash with an official entry, and malformed entries, name the key. (Entries of other configs are no clash:
        // each config has its own table.)
        entries.Add("0.5/0.25M", entries["0.5/cfgtest3"]!.DeepClone());
        File.WriteAllText(d["config.json"], json.ToJsonString());
        Assert.Contains("custom_pn_entries.0.5/0.25M", Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d.Path)).Message);
        entries.Remove("0.5/0.25M");
        entries.Remove("0.5/cfgtest3");
        entries.Add("nonsense", e);
        File.WriteAllText(d["config.json"], json.ToJsonString());
        Assert.Contains("TEMPLATE/PN", Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d.Path)).Message);
        entries.Remove("nonsense");
        entries.Add("1.0/cfgtest4", new JsonObject { ["pixel"] = new JsonArray(16, 16), ["scales"] = new JsonArray(new JsonArray(1, 1)) });
        File.WriteAllText(d["config.json"], json.ToJsonString());
        Assert.Contains("[t, h, w]", Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d.Path)).Message);
    }

    [Fact]
    public void Full_config_is_the_released_one_with_ids_from_the_qwen_tokenizer()
    {
        if (!Directory.Exists(TestPaths.QwenTokenizer)) Assert.Skip($"Qwen2-VL tokenizer folder missing: {TestPaths.QwenTokenizer}");
        var tok = QwenTokenizer.FromDirectory(TestPaths.QwenTokenizer);
        var ids = TokenizerIds.From(tok, TestPaths.QwenTokenizer);
        var json = ModelPresets.Full.ConfigJson(ids, TestPaths.QwenTokenizer, ScalarType.BFloat16);
        // the released config has no size blocks of ours: the defaults are the released sizes
        Assert.False(json.ContainsKey("vargpt_gen_config"));
        Assert.False(json.ContainsKey("vae_config"));
        Assert.False(json.ContainsKey("vargpt_gen_args"));
        var c = VargptConfig.Parse(JsonDocument.Parse(json.ToJsonString()).RootElement, "full");
        Assert.Equal((152064, 3584, 18944, 28, 28, 4), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads));
        Assert.Equal([16, 24, 24], c.MropeSection);
        Assert.Equal(tok.TokenToId("<|image_gen_start|>"), c.ImageGen.StartId);
        Assert.Equal((tok.TokenToId("<|endoftext|>"), tok.TokenToId("<|im_end|>")), (c.BosTokenId, c.EosTokenIds.Single()));
        Assert.Equal(new VisionConfig(), c.Vision);
        Assert.Equal(new InfinityConfig(), c.Infinity);
        Assert.Equal("0.25M", c.Pn);
        Assert.Equal("left", json["padding_side"]!.GetValue<string>());

        var small = VargptConfig.Parse(JsonDocument.Parse(ModelPresets.Small.ConfigJson(ids, TestPaths.QwenTokenizer, ScalarType.BFloat16).ToJsonString()).RootElement, "small");
        Assert.Equal(0, small.VocabSize % 64);
        Assert.InRange(small.VocabSize - tok.VocabularySize, 0, 63);
        Assert.Equal((12, 768, 8, 4), (small.Infinity.Depth, small.Infinity.EmbedDim, small.Infinity.NumHeads, small.Infinity.BlockChunks));
        Assert.Equal(896, small.Vision.HiddenSize);
        Assert.Equal("0.06M", small.Pn);
    }

    [Fact]
    public void Bad_requests_fail_before_writing_with_clear_messages()
    {
        using var d = TestPaths.Temp();
        Assert.Contains("tiny, small, full", Assert.Throws<InvalidOptionException>(() => ModelPresets.Get("huge")).Message);
        File.WriteAllText(d["x.txt"], "keep me");
        var e = Assert.Throws<InvalidOptionException>(() => InitTiny(d.Path));
        Assert.Contains("--force", e.Message);
        Assert.Equal(["x.txt"], Directory.GetFileSystemEntries(d.Path).Select(Path.GetFileName));
        Assert.Contains("--tokenizer", Assert.Throws<InvalidOptionException>(() => RandomCheckpoint.Create(ModelPresets.Small, d["s"], new RandomCheckpointOptions())).Message);
        var missing = d["no-such-tokenizer"];
        Assert.Contains(missing, Assert.Throws<InputNotFoundException>(() => RandomCheckpoint.Create(ModelPresets.Tiny, d["t"], new RandomCheckpointOptions { TokenizerDir = missing })).Message);
        Assert.False(Directory.Exists(d["s"]));
        Assert.False(Directory.Exists(d["t"]));
        Assert.Contains("unknown pn 'nope'", Assert.Throws<InvalidOptionException>(() => RandomCheckpoint.Create(ModelPresets.Tiny, d["p"], new RandomCheckpointOptions { DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer, Pn = "nope" })).Message);
    }
}
