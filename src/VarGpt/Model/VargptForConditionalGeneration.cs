using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace VarGpt.Model;

/// <summary>Output of one language-model pass: float32 logits and the post-final-norm hidden states.</summary>
public sealed record CausalLMOutput(Tensor Logits, Tensor LastHiddenState);

/// <summary>
/// The whole VARGPT-v1.1 model (official VARGPTQwen2VLForConditionalGeneration). Field names are the checkpoint's
/// top-level prefixes. So far: the Qwen2 decoder (model.*) and the untied lm_head; the vision tower (visual.*),
/// Infinity (vargpt_gen.*), the BSQ-VAE (vae_local.*), image_gen_projector(_out) and sos_embedding are added as
/// further fields next to these (each registered by RegisterComponents in the constructor).
/// </summary>
public sealed class VargptForConditionalGeneration : Module
{
    public readonly Qwen2VLModel model;
    public readonly Linear lm_head;

    public VargptConfig Config { get; }

    /// <summary>
    /// Builds the model with parameters on <paramref name="device"/> in <paramref name="dtype"/>; null means the current
    /// defaults (TorchRuntime.DefaultsScope, e.g. META to enumerate keys without memory).
    /// </summary>
    public VargptForConditionalGeneration(VargptConfig config, Device? device = null, ScalarType? dtype = null) : base(nameof(VargptForConditionalGeneration))
    {
        if (config.TieWordEmbeddings)
            throw new NotSupportedException("tie_word_embeddings = true: VARGPT-v1.1 has an untied lm_head and this port only supports that layout");
        Config = config;
        model = new Qwen2VLModel(config, device, dtype);
        lm_head = Linear(config.HiddenSize, config.VocabSize, hasBias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>Device of the language model's weights.</summary>
    public Device Device => lm_head.weight.device;
    /// <summary>Compute dtype of the language model (the dtype of its weights).</summary>
    public ScalarType DType => lm_head.weight.dtype;

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
        var logits = lm_head.forward(last).to(ScalarType.Float32);
        return new CausalLMOutput(logits.MoveToOuterDisposeScope(), h.MoveToOuterDisposeScope());
    }
}
