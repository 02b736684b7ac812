using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace VarGpt.Configuration;

// The config.json of a VARGPT-v1.1 checkpoint as records: property names are the file's keys (snake_case), each
// default is the official class default and is stated once, here. Fields the official constructors hard-code
// (Infinity, BSQ-VAE sizes) come from optional blocks this port writes for non-released sizes. The size blocks compare
// by value (a preset equals the config it wrote), so their unknown keys (e.g. vision_config.in_chans) are skipped;
// the top-level record and rope_scaling / vargpt_gen_args keep theirs in Extra.

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

    [JsonIgnore] public int HeadDim => EmbedDim / NumHeads;
    [JsonIgnore] public int MlpHidden => (int)(EmbedDim * MlpRatio);
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
    /// <summary>Width of the sos embedding / cfg_uncond rows (VARGPT forces it to equal embed_dim; default embed_dim).</summary>
    public int TextChannels { get => _textChannels ?? EmbedDim; init => _textChannels = value; }
    int? _textChannels;
    /// <summary>Rows of cfg_uncond = the longest cross-attention context the unconditional branch supports.</summary>
    [JsonPropertyName("text_maxlen")] public int TextMaxLen { get; init; } = 512;
    /// <summary>Bits per token (BSQ codebook_dim); the head emits 2 logits per bit.</summary>
    public int CodebookDim { get; init; } = 32;
    public double NormEps { get; init; } = 1e-6;
    public int PadToMultiplier { get; init; } = 128;
    public double DropPathRate { get; init; } = 0.1;
    public double CondDropRate { get; init; } = 0.1;

    /// <summary>Level embeddings of the official constructor (not configurable there).</summary>
    [JsonIgnore] public int LevelEmbeddings { get; init; } = 15;
    /// <summary>Attention-pool heads are 128 wide in the official TextAttentivePool.</summary>
    [JsonIgnore] public int PoolHeadDim { get; init; } = 128;
    [JsonIgnore] public int HeadDim => EmbedDim / NumHeads;
    /// <summary>round(C * mlp_ratio / 256) * 256 with half-to-even rounding; 0 falls back to C (official FFN width rule).</summary>
    [JsonIgnore]
    public int FfnHidden
    {
        get
        {
            int h = (int)Math.Round(EmbedDim * MlpRatio / 256, MidpointRounding.ToEven) * 256;
            return h == 0 ? EmbedDim : h;
        }
    }

    public System.Text.Json.Nodes.JsonObject ToJson() => System.Text.Json.Nodes.JsonNode.Parse(ConfigJson.Serialize(this))!.AsObject();
}

/// <summary>BSQ-VAE size (optional "vae_config"; defaults = the released d32 VAE of Infinity).</summary>
public sealed record VaeConfig
{
    public int BaseCh { get; init; } = 128;
    public int CodebookDim { get; init; } = 32;
    /// <summary>Default: ch_mult, else [1, 2, 4, 4, 4].</summary>
    public int[] EncoderChMult { get => _encoder ?? ChMult ?? [1, 2, 4, 4, 4]; init => _encoder = value; }
    int[]? _encoder;
    /// <summary>Default: ch_mult, else [1, 2, 4, 4, 4].</summary>
    public int[] DecoderChMult { get => _decoder ?? ChMult ?? [1, 2, 4, 4, 4]; init => _decoder = value; }
    int[]? _decoder;
    /// <summary>Both multipliers at once (the official single-list spelling).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int[]? ChMult { get; init; }
    /// <summary>Encoder res-blocks per level; the decoder has one more.</summary>
    public int NumResBlocks { get; init; } = 2;
    public int PatchSize { get; init; } = 16;

    public System.Text.Json.Nodes.JsonObject ToJson() => System.Text.Json.Nodes.JsonNode.Parse(ConfigJson.Serialize(this))!.AsObject();
}

/// <summary>Ids of the three VARGPT image-generation tokens (config.json "special_tokens"). Never hard-coded.</summary>
public sealed record ImageGenTokens(
    [property: JsonPropertyName("image_gen_start_token_id")] int StartId,
    [property: JsonPropertyName("image_gen_end_token_id")] int EndId,
    [property: JsonPropertyName("image_gen_pad_token_id")] int PadId,
    [property: JsonPropertyName("image_gen_start")] string Start = "<|image_gen_start|>",
    [property: JsonPropertyName("image_gen_end")] string End = "<|image_gen_end|>",
    [property: JsonPropertyName("image_gen_pad")] string Pad = "<|image_gen_pad|>");

/// <summary>config.json "rope_scaling": the M-RoPE sections (VARGPTQwen2VLConfig renames type "mrope" to "default"; the meaning is unchanged).</summary>
public sealed record RopeScaling
{
    /// <summary>t/h/w rotary sections, summing to head_dim/2.</summary>
    [JsonRequired] public int[] MropeSection { get; init; } = [16, 24, 24];
    public string? Type { get; init; }
    public string? RopeType { get; init; }
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }
}

/// <summary>config.json "vargpt_gen_args" (official get_vargpt_gen_args): the default resolution and this port's custom entries.</summary>
public sealed record VargptGenArgs
{
    /// <summary>Default generation resolution name (official vargpt_gen_args.pn, '0.25M' = 512x512).</summary>
    public string Pn { get; init; } = "0.25M";
    /// <summary>
    /// Non-standard resolution entries ({"TEMPLATE/PN": {"pixel": [h, w], "scales": [[t, h, w], ...]}}), so a model whose
    /// pn is e.g. "tiny5" is reproducible from config.json alone. Empty for the official checkpoint.
    /// </summary>
    [JsonConverter(typeof(CustomPnEntriesConverter))]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public IReadOnlyList<ScaleSchedule> CustomPnEntries { get; init; } = [];
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }
}

/// <summary>
/// The VARGPT-v1.1 checkpoint config.json (official VARGPTQwen2VLConfig) plus the optional size blocks for the
/// generation half. Unknown fields are kept in <see cref="Extra"/>; a required field missing gives an error naming the
/// file and key.
/// </summary>
public sealed record VargptConfig
{
    [JsonRequired] public int VocabSize { get; init; }
    [JsonRequired] public int HiddenSize { get; init; }
    [JsonRequired] public int IntermediateSize { get; init; }
    [JsonRequired] public int NumHiddenLayers { get; init; }
    [JsonRequired] public int NumAttentionHeads { get; init; }
    /// <summary>Default: num_attention_heads (no grouped-query attention).</summary>
    public int NumKeyValueHeads { get => _kvHeads ?? NumAttentionHeads; init => _kvHeads = value; }
    int? _kvHeads;
    public string HiddenAct { get; init; } = "silu";
    public int MaxPositionEmbeddings { get; init; } = 32768;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 1e6;
    [JsonRequired] public RopeScaling RopeScaling { get; init; } = new();
    public int SlidingWindow { get; init; } = 32768;
    public bool UseSlidingWindow { get; init; }
    public bool TieWordEmbeddings { get; init; }
    [JsonRequired] public int BosTokenId { get; init; }
    /// <summary>eos_token_id: an int or a list in the file.</summary>
    [JsonRequired, JsonPropertyName("eos_token_id"), JsonConverter(typeof(ConfigJson.IntOrIntList))] public int[] EosTokenIds { get; init; } = [];
    /// <summary>Default: bos_token_id.</summary>
    public int PadTokenId { get => _pad ?? BosTokenId; init => _pad = value; }
    int? _pad;
    [JsonRequired] public int VisionStartTokenId { get; init; }
    [JsonRequired] public int VisionEndTokenId { get; init; }
    [JsonRequired] public int VisionTokenId { get; init; }
    [JsonRequired] public int ImageTokenId { get; init; }
    [JsonRequired] public int VideoTokenId { get; init; }
    [JsonRequired, JsonPropertyName("special_tokens")] public ImageGenTokens ImageGen { get; init; } = new(0, 0, 0);
    [JsonRequired, JsonPropertyName("vision_config")] public VisionConfig Vision { get; init; } = new();
    [JsonPropertyName("vargpt_gen_config")] public InfinityConfig Infinity { get; init; } = new();
    [JsonPropertyName("vae_config")] public VaeConfig Vae { get; init; } = new();
    [JsonPropertyName("vargpt_gen_args")]
    public VargptGenArgs GenArgs
    {
        get => _genArgs;
        init
        {
            Schedules = ScaleSchedules.Official.With(value.CustomPnEntries);
            _genArgs = value;
        }
    }
    VargptGenArgs _genArgs = new();
    public string TorchDtype { get; init; } = "bfloat16";
    /// <summary>Fields this record does not model (model_type, architectures, ...), kept as read.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }

    /// <summary>rope_scaling.mrope_section.</summary>
    [JsonIgnore] public int[] MropeSection { get => RopeScaling.MropeSection; init => RopeScaling = RopeScaling with { MropeSection = value }; }
    /// <summary>vargpt_gen_args.pn: the default generation resolution.</summary>
    [JsonIgnore] public string Pn { get => GenArgs.Pn; init => GenArgs = GenArgs with { Pn = value }; }
    /// <summary>vargpt_gen_args.custom_pn_entries.</summary>
    [JsonIgnore] public IReadOnlyList<ScaleSchedule> CustomPns { get => GenArgs.CustomPnEntries; init => GenArgs = GenArgs with { CustomPnEntries = value }; }
    /// <summary>This model's dynamic-resolution table: the official entries plus <see cref="CustomPns"/>.</summary>
    [JsonIgnore] public ScaleSchedules Schedules { get; private init; } = ScaleSchedules.Official;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>Reads config.json (or DIR/config.json when given a folder).</summary>
    public static VargptConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, "config.json");
        return Validated(ConfigJson.Read<VargptConfig>(path, "config file"), path);
    }

    public static VargptConfig Parse(JsonElement root, string source) => Validated(ConfigJson.Parse<VargptConfig>(root, source), source);

    static VargptConfig Validated(VargptConfig cfg, string source)
    {
        if (cfg.NumAttentionHeads <= 0 || cfg.HiddenSize % cfg.NumAttentionHeads != 0)
            throw new InvalidFileException($"{source}: hidden_size {cfg.HiddenSize} is not divisible by num_attention_heads {cfg.NumAttentionHeads}");
        if (cfg.NumKeyValueHeads <= 0 || cfg.NumAttentionHeads % cfg.NumKeyValueHeads != 0)
            throw new InvalidFileException($"{source}: num_attention_heads {cfg.NumAttentionHeads} is not divisible by num_key_value_heads {cfg.NumKeyValueHeads}");
        if (cfg.MropeSection.Sum() * 2 != cfg.HeadDim)
            throw new InvalidFileException($"{source}: rope_scaling.mrope_section [{string.Join(",", cfg.MropeSection)}] must sum to head_dim/2 = {cfg.HeadDim / 2}");
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
                throw new InvalidFileException($"{where}: key must be \"TEMPLATE/PN\" (e.g. \"1.0/tiny5\")");
            var e = entries.Obj(prop.Name);
            var pixel = e.Ints("pixel");
            if (pixel.Length != 2) throw new InvalidFileException($"{where}: 'pixel' must be [h, w]");
            if (!e.Has("scales") || e.Element.GetProperty("scales").ValueKind != JsonValueKind.Array)
                throw new InvalidFileException($"{where}: missing field 'scales' (a list of [t, h, w])");
            var scales = new List<Scale>();
            foreach (var sc in e.Element.GetProperty("scales").EnumerateArray())
            {
                if (sc.ValueKind != JsonValueKind.Array || sc.GetArrayLength() != 3 || sc.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int v) || v <= 0))
                    throw new InvalidFileException($"{where}: each scale must be [t, h, w] of positive integers, found {sc.GetRawText()}");
                scales.Add(new Scale(sc[0].GetInt32(), sc[1].GetInt32(), sc[2].GetInt32()));
            }
            if (scales.Count == 0) throw new InvalidFileException($"{where}: 'scales' is empty");
            var schedule = new ScaleSchedule(template, prop.Name[(slash + 1)..], (pixel[0], pixel[1]), scales);
            try { ScaleSchedules.Official.With(list.Append(schedule)); }
            catch (InvalidOptionException ex) { throw new InvalidFileException($"{where}: {ex.Message}"); }
            list.Add(schedule);
        }
        return list.ToArray();
    }
}

/// <summary>custom_pn_entries through <see cref="VargptConfig.ParseCustomPns"/> (the keys are "TEMPLATE/PN" strings, so a record cannot hold them).</summary>
sealed class CustomPnEntriesConverter : JsonConverter<IReadOnlyList<ScaleSchedule>>
{
    public override IReadOnlyList<ScaleSchedule> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        using var doc = JsonDocument.ParseValue(ref reader);
        try { return VargptConfig.ParseCustomPns(new JsonFields(doc.RootElement, "vargpt_gen_args.custom_pn_entries")); }
        catch (InvalidFileException e) { throw new ConfigJson.FieldException(e.Message); }
    }

    public override void Write(Utf8JsonWriter writer, IReadOnlyList<ScaleSchedule> value, JsonSerializerOptions options)
    {
        writer.WriteStartObject();
        foreach (var s in value)
        {
            writer.WritePropertyName(s.Template.ToString("0.0##", CultureInfo.InvariantCulture) + "/" + s.Pn);
            writer.WriteStartObject();
            writer.WritePropertyName("pixel");
            JsonSerializer.Serialize(writer, new[] { s.Pixels.H, s.Pixels.W });
            writer.WritePropertyName("scales");
            JsonSerializer.Serialize(writer, s.RawScales.Select(x => new[] { x.T, x.H, x.W }));
            writer.WriteEndObject();
        }
        writer.WriteEndObject();
    }
}
