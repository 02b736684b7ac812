using System.Text.Json;
using System.Text.Json.Serialization;

namespace VarGpt.Configuration;

/// <summary>
/// generation_config.json (Hugging Face GenerationConfig, copied from Qwen2-VL by VARGPT plus its special_tokens).
/// Defaults are the Hugging Face class defaults, used only when a field is absent; unknown fields are kept in Extra.
/// The file's values matter for fidelity: HF generate() builds a repetition-penalty processor from it even when
/// do_sample is false (reference §2.7), and the image-generation token ids live here too.
/// </summary>
public sealed record GenerationConfig
{
    public const string FileName = "generation_config.json";

    public int? BosTokenId { get; init; }
    /// <summary>eos_token_id may be an int or a list in the file; always a list here. Generation stops for a row once it emits any of these.</summary>
    [JsonPropertyName("eos_token_id"), JsonConverter(typeof(ConfigJson.LongOrLongList))] public long[] EosTokenIds { get; init; } = [];
    /// <summary>Written into rows that already finished (null: the first EOS id, as transformers does).</summary>
    public long? PadTokenId { get; init; }
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    /// <summary>0 disables top-k (transformers' default is 50 and applies whenever sampling).</summary>
    public int TopK { get; init; } = 50;
    public double TopP { get; init; } = 1.0;
    /// <summary>Applied in greedy mode too (transformers builds the processor whenever it is not 1).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>New tokens per sequence; when null, <see cref="MaxLength"/> bounds prompt + new tokens.</summary>
    public int? MaxNewTokens { get; init; }
    public int MaxLength { get; init; } = 20;
    /// <summary>special_tokens (image_gen_start/_end/_pad and their ids); null when the file has none.</summary>
    [JsonPropertyName("special_tokens")] public ImageGenTokens? ImageGen { get; init; }
    /// <summary>allowed_special_tokens (strings the decoder may emit although they are special).</summary>
    public string[] AllowedSpecialTokens { get; init; } = [];
    /// <summary>Fields this record does not model (transformers_version, ...), kept as read.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }

    /// <summary>Reads generation_config.json (or DIR/generation_config.json when given a folder).</summary>
    public static GenerationConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        return Validated(ConfigJson.Read<GenerationConfig>(path, "generation config"), path);
    }

    public static GenerationConfig Parse(JsonElement root, string source) => Validated(ConfigJson.Parse<GenerationConfig>(root, source), source);

    static GenerationConfig Validated(GenerationConfig cfg, string source)
    {
        if (cfg.Temperature < 0) throw new InvalidFileException($"{source}: temperature must be >= 0, found {cfg.Temperature}");
        if (cfg.TopP is <= 0 or > 1) throw new InvalidFileException($"{source}: top_p must be in (0, 1], found {cfg.TopP}");
        if (cfg.RepetitionPenalty <= 0) throw new InvalidFileException($"{source}: repetition_penalty must be > 0, found {cfg.RepetitionPenalty}");
        // what generate would refuse later (e.g. do_sample with temperature 0) is the file's error, named now
        // (was an ArgumentException at the first generate call; found by the config fuzz target: fuzz/regressions/config)
        if (cfg.Problem() is { } problem) throw new InvalidFileException($"{source}: {problem}");
        return cfg;
    }

    /// <summary>EOS/pad from config.json (what transformers falls back to without a generation_config.json).</summary>
    public static GenerationConfig FromModelConfig(VargptConfig c) => new()
    {
        EosTokenIds = c.EosTokenIds.Select(x => (long)x).ToArray(),
        PadTokenId = c.PadTokenId,
        BosTokenId = c.BosTokenId,
        ImageGen = c.ImageGen,
    };

    /// <summary>Rejects values transformers rejects (temperature and penalty must be positive, top_p in [0, 1], ...).</summary>
    public void Validate(string source = "generation config")
    {
        if (Problem() is { } problem) throw new ArgumentException($"{source}: {problem}");
    }

    /// <summary>The first value generate cannot run with, or null.</summary>
    string? Problem()
    {
        if (RepetitionPenalty <= 0) return $"repetition_penalty must be > 0, got {RepetitionPenalty}";
        if (MaxNewTokens is <= 0) return $"max_new_tokens must be > 0, got {MaxNewTokens}";
        if (MaxLength <= 0) return $"max_length must be > 0, got {MaxLength}";
        if (DoSample)
        {
            if (Temperature <= 0) return $"temperature must be > 0 when sampling (do_sample), got {Temperature}";
            if (TopK < 0) return $"top_k must be >= 0, got {TopK}";
            if (TopP < 0 || TopP > 1) return $"top_p must be in [0, 1], got {TopP}";
        }
        return null;
    }
}
