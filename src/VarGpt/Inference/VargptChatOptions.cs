using VarGpt.Configuration;
using VarGpt.Model;
using VarGpt.Vision;

namespace VarGpt.Inference;

/// <summary>
/// Sampling and length settings of one chat call. Every unset field takes the checkpoint's generation_config.json value,
/// as transformers' generate() does (so its repetition_penalty applies even when decoding greedily), except do_sample:
/// the default is greedy decoding, what the official inference scripts pass (do_sample=False).
/// </summary>
public sealed record VargptChatOptions
{
    /// <summary>The official inference scripts' budget (generate(max_new_tokens=4096)); capped at max_position_embeddings.</summary>
    public const int DefaultMaxNewTokens = 4096;

    /// <summary>New tokens at most; null = generation_config max_new_tokens, else <see cref="DefaultMaxNewTokens"/>.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>null = sample when Temperature &gt; 0, TopK or TopP is set; greedy otherwise. Temperature 0 means greedy.</summary>
    public bool? DoSample { get; init; }
    public double? Temperature { get; init; }
    /// <summary>0 disables top-k.</summary>
    public int? TopK { get; init; }
    public double? TopP { get; init; }
    public double? RepetitionPenalty { get; init; }
    /// <summary>Seed of the token sampler (same seed, same output) and, unless <see cref="Image"/> sets one, of the image sampler.</summary>
    public long? Seed { get; init; }
    /// <summary>Generation stops as soon as the text contains one of these; the reply ends before it.</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];
    /// <summary>When the model starts an image (&lt;|image_gen_start|&gt;), draw it (true) or stop there without drawing (false).</summary>
    public bool GenerateImages { get; init; } = true;
    /// <summary>Image settings (cfg, tau, top-k, top-p, aspect, pn, seed); null = the official values. Seed unset = <see cref="Seed"/>, else a random one.</summary>
    public ImageOptions? Image { get; init; }
    /// <summary>Called after every scale of a drawn image, on the drawing thread (a preview can be decoded there).</summary>
    public Action<ImageProgress>? ImageProgress { get; init; }

    /// <summary>The generate settings: the checkpoint's generation_config.json with these overrides (greedy unless asked otherwise).</summary>
    public GenerationConfig Resolve(GenerationConfig checkpoint)
    {
        if (MaxNewTokens is <= 0) throw new InvalidOptionException($"max_new_tokens must be > 0, got {MaxNewTokens}", nameof(MaxNewTokens));
        if (Temperature is double t && (!(t >= 0) || double.IsInfinity(t))) throw new InvalidOptionException($"temperature must be a finite number >= 0 (0 = greedy), got {t}", nameof(Temperature));
        if (TopK is < 0) throw new InvalidOptionException($"top_k must be >= 0 (0 disables it), got {TopK}", nameof(TopK));
        if (TopP is double p && !(p > 0 && p <= 1)) throw new InvalidOptionException($"top_p must be in (0, 1], got {p}", nameof(TopP));
        if (RepetitionPenalty is double r && (!(r > 0) || double.IsInfinity(r))) throw new InvalidOptionException($"repetition_penalty must be a finite number > 0 (1 = off), got {r}", nameof(RepetitionPenalty));
        if (StopSequences.Any(string.IsNullOrEmpty)) throw new InvalidOptionException("stop sequences must be non-empty strings", nameof(StopSequences));
        bool sample = DoSample ?? (Temperature is > 0 || TopK is not null || TopP is not null);
        if (Temperature == 0)
        {
            if (DoSample == true) throw new InvalidOptionException($"temperature 0 means greedy decoding; it cannot be combined with DoSample = true, got {0.0}", nameof(Temperature));
            sample = false;
        }
        return checkpoint with
        {
            DoSample = sample,
            MaxNewTokens = MaxNewTokens ?? checkpoint.MaxNewTokens ?? DefaultMaxNewTokens,
            Temperature = Temperature is > 0 ? Temperature.Value : checkpoint.Temperature,
            TopK = TopK ?? checkpoint.TopK,
            TopP = TopP ?? checkpoint.TopP,
            RepetitionPenalty = RepetitionPenalty ?? checkpoint.RepetitionPenalty,
        };
    }
}

public enum VargptChatFinish
{
    /// <summary>The model ended its turn (an EOS token such as &lt;|im_end|&gt;).</summary>
    EndOfTurn,
    /// <summary>max_new_tokens (or the model's position limit) reached.</summary>
    MaxNewTokens,
    /// <summary>The text reached one of the stop sequences.</summary>
    StopSequence,
    /// <summary>The model started an image (&lt;|image_gen_start|&gt;); no text follows an image (official vargpt_sample).</summary>
    Image,
}

/// <summary>Wall-clock split of one reply. TimeToFirstToken = Prepare + prefill + the first token choice.</summary>
public sealed record VargptChatTimings(TimeSpan Prepare, TimeSpan TimeToFirstToken, TimeSpan Decode, int DecodeSteps, TimeSpan Image);

/// <summary>One assistant reply.</summary>
public sealed record VargptChatReply
{
    /// <summary>The reply text (special tokens skipped, cut before a stop sequence).</summary>
    public required string Text { get; init; }
    /// <summary>The generated token ids (EOS included when the model emitted one; the token chosen after &lt;|image_gen_start|&gt; excluded).</summary>
    public required IReadOnlyList<int> TokenIds { get; init; }
    public required VargptChatFinish Finish { get; init; }
    /// <summary>The image the model drew (Finish = Image with GenerateImages on), else null.</summary>
    public RgbImage? Image { get; init; }
    /// <summary>Seed the image sampler used (print it to reproduce the image).</summary>
    public long? ImageSeed { get; init; }
    /// <summary>Prompt tokens including the image tokens.</summary>
    public required int PromptTokens { get; init; }
    /// <summary>Per input image: true when it was shrunk to the processor's max_pixels.</summary>
    public IReadOnlyList<bool> ImagesResized { get; init; } = [];
    public VargptChatTimings? Timings { get; init; }
    public int GeneratedTokens => TokenIds.Count;
}

/// <summary>
/// A streamed piece: text as it becomes complete; <see cref="ImageStarting"/> once before an image is drawn (per-scale
/// progress goes to <see cref="VargptChatOptions.ImageProgress"/>); the last update carries the reply.
/// </summary>
public sealed record VargptChatUpdate(string Text)
{
    public bool ImageStarting { get; init; }
    public VargptChatReply? Reply { get; init; }
}
