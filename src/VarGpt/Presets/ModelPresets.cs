using System.Globalization;
using System.Text.Json.Nodes;
using VarGpt.Generation;
using VarGpt.Text;
using VarGpt.Torch;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Presets;

/// <summary>
/// The ids config.json records for a tokenizer, looked up by token string in the tokenizer files (never hard-coded):
/// bos = pad = &lt;|endoftext|&gt; and eos = &lt;|im_end|&gt; as in the released config, the vision ids read by
/// get_rope_index, and VARGPT's three &lt;|image_gen_*|&gt; tokens.
/// </summary>
public sealed record TokenizerIds(int VocabularySize, int Bos, int Eos, int Pad, int VisionStart, int VisionEnd, int VisionPad,
    int ImagePad, int VideoPad, ImageGenTokens ImageGen, string? PaddingSide)
{
    public static TokenizerIds From(QwenTokenizer tok, string dir)
    {
        int Id(string token) => tok.TryTokenToId(token)
            ?? throw new InvalidFileException($"tokenizer {dir} has no token {token} (VARGPT needs the Qwen2-VL special tokens plus <|image_gen_start|>, <|image_gen_end|>, <|image_gen_pad|>)");
        var gen = new ImageGenTokens(Id("<|image_gen_start|>"), Id("<|image_gen_end|>"), Id("<|image_gen_pad|>"));
        int eot = Id("<|endoftext|>");
        var ids = new TokenizerIds(tok.VocabularySize, eot, tok.EosTokenId ?? Id("<|im_end|>"), tok.PadTokenId ?? eot,
            Id("<|vision_start|>"), Id("<|vision_end|>"), Id("<|vision_pad|>"), Id("<|image_pad|>"), Id("<|video_pad|>"), gen,
            ReadPaddingSide(dir));
        int max = new[] { ids.Bos, ids.Eos, ids.Pad, ids.VisionStart, ids.VisionEnd, ids.VisionPad, ids.ImagePad, ids.VideoPad, gen.StartId, gen.EndId, gen.PadId }.Max();
        if (max >= ids.VocabularySize) ids = ids with { VocabularySize = max + 1 };
        return ids;
    }

    static string? ReadPaddingSide(string dir)
    {
        var p = Path.Combine(dir, "tokenizer_config.json");
        if (!File.Exists(p)) return null;
        using var doc = JsonFields.ParseFile(p, "tokenizer config");
        var j = new JsonFields(doc.RootElement, p);
        return j.Has("padding_side") ? j.Str("padding_side") : null;
    }
}

/// <summary>
/// A fixed model size for `vargpt init`: language model, vision tower, Infinity decoder and BSQ-VAE shapes, the
/// default generation resolution (pn) and the rule for the vocabulary size. The three presets are defined once in
/// <see cref="ModelPresets"/> and documented in docs/notes/presets.md; they do not change.
/// </summary>
public sealed record ModelPreset
{
    public required string Name { get; init; }
    public required string Summary { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int[] MropeSection { get; init; }
    /// <summary>Embedding rows when fixed (the released 152064); otherwise the tokenizer size rounded up to <see cref="VocabMultiple"/>.</summary>
    public int? FixedVocabSize { get; init; }
    public int VocabMultiple { get; init; } = 1;
    /// <summary>Vision tower (its HiddenSize, the merger output, equals the LM width).</summary>
    public required VisionConfig Vision { get; init; }
    public required InfinityConfig Infinity { get; init; }
    public required VaeConfig Vae { get; init; }
    /// <summary>Default generation resolution ("vargpt_gen_args".pn).</summary>
    public required string Pn { get; init; }
    /// <summary>Non-standard resolution entries stored in config.json (custom_pn_entries) and registered on load.</summary>
    public IReadOnlyList<ScaleSchedule> CustomPns { get; init; } = [];
    public required ScalarType DefaultDType { get; init; }
    /// <summary>The released shapes: config.json is written exactly like the official one (no size blocks of ours).</summary>
    public bool IsReleased { get; init; }
    /// <summary>Without --tokenizer, tiny trains and emits the ShapesWorld BPE tokenizer; the others need the Qwen2-VL files.</summary>
    public bool HasDefaultTokenizer { get; init; }

    public int VocabSizeFor(int tokenizerSize, string tokenizerDir)
    {
        if (FixedVocabSize is { } v)
        {
            if (tokenizerSize > v)
                throw new InvalidOptionException($"tokenizer {tokenizerDir} has {tokenizerSize} tokens, more than the {v} embedding rows of preset '{Name}'");
            return v;
        }
        return (tokenizerSize + VocabMultiple - 1) / VocabMultiple * VocabMultiple;
    }

    /// <summary>config.json in the official VARGPTQwen2VLConfig layout (as save_pretrained writes it after the mrope rename), plus our size blocks for non-released sizes.</summary>
    public JsonObject ConfigJson(TokenizerIds tok, string tokenizerDir, ScalarType dtype, string? pn = null)
    {
        static JsonArray Ints(IEnumerable<int> xs) => new(xs.Select(x => (JsonNode)x).ToArray());
        var vision = new JsonObject
        {
            ["depth"] = Vision.Depth, ["embed_dim"] = Vision.EmbedDim, ["mlp_ratio"] = Vision.MlpRatio, ["num_heads"] = Vision.NumHeads,
            ["in_chans"] = Vision.InChannels, ["hidden_size"] = HiddenSize, ["patch_size"] = Vision.PatchSize,
            ["spatial_merge_size"] = Vision.SpatialMergeSize, ["spatial_patch_size"] = Vision.PatchSize, ["temporal_patch_size"] = Vision.TemporalPatchSize,
            ["hidden_act"] = Vision.HiddenAct, ["in_channels"] = Vision.InChannels, ["model_type"] = "qwen2_vl",
        };
        var special = new JsonObject
        {
            ["image_gen_start"] = tok.ImageGen.Start, ["image_gen_start_token_id"] = tok.ImageGen.StartId,
            ["image_gen_end"] = tok.ImageGen.End, ["image_gen_end_token_id"] = tok.ImageGen.EndId,
            ["image_gen_pad"] = tok.ImageGen.Pad, ["image_gen_pad_token_id"] = tok.ImageGen.PadId,
        };
        var c = new JsonObject
        {
            ["architectures"] = new JsonArray("VARGPTQwen2VLForConditionalGeneration"),
            ["attention_dropout"] = 0.0,
            ["bos_token_id"] = tok.Bos,
            ["eos_token_id"] = tok.Eos,
            ["vision_start_token_id"] = tok.VisionStart,
            ["vision_end_token_id"] = tok.VisionEnd,
            ["vision_token_id"] = tok.VisionPad,
            ["image_token_id"] = tok.ImagePad,
            ["video_token_id"] = tok.VideoPad,
            ["hidden_act"] = "silu",
            ["hidden_size"] = HiddenSize,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = IntermediateSize,
            ["max_position_embeddings"] = 32768,
            ["max_window_layers"] = NumHiddenLayers,
            ["model_type"] = "vargpt_qwen2_vl",
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["rms_norm_eps"] = 1e-06,
            ["rope_theta"] = 1000000.0,
            ["sliding_window"] = 32768,
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = TorchRuntime.DTypeName(dtype),
            ["use_cache"] = true,
            ["use_sliding_window"] = false,
            ["vision_config"] = vision,
            // VARGPTQwen2VLConfig rewrites {"type": "mrope"} to type = rope_type = "default" before saving
            ["rope_scaling"] = new JsonObject { ["type"] = "default", ["mrope_section"] = Ints(MropeSection), ["rope_type"] = "default" },
            ["vocab_size"] = VocabSizeFor(tok.VocabularySize, tokenizerDir),
            ["pad_token_id"] = tok.Pad,
            ["train_from_scratch"] = false,
            ["special_tokens"] = special,
        };
        if (tok.PaddingSide != null) c["padding_side"] = tok.PaddingSide;
        string thePn = pn ?? Pn;
        if (!IsReleased)
        {
            c["vargpt_gen_config"] = Infinity.ToJson();
            c["vae_config"] = Vae.ToJson();
        }
        if (!IsReleased || thePn != Pn || CustomPns.Count > 0)
        {
            var args = new JsonObject { ["pn"] = thePn };
            if (CustomPns.Count > 0)
            {
                var entries = new JsonObject();
                foreach (var s in CustomPns)
                    entries[s.Template.ToString("0.0##", CultureInfo.InvariantCulture) + "/" + s.Pn] = new JsonObject
                    {
                        ["pixel"] = Ints([s.Pixels.H, s.Pixels.W]),
                        ["scales"] = new JsonArray(s.RawScales.Select(x => (JsonNode)Ints([x.T, x.H, x.W])).ToArray()),
                    };
                args["custom_pn_entries"] = entries;
            }
            c["vargpt_gen_args"] = args;
        }
        return c;
    }

    /// <summary>
    /// generation_config.json: VARGPT copies Qwen2-VL's file and adds special_tokens / allowed_special_tokens
    /// (reference §2.7). The sampling fields are the published Qwen2-VL-7B-Instruct values; ids come from the tokenizer.
    /// </summary>
    public static JsonObject GenerationConfigJson(TokenizerIds tok) => new()
    {
        ["bos_token_id"] = tok.Bos,
        ["pad_token_id"] = tok.Pad,
        ["do_sample"] = true,
        ["eos_token_id"] = new JsonArray(tok.Eos, tok.Bos),
        ["repetition_penalty"] = 1.05,
        ["temperature"] = 0.1,
        ["top_k"] = 1,
        ["top_p"] = 0.001,
        ["special_tokens"] = new JsonObject
        {
            ["image_gen_start"] = tok.ImageGen.Start, ["image_gen_start_token_id"] = tok.ImageGen.StartId,
            ["image_gen_end"] = tok.ImageGen.End, ["image_gen_end_token_id"] = tok.ImageGen.EndId,
            ["image_gen_pad"] = tok.ImageGen.Pad, ["image_gen_pad_token_id"] = tok.ImageGen.PadId,
        },
        ["allowed_special_tokens"] = new JsonArray(tok.ImageGen.Start, tok.ImageGen.End, tok.ImageGen.Pad),
    };

    /// <summary>preprocessor_config.json with the Qwen2-VL image processor's class defaults (<see cref="PreprocessorConfig"/>).</summary>
    public JsonObject PreprocessorConfigJson()
    {
        var p = new PreprocessorConfig();
        static JsonArray Doubles(IEnumerable<double> xs) => new(xs.Select(x => (JsonNode)x).ToArray());
        return new JsonObject
        {
            ["do_convert_rgb"] = p.DoConvertRgb, ["do_normalize"] = p.DoNormalize, ["do_rescale"] = p.DoRescale, ["do_resize"] = p.DoResize,
            ["image_mean"] = Doubles(p.ImageMean), ["image_std"] = Doubles(p.ImageStd),
            ["image_processor_type"] = "VARGPTQwen2VLImageProcessor", ["processor_class"] = "VARGPTQwen2VLProcessor",
            ["max_pixels"] = p.MaxPixels, ["min_pixels"] = p.MinPixels, ["merge_size"] = Vision.SpatialMergeSize,
            ["patch_size"] = Vision.PatchSize, ["temporal_patch_size"] = Vision.TemporalPatchSize,
            ["resample"] = p.Resample, ["rescale_factor"] = p.RescaleFactor,
        };
    }
}

/// <summary>The three fixed `vargpt init` sizes: tiny (tests), small (fast experiments), full (the released VARGPT-v1.1 shapes).</summary>
public static class ModelPresets
{
    /// <summary>The released VARGPT-v1.1: Qwen2-VL-7B (LM 28x3584, ViT depth 32) + Infinity-2B + BSQ-VAE d32, pn 0.25M.</summary>
    public static readonly ModelPreset Full = new()
    {
        Name = "full",
        Summary = "released VARGPT-v1.1 shapes: Qwen2-VL-7B LM (28 layers, hidden 3584) + ViT depth 32 + Infinity-2B + BSQ-VAE d32, vocab 152064, pn 0.25M (512x512)",
        HiddenSize = 3584, IntermediateSize = 18944, NumHiddenLayers = 28, NumAttentionHeads = 28, NumKeyValueHeads = 4,
        MropeSection = [16, 24, 24],
        FixedVocabSize = 152064,
        Vision = new VisionConfig(),
        Infinity = new InfinityConfig(),
        Vae = new VaeConfig(),
        Pn = "0.25M",
        DefaultDType = ScalarType.BFloat16,
        IsReleased = true,
    };

    /// <summary>Qwen2-0.5B-shaped LM, ViT depth 8, the official infinity_layer12 decoder, the released VAE, pn 0.06M.</summary>
    public static readonly ModelPreset Small = new()
    {
        Name = "small",
        Summary = "Qwen2-0.5B-shaped LM (24 layers, hidden 896) + released ViT shape at depth 8 + official infinity_layer12 decoder (depth 12, width 768) + BSQ-VAE d32, pn 0.06M (256x256)",
        HiddenSize = 896, IntermediateSize = 4864, NumHiddenLayers = 24, NumAttentionHeads = 14, NumKeyValueHeads = 2,
        MropeSection = [8, 12, 12], // head_dim 64: the released [16,24,24] scaled by 1/2
        VocabMultiple = 64,
        Vision = new VisionConfig { Depth = 8, HiddenSize = 896 },
        // official infinity_layer12 (infinity.py): depth 12, embed_dim 768, num_heads 8, mlp_ratio 4; 4 chunks of 3 blocks
        Infinity = new InfinityConfig { Depth = 12, EmbedDim = 768, NumHeads = 8, MlpRatio = 4, BlockChunks = 4, TextChannels = 768 },
        Vae = new VaeConfig(),
        Pn = "0.06M",
        DefaultDType = ScalarType.BFloat16,
    };

    /// <summary>tiny5: the fixtures' fx5 schedule, 5 scales up to 8x8 latents = 128x128 pixels (121 tokens, padded to 128).</summary>
    static readonly ScaleSchedule Tiny5 = new(1.0, "tiny5", (128, 128), [new(1, 1, 1), new(2, 2, 2), new(3, 4, 4), new(4, 6, 6), new(5, 8, 8)]);

    /// <summary>The smallest model that exercises every code path quickly; ShapesWorld tokenizer unless --tokenizer is given.</summary>
    public static readonly ModelPreset Tiny = new()
    {
        Name = "tiny",
        Summary = "test-sized: LM 2 layers x 64, ViT depth 1 x 32, Infinity depth 2 x 128, BSQ-VAE base_ch 32 codebook 8, pn tiny5 (128x128); vocab = the tokenizer's (ShapesWorld BPE by default)",
        HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        MropeSection = [2, 3, 3], // head_dim 16
        Vision = new VisionConfig { Depth = 1, EmbedDim = 32, NumHeads = 2, MlpRatio = 4, HiddenSize = 64 },
        // 128 wide: Infinity's sos attention pool uses 128-wide heads and text_channels = embed_dim; block_chunks > 1 (cfg insertion asserts it)
        Infinity = new InfinityConfig { Depth = 2, EmbedDim = 128, NumHeads = 4, MlpRatio = 4, BlockChunks = 2, TextChannels = 128, CodebookDim = 8 },
        Vae = new VaeConfig { BaseCh = 32, CodebookDim = 8, EncoderChMult = [1, 1, 1, 1, 1], DecoderChMult = [1, 1, 1, 1, 1], NumResBlocks = 1 },
        Pn = "tiny5",
        CustomPns = [Tiny5],
        DefaultDType = ScalarType.Float32,
        HasDefaultTokenizer = true,
    };

    public static IReadOnlyList<ModelPreset> All { get; } = [Tiny, Small, Full];

    public static ModelPreset Get(string name) =>
        All.FirstOrDefault(p => string.Equals(p.Name, name.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new InvalidOptionException($"unknown preset '{name}'; expected one of: {string.Join(", ", All.Select(p => p.Name))}");
}
