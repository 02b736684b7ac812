using System.Diagnostics;
using System.Globalization;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Text;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>
/// Settings of <see cref="VargptImages.GenerateImage"/> / <see cref="VargptImages.EditImage"/>. Defaults are the official
/// inference defaults: cfg 3, tau 0.5, top-k 900, top-p 0.97, square, the checkpoint's pixel budget ('0.25M' = 512×512),
/// greedy text decoding with max_new_tokens 4096 (inference_v1_1/generation_vargpt_v1_1.py).
/// </summary>
public sealed record ImageOptions
{
    /// <summary>Classifier-free guidance on logits (≥ 1; 1 disables the unconditional branch).</summary>
    public double Cfg { get; init; } = 3;
    /// <summary>Temperature divisor of the bit logits (&gt; 0).</summary>
    public double Tau { get; init; } = 0.5;
    public int TopK { get; init; } = 900;
    public double TopP { get; init; } = 0.97;
    /// <summary>Seed of the bit sampler. Null = a random seed, returned in the result (the official code seeds from the clock and never tells).</summary>
    public long? Seed { get; init; }
    /// <summary>Height / width; must be one of the dynamic-resolution templates (<see cref="ScaleSchedules.Templates"/>). Official: 1.</summary>
    public double AspectRatio { get; init; } = 1.0;
    /// <summary>Pixel budget name ('0.06M', '0.25M', '0.60M', '1M', ...); null = the checkpoint's vargpt_gen_args.pn.</summary>
    public string? Pn { get; init; }
    /// <summary>Images per prompt. Image i uses seed Seed + i, so any of them is reproduced by Count 1 with that seed.</summary>
    public int Count { get; init; } = 1;
    /// <summary>
    /// Begin the assistant turn with &lt;|image_gen_start|&gt; instead of waiting for the model to emit it. Not an official
    /// option: the official scripts rely on the model emitting the token (a model that answers with text only produces no
    /// image there). Forced, the context is the prompt alone (no generated text), exactly as if the model had chosen
    /// &lt;|image_gen_start|&gt; as its first token.
    /// </summary>
    public bool ForceImageStart { get; init; }
    /// <summary>Text-token budget before the image must start (official generation script: 4096).</summary>
    public int MaxNewTokens { get; init; } = 4096;
    /// <summary>
    /// Editing only: the source image is first shrunk (PIL NEAREST) to at most this many pixels, as LLaMA-Factory's
    /// image_resolution (512·512 = 262144) does on the official editing path; fewer pixels = fewer image tokens in the
    /// cross-attention context, which must fit the checkpoint's cfg_uncond rows (text_maxlen). Null = no pre-shrink
    /// (the processor's own max_pixels still applies).
    /// </summary>
    public long? EditMaxPixels { get; init; } = 512 * 512;

    /// <summary>Checks every setting and resolves the scale schedule (errors list the valid aspect ratios / pixel budgets).</summary>
    public ScaleSchedule Validate(VargptConfig config)
    {
        ToLoopOptions(0).Validate();
        if (Count < 1) throw new ArgumentOutOfRangeException(nameof(Count), Count, "count must be ≥ 1");
        if (MaxNewTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "max new tokens must be ≥ 1");
        if (EditMaxPixels is long px && px < 28 * 28) throw new ArgumentOutOfRangeException(nameof(EditMaxPixels), px, "the edit image's max pixels must be ≥ 784 (28×28)");
        double template = ScaleSchedules.NearestTemplate(AspectRatio);
        if (Math.Abs(Math.Log(template / AspectRatio)) > 0.01)
            throw new ArgumentException(
                $"unknown aspect ratio h/w = {AspectRatio.ToString("0.###", CultureInfo.InvariantCulture)}; valid (h/w): " +
                string.Join(", ", ScaleSchedules.Templates.Select(t => t.ToString("0.###", CultureInfo.InvariantCulture))), nameof(AspectRatio));
        return ScaleSchedules.Get(template, Pn ?? config.Pn);
    }

    /// <summary>The options of the faithful image loop for one image.</summary>
    public ImageGenerationOptions ToLoopOptions(long seed) => new()
    {
        Cfg = Cfg, Tau = Tau, TopK = TopK, TopP = TopP, Seed = seed, AspectRatio = AspectRatio, Pn = Pn,
    };
}

/// <summary>One generated image and the seed that reproduces it (with the same prompt and options).</summary>
public sealed record GeneratedPicture(RgbImage Image, long Seed, ScaleSchedule Schedule);

/// <summary>What one prompt produced: the images, the text the model wrote before &lt;|image_gen_start|&gt;, and facts about the run.</summary>
/// <param name="Text">generated text (special tokens skipped); empty when the image start was forced</param>
/// <param name="ContextTokens">tokens before &lt;|image_gen_start|&gt; = rows of the cross-attention context (≤ text_maxlen with CFG)</param>
public sealed record ImageResult(IReadOnlyList<GeneratedPicture> Images, string Text, bool ImageStartForced, int PromptTokens, int ContextTokens)
{
    public long Seed => Images[0].Seed;
}

/// <summary>Progress of a generation: scale <see cref="ScaleIndex"/> of image <see cref="Image"/> (0-based) of <see cref="Images"/> is done; <see cref="Elapsed"/> counts from the start of this image's loop.</summary>
public sealed record ImageProgress(int Image, int Images, int ScaleIndex, int Scales, Scale Scale, TimeSpan Elapsed);

/// <summary>The model answered without starting an image (no &lt;|image_gen_start|&gt;); <see cref="Text"/> is what it wrote.</summary>
public sealed class NoImageGeneratedException(string text, StopReason stopReason, int tokens)
    : Exception($"the model did not start an image (no <|image_gen_start|>): it stopped ({(stopReason == StopReason.MaxLength ? "max new tokens reached" : stopReason.ToString())}) " +
                $"after {tokens} text token(s): \"{Shorten(text)}\". Rephrase the prompt as an image request, or force the image start " +
                "(ImageOptions.ForceImageStart / --force-image-start; not an official option).")
{
    public string Text { get; } = text;
    public StopReason StopReason { get; } = stopReason;

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";
}

/// <summary>
/// Text-to-image and image editing with VARGPT-v1.1, as the official inference does it: the prompt is one user chat turn
/// (Qwen2-VL template with the default system message, generation prompt added); text is decoded greedily with the
/// official patched sampler until the model emits &lt;|image_gen_start|&gt;; then autoregressive_infer_cfg draws the image
/// (<see cref="ImageGeneration.AutoregressiveInferCfg"/>). Editing uses the official edit format (LLaMA-Factory
/// eval_inference_demo_edit.json): the source image in the user turn, then the instruction.
/// Count &gt; 1 runs the text phase once and generates the images one after another on the same prompt KV cache (the
/// image tokens of one image are dropped before the next), which gives exactly the images of separate calls.
/// </summary>
public sealed class VargptImages : IDisposable
{
    public VargptPipeline Pipeline { get; }
    readonly bool _ownsPipeline;

    public VargptImages(VargptPipeline pipeline, bool ownsPipeline = false)
    {
        if (!pipeline.Model.Parts.HasFlag(ModelParts.Generation))
            throw new ArgumentException("the pipeline was loaded without the generation half (ModelParts.Generation); load it with ModelParts.All", nameof(pipeline));
        Pipeline = pipeline;
        _ownsPipeline = ownsPipeline;
    }

    /// <summary>
    /// Loads a model folder for generation; a checkpoint without the generation weights fails naming the missing ones.
    /// The language model and the generation half are always loaded; options.Parts without Vision skips the vision tower
    /// (text-to-image does not need it; editing does).
    /// </summary>
    public static VargptImages Load(string dir, PipelineOptions? options = null, Action<string, double>? progress = null)
    {
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"model folder not found: {dir}");
        CheckGenerationWeights(dir);
        options ??= new PipelineOptions();
        options = options with { Parts = options.Parts | ModelParts.LanguageModel | ModelParts.Generation };
        return new VargptImages(VargptPipeline.Load(dir, options, progress), ownsPipeline: true);
    }

    /// <summary>Fails when the checkpoint has no tensor at all under one of the generation prefixes (e.g. an understanding-only export).</summary>
    public static void CheckGenerationWeights(string dir)
    {
        using var reader = CheckpointReader.Open(dir);
        var missing = VargptForConditionalGeneration.GenerationPrefixes.Where(p => !reader.Names.Any(n => n.StartsWith(p, StringComparison.Ordinal))).ToList();
        if (missing.Count > 0)
            throw new InvalidDataException(
                $"{dir}: the checkpoint has no image-generation weights for {string.Join(", ", missing.Select(p => p + "*"))} " +
                $"({reader.Names.Count()} tensors, none under these prefixes). Image generation needs the full VARGPT-v1.1 checkpoint " +
                "(vargpt_gen = Infinity, vae_local = BSQ-VAE, image_gen_projector(_out), sos_embedding); this one looks understanding-only.");
    }

    /// <summary>Text-to-image: the prompt as one user turn (official generation_vargpt_v1_1.py).</summary>
    public ImageResult GenerateImage(string prompt, ImageOptions? options = null, Action<ImageProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(prompt);
        return Run([ChatMessage.User(prompt)], [], options ?? new ImageOptions(), progress, cancellationToken);
    }

    /// <summary>Several prompts with the same options; result p equals <see cref="GenerateImage"/>(prompts[p], options) (same seeds).</summary>
    public IReadOnlyList<ImageResult> GenerateImages(IReadOnlyList<string> prompts, ImageOptions? options = null, Action<int, ImageProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        options ??= new ImageOptions();
        if (options.Seed is null) options = options with { Seed = NewSeed() };
        var results = new List<ImageResult>();
        for (int p = 0; p < prompts.Count; p++)
        {
            int pi = p;
            results.Add(GenerateImage(prompts[p], options, progress is null ? null : new Action<ImageProgress>(e => progress(pi, e)), cancellationToken));
        }
        return results;
    }

    /// <summary>
    /// Editing in the official format: user content = the source image then the instruction, or, when the instruction
    /// contains "&lt;image&gt;" once, the image at that place (as in eval_inference_demo_edit.json: "Transform this image
    /// &lt;image&gt; to match …"). The source image is pre-shrunk to <see cref="ImageOptions.EditMaxPixels"/>.
    /// </summary>
    public ImageResult EditImage(RgbImage image, string instruction, ImageOptions? options = null, Action<ImageProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentException.ThrowIfNullOrWhiteSpace(instruction);
        options ??= new ImageOptions();
        var parts = new List<ContentPart>();
        var pieces = instruction.Split("<image>");
        if (pieces.Length > 2) throw new ArgumentException("the instruction contains \"<image>\" more than once; editing takes one source image", nameof(instruction));
        if (pieces.Length == 2)
        {
            if (pieces[0].Length > 0) parts.Add(ContentPart.FromText(pieces[0]));
            parts.Add(ContentPart.Image);
            if (pieces[1].Length > 0) parts.Add(ContentPart.FromText(pieces[1]));
        }
        else { parts.Add(ContentPart.Image); parts.Add(ContentPart.FromText(instruction)); }
        options.Validate(Pipeline.Config);
        var source = options.EditMaxPixels is long px ? ImageProcessor.PreprocessImageForTraining(image, px) : image;
        return Run([ChatMessage.User([.. parts])], [source], options, progress, cancellationToken);
    }

    /// <summary>A fresh random seed (what the CLI prints when --seed is not given).</summary>
    public static long NewSeed() => Random.Shared.NextInt64(0, 1L << 32);

    ImageResult Run(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, ImageOptions options, Action<ImageProgress>? progress,
        CancellationToken cancellationToken)
    {
        using var scope = NewDisposeScope();
        options.Validate(Pipeline.Config);
        long seed = options.Seed ?? NewSeed();
        var model = Pipeline.Model;
        var cfg = Pipeline.Config;
        using var prompt = Pipeline.Prepare(messages, images);
        int imageTokens = images.Count == 0 ? 0 : (int)prompt.InputIds.eq(cfg.ImageTokenId).sum().item<long>();
        CheckContext(prompt.Length, imageTokens, options, images.Count > 0, generatedText: 0);

        GenerationInputs inputs = prompt.ToGenerationInputs();
        Tensor? forcedIds = null, forcedMask = null;
        var generation = Pipeline.DefaultTextGeneration(options.MaxNewTokens);
        if (options.ForceImageStart)
        {
            // The assistant turn begins with <|image_gen_start|>: it is prefilled with the prompt, then one token is chosen
            // from its logits and appended unforwarded (what the official sampler does after the start token).
            forcedIds = cat([prompt.InputIds, tensor(new long[,] { { cfg.ImageGen.StartId } })], 1);
            forcedMask = ones_like(forcedIds);
            inputs = inputs with { InputIds = forcedIds, AttentionMask = forcedMask };
            generation = generation with { MaxNewTokens = 1 };
        }
        try
        {
            using var session = new TextGeneration(model, inputs, generation, new GenerationOptions
            {
                InterceptImageGeneration = !options.ForceImageStart, KeepHiddenStates = true,
            });
            foreach (var _ in session.Run(cancellationToken)) { }
            long promptLen = inputs.InputIds.shape[1];
            long[] generated;
            using (var seq = session.Sequences.clone())
                generated = seq[0].narrow(0, promptLen, seq.shape[1] - promptLen).data<long>().ToArray();
            string text;
            if (options.ForceImageStart) text = "";
            else
            {
                if (session.StopReason != StopReason.ImageGeneration)
                    throw new NoImageGeneratedException(Pipeline.Tokenizer.Decode(generated.Select(i => (int)i), skipSpecialTokens: true), session.StopReason, generated.Length);
                // official: the token chosen after <|image_gen_start|> is appended but never forwarded; it is not part of the text
                text = Pipeline.Tokenizer.Decode(generated[..^1].Select(i => (int)i), skipSpecialTokens: true);
            }

            using var hidden = session.HiddenStates;                       // [1, T, H], T = every forwarded token
            int lc = (int)hidden.shape[1] - 1;                             // all but <|image_gen_start|>'s state
            CheckContext(lc, imageTokens, options, images.Count > 0, generatedText: lc - prompt.Length);
            using var context = hidden[0].narrow(0, 0, lc);
            var cache = session.Cache;
            long baseLength = cache.Length;
            var pictures = new List<GeneratedPicture>();
            for (int i = 0; i < options.Count; i++)
            {
                var sw = Stopwatch.StartNew();
                if (i > 0) cache.Truncate(baseLength);                     // drop the previous image's tokens: same cache as a fresh run
                int index = i;
                using var image = ImageGeneration.AutoregressiveInferCfg(model, cache, context, options.ToLoopOptions(seed + i),
                    progress is null ? null : (si, s) => progress(new ImageProgress(index, options.Count, si, s.Scales.Count, s.Scales[si], sw.Elapsed)),
                    null, cancellationToken);
                pictures.Add(new GeneratedPicture(RgbImage.FromTensor(image.Rgb), seed + i, image.Schedule));
            }
            return new ImageResult(pictures, text, options.ForceImageStart, prompt.Length, lc);
        }
        finally { forcedIds?.Dispose(); forcedMask?.Dispose(); }
    }

    /// <summary>With CFG the unconditional branch reads cfg_uncond[:Lc]: the context cannot be longer than its rows.</summary>
    void CheckContext(int lc, int imageTokens, ImageOptions options, bool editing, int generatedText)
    {
        int max = Pipeline.Model.VargptGen.Config.TextMaxLen;
        if (options.Cfg == 1 || lc <= max) return;
        var why = generatedText > 0 ? $" ({generatedText} of them generated text)" : "";
        var fix = editing
            ? $" The source image alone yields {imageTokens} image tokens: lower the edit image's max pixels (ImageOptions.EditMaxPixels / --max-pixels, " +
              $"now {(options.EditMaxPixels?.ToString(CultureInfo.InvariantCulture) ?? "unlimited")}; each image token covers 28×28 = 784 pixels), or shorten the instruction."
            : " Shorten the prompt.";
        throw new ArgumentException(
            $"the context before <|image_gen_start|> has {lc} tokens{why} but this checkpoint's unconditional CFG branch supports at most {max} " +
            $"(rows of vargpt_gen.cfg_uncond = text_maxlen; the official code fails here).{fix} Cfg 1 (no guidance) has no such limit.");
    }

    public void Dispose()
    {
        if (_ownsPipeline) Pipeline.Dispose();
    }
}
