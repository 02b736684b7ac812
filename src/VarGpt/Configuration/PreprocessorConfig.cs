using System.Text.Json;
using System.Text.Json.Nodes;

namespace VarGpt.Configuration;

/// <summary>
/// preprocessor_config.json of the Qwen2-VL image processor (VARGPTQwen2VLImageProcessor). Absent fields take the
/// class defaults (reference §2.7); the released file's values win, so always read it. Unknown fields are ignored.
/// Newer transformers save the pixel bounds as size.shortest_edge/longest_edge; both spellings are read.
/// </summary>
public sealed record PreprocessorConfig
{
    public const string FileName = "preprocessor_config.json";

    public int MinPixels { get; init; } = 56 * 56;
    public int MaxPixels { get; init; } = 28 * 28 * 1280;
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
    public JsonObject Raw { get; init; } = new();

    /// <summary>Resize factor: each side becomes a multiple of patch_size x merge_size (28).</summary>
    public int Factor => PatchSize * MergeSize;

    /// <summary>Reads preprocessor_config.json (or DIR/preprocessor_config.json when given a folder).</summary>
    public static PreprocessorConfig Load(string path)
    {
        if (Directory.Exists(path)) path = Path.Combine(path, FileName);
        using var doc = JsonFields.ParseFile(path, "preprocessor config");
        return Parse(doc.RootElement, path);
    }

    public static PreprocessorConfig Parse(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{source}: expected a JSON object");
        var j = new JsonFields(root, source);
        var size = j.Has("size") && j.Element.GetProperty("size").ValueKind == JsonValueKind.Object ? j.Obj("size") : default;
        bool hasSize = size.Element.ValueKind == JsonValueKind.Object;
        var d = new PreprocessorConfig();
        var cfg = new PreprocessorConfig
        {
            MinPixels = j.Int("min_pixels", hasSize ? size.Int("shortest_edge", d.MinPixels) : d.MinPixels),
            MaxPixels = j.Int("max_pixels", hasSize ? size.Int("longest_edge", d.MaxPixels) : d.MaxPixels),
            PatchSize = j.Int("patch_size", d.PatchSize),
            TemporalPatchSize = j.Int("temporal_patch_size", d.TemporalPatchSize),
            MergeSize = j.Int("merge_size", d.MergeSize),
            ImageMean = j.Doubles("image_mean", d.ImageMean),
            ImageStd = j.Doubles("image_std", d.ImageStd),
            RescaleFactor = j.Double("rescale_factor", d.RescaleFactor),
            DoResize = j.Bool("do_resize", true),
            DoRescale = j.Bool("do_rescale", true),
            DoNormalize = j.Bool("do_normalize", true),
            DoConvertRgb = j.Bool("do_convert_rgb", true),
            Resample = j.Int("resample", d.Resample),
            Raw = JsonNode.Parse(root.GetRawText())!.AsObject(),
        };
        if (cfg.ImageMean.Length != 3 || cfg.ImageStd.Length != 3)
            throw new InvalidDataException($"{source}: image_mean and image_std must have 3 entries (RGB), found {cfg.ImageMean.Length} and {cfg.ImageStd.Length}");
        if (cfg.ImageStd.Any(s => s <= 0)) throw new InvalidDataException($"{source}: image_std entries must be > 0");
        if (cfg.PatchSize <= 0 || cfg.MergeSize <= 0 || cfg.TemporalPatchSize <= 0)
            throw new InvalidDataException($"{source}: patch_size, merge_size and temporal_patch_size must be positive");
        if (cfg.MinPixels <= 0 || cfg.MaxPixels < cfg.MinPixels)
            throw new InvalidDataException($"{source}: need 0 < min_pixels <= max_pixels, found min_pixels {cfg.MinPixels}, max_pixels {cfg.MaxPixels}");
        return cfg;
    }
}
