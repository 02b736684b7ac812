namespace VarGpt.Model;

/// <summary>
/// One component of VARGPT-v1.1: a group of top-level fields of the official VARGPTQwen2VLForConditionalGeneration
/// (= state-dict prefixes), the <see cref="ModelParts"/> flag that builds it, and its names (the key of `vargpt_freeze`
/// and the title `vargpt info` prints).
/// </summary>
public sealed record ModelComponent(string Key, string Title, ModelParts Part, IReadOnlyList<string> Prefixes)
{
    public bool Owns(string parameterName) => Prefixes.Any(p => parameterName.StartsWith(p, StringComparison.Ordinal));

    /// <summary>The prefix of a one-field component (e.g. "vae_local."), for loading or saving it alone.</summary>
    public string Prefix => Prefixes.Count == 1 ? Prefixes[0] : throw new InvalidOperationException($"component {Key} spans {string.Join(", ", Prefixes)}");
}

/// <summary>
/// The component table: every place that groups the model's weights (loading by parts, freezing, `vargpt info`,
/// parameter counts, LoRA targets, the ShapesWorld stages) derives its groups from here.
/// </summary>
public static class ModelComponents
{
    /// <summary>The Qwen2-VL ViT and its PatchMerger (the "understanding projector"; the official code treats both as `visual`).</summary>
    public static readonly ModelComponent VisionTower = new("vision_tower", "vision tower", ModelParts.Vision, ["visual."]);
    /// <summary>The Qwen2 decoder and the untied lm_head.</summary>
    public static readonly ModelComponent LanguageModel = new("language_model", "language model", ModelParts.LanguageModel, ["model.", "lm_head."]);
    /// <summary>The BSQ-VAE (frozen in every official training stage).</summary>
    public static readonly ModelComponent Vae = new("vae", "VAE", ModelParts.Generation, ["vae_local."]);
    /// <summary>Infinity, the next-scale visual decoder.</summary>
    public static readonly ModelComponent Infinity = new("infinity", "Infinity decoder", ModelParts.Generation, ["vargpt_gen."]);
    /// <summary>The two glue projectors between the LLM width and Infinity's width.</summary>
    public static readonly ModelComponent Projectors = new("projectors", "projectors", ModelParts.Generation, ["image_gen_projector.", "image_gen_projector_out."]);
    /// <summary>The sos embedding whose row image_gen_start_token_id conditions every generated image.</summary>
    public static readonly ModelComponent SosEmbedding = new("sos_embedding", "sos embedding", ModelParts.Generation, ["sos_embedding."]);

    /// <summary>In the official constructor's field order.</summary>
    public static IReadOnlyList<ModelComponent> All { get; } = [VisionTower, LanguageModel, Vae, Infinity, Projectors, SosEmbedding];

    /// <summary>The component a parameter or buffer belongs to, or null for names outside the VARGPT layout.</summary>
    public static ModelComponent? Of(string name) => All.FirstOrDefault(c => c.Owns(name));

    /// <summary>The component with this <see cref="ModelComponent.Key"/>; an unknown key is an error listing the known ones.</summary>
    public static ModelComponent Get(string key) => All.FirstOrDefault(c => c.Key == key)
        ?? throw new ArgumentException($"unknown component '{key}' (known: {string.Join(", ", All.Select(c => c.Key))})");

    /// <summary>State-dict prefixes of the components built by <paramref name="parts"/>.</summary>
    public static IReadOnlyList<string> PrefixesOf(ModelParts parts) => All.Where(c => (parts & c.Part) != 0).SelectMany(c => c.Prefixes).ToList();

    /// <summary>State-dict prefixes of the components <paramref name="parts"/> leaves out (not built, not loaded).</summary>
    public static IReadOnlyList<string> PrefixesOutside(ModelParts parts) => All.Where(c => (parts & c.Part) == 0).SelectMany(c => c.Prefixes).ToList();
}
