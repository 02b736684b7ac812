using VarGpt.Configuration;
using static TorchSharp.torch;

namespace VarGpt.LanguageModel;

/// <summary>Output of one language-model pass: float32 logits and the post-final-norm hidden states.</summary>
public sealed record CausalLMOutput(Tensor Logits, Tensor LastHiddenState);

/// <summary>
/// What the generate loop (<see cref="TextGeneration"/>) needs of a model: the embedding lookup with image features
/// scattered in, and one language-model pass with the KV cache (the model transformers' generate() calls). The
/// unified VARGPT model implements it; the loop knows nothing else about it.
/// </summary>
public interface ICausalLanguageModel
{
    VargptConfig Config { get; }
    /// <summary>Device of the language model's weights.</summary>
    Device Device { get; }
    /// <summary>embed_tokens(inputIds) [B, L, H] with <paramref name="imageEmbeds"/> [N, H] in the &lt;|image_pad|&gt; rows.</summary>
    Tensor EmbedInputs(Tensor inputIds, Tensor? imageEmbeds = null);
    /// <summary>Decoder + lm_head over <paramref name="inputsEmbeds"/>; float32 logits (last position only when asked).</summary>
    CausalLMOutput Forward(Tensor inputsEmbeds, Tensor? positionIds = null, Tensor? attentionMask = null, KVCache? cache = null,
        bool lastPositionOnly = false, List<Tensor>? allHiddenStates = null);
}
