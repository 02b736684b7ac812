using System.Diagnostics;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Server.Backend;

/// <summary>
/// The serving backend over a loaded model folder (<see cref="VargptPipeline"/>): the continuous-batching chat engine and
/// the official image path with per-scale previews. The one place the server touches the model library's façade.
/// </summary>
public sealed class PipelineBackend : IServingBackend
{
    readonly VargptPipeline _pipeline;
    readonly ContinuousBatch _chat;

    public PipelineBackend(VargptPipeline pipeline)
    {
        _pipeline = pipeline;
        _chat = new ContinuousBatch(pipeline);
        var dir = Path.TrimEndingDirectorySeparator(Path.GetFullPath(pipeline.Directory));
        var config = Path.Combine(dir, "config.json");
        Model = new ServedModel(
            Id: Path.GetFileName(dir),
            Created: File.Exists(config) ? new DateTimeOffset(File.GetLastWriteTimeUtc(config)).ToUnixTimeSeconds() : 0,
            Directory: dir,
            ContextLength: pipeline.Config.MaxPositionEmbeddings,
            ImageSizes: SizesOf(pipeline.Config.Pn),
            CanSee: pipeline.Model.Parts.HasFlag(ModelParts.Vision),
            CanDraw: pipeline.Model.Parts.HasFlag(ModelParts.Generation));
    }

    /// <summary>Loads a model folder (the CLI's load path) and serves it.</summary>
    public static PipelineBackend Load(string dir, PipelineOptions? options = null, Action<string, double>? progress = null) =>
        new(VargptPipeline.Load(dir, options, progress));

    public ServedModel Model { get; }
    public IChatBatchEngine Chat => _chat;

    /// <summary>The sizes of the model's own pixel budget in every aspect template its schedule table has (square first).</summary>
    static IReadOnlyList<ImageSize> SizesOf(string pn) =>
        ScaleSchedules.Templates
            .Where(t => ScaleSchedules.PnsOf(t).Contains(pn))
            .Select(t => ScaleSchedules.Get(t, pn))
            .Select(s => new ImageSize(s.Pixels.W, s.Pixels.H, s.Template, s.Pn, s.Scales.Count))
            .OrderBy(s => s.AspectRatio == 1.0 ? 0 : 1)
            .ToList();

    public ImageOutcome DrawImages(ImageJob job, Action<ImagePreview>? preview, CancellationToken cancellationToken)
    {
        var options = job.Options;
        options.Validate(_pipeline.Config);
        if (job.Source is null)
            return Draw([ChatMessage.User(job.Prompt)], [], options.ForceImageStart ? [] : null, options, job.PreviewScales, preview, cancellationToken);
        // the official edit format (VargptImages.EditImage): the source image, then the instruction, or the image where it says <image>
        var pieces = job.Prompt.Split("<image>");
        if (pieces.Length > 2) throw new ArgumentException("the instruction contains \"<image>\" more than once; editing takes one source image");
        var parts = new List<ContentPart>();
        if (pieces.Length == 2)
        {
            if (pieces[0].Length > 0) parts.Add(ContentPart.FromText(pieces[0]));
            parts.Add(ContentPart.Image);
            if (pieces[1].Length > 0) parts.Add(ContentPart.FromText(pieces[1]));
        }
        else { parts.Add(ContentPart.Image); parts.Add(ContentPart.FromText(job.Prompt)); }
        var source = options.EditMaxPixels is long px ? ImageProcessor.PreprocessImageForTraining(job.Source, px) : job.Source;
        return Draw([ChatMessage.User([.. parts])], [source], options.ForceImageStart ? [] : null, options, job.PreviewScales, preview, cancellationToken);
    }

    public DrawnImage DrawChatImage(ChatJob job, IReadOnlyList<int> textTokenIds, ImageOptions options, long seed, Action<ImagePreview>? preview,
        CancellationToken cancellationToken)
    {
        var (messages, images) = VargptChat.SplitImages(job.Messages);
        // the text the row wrote before <|image_gen_start|> (the start token itself is appended below)
        int startId = _pipeline.Config.ImageGen.StartId;
        var text = textTokenIds.Count > 0 && textTokenIds[^1] == startId ? textTokenIds.Take(textTokenIds.Count - 1) : textTokenIds;
        var previewAll = Enumerable.Range(0, 64).ToHashSet();
        var outcome = Draw(messages, images, text.Select(i => (long)i).ToArray(), options with { Seed = seed, Count = 1 },
            preview is null ? new HashSet<int>() : previewAll, preview, cancellationToken);
        return outcome.Images[0];
    }

    /// <summary>
    /// The image path of <see cref="VargptImages"/> with previews: the text phase (greedy until the model emits
    /// &lt;|image_gen_start|&gt;, or — with <paramref name="forcedText"/> — that text followed by &lt;|image_gen_start|&gt;
    /// prefilled, the official sampler's state after choosing the start token), then the next-scale loop per image on
    /// the same KV cache. Previews decode the running code sum (the bits the loop taps) with the VAE.
    /// TODO(issue 15, after the restructuring lands): VargptModel.GenerateImage/EditImage with ImageProgress.DecodePreview
    /// replace this method.
    /// </summary>
    ImageOutcome Draw(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, long[]? forcedText, ImageOptions options,
        IReadOnlySet<int> previewScales, Action<ImagePreview>? preview, CancellationToken ct)
    {
        if (!Model.CanDraw) throw new InvalidOperationException("this model was loaded without its generation half; images cannot be drawn");
        using var scope = NewDisposeScope();
        long seed = options.Seed ?? VargptImages.NewSeed();
        var model = _pipeline.Model;
        var cfg = _pipeline.Config;
        using var prompt = _pipeline.Prepare(messages, images);
        GenerationInputs inputs = prompt.ToGenerationInputs();
        var generation = _pipeline.DefaultTextGeneration(options.MaxNewTokens);
        if (forcedText is not null)
        {
            var ids = cat([prompt.InputIds, tensor(forcedText.Append(cfg.ImageGen.StartId).ToArray()).unsqueeze(0)], 1);
            inputs = inputs with { InputIds = ids, AttentionMask = ones_like(ids) };
            generation = generation with { MaxNewTokens = 1 };   // the token chosen after <|image_gen_start|>: appended, never forwarded
        }
        using var session = new TextGeneration(model, inputs, generation, new GenerationOptions
        {
            InterceptImageGeneration = forcedText is null, KeepHiddenStates = true,
        });
        foreach (var _ in session.Run(ct)) { }
        long promptLen = inputs.InputIds.shape[1];
        long[] generated;
        using (var seq = session.Sequences.clone())
            generated = seq[0].narrow(0, promptLen, seq.shape[1] - promptLen).data<long>().ToArray();
        string text = "";
        if (forcedText is null)
        {
            if (session.StopReason != StopReason.ImageGeneration)
                throw new NoImageGeneratedException(_pipeline.Tokenizer.Decode(generated.Select(i => (int)i), skipSpecialTokens: true), session.StopReason, generated.Length);
            text = _pipeline.Tokenizer.Decode(generated[..^1].Select(i => (int)i), skipSpecialTokens: true);
        }
        else if (forcedText.Length > 0) text = _pipeline.Tokenizer.Decode(forcedText.Select(i => (int)i), skipSpecialTokens: true);

        using var hidden = session.HiddenStates;                 // [1, T, H], every forwarded token
        int lc = (int)hidden.shape[1] - 1;                       // all but <|image_gen_start|>'s state (official get_ca_kv_cross)
        using var context = hidden[0].narrow(0, 0, lc);
        var cache = session.Cache;
        long baseLength = cache.Length;
        var pictures = new List<DrawnImage>();
        for (int i = 0; i < options.Count; i++)
        {
            if (i > 0) cache.Truncate(baseLength);               // the previous image's tokens dropped: same cache as a fresh run
            var clock = Stopwatch.StartNew();
            Tensor? summed = null;
            int index = i;
            try
            {
                ImageGeneration.Tap? tap = preview is null ? null : (name, value) =>
                {
                    if (!name.StartsWith("bits.s", StringComparison.Ordinal)) return;
                    // the loop's own accumulation (MultiScaleResidual): codes of this scale added at the final latent size
                    var schedule = ImageGeneration.ScheduleFor(model, options.ToLoopOptions(seed + index));
                    using var codes = MultiScaleResidual.CodesFromBits(value);
                    var next = MultiScaleResidual.Accumulate(summed, codes, schedule.Scales[^1]).DetachFromDisposeScope();
                    summed?.Dispose();
                    summed = next;
                };
                Action<int, ScaleSchedule>? onScale = preview is null ? null : (si, schedule) =>
                {
                    if (si == schedule.Scales.Count - 1 || !previewScales.Contains(si) || summed is null) return;
                    using var s = NewDisposeScope();
                    using var ng = no_grad();
                    var decoded = model.VaeLocal.Decode(summed.squeeze(2).to(model.DType)).to(ScalarType.Float32);
                    preview(new ImagePreview(index, si, schedule.Scales.Count, RgbImage.FromTensor(ImageOutput.ToUInt8Rgb(decoded)[0]), clock.Elapsed));
                };
                using var image = ImageGeneration.AutoregressiveInferCfg(model, cache, context, options.ToLoopOptions(seed + i), onScale, tap, ct);
                pictures.Add(new DrawnImage(RgbImage.FromTensor(image.Rgb), seed + i));
            }
            finally { summed?.Dispose(); }
        }
        return new ImageOutcome(pictures, text, prompt.Length, lc);
    }

    public void Dispose()
    {
        _chat.Dispose();
        _pipeline.Dispose();
    }
}
