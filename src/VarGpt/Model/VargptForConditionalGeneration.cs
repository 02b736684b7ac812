using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Vision;
using VarGpt.Torch;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using VarGpt.Configuration;

namespace VarGpt.Model;

/// <summary>
/// Which parts of the model to build (the components of each part: <see cref="ModelComponents"/>). The official class always builds all of them; understanding-only use (as the
/// official lmms-eval wrapper does by deleting vargpt_gen and vae_local) saves the memory of the generation half.
/// </summary>
[Flags]
public enum ModelParts
{
    /// <summary>model.* and lm_head.</summary>
    LanguageModel = 1,
    /// <summary>visual.* (the vision tower).</summary>
    Vision = 2,
    /// <summary>vae_local.*, vargpt_gen.*, image_gen_projector(_out).*, sos_embedding.*.</summary>
    Generation = 4,
    Understanding = LanguageModel | Vision,
    All = LanguageModel | Vision | Generation,
}

/// <summary>
/// The whole VARGPT-v1.1 model (official VARGPTQwen2VLForConditionalGeneration). Field names are the checkpoint's
/// top-level prefixes, declared in the official constructor order: the vision tower (visual.*), the Qwen2 decoder (model.*), the untied lm_head,
/// the BSQ-VAE (vae_local.*), Infinity (vargpt_gen.*), the two glue projectors and the sos embedding whose row
/// image_gen_start_token_id conditions every generated image.
/// </summary>
public sealed class VargptForConditionalGeneration : Module, ICausalLanguageModel
{
#pragma warning disable IDE1006 // field names = official state-dict prefixes
    // Parts not built (see ModelParts) are null and absent from the state dict.
    readonly Qwen2VisionTransformerPretrainedModel? visual;
    public readonly Qwen2VLModel model;
    // typed Module<Tensor, Tensor> (not the sealed Linear) so int8 quantization can swap in an Int8Linear
    public readonly Module<Tensor, Tensor> lm_head;
    readonly BsqVae? vae_local;
    readonly Infinity? vargpt_gen;
    readonly GenPatchMerger? image_gen_projector;
    readonly GenPatchMerger? image_gen_projector_out;
    readonly Torch.Embedding? sos_embedding;
#pragma warning restore IDE1006

    public VargptConfig Config { get; }
    public ModelParts Parts { get; }

    /// <summary>The vision tower (visual.*).</summary>
    public Qwen2VisionTransformerPretrainedModel Visual => visual ?? throw Missing(ModelParts.Vision, "vision tower (visual.*)");
    /// <summary>The BSQ-VAE (vae_local.*).</summary>
    public BsqVae VaeLocal => vae_local ?? throw Missing(ModelParts.Generation, "BSQ-VAE (vae_local.*)");
    /// <summary>Infinity, the visual decoder (vargpt_gen.*).</summary>
    public Infinity VargptGen => vargpt_gen ?? throw Missing(ModelParts.Generation, "Infinity decoder (vargpt_gen.*)");
    /// <summary>Infinity width C → LLM width H (official GenPatchMerger(dim=H, image_gen_dim=C)).</summary>
    public GenPatchMerger ImageGenProjector => image_gen_projector ?? throw Missing(ModelParts.Generation, "image_gen_projector");
    /// <summary>LLM width H → Infinity width C.</summary>
    public GenPatchMerger ImageGenProjectorOut => image_gen_projector_out ?? throw Missing(ModelParts.Generation, "image_gen_projector_out");
    /// <summary>Embedding(image_gen_start_token_id + 1, C); only row image_gen_start_token_id is ever used.</summary>
    public Torch.Embedding SosEmbedding => sos_embedding ?? throw Missing(ModelParts.Generation, "sos_embedding");

    InvalidOperationException Missing(ModelParts part, string what) =>
        new($"this model was built without its {what}: it was loaded with parts {Parts}, and {part} is needed here");

    /// <summary>
    /// Builds the model with parameters on <paramref name="device"/> in <paramref name="dtype"/> (e.g. META to enumerate
    /// keys without memory); null means libtorch's current defaults. Never changes those process-wide defaults.
    /// </summary>
    public VargptForConditionalGeneration(VargptConfig config, Device? device = null, ScalarType? dtype = null, ModelParts parts = ModelParts.All) : base(nameof(VargptForConditionalGeneration))
    {
        if (!parts.HasFlag(ModelParts.LanguageModel)) throw new ArgumentException("the language model is always needed", nameof(parts));
        if (config.TieWordEmbeddings)
            throw new NotSupportedException("tie_word_embeddings = true: VARGPT-v1.1 has an untied lm_head and this port only supports that layout");
        if (config.Infinity.TextChannels != config.Infinity.EmbedDim)
            throw new InvalidFileException($"vargpt_gen_config: text_channels {config.Infinity.TextChannels} must equal embed_dim {config.Infinity.EmbedDim} (VARGPT feeds the sos embedding as Infinity's text)");
        if (config.Infinity.CodebookDim != config.Vae.CodebookDim)
            throw new InvalidFileException($"vargpt_gen_config.codebook_dim {config.Infinity.CodebookDim} != vae_config.codebook_dim {config.Vae.CodebookDim}");
        Config = config;
        Parts = parts;
        if (parts.HasFlag(ModelParts.Vision)) visual = new Qwen2VisionTransformerPretrainedModel(config.Vision, device, dtype);
        model = new Qwen2VLModel(config, device, dtype);
        lm_head = Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        if (parts.HasFlag(ModelParts.Generation))
        {
            vae_local = new BsqVae(config.Vae, device, dtype ?? get_default_dtype());
            vargpt_gen = new Infinity(config.Infinity, device, dtype);
            image_gen_projector = new GenPatchMerger(config.HiddenSize, config.Infinity.EmbedDim, device, dtype);
            image_gen_projector_out = new GenPatchMerger(config.Infinity.EmbedDim, config.HiddenSize, device, dtype);
            sos_embedding = new Torch.Embedding(config.ImageGen.StartId + 1, config.Infinity.EmbedDim, device, dtype);
        }
        RegisterComponents();
    }

    /// <summary>Device of the language model's weights.</summary>
    public Device Device => model.embed_tokens.weight.device;
    /// <summary>Compute dtype of the language model (the dtype of its weights; int8-quantized linears compute in it too).</summary>
    public ScalarType DType => model.embed_tokens.weight.dtype;

    /// <summary>Attention kernel of the decoder (default SDPA; Eager mirrors the official eager path line by line).</summary>
    public AttentionImplementation AttentionImplementation
    {
        get => model.AttentionImplementation;
        set => model.AttentionImplementation = value;
    }

    /// <summary>
    /// embed_tokens(inputIds) with image features scattered into the &lt;|image_pad|&gt; rows in masked_scatter order
    /// (row-major over the batch), as the official forward does with the vision tower's output.
    /// inputIds [B, L]; imageEmbeds [N, H] with N = number of image tokens, or null. Reads the image-token count on
    /// the host (prefill only).
    /// </summary>
    public Tensor EmbedInputs(Tensor inputIds, Tensor? imageEmbeds = null)
    {
        using var scope = NewDisposeScope();
        var ids = inputIds.to(Device);
        var embeds = model.embed_tokens.forward(ids);
        if (imageEmbeds is not null)
        {
            var isImage = ids.eq(Config.ImageTokenId);
            long nTokens = isImage.sum().item<long>();
            if (imageEmbeds.dim() != 2 || imageEmbeds.shape[1] != Config.HiddenSize)
                throw new ArgumentException($"image embeddings must be [N, {Config.HiddenSize}], got [{string.Join(",", imageEmbeds.shape)}]");
            if (nTokens != imageEmbeds.shape[0])
                throw new ArgumentException($"Image features and image tokens do not match: tokens: {nTokens} (<|image_pad|> id {Config.ImageTokenId}), features {imageEmbeds.shape[0]}");
            var m = isImage.unsqueeze(-1).expand_as(embeds);
            embeds = embeds.masked_scatter(m, imageEmbeds.to(embeds.dtype, embeds.device));
        }
        return embeds.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One language-model pass (prefill or decoding step) of the official text path: decoder over
    /// <paramref name="inputsEmbeds"/> [B, L, H], then lm_head; logits returned in float32 ([B, L, V], or [B, 1, V]
    /// with <paramref name="lastPositionOnly"/>, which is what generation needs). See Qwen2VLModel.forward for the
    /// position, mask and cache arguments.
    /// </summary>
    public CausalLMOutput Forward(Tensor inputsEmbeds, Tensor? positionIds = null, Tensor? attentionMask = null, KVCache? cache = null,
        bool lastPositionOnly = false, List<Tensor>? allHiddenStates = null)
    {
        using var scope = NewDisposeScope();
        var hidden = allHiddenStates is null ? null : new List<Tensor>();
        var h = model.forward(inputsEmbeds, positionIds, attentionMask, cache, hidden);
        if (hidden is not null) allHiddenStates!.AddRange(hidden.Select(t => t.MoveToOuterDisposeScope()));
        var last = lastPositionOnly ? h.narrow(1, h.shape[1] - 1, 1) : h;
        // logits in the model dtype, then float32 (official: lm_head(h), then .float() in the sampler)
        var logits = DecodeLinear.Forward(lm_head, last).to(ScalarType.Float32);  // few rows: the multi-threaded GEMV
        return new CausalLMOutput(logits.MoveToOuterDisposeScope(), h.MoveToOuterDisposeScope());
    }
}
