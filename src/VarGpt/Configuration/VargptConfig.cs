using System.Text.Json;
using System.Text.Json.Nodes;

namespace VarGpt.Configuration;

/// <summary>Qwen2-VL vision tower settings (config.json "vision_config"; official Qwen2VLVisionConfig).</summary>
public sealed record VisionConfig
{
    public int Depth { get; init; } = 32;
    public int EmbedDim { get; init; } = 1280;
    public int NumHeads { get; init; } = 16;
    public double MlpRatio { get; init; } = 4;
    /// <summary>Merger output width = the language model's hidden size.</summary>
    public int HiddenSize { get; init; } = 3584;
    /// <summary>The released config has no hidden_act, so the class default quick_gelu applies.</summary>
    public string HiddenAct { get; init; } = "quick_gelu";
    /// <summary>The class reads in_channels (default 3); the released config's in_chans is ignored.</summary>
    public int InChannels { get; init; } = 3;
    public int PatchSize { get; init; } = 14;
    public int SpatialMergeSize { get; init; } = 2;
    public int TemporalPatchSize { get; init; } = 2;

    public int HeadDim => EmbedDim / NumHeads;
    public int MlpHidden => (int)(EmbedDim * MlpRatio);

    public static VisionConfig Parse(JsonFields j) => new()
    {
        Depth = j.Int("depth", 32),
        EmbedDim = j.Int("embed_dim", 1280),
        NumHeads = j.Int("num_heads", 16),
        MlpRatio = j.Double("mlp_ratio", 4),
        HiddenSize = j.Int("hidden_size", 3584),
        HiddenAct = j.Str("hidden_act", "quick_gelu"),
        InChannels = j.Int("in_channels", 3),
        PatchSize = j.Int("patch_size", 14),
        SpatialMergeSize = j.Int("spatial_merge_size", 2),
        TemporalPatchSize = j.Int("temporal_patch_size", 2),
    };
}

/// <summary>
/// Infinity visual decoder size. The official config.json has no such block: VARGPT hard-codes infinity_2b in the model
/// constructor. We read an optional "vargpt_gen_config" object (written by our init/training for small models) and fall
/// back to the released infinity_2b shape, so official checkpoints load unchanged.
/// </summary>
public sealed record InfinityConfig
{
    public int Depth { get; init; } = 32;
    public int EmbedDim { get; init; } = 2048;
    public int NumHeads { get; init; } = 16;
    public double MlpRatio { get; init; } = 4;
    public int BlockChunks { get; init; } = 8;
    /// <summary>Width of the sos embedding / cfg_uncond rows (VARGPT forces it to equal embed_dim).</summary>
    public int TextChannels { get; init; } = 2048;
    /// <summary>Rows of cfg_uncond = the longest cross-attention context the unconditional branch supports.</summary>
    public int TextMaxLen { get; init; } = 512;
    /// <summary>Bits per token (BSQ codebook_dim); the head emits 2 logits per bit.</summary>
    public int CodebookDim { get; init; } = 32;
    public double NormEps { get; init; } = 1e-6;
    public int PadToMultiplier { get; init; } = 128;
    public int LevelEmbeddings { get; init; } = 15;
    /// <summary>Attention-pool heads are 128 wide in the official TextAttentivePool.</summary>
    public int PoolHeadDim { get; init; } = 128;
    public double DropPathRate { get; init; } = 0.1;
    public double CondDropRate { get; init; } = 0.1;

    public int HeadDim => EmbedDim / NumHeads;
    /// <summary>round(C * mlp_ratio / 256) * 256 with half-to-even rounding; 0 falls back to C (official FFN width rule).</summary>
    public int FfnHidden
    {
        get
        {
            int h = (int)Math.Round(EmbedDim * MlpRatio / 256, MidpointRounding.ToEven) * 256;
            return h == 0 ? EmbedDim : h;
        }
    }

    public static InfinityConfig Parse(JsonFields j) => new()
    {
        Depth = j.Int("depth", 32),
        EmbedDim = j.Int("embed_dim", 2048),
        NumHeads = j.Int("num_heads", 16),
        MlpRatio = j.Double("mlp_ratio", 4),
        BlockChunks = j.Int("block_chunks", 8),
        TextChannels = j.Int("text_channels", j.Int("embed_dim", 2048)),
        TextMaxLen = j.Int("text_maxlen", 512),
        CodebookDim = j.Int("codebook_dim", 32),
        NormEps = j.Double("norm_eps", 1e-6),
        PadToMultiplier = j.Int("pad_to_multiplier", 128),
        DropPathRate = j.Double("drop_path_rate", 0.1),
        CondDropRate = j.Double("cond_drop_rate", 0.1),
    };

    public JsonObject ToJson() => new()
    {
        ["depth"] = Depth, ["embed_dim"] = EmbedDim, ["num_heads"] = NumHeads, ["mlp_ratio"] = MlpRatio,
        ["block_chunks"] = BlockChunks, ["text_channels"] = TextChannels, ["text_maxlen"] = TextMaxLen,
        ["codebook_dim"] = CodebookDim, ["norm_eps"] = NormEps, ["pad_to_multiplier"] = PadToMultiplier,
        ["drop_path_rate"] = DropPathRate, ["cond_drop_rate"] = CondDropRate,
    };
}

/// <summary>BSQ-VAE size (optional "vae_config"; defaults = the released d32 VAE of Infinity).</summary>
public sealed record VaeConfig
{
    public int BaseCh { get; init; } = 128;
    public int CodebookDim { get; init; } = 32;
    public int[] EncoderChMult { get; init; } = [1, 2, 4, 4, 4];
    public int[] DecoderChMult { get; init; } = [1, 2, 4, 4, 4];
    /// <summary>Encoder res-blocks per level; the decoder has one more.</summary>
    public int NumResBlocks { get; init; } = 2;
    public int PatchSize { get; init; } = 16;

    public static VaeConfig Parse(JsonFields j) => new()
    {
        BaseCh = j.Int("base_ch", 128),
        CodebookDim = j.Int("codebook_dim", 32),
        EncoderChMult = j.Ints("encoder_ch_mult", j.Ints("ch_mult", [1, 2, 4, 4, 4])),
        DecoderChMult = j.Ints("decoder_ch_mult", j.Ints("ch_mult", [1, 2, 4, 4, 4])),
        NumResBlocks = j.Int("num_res_blocks", 2),
        PatchSize = j.Int("patch_size", 16),
    };

    public JsonObject ToJson() => new()
    {
        ["base_ch"] = BaseCh, ["codebook_dim"] = CodebookDim,
        ["encoder_ch_mult"] = new JsonArray(EncoderChMult.Select(x => (JsonNode)x).ToArray()),
        ["decoder_ch_mult"] = new JsonArray(DecoderChMult.Select(x => (JsonNode)x).ToArray()),
        ["num_res_blocks"] = NumResBlocks, ["patch_size"] = PatchSize,
    };
}

/// <summary>Ids of the three VARGPT image-generation tokens (config.json "special_tokens"). Never hard-coded.</summary>
public sealed record ImageGenTokens(int StartId, int EndId, int PadId, string Start = "<|image_gen_start|>", string End = "<|image_gen_end|>", string Pad = "<|image_gen_pad|>");

/// <summary>
/// The VARGPT-v1.1 checkpoint config.json (official VARGPTQwen2VLConfig) plus the optional size blocks for the
/// generation half. Unknown fields are ignored; required fields missing give an error naming the file and key.
/// </summary>
public sealed record VargptConfig
{
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int NumKeyValueHeads { get; init; }
    public string HiddenAct { get; init; } = "silu";
    public int MaxPositionEmbeddings { get; init; } = 32768;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 1e6;
    /// <summary>rope_scaling.mrope_section (sums to head_dim/2); the "type" rename to "default" does not change its meaning.</summary>
    public int[] MropeSection { get; init; } = [16, 24, 24];
    public int SlidingWindow { get; init; } = 32768;
    public bool UseSlidingWindow { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public int BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = [];
    public int PadTokenId { get; init; }
    public int VisionStartTokenId { get; init; }
    public int VisionEndTokenId { get; init; }
    public int VisionTokenId { get; init; }
    public int ImageTokenId { get; init; }
    public int VideoTokenId { get; init; }
    public ImageGenTokens ImageGen { get; init; } = new(0, 0, 0);
    public VisionConfig Vision { get; init; } = new();
    public InfinityConfig Infinity { get; init; } = new();
    public VaeConfig Vae { get; init; } = new();
    /// <summary>Default generation resolution name (official vargpt_gen_args.pn, '0.25M' = 512x512).</summary>
    public string Pn { get; init; } = "0.25M";
    /// <summary>
    /// Non-standard resolution entries from "vargpt_gen_args".custom_pn_entries ({"TEMPLATE/PN": {"pixel": [h, w],
    /// "scales": [[t, h, w], ...]}}), so a model whose pn is e.g. "tiny5" is reproducible from config.json alone.
    /// Empty for the official checkpoint. Setting it sets <see cref="Schedules"/>.
    /// </summary>
    public IReadOnlyList<ScaleSchedule> CustomPns
    {
        get => _customPns;
        init
        {
            Schedules = ScaleSchedules.Official.With(value);
            _customPns = value;
        }
    }
    readonly IReadOnlyList<ScaleSchedule> _customPns = [];

    /// <summary>This model's dynamic-resolution table: the official entries plus <see cref="CustomPns"/>.</summary>
    public ScaleSchedules Schedules { get; private init; } = ScaleSchedules.Official;
    public string TorchDtype { get; init; } = "bfloat16";
    /// <summary>The raw JSON, kept so that saving a checkpoint preserves fields we do not model.</summary>
    public JsonObject Raw { get; init; } = new();

    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>Reads config.json (or DIR/config.json when given a folder).</summary>
    public static VargptConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, "config.json");
        using var doc = JsonFields.ParseFile(path, "config file");
        return Parse(doc.RootElement, path);
    }

    public static VargptConfig Parse(JsonElement root, string source)
    {
        var j = new JsonFields(root, source);
        var st = j.Obj("special_tokens");
        var rope = j.Has("rope_scaling") ? j.Obj("rope_scaling") : default;
        var cfg = new VargptConfig
        {
            VocabSize = j.Int("vocab_size"),
            HiddenSize = j.Int("hidden_size"),
            IntermediateSize = j.Int("intermediate_size"),
            NumHiddenLayers = j.Int("num_hidden_layers"),
            NumAttentionHeads = j.Int("num_attention_heads"),
            NumKeyValueHeads = j.Int("num_key_value_heads", j.Int("num_attention_heads")),
            HiddenAct = j.Str("hidden_act", "silu"),
            MaxPositionEmbeddings = j.Int("max_position_embeddings", 32768),
            RmsNormEps = j.Double("rms_norm_eps", 1e-6),
            RopeTheta = j.Double("rope_theta", 1e6),
            MropeSection = j.Has("rope_scaling") ? rope.Ints("mrope_section") : throw new InvalidDataException($"{source}: missing required field 'rope_scaling' (with mrope_section)"),
            SlidingWindow = j.Int("sliding_window", 32768),
            UseSlidingWindow = j.Bool("use_sliding_window", false),
            TieWordEmbeddings = j.Bool("tie_word_embeddings", false),
            BosTokenId = j.Int("bos_token_id"),
            EosTokenIds = j.IntOrInts("eos_token_id"),
            PadTokenId = j.Int("pad_token_id", j.Int("bos_token_id")),
            VisionStartTokenId = j.Int("vision_start_token_id"),
            VisionEndTokenId = j.Int("vision_end_token_id"),
            VisionTokenId = j.Int("vision_token_id"),
            ImageTokenId = j.Int("image_token_id"),
            VideoTokenId = j.Int("video_token_id"),
            ImageGen = new ImageGenTokens(st.Int("image_gen_start_token_id"), st.Int("image_gen_end_token_id"), st.Int("image_gen_pad_token_id"),
                st.Str("image_gen_start", "<|image_gen_start|>"), st.Str("image_gen_end", "<|image_gen_end|>"), st.Str("image_gen_pad", "<|image_gen_pad|>")),
            Vision = j.Has("vision_config") ? VisionConfig.Parse(j.Obj("vision_config")) : throw new InvalidDataException($"{source}: missing required field 'vision_config'"),
            Infinity = j.Has("vargpt_gen_config") ? InfinityConfig.Parse(j.Obj("vargpt_gen_config")) : new InfinityConfig(),
            Vae = j.Has("vae_config") ? VaeConfig.Parse(j.Obj("vae_config")) : new VaeConfig(),
            Pn = j.Has("vargpt_gen_args") ? j.Obj("vargpt_gen_args").Str("pn", "0.25M") : "0.25M",
            CustomPns = j.Has("vargpt_gen_args") && j.Obj("vargpt_gen_args").Has("custom_pn_entries")
                ? ParseCustomPns(j.Obj("vargpt_gen_args").Obj("custom_pn_entries")) : [],
            TorchDtype = j.Str("torch_dtype", "bfloat16"),
            Raw = JsonNode.Parse(root.GetRawText())!.AsObject(),
        };
        if (cfg.HiddenSize % cfg.NumAttentionHeads != 0)
            throw new InvalidDataException($"{source}: hidden_size {cfg.HiddenSize} is not divisible by num_attention_heads {cfg.NumAttentionHeads}");
        if (cfg.NumAttentionHeads % cfg.NumKeyValueHeads != 0)
            throw new InvalidDataException($"{source}: num_attention_heads {cfg.NumAttentionHeads} is not divisible by num_key_value_heads {cfg.NumKeyValueHeads}");
        if (cfg.MropeSection.Sum() * 2 != cfg.HeadDim)
            throw new InvalidDataException($"{source}: rope_scaling.mrope_section [{string.Join(",", cfg.MropeSection)}] must sum to head_dim/2 = {cfg.HeadDim / 2}");
        return cfg;
    }

    /// <summary>
    /// Parses "custom_pn_entries". Hand-written on purpose: the keys are "TEMPLATE/PN" strings and the entries nested
    /// int lists, and every malformed entry (or a clash with an official one) must name its key.
    /// </summary>
    public static ScaleSchedule[] ParseCustomPns(JsonFields entries)
    {
        var list = new List<ScaleSchedule>();
        foreach (var prop in entries.Element.EnumerateObject())
        {
            string where = $"{entries.Source}.{prop.Name}";
            int slash = prop.Name.IndexOf('/');
            if (slash <= 0 || slash == prop.Name.Length - 1 ||
                !double.TryParse(prop.Name[..slash], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double template))
                throw new InvalidDataException($"{where}: key must be \"TEMPLATE/PN\" (e.g. \"1.0/tiny5\")");
            var e = entries.Obj(prop.Name);
            var pixel = e.Ints("pixel");
            if (pixel.Length != 2) throw new InvalidDataException($"{where}: 'pixel' must be [h, w]");
            if (!e.Has("scales") || e.Element.GetProperty("scales").ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"{where}: missing field 'scales' (a list of [t, h, w])");
            var scales = new List<Scale>();
            foreach (var sc in e.Element.GetProperty("scales").EnumerateArray())
            {
                if (sc.ValueKind != JsonValueKind.Array || sc.GetArrayLength() != 3 || sc.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int v) || v <= 0))
                    throw new InvalidDataException($"{where}: each scale must be [t, h, w] of positive integers, found {sc.GetRawText()}");
                scales.Add(new Scale(sc[0].GetInt32(), sc[1].GetInt32(), sc[2].GetInt32()));
            }
            if (scales.Count == 0) throw new InvalidDataException($"{where}: 'scales' is empty");
            var schedule = new ScaleSchedule(template, prop.Name[(slash + 1)..], (pixel[0], pixel[1]), scales);
            try { ScaleSchedules.Official.With(list.Append(schedule)); }
            catch (ArgumentException ex) { throw new InvalidDataException($"{where}: {ex.Message}"); }
            list.Add(schedule);
        }
        return list.ToArray();
    }
}
