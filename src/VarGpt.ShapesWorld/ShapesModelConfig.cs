using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Configuration;

namespace VarGpt.ShapesWorld;

/// <summary>
/// Sizes of the shipped ShapesWorld VARGPT: the same architecture as VARGPT-v1.1 (Qwen2-VL vision tower + Qwen2 LM with
/// M-RoPE, Infinity next-scale bitwise decoder, BSQ-VAE, two projectors, sos embedding), scaled down so that the whole
/// recipe trains from scratch on a 2-core CPU in about an hour and the bf16 weights stay under 40 MB. Figures and the
/// reasoning behind each choice: docs/shapesworld.md.
/// <para>The model folder is self-describing: config.json carries "vision_config", "vargpt_gen_config", "vae_config",
/// "vargpt_gen_args".pn and the "custom_pn_entries" that register the 128×128 scale schedule (see
/// <see cref="VargptConfig.CustomPns"/>); preprocessor_config.json bounds understanding images to 112×112.</para>
/// </summary>
public sealed record ShapesModelConfig
{
    // ---- images ----
    /// <summary>Side of generated images and of the dataset renders (BSQ-VAE patch 8 → an 8×8 latent). 64 px is a quarter
    /// of the convolution cost of 128 px, and the scorer reads 64 px renders at 100%.</summary>
    public int ImageSize { get; init; } = 64;
    /// <summary>Name of the generation resolution entry (template 1.0); 64×64 = 0.004 Mpx, in the style of the official names.</summary>
    public string Pn { get; init; } = "0.004M";
    /// <summary>Next-scale schedule on the 8×8 latent: the first five entries of the official 1:1 table (121 tokens), the
    /// same schedule as the golden fixtures' fx5. t as in the official table (images use t = 1).</summary>
    public IReadOnlyList<Scale> Scales { get; init; } = [new(1, 1, 1), new(2, 2, 2), new(3, 4, 4), new(4, 6, 6), new(5, 8, 8)];
    /// <summary>Understanding images are resized to this side (smart_resize): 84×84 = 6×6 patches of 14 px → 3×3 merged
    /// tokens, one per third of the image, so each of the five positions (left, right, top, bottom, centre) falls in
    /// exactly one token (an object's box stays inside its third: anchors 0.21/0.5/0.79, half side ≤ 0.12).</summary>
    public int UnderstandingSide { get; init; } = 84;
    /// <summary>max_pixels of the image processor: larger images shrink to 84² (7100 is just above 84² = 7056, away from
    /// the rounding edge of smart_resize's floor).</summary>
    public int MaxPixels { get; init; } = 7100;
    /// <summary>min_pixels: 64² renders grow to 84² (smart_resize's ceil branch; 7000 keeps it off the rounding edge).</summary>
    public int MinPixels { get; init; } = 7000;

    // ---- language model (Qwen2 with M-RoPE) ----
    public int HiddenSize { get; init; } = 256;
    public int NumHiddenLayers { get; init; } = 4;
    public int NumAttentionHeads { get; init; } = 4;
    public int NumKeyValueHeads { get; init; } = 2;
    public int IntermediateSize { get; init; } = 768;
    /// <summary>t/h/w rotary sections, summing to head_dim/2 = 32 (the official 16/24/24 split of 64, halved).</summary>
    public int[] MropeSection { get; init; } = [8, 12, 12];

    // ---- vision tower ----
    public int VisionDepth { get; init; } = 4;
    public int VisionEmbedDim { get; init; } = 192;
    public int VisionHeads { get; init; } = 4;
    public double VisionMlpRatio { get; init; } = 4;

    // ---- Infinity ----
    public int InfinityDepth { get; init; } = 6;
    /// <summary>A multiple of 128 (the sos attention pool has 128-wide heads); text_channels = embed_dim.</summary>
    public int InfinityEmbedDim { get; init; } = 256;
    public int InfinityHeads { get; init; } = 4;
    public double InfinityMlpRatio { get; init; } = 4;
    public int InfinityBlockChunks { get; init; } = 2;
    /// <summary>Rows of cfg_uncond = the longest cross-attention context (all tokens before &lt;|image_gen_start|&gt;,
    /// editing prompts included); ShapesWorld prompts need fewer than 80 (see the tests).</summary>
    public int TextMaxLen { get; init; } = 128;

    // ---- BSQ-VAE ----
    /// <summary>GroupNorm needs channel counts divisible by 32 or 24. 48 gives 24 groups of 2 channels at full resolution:
    /// with 32 (one channel per group) the decoder's last norm turns each channel into a per-image z-score, so an object's
    /// colour depended on how much of the white image was foreground (measured: reconstructions collapsed to 3–4 hues).</summary>
    public int VaeBaseCh { get; init; } = 48;
    public int[] VaeChMult { get; init; } = [1, 1, 2, 2];
    public int VaeNumResBlocks { get; init; } = 1;
    /// <summary>Bits per latent cell (BSQ codebook_dim): Infinity emits 2 logits per bit.</summary>
    public int CodebookDim { get; init; } = 16;

    /// <summary>Pixels per latent cell (BSQ-VAE spatial stride, official patch_size); the VAE has log2 of it downsampling levels.</summary>
    public int VaePatchSize { get; init; } = 8;
    public const double Template = 1.0;

    /// <summary>Vocabulary rows: the tokenizer's size rounded up to a multiple of 64 (as Qwen2 pads its vocabulary).</summary>
    public static int VocabSizeFor(ByteLevelBpeTokenizer tokenizer) => (tokenizer.VocabSize + 63) / 64 * 64;

    /// <summary>Latent side of a generated image.</summary>
    public int LatentSide => ImageSize / VaePatchSize;

    /// <summary>Infinity's pad_to_multiplier: the VAR sequence (and the &lt;|image_gen_pad|&gt; block) is padded to a
    /// multiple of it (official 128, for flash-attention tiles). Padding rows cost language-model and Infinity time
    /// without carrying anything, so the small model uses 1.</summary>
    public int InfinityPadToMultiplier { get; init; } = 1;

    /// <summary>config.json of the model for <paramref name="tokenizer"/> (token ids are read from it, never hard-coded).</summary>
    public JsonObject ConfigJson(ByteLevelBpeTokenizer tokenizer)
    {
        Validate();
        int Id(string t) => tokenizer.SpecialTokenIds.TryGetValue(t, out var id) ? id
            : throw new InvalidFileException($"the ShapesWorld tokenizer has no special token {t}");
        static JsonArray Arr(IEnumerable<int> xs) => new(xs.Select(x => (JsonNode)x).ToArray());
        var infinity = new InfinityConfig
        {
            Depth = InfinityDepth, EmbedDim = InfinityEmbedDim, NumHeads = InfinityHeads, MlpRatio = InfinityMlpRatio,
            BlockChunks = InfinityBlockChunks, TextChannels = InfinityEmbedDim, TextMaxLen = TextMaxLen, CodebookDim = CodebookDim,
            PadToMultiplier = InfinityPadToMultiplier,
        };
        var vae = new VaeConfig
        {
            BaseCh = VaeBaseCh, CodebookDim = CodebookDim, EncoderChMult = VaeChMult, DecoderChMult = VaeChMult,
            NumResBlocks = VaeNumResBlocks, PatchSize = VaePatchSize,
        };
        var last = Scales[^1];
        return new JsonObject
        {
            ["architectures"] = new JsonArray("VARGPTQwen2VLForConditionalGeneration"),
            ["model_type"] = "vargpt_qwen2_vl",
            ["vocab_size"] = VocabSizeFor(tokenizer),
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = 4096,
            ["max_window_layers"] = NumHiddenLayers,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 1000000.0,
            ["rope_scaling"] = new JsonObject { ["type"] = "mrope", ["mrope_section"] = Arr(MropeSection) },
            ["sliding_window"] = 4096,
            ["use_sliding_window"] = false,
            ["tie_word_embeddings"] = false,
            ["attention_dropout"] = 0.0,
            ["initializer_range"] = 0.02,
            ["use_cache"] = true,
            ["torch_dtype"] = "bfloat16",
            ["bos_token_id"] = Id("<|endoftext|>"),
            ["eos_token_id"] = Id("<|im_end|>"),
            ["pad_token_id"] = Id("<|endoftext|>"),
            ["vision_start_token_id"] = Id("<|vision_start|>"),
            ["vision_end_token_id"] = Id("<|vision_end|>"),
            ["vision_token_id"] = Id("<|vision_pad|>"),
            ["image_token_id"] = Id("<|image_pad|>"),
            ["video_token_id"] = Id("<|video_pad|>"),
            ["special_tokens"] = new JsonObject
            {
                ["image_gen_start"] = "<|image_gen_start|>", ["image_gen_start_token_id"] = Id("<|image_gen_start|>"),
                ["image_gen_end"] = "<|image_gen_end|>", ["image_gen_end_token_id"] = Id("<|image_gen_end|>"),
                ["image_gen_pad"] = "<|image_gen_pad|>", ["image_gen_pad_token_id"] = Id("<|image_gen_pad|>"),
            },
            ["vision_config"] = new JsonObject
            {
                ["depth"] = VisionDepth, ["embed_dim"] = VisionEmbedDim, ["num_heads"] = VisionHeads, ["mlp_ratio"] = VisionMlpRatio,
                ["hidden_size"] = HiddenSize, ["in_channels"] = 3, ["patch_size"] = 14, ["spatial_merge_size"] = 2,
                ["spatial_patch_size"] = 14, ["temporal_patch_size"] = 2,
            },
            ["vargpt_gen_config"] = infinity.ToJson(),
            ["vae_config"] = vae.ToJson(),
            ["vargpt_gen_args"] = new JsonObject
            {
                ["pn"] = Pn, ["h_div_w_template"] = Template, ["use_bit_label"] = 1, ["bitloss_type"] = "mean", ["reweight_loss_by_scale"] = 1,
                ["custom_pn_entries"] = new JsonObject
                {
                    [string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Template:0.0}/{Pn}")] = new JsonObject
                    {
                        ["pixel"] = new JsonArray(last.H * VaePatchSize, last.W * VaePatchSize),
                        ["scales"] = new JsonArray(Scales.Select(s => (JsonNode)new JsonArray(s.T, s.H, s.W)).ToArray()),
                    },
                },
            },
        };
    }

    /// <summary>The typed config (parsing also registers the scale schedule).</summary>
    public VargptConfig ToVargptConfig(ByteLevelBpeTokenizer tokenizer)
    {
        using var doc = JsonDocument.Parse(ConfigJson(tokenizer).ToJsonString());
        return VargptConfig.Parse(doc.RootElement, "ShapesWorld model config");
    }

    /// <summary>preprocessor_config.json: the Qwen2-VL processor with max_pixels bounding 128² renders to 112².</summary>
    public JsonObject PreprocessorJson() => new()
    {
        ["image_processor_type"] = "Qwen2VLImageProcessor",
        ["processor_class"] = "Qwen2VLProcessor",
        ["do_resize"] = true, ["do_rescale"] = true, ["do_normalize"] = true, ["do_convert_rgb"] = true,
        ["resample"] = 3, ["rescale_factor"] = 1.0 / 255,
        ["image_mean"] = new JsonArray(0.48145466, 0.4578275, 0.40821073),
        ["image_std"] = new JsonArray(0.26862954, 0.26130258, 0.27577711),
        ["min_pixels"] = MinPixels, ["max_pixels"] = MaxPixels,
        ["patch_size"] = 14, ["temporal_patch_size"] = 2, ["merge_size"] = 2,
    };

    /// <summary>generation_config.json: greedy text (answers are exact words), eos = &lt;|im_end|&gt;.</summary>
    public JsonObject GenerationConfigJson(ByteLevelBpeTokenizer tokenizer)
    {
        var t = tokenizer.SpecialTokenIds;
        return new JsonObject
        {
            ["bos_token_id"] = t["<|endoftext|>"], ["pad_token_id"] = t["<|endoftext|>"],
            ["eos_token_id"] = new JsonArray(t["<|im_end|>"], t["<|endoftext|>"]),
            ["do_sample"] = false, ["max_new_tokens"] = 64,
            ["special_tokens"] = new JsonObject
            {
                ["image_gen_start"] = "<|image_gen_start|>", ["image_gen_start_token_id"] = t["<|image_gen_start|>"],
                ["image_gen_end"] = "<|image_gen_end|>", ["image_gen_end_token_id"] = t["<|image_gen_end|>"],
                ["image_gen_pad"] = "<|image_gen_pad|>", ["image_gen_pad_token_id"] = t["<|image_gen_pad|>"],
            },
        };
    }

    /// <summary>Writes config.json, preprocessor_config.json, generation_config.json and the tokenizer files (no weights).</summary>
    public void WriteModelFolder(string dir, ByteLevelBpeTokenizer tokenizer)
    {
        Directory.CreateDirectory(dir);
        var o = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(dir, "config.json"), ConfigJson(tokenizer).ToJsonString(o));
        File.WriteAllText(Path.Combine(dir, PreprocessorConfig.FileName), PreprocessorJson().ToJsonString(o));
        File.WriteAllText(Path.Combine(dir, GenerationConfig.FileName), GenerationConfigJson(tokenizer).ToJsonString(o));
        tokenizer.Save(dir);
    }

    /// <summary>The size rules of the official code, checked up front with messages naming the field.</summary>
    public void Validate()
    {
        void Need(bool ok, string msg) { if (!ok) throw new ArgumentException("ShapesModelConfig: " + msg); }
        Need(HiddenSize % NumAttentionHeads == 0, $"hidden size {HiddenSize} not divisible by {NumAttentionHeads} heads");
        Need(NumAttentionHeads % NumKeyValueHeads == 0, $"{NumAttentionHeads} heads not divisible by {NumKeyValueHeads} kv heads");
        Need(MropeSection.Sum() * 2 == HiddenSize / NumAttentionHeads, $"mrope_section [{string.Join(",", MropeSection)}] must sum to head_dim/2 = {HiddenSize / NumAttentionHeads / 2}");
        Need(VisionEmbedDim % VisionHeads == 0 && VisionEmbedDim / VisionHeads % 4 == 0, $"vision head_dim {VisionEmbedDim}/{VisionHeads} must be an integer divisible by 4");
        Need(InfinityEmbedDim % 128 == 0, $"Infinity embed_dim {InfinityEmbedDim} must be a multiple of 128 (128-wide sos pool heads)");
        Need(InfinityEmbedDim % InfinityHeads == 0 && InfinityEmbedDim / InfinityHeads % 4 == 0, $"Infinity head_dim {InfinityEmbedDim}/{InfinityHeads} must be an integer divisible by 4");
        Need(InfinityDepth % InfinityBlockChunks == 0, $"Infinity depth {InfinityDepth} not divisible by block_chunks {InfinityBlockChunks}");
        Need(VaeChMult.All(m => VaeBaseCh * m % 32 == 0 || VaeBaseCh * m % 24 == 0), $"VAE channels {VaeBaseCh}×[{string.Join(",", VaeChMult)}] must be divisible by 32 or 24 (GroupNorm)");
        Need(VaeChMult.Length > Math.Log2(VaePatchSize), $"VAE needs more than log2({VaePatchSize}) levels to downsample by {VaePatchSize}");
        Need(ImageSize % VaePatchSize == 0, $"image size {ImageSize} must be a multiple of the VAE patch {VaePatchSize}");
        Need(Scales.Count > 0 && Scales[^1].H == LatentSide && Scales[^1].W == LatentSide, $"the last scale must be the {LatentSide}×{LatentSide} latent");
    }
}
