using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Configuration;

using VarGpt;

namespace VarGpt.Tests.Configuration;

public class ConfigTests
{
    /// <summary>A minimal valid config.json for a tiny model (values are arbitrary but consistent).</summary>
    static JsonObject TinyConfig() => new()
    {
        ["vocab_size"] = 300, ["hidden_size"] = 64, ["intermediate_size"] = 128, ["num_hidden_layers"] = 2,
        ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2,
        ["rope_scaling"] = new JsonObject { ["type"] = "mrope", ["mrope_section"] = new JsonArray(2, 3, 3) },
        ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["vision_start_token_id"] = 10, ["vision_end_token_id"] = 11,
        ["vision_token_id"] = 12, ["image_token_id"] = 13, ["video_token_id"] = 14,
        ["special_tokens"] = new JsonObject { ["image_gen_start_token_id"] = 20, ["image_gen_end_token_id"] = 21, ["image_gen_pad_token_id"] = 22 },
        ["vision_config"] = new JsonObject { ["depth"] = 2, ["embed_dim"] = 32, ["num_heads"] = 2, ["hidden_size"] = 64 },
        ["some_future_field"] = "ignored",
    };

    [Fact]
    public void Config_loads_and_reads_token_ids_from_the_file()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["config.json"], TinyConfig().ToJsonString());
        var c = VargptConfig.Load(d.Path);
        Assert.Equal(20, c.ImageGen.StartId);
        Assert.Equal([2], c.EosTokenIds);
        Assert.Equal(16, c.HeadDim);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("vocab_size")]
    [InlineData("special_tokens")]
    [InlineData("vision_config")]
    [InlineData("rope_scaling")]
    [InlineData("image_token_id")]
    public void Config_missing_required_field_names_file_and_field(string field)
    {
        using var d = TestPaths.Temp();
        var j = TinyConfig();
        j.Remove(field);
        File.WriteAllText(d["config.json"], j.ToJsonString());
        var e = Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d["config.json"]));
        Assert.Contains(d["config.json"], e.Message);
        Assert.Contains($"'{field}'", e.Message);
    }

    [Fact]
    public void Config_nested_missing_field_and_bad_json_are_named()
    {
        using var d = TestPaths.Temp();
        var j = TinyConfig();
        j["special_tokens"]!.AsObject().Remove("image_gen_pad_token_id");
        File.WriteAllText(d["config.json"], j.ToJsonString());
        var e = Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d["config.json"]));
        Assert.Contains("special_tokens", e.Message);
        Assert.Contains("'image_gen_pad_token_id'", e.Message);
        File.WriteAllText(d["config.json"], "{\"vocab_size\": 3,");
        Assert.Contains("not valid JSON", Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d["config.json"])).Message);
        var wrongType = TinyConfig();
        wrongType["hidden_size"] = "big";
        File.WriteAllText(d["config.json"], wrongType.ToJsonString());
        Assert.Contains("'hidden_size' must be an integer", Assert.Throws<InvalidFileException>(() => VargptConfig.Load(d["config.json"])).Message);
    }

    [Fact]
    public void Generation_config_reads_eos_list_sampling_fields_and_special_tokens()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["generation_config.json"], """
            {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643],
             "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001, "max_new_tokens": 77,
             "transformers_version": "4.47.0", "unknown_knob": {"x": 1},
             "special_tokens": {"image_gen_start": "<|image_gen_start|>", "image_gen_start_token_id": 151657,
               "image_gen_end": "<|image_gen_end|>", "image_gen_end_token_id": 151658,
               "image_gen_pad": "<|image_gen_pad|>", "image_gen_pad_token_id": 151659},
             "allowed_special_tokens": ["<|image_gen_start|>", "<|image_gen_end|>", "<|image_gen_pad|>"]}
            """);
        var g = GenerationConfig.Load(d.Path);
        Assert.Equal([151645, 151643], g.EosTokenIds);
        Assert.Equal(151643, g.PadTokenId);
        Assert.True(g.DoSample);
        Assert.Equal(0.1, g.Temperature);
        Assert.Equal(1, g.TopK);
        Assert.Equal(0.001, g.TopP);
        Assert.Equal(1.05, g.RepetitionPenalty);
        Assert.Equal(77, g.MaxNewTokens);
        Assert.Equal(new ImageGenTokens(151657, 151658, 151659), g.ImageGen);
        Assert.Equal(3, g.AllowedSpecialTokens.Length);
    }

    [Fact]
    public void Generation_config_defaults_int_eos_and_errors()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["generation_config.json"], """{"eos_token_id": 5}""");
        var g = GenerationConfig.Load(d["generation_config.json"]);
        Assert.Equal([5], g.EosTokenIds);
        Assert.False(g.DoSample);
        Assert.Equal(1.0, g.RepetitionPenalty);
        Assert.Null(g.ImageGen);
        Assert.Null(g.MaxNewTokens);
        File.WriteAllText(d["generation_config.json"], """{"eos_token_id": "five"}""");
        var e = Assert.Throws<InvalidFileException>(() => GenerationConfig.Load(d.Path));
        Assert.Contains("'eos_token_id'", e.Message);
        File.WriteAllText(d["generation_config.json"], """{"special_tokens": {"image_gen_start_token_id": 1, "image_gen_end_token_id": 2}}""");
        Assert.Contains("'image_gen_pad_token_id'", Assert.Throws<InvalidFileException>(() => GenerationConfig.Load(d.Path)).Message);
        File.WriteAllText(d["generation_config.json"], """{"top_p": 0}""");
        Assert.Contains("top_p", Assert.Throws<InvalidFileException>(() => GenerationConfig.Load(d.Path)).Message);
        Directory.CreateDirectory(d["empty"]);
        Assert.Contains("generation_config.json", Assert.Throws<InputNotFoundException>(() => GenerationConfig.Load(d["empty"])).Message);
    }

    [Fact]
    public void Preprocessor_config_reads_fields_both_size_spellings_and_validates()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["preprocessor_config.json"], """
            {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
             "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "rescale_factor": 0.00392156862745098,
             "do_resize": false, "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "X", "resample": 3}
            """);
        var p = PreprocessorConfig.Load(d.Path);
        Assert.Equal(3136, p.MinPixels);
        Assert.Equal(12845056, p.MaxPixels);
        Assert.Equal(28, p.Factor);
        Assert.Equal([0.5, 0.4, 0.3], p.ImageMean);
        Assert.Equal([0.2, 0.3, 0.4], p.ImageStd);
        Assert.False(p.DoResize);
        Assert.True(p.DoNormalize);

        File.WriteAllText(d["preprocessor_config.json"], """{"size": {"shortest_edge": 1000, "longest_edge": 2000}}""");
        p = PreprocessorConfig.Load(d.Path);
        Assert.Equal((1000, 2000), (p.MinPixels, p.MaxPixels));
        Assert.Equal(14, p.PatchSize); // class default

        File.WriteAllText(d["preprocessor_config.json"], """{"image_mean": [0.5, 0.5]}""");
        Assert.Contains("image_mean", Assert.Throws<InvalidFileException>(() => PreprocessorConfig.Load(d.Path)).Message);
        File.WriteAllText(d["preprocessor_config.json"], """{"min_pixels": 5000, "max_pixels": 100}""");
        Assert.Contains("min_pixels", Assert.Throws<InvalidFileException>(() => PreprocessorConfig.Load(d.Path)).Message);
        File.WriteAllText(d["preprocessor_config.json"], """{"patch_size": "14"}""");
        Assert.Contains("'patch_size' must be an integer", Assert.Throws<InvalidFileException>(() => PreprocessorConfig.Load(d.Path)).Message);
    }
}
