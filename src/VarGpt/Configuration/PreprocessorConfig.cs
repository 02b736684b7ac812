using System.Text.Json;
using System.Text.Json.Serialization;

namespace VarGpt.Configuration;

/// <summary>
/// preprocessor_config.json of the Qwen2-VL image processor (VARGPTQwen2VLImageProcessor). Absent fields take the
/// class defaults (reference §2.7); the released file's values win, so always read it. Unknown fields are kept in Extra.
/// Newer transformers save the pixel bounds as size.shortest_edge/longest_edge; both spellings are read.
/// </summary>
public sealed record PreprocessorConfig
{
    public const string FileName = "preprocessor_config.json";

    /// <summary>Default: size.shortest_edge (newer transformers' spelling), else 56·56.</summary>
    public int MinPixels { get => _min ?? Size?.ShortestEdge ?? 56 * 56; init => _min = value; }
    int? _min;
    /// <summary>Default: size.longest_edge, else 28·28·1280.</summary>
    public int MaxPixels { get => _max ?? Size?.LongestEdge ?? 28 * 28 * 1280; init => _max = value; }
    int? _max;
    /// <summary>{"shortest_edge": min_pixels, "longest_edge": max_pixels}, as newer transformers save the bounds.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public PixelBounds? Size { get; init; }
    public int PatchSize { get; init; } = 14;
    public int TemporalPatchSize { get; init; } = 2;
    public int MergeSize { get; init; } = 2;
    public double[] ImageMean { get; init; } = [0.48145466, 0.4578275, 0.40821073];
    public double[] ImageStd { get; init; } = [0.26862954, 0.26130258, 0.27577711];
    public double RescaleFactor { get; init; } = 1.0 / 255;
    public bool DoResize { get; init; } = true;
    public bool DoRescale { get; init; } = true;
    public bool DoNormalize { get; init; } = true;
    public bool DoConvertRgb { get; init; } = true;
    /// <summary>PIL resample filter id (3 = BICUBIC).</summary>
    public int Resample { get; init; } = 3;
    /// <summary>Fields this record does not model (image_processor_type, ...), kept as read.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }

    public sealed record PixelBounds(int? ShortestEdge, int? LongestEdge);

    /// <summary>Resize factor: each side becomes a multiple of patch_size x merge_size (28).</summary>
    public int Factor => PatchSize * MergeSize;

    /// <summary>Reads preprocessor_config.json (or DIR/preprocessor_config.json when given a folder).</summary>
    public static PreprocessorConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        return Validated(ConfigJson.Read<PreprocessorConfig>(path, "preprocessor config"), path);
    }

    public static PreprocessorConfig Parse(JsonElement root, string source) => Validated(ConfigJson.Parse<PreprocessorConfig>(root, source), source);

    static PreprocessorConfig Validated(PreprocessorConfig cfg, string source)
    {
        if (cfg.ImageMean.Length != 3 || cfg.ImageStd.Length != 3)
            throw new InvalidFileException($"{source}: image_mean and image_std must have 3 entries (RGB), found {cfg.ImageMean.Length} and {cfg.ImageStd.Length}");
        if (cfg.ImageStd.Any(s => s <= 0)) throw new InvalidFileException($"{source}: image_std entries must be > 0");
        if (cfg.PatchSize <= 0 || cfg.MergeSize <= 0 || cfg.TemporalPatchSize <= 0)
            throw new InvalidFileException($"{source}: patch_size, merge_size and temporal_patch_size must be positive");
        if (cfg.MinPixels <= 0 || cfg.MaxPixels < cfg.MinPixels)
            throw new InvalidFileException($"{source}: need 0 < min_pixels <= max_pixels, found min_pixels {cfg.MinPixels}, max_pixels {cfg.MaxPixels}");
        return cfg;
    }
}
