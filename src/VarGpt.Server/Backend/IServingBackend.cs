using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;

namespace VarGpt.Server.Backend;

/// <summary>
/// Everything the HTTP layer needs from a loaded model, and nothing else: model facts, the continuous-batching chat
/// engine, and image drawing with per-scale previews. The server (DTOs, validation, SSE, errors, auth, limits, queues,
/// metrics, the page) sees the model only through this interface, so the model library's façade can change underneath
/// with one adapter (<see cref="ModelBackend"/>) and tests can run the HTTP layer on a scripted backend.
/// Thread safety: <see cref="Chat"/> is driven by one scheduler thread; <see cref="DrawImages"/> may run on other
/// threads at the same time (every call has its own prompt tensors, KV caches and generators).
/// </summary>
public interface IServingBackend : IDisposable
{
    ServedModel Model { get; }
    IChatBatchEngine Chat { get; }

    /// <summary>
    /// Text-to-image (no <see cref="ImageJob.Source"/>) or editing: the official image path (greedy text until the model
    /// starts the image, then the next-scale loop). <paramref name="preview"/> gets the decoded coarse image after each
    /// scale listed in <see cref="ImageJob.PreviewScales"/>; cancellation is checked before every decode step and scale.
    /// Throws <see cref="NoImageGeneratedException"/> when the model answers with text, <see cref="InvalidPromptException"/>
    /// or <see cref="ArgumentException"/> for inputs the model cannot take.
    /// </summary>
    ImageOutcome DrawImages(ImageJob job, Action<ImagePreview>? preview, CancellationToken cancellationToken);

    /// <summary>
    /// A chat row that ended at &lt;|image_gen_start|&gt; (<see cref="VargptChatFinish.Image"/>): draws the image it started,
    /// with the conversation and the text it wrote as the context (the official sampler's continuation at batch size 1).
    /// </summary>
    DrawnImage DrawChatImage(ChatJob job, IReadOnlyList<int> textTokenIds, ImageOptions options, long seed, Action<ImagePreview>? preview,
        CancellationToken cancellationToken);
}

/// <summary>An image size the model draws: pixels, the h/w template and the pixel-budget name of its scale schedule.</summary>
/// <param name="Tokens">image tokens the next-scale loop predicts (sum of h·w over the scales)</param>
public sealed record ImageSize(int Width, int Height, double AspectRatio, string Pn, int Scales, int Tokens)
{
    /// <summary>The OpenAI images API's size string, "WIDTHxHEIGHT".</summary>
    public string Name => $"{Width}x{Height}";
}

/// <summary>Facts about the served model (GET /v1/models, limits, the page).</summary>
/// <param name="Id">the model name clients send ("model")</param>
/// <param name="ContextLength">max_position_embeddings: prompt + new tokens must fit</param>
/// <param name="ImageSizes">sizes from the model's scale-schedule table (its own pixel budget first)</param>
/// <param name="CanSee">the vision tower is loaded (image inputs work)</param>
/// <param name="CanDraw">the generation half is loaded (images can be drawn)</param>
public sealed record ServedModel(string Id, long Created, string Directory, int ContextLength, IReadOnlyList<ImageSize> ImageSizes, bool CanSee, bool CanDraw)
{
    public ImageSize DefaultImageSize => ImageSizes[0];
}

/// <summary>One chat request, resolved: the conversation (images decoded) and the sampling settings of the library.</summary>
/// <param name="DrawImages">when the model starts an image, draw it (else the reply ends there)</param>
/// <param name="ImageSeed">seed of the image sampler when the model draws (null = a fresh one, reported)</param>
/// <param name="IgnoreEos">decode to max_tokens whatever the model chooses (EOS and image start are ordinary tokens; vLLM's ignore_eos, for benchmarks)</param>
public sealed record ChatJob(IReadOnlyList<ChatMessage> Messages, VargptChatOptions Options, bool DrawImages = true, ImageOptions? Image = null, bool IgnoreEos = false)
{
    /// <summary>What the batch engine decodes.</summary>
    public ChatBatchRequest Chat => new(Messages, Options, IgnoreEos);
}

/// <summary>One image request: the prompt (or edit instruction), the source image of an edit, the library's image options (seed set).</summary>
/// <param name="PreviewScales">0-based scale indices after which a preview is decoded (the last scale is the final image)</param>
public sealed record ImageJob(string Prompt, RgbImage? Source, ImageOptions Options, IReadOnlySet<int> PreviewScales);

/// <summary>A decoded coarse image after scale <see cref="ScaleIndex"/> of <see cref="Scales"/> of image <see cref="ImageIndex"/>.</summary>
public sealed record ImagePreview(int ImageIndex, int ScaleIndex, int Scales, RgbImage Image, TimeSpan Elapsed);

/// <summary>One drawn image with the seed that reproduces it.</summary>
public sealed record DrawnImage(RgbImage Image, long Seed);

/// <summary>What an image request produced: the images, the text the model wrote before the image, and token counts.</summary>
public sealed record ImageOutcome(IReadOnlyList<DrawnImage> Images, string Text, int PromptTokens, int ContextTokens);
