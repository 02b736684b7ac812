using System.Text.Json;
using VarGpt.Checkpoint;

namespace VarGpt.LanguageModel;

/// <summary>
/// The text-decoding settings of transformers' GenerationConfig that the VARGPT text path uses, with transformers'
/// defaults (do_sample false, temperature 1, top_k 50, top_p 1, repetition_penalty 1, max_length 20). Read a
/// checkpoint's generation_config.json with <see cref="Load"/>; the official inference scripts then override
/// do_sample = false and max_new_tokens (use <c>with { ... }</c>).
/// </summary>
public sealed record GenerationConfig
{
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
    /// <summary>Generation stops for a row once it emits any of these.</summary>
    public long[] EosTokenIds { get; init; } = [];
    /// <summary>Written into rows that already finished (null: the first EOS id, as transformers does).</summary>
    public long? PadTokenId { get; init; }

    /// <summary>EOS/pad from config.json (what transformers falls back to without a generation_config.json).</summary>
    public static GenerationConfig FromModelConfig(VargptConfig c) => new()
    {
        EosTokenIds = c.EosTokenIds.Select(x => (long)x).ToArray(),
        PadTokenId = c.PadTokenId,
    };

    public static GenerationConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"generation config not found: {path}", path);
        using var doc = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true });
        return Parse(doc.RootElement, path);
    }

    public static GenerationConfig Parse(JsonElement root, string source)
    {
        var j = new JsonFields(root, source);
        var g = new GenerationConfig
        {
            DoSample = j.Bool("do_sample", false),
            Temperature = j.Double("temperature", 1.0),
            TopK = j.Int("top_k", 50),
            TopP = j.Double("top_p", 1.0),
            RepetitionPenalty = j.Double("repetition_penalty", 1.0),
            MaxNewTokens = j.Has("max_new_tokens") ? j.Int("max_new_tokens") : null,
            MaxLength = j.Int("max_length", 20),
            EosTokenIds = j.Has("eos_token_id") ? j.IntOrInts("eos_token_id").Select(x => (long)x).ToArray() : [],
            PadTokenId = j.Has("pad_token_id") ? j.Long("pad_token_id") : null,
        };
        g.Validate(source);
        return g;
    }

    /// <summary>Rejects values transformers rejects (temperature and penalty must be positive, top_p in [0, 1], ...).</summary>
    public void Validate(string source = "generation config")
    {
        if (RepetitionPenalty <= 0) throw new ArgumentException($"{source}: repetition_penalty must be > 0, got {RepetitionPenalty}");
        if (MaxNewTokens is <= 0) throw new ArgumentException($"{source}: max_new_tokens must be > 0, got {MaxNewTokens}");
        if (MaxLength <= 0) throw new ArgumentException($"{source}: max_length must be > 0, got {MaxLength}");
        if (DoSample)
        {
            if (Temperature <= 0) throw new ArgumentException($"{source}: temperature must be > 0 when sampling, got {Temperature}");
            if (TopK < 0) throw new ArgumentException($"{source}: top_k must be >= 0, got {TopK}");
            if (TopP < 0 || TopP > 1) throw new ArgumentException($"{source}: top_p must be in [0, 1], got {TopP}");
        }
    }
}
