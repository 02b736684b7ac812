using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Text;
using static TorchSharp.torch;

namespace VarGpt.Server.Backend;

/// <summary>
/// The serving backend over the model library's façade (<see cref="VargptModel"/>): the continuous-batching chat engine,
/// the official image path (GenerateImage / EditImage) with <see cref="ImageProgress.DecodePreview"/> previews, and the
/// chat image continuation through a <see cref="Turn"/>. The one place the server touches the model library.
/// </summary>
public sealed class ModelBackend : IServingBackend
{
    readonly VargptModel _model;
    readonly ContinuousBatch _chat;

    public ModelBackend(VargptModel model)
    {
        _model = model;
        _chat = new ContinuousBatch(model);
        var dir = Path.TrimEndingDirectorySeparator(Path.GetFullPath(model.Directory));
        var config = Path.Combine(dir, "config.json");
        Model = new ServedModel(
            Id: Path.GetFileName(dir),
            Created: File.Exists(config) ? new DateTimeOffset(File.GetLastWriteTimeUtc(config)).ToUnixTimeSeconds() : 0,
            Directory: dir,
            ContextLength: model.Config.MaxPositionEmbeddings,
            ImageSizes: SizesOf(model.Config),
            CanSee: model.Module.Parts.HasFlag(ModelParts.Vision),
            CanDraw: model.Module.Parts.HasFlag(ModelParts.Generation));
    }

    /// <summary>Loads a model folder (the one load path) and serves it.</summary>
    public static ModelBackend Load(string dir, VargptModelOptions? options = null, Action<string, double>? progress = null) =>
        new(VargptModel.Load(dir, options, progress));

    public ServedModel Model { get; }
    public IChatBatchEngine Chat => _chat;

    /// <summary>The sizes of the model's own pixel budget in every aspect template of its schedule table (square first).</summary>
    public static IReadOnlyList<ImageSize> SizesOf(VargptConfig config) =>
        ScaleSchedules.Templates
            .Where(t => config.Schedules.PnsOf(t).Contains(config.Pn))
            .Select(t => config.Schedules.Get(t, config.Pn))
            .Select(s => new ImageSize(s.Pixels.W, s.Pixels.H, s.Template, s.Pn, s.Scales.Count, s.SequenceLength))
            .OrderBy(s => s.AspectRatio == 1.0 ? 0 : 1)
            .ToList();

    public ImageOutcome DrawImages(ImageJob job, Action<ImagePreview>? preview, CancellationToken cancellationToken)
    {
        var progress = Progress(job.PreviewScales, preview);
        var result = job.Source is null
            ? _model.GenerateImage(job.Prompt, job.Options, progress, cancellationToken)
            : _model.EditImage(job.Source, job.Prompt, job.Options, progress, cancellationToken);
        return new ImageOutcome(result.Images.Select(i => new DrawnImage(i.Image, i.Seed)).ToList(), result.Text, result.PromptTokens, result.ContextTokens);
    }

    /// <summary>Decodes a preview after the requested scales (not the last: the final image follows).</summary>
    static Action<ImageProgress>? Progress(IReadOnlySet<int> scales, Action<ImagePreview>? preview) => preview is null ? null : p =>
    {
        if (p.ScaleIndex < p.Scales - 1 && scales.Contains(p.ScaleIndex))
            preview(new ImagePreview(p.Image, p.ScaleIndex, p.Scales, p.DecodePreview(), p.Elapsed));
    };

    /// <summary>
    /// The row's prompt and text followed by &lt;|image_gen_start|&gt;, prefilled as one turn with a forced image start
    /// (the official sampler's state after choosing the start token at batch size 1), then the image drawn on its cache.
    /// </summary>
    public DrawnImage DrawChatImage(ChatJob job, IReadOnlyList<int> textTokenIds, ImageOptions options, long seed, Action<ImagePreview>? preview,
        CancellationToken cancellationToken)
    {
        var (messages, images) = ChatMessages.SplitImages(job.Messages);
        int startId = _model.Config.ImageGen.StartId;
        var text = (textTokenIds.Count > 0 && textTokenIds[^1] == startId ? textTokenIds.Take(textTokenIds.Count - 1) : textTokenIds).Select(i => (long)i).ToArray();
        using var prompt = _model.Prepare(messages, images);
        using var ids = text.Length == 0 ? prompt.InputIds.alias() : cat([prompt.InputIds, tensor(text).unsqueeze(0)], 1);
        using var mask = ones_like(ids);
        var continued = new PreparedPrompt
        {
            Text = prompt.Text, InputIds = ids, AttentionMask = mask, ImageEmbeds = prompt.ImageEmbeds, ImageGridThw = prompt.ImageGridThw,
            ShrunkForMaxPixels = prompt.ShrunkForMaxPixels, ImageTokens = prompt.ImageTokens,
        };   // borrows prompt's tensors: disposed with prompt, ids and mask
        using var turn = _model.StartTurn([continued], new TurnOptions
        {
            Generation = _model.DefaultTextGeneration(1), ForceImageStart = true, ImageStart = ImageStartMode.Draw,
        });
        foreach (var _ in turn.Run(cancellationToken)) { }
        var image = turn.DrawImage(options, seed, Progress(AllScales, preview), cancellationToken);
        return new DrawnImage(image.Image, image.Seed);
    }

    static readonly IReadOnlySet<int> AllScales = Enumerable.Range(0, 64).ToHashSet();

    public void Dispose()
    {
        _chat.Dispose();
        _model.Dispose();
    }
}
