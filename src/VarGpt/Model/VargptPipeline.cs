using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Training;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>How to load a model folder.</summary>
public sealed record PipelineOptions
{
    public Device Device { get; init; } = CPU;
    /// <summary>Compute dtype. The official inference scripts load the bf16 checkpoint with torch_dtype=float32.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>ModelParts.Understanding skips the generation half (as the official lmms-eval wrapper does) to save memory.</summary>
    public ModelParts Parts { get; init; } = ModelParts.All;
    /// <summary>
    /// CPU loads: build the model on META (no allocation, no random init) and make every weight stored in the compute
    /// dtype a zero-copy view of a private mapping of its safetensors file (StateDictOptions.MemoryMap); the others are
    /// allocated and read. Pages are read on first use and stay evictable page cache instead of anonymous memory, so a
    /// bf16 checkpoint run in bf16 fits in less RAM than its size. null (default) = on for the CPU, off elsewhere.
    /// Trade-off measured in docs/notes/checkpoint-io.md (first-touch reads vs resident memory).
    /// </summary>
    public bool? MemoryMap { get; init; }

    internal bool UseMemoryMap => MemoryMap ?? Device.type == DeviceType.CPU;

    /// <summary>Name of the subfolder of a model folder whose PEFT LoRA adapter is merged at load by default.</summary>
    public const string DefaultAdapterFolder = "adapter";

    /// <summary>
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) merged into the weights at load
    /// (<see cref="LoraAdapter.Merge"/>). null (default) = the model folder's <c>adapter/</c> subfolder when it exists.
    /// </summary>
    public string? Adapter { get; init; }
    /// <summary>false = never merge an adapter (the base weights alone, even when the folder has <c>adapter/</c>).</summary>
    public bool MergeAdapter { get; init; } = true;

    /// <summary>The adapter folder a load of <paramref name="modelDir"/> merges, or null.</summary>
    public string? ResolveAdapter(string modelDir)
    {
        if (!MergeAdapter)
        {
            if (Adapter is not null) throw new ArgumentException($"PipelineOptions: Adapter = {Adapter} but MergeAdapter = false; set one or the other");
            return null;
        }
        if (Adapter is not null)
        {
            var full = Path.GetFullPath(Adapter);
            return System.IO.Directory.Exists(full) ? full : throw new DirectoryNotFoundException($"LoRA adapter folder not found: {full}");
        }
        var own = Path.Combine(modelDir, DefaultAdapterFolder);
        return System.IO.Directory.Exists(own) ? Path.GetFullPath(own) : null;
    }
}

/// <summary>A prompt the model cannot take (image/message mismatch, empty, too long); the message says what and why.</summary>
public sealed class InvalidPromptException(string message, Exception? inner = null) : ArgumentException(message, inner);

/// <summary>A tokenized prompt ready for the model: ids [1, L], mask, and the vision tower's output for its images.</summary>
public sealed class PreparedPrompt : IDisposable
{
    public required string Text { get; init; }
    public required Tensor InputIds { get; init; }
    public required Tensor AttentionMask { get; init; }
    public Tensor? ImageEmbeds { get; init; }
    public Tensor? ImageGridThw { get; init; }
    /// <summary>Per image: true when it was shrunk to the processor's max_pixels.</summary>
    public bool[] ShrunkForMaxPixels { get; init; } = [];
    public int Length => (int)InputIds.shape[1];

    public GenerationInputs ToGenerationInputs() => new(InputIds, AttentionMask, ImageEmbeds, ImageGridThw);

    public void Dispose()
    {
        InputIds.Dispose(); AttentionMask.Dispose(); ImageEmbeds?.Dispose(); ImageGridThw?.Dispose();
    }
}

/// <summary>What one model turn produced: the text (special tokens skipped), its ids, and an image if the model drew one.</summary>
public sealed record VargptOutput(string Text, IReadOnlyList<long> GeneratedIds, StopReason StopReason, GeneratedImage? Image);

/// <summary>
/// A loaded VARGPT-v1.1 model folder (the official checkpoint layout: config.json, generation_config.json,
/// preprocessor_config.json, tokenizer files, safetensors) with everything needed to turn chat messages and images into
/// model inputs and to run the official generate loop: text, and — when the model emits &lt;|image_gen_start|&gt; — the
/// next-scale image generation (official patched sampler, patching_utils/vargpt_sample.py).
/// </summary>
public sealed class VargptPipeline : IDisposable
{
    public string Directory { get; }
    public VargptConfig Config { get; }
    public GenerationConfig Generation { get; }
    public PreprocessorConfig Preprocessor { get; }
    public QwenTokenizer Tokenizer { get; }
    public ImageProcessor ImageProcessor { get; }
    public VargptForConditionalGeneration Model { get; }
    public PipelineOptions Options { get; }
    /// <summary>The LoRA adapter merged at load (<see cref="PipelineOptions.Adapter"/>), or null.</summary>
    public LoraAdapterMergeReport? Adapter { get; }

    VargptPipeline(string dir, VargptConfig config, GenerationConfig generation, PreprocessorConfig preprocessor, QwenTokenizer tokenizer,
        VargptForConditionalGeneration model, PipelineOptions options, LoraAdapterMergeReport? adapter)
    {
        Directory = dir; Config = config; Generation = generation; Preprocessor = preprocessor; Tokenizer = tokenizer;
        ImageProcessor = new ImageProcessor(preprocessor); Model = model; Options = options; Adapter = adapter;
    }

    /// <summary>
    /// Loads a model folder. <paramref name="progress"/> receives (stage, fraction) lines such as ("weights", 0.4).
    /// Missing generation_config.json / preprocessor_config.json fall back to config.json ids / the processor defaults.
    /// </summary>
    public static VargptPipeline Load(string dir, PipelineOptions? options = null, Action<string, double>? progress = null)
    {
        options ??= new PipelineOptions();
        if (!System.IO.Directory.Exists(dir)) throw new DirectoryNotFoundException($"model folder not found: {dir}");
        var config = VargptConfig.Load(Path.Combine(dir, "config.json"));
        var generation = File.Exists(Path.Combine(dir, GenerationConfig.FileName))
            ? GenerationConfig.Load(Path.Combine(dir, GenerationConfig.FileName)) : GenerationConfig.FromModelConfig(config);
        var pre = File.Exists(Path.Combine(dir, PreprocessorConfig.FileName))
            ? PreprocessorConfig.Load(Path.Combine(dir, PreprocessorConfig.FileName)) : new PreprocessorConfig();
        progress?.Invoke("tokenizer", 0);
        var tokenizer = QwenTokenizer.FromDirectory(dir);
        CheckTokenIds(config, tokenizer, dir);
        progress?.Invoke("model", 0);
        if (options.UseMemoryMap && options.Device.type != DeviceType.CPU)
            throw new ArgumentException($"PipelineOptions.MemoryMap needs the CPU device, not {options.Device}");
        VargptForConditionalGeneration model;
        // Build directly in the compute dtype/device so a 9B model is never allocated in float32 first; with memory
        // mapping on META, the load then gives every parameter its storage.
        var buildDevice = options.UseMemoryMap ? META : options.Device;
        using (TorchRuntime.DefaultsScope(buildDevice, options.DType))
            model = new VargptForConditionalGeneration(config, buildDevice, options.DType, options.Parts);
        model.eval();
        using var reader = CheckpointReader.Open(dir);
        var skipped = new List<string>();
        if (!options.Parts.HasFlag(ModelParts.Vision)) skipped.AddRange(VargptForConditionalGeneration.VisionPrefixes.Select(p => p + "*"));
        if (!options.Parts.HasFlag(ModelParts.Generation)) skipped.AddRange(VargptForConditionalGeneration.GenerationPrefixes.Select(p => p + "*"));
        progress?.Invoke("weights", 0);
        StateDict.Load(model, reader, new StateDictOptions
        {
            AllowUnexpected = skipped,
            MemoryMap = options.UseMemoryMap,
            Progress = progress is null ? null : (done, total) => progress("weights", total == 0 ? 1 : (double)done / total),
        });
        progress?.Invoke("weights", 1);
        LoraAdapterMergeReport? adapter = null;
        if (options.ResolveAdapter(dir) is { } adapterDir)
        {
            progress?.Invoke("adapter", 0);
            try
            {
                // layers of parts that were not loaded (options.Parts) are skipped, not errors
                var notLoaded = skipped.Select(p => p.TrimEnd('*')).ToList();
                adapter = LoraAdapter.Merge(model, adapterDir, name => notLoaded.Any(p => (name + ".").StartsWith(p, StringComparison.Ordinal)));
            }
            catch { model.Dispose(); throw; }
            progress?.Invoke("adapter", 1);
        }
        return new VargptPipeline(dir, config, generation, pre, tokenizer, model, options, adapter);
    }

    /// <summary>The ids in config.json must name the same tokens in the tokenizer files (a mismatched folder fails here, not mid-generation).</summary>
    static void CheckTokenIds(VargptConfig c, QwenTokenizer tok, string dir)
    {
        foreach (var (name, id, token) in new[]
        {
            ("image_token_id", c.ImageTokenId, "<|image_pad|>"), ("vision_start_token_id", c.VisionStartTokenId, "<|vision_start|>"),
            ("vision_end_token_id", c.VisionEndTokenId, "<|vision_end|>"),
            ("special_tokens.image_gen_start_token_id", c.ImageGen.StartId, c.ImageGen.Start),
            ("special_tokens.image_gen_end_token_id", c.ImageGen.EndId, c.ImageGen.End),
            ("special_tokens.image_gen_pad_token_id", c.ImageGen.PadId, c.ImageGen.Pad),
        })
        {
            var got = tok.TryTokenToId(token);
            if (got != id)
                throw new InvalidDataException($"{dir}: config.json {name} = {id} but the tokenizer maps '{token}' to {(got?.ToString() ?? "nothing")}");
        }
    }

    /// <summary>
    /// Chat messages (image items in order) + the images → template, image preprocessing, &lt;|image_pad|&gt; expansion,
    /// token ids and the vision tower's embeddings (official processor + the prefill part of forward).
    /// </summary>
    public PreparedPrompt Prepare(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, bool addGenerationPrompt = true)
    {
        int slots = messages.Sum(m => m.ImageCount);
        if (slots != images.Count)
            throw new InvalidPromptException($"the messages have {slots} image item(s) but {images.Count} image(s) were given");
        var text = ChatTemplate.Render(messages, addGenerationPrompt);
        Tensor? embeds = null, grid = null;
        bool[] shrunk = [];
        int imageTokens = 0;
        if (images.Count > 0)
        {
            if (!Model.Parts.HasFlag(ModelParts.Vision)) throw new InvalidOperationException("this model was loaded without its vision tower; images cannot be used");
            ProcessedImages processed;
            try { processed = ImageProcessor.Preprocess(images); }
            catch (ArgumentException e) { throw new InvalidPromptException(e.Message, e); }   // too small, extreme aspect ratio
            using var _ = processed;
            shrunk = processed.ShrunkForMaxPixels;
            imageTokens = processed.TokenCounts.Sum();
            var grids = Enumerable.Range(0, images.Count)
                .Select(i => ((int)processed.ImageGridThw[i, 0].item<long>(), (int)processed.ImageGridThw[i, 1].item<long>(), (int)processed.ImageGridThw[i, 2].item<long>())).ToList();
            try { text = PromptExpansion.ExpandImagePads(text, grids, Preprocessor.MergeSize); }
            catch (ArgumentException e)
            {
                throw new InvalidPromptException($"Image features and image tokens do not match: {e.Message}; remove special tokens such as {SpecialTokens.ImagePad} from the message text", e);
            }
            grid = processed.ImageGridThw.clone();
            using (no_grad()) embeds = Model.Visual.forward(processed.PixelValues.to(Model.Device), grid);
        }
        var ids = Tokenizer.Encode(text);
        if (ids.Count == 0) throw new InvalidPromptException("the prompt is empty");
        // official processor + forward: every <|image_pad|> takes one image feature; a literal one in the text breaks the count
        int padTokens = ids.Count(i => i == Config.ImageTokenId);
        if (padTokens != imageTokens)
        {
            embeds?.Dispose(); grid?.Dispose();
            throw new InvalidPromptException($"Image features and image tokens do not match: the prompt has {padTokens} {SpecialTokens.ImagePad} token(s) " +
                $"but the {images.Count} image(s) give {imageTokens} feature(s); remove special tokens such as {SpecialTokens.ImagePad} from the message text");
        }
        if (ids.Count >= Config.MaxPositionEmbeddings)
        {
            embeds?.Dispose(); grid?.Dispose();
            throw new InvalidPromptException($"the prompt has {ids.Count} tokens ({imageTokens} of them image tokens) but the model supports {Config.MaxPositionEmbeddings} positions (max_position_embeddings); shorten it or use smaller images");
        }
        var inputIds = tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0);
        return new PreparedPrompt
        {
            Text = text, InputIds = inputIds, AttentionMask = ones_like(inputIds), ImageEmbeds = embeds, ImageGridThw = grid, ShrunkForMaxPixels = shrunk,
        };
    }

    /// <summary>
    /// The generation settings of the checkpoint (generation_config.json, so e.g. its repetition_penalty applies as in
    /// HF generate) with the overrides the official inference scripts pass (do_sample False, max_new_tokens).
    /// </summary>
    public GenerationConfig DefaultTextGeneration(int maxNewTokens) => Generation with { DoSample = false, MaxNewTokens = maxNewTokens };

    /// <summary>Starts the official generate loop on a prepared prompt (iterate the session, then see <see cref="ContinueWithImage"/>).</summary>
    public TextGeneration StartGeneration(PreparedPrompt prompt, GenerationConfig generation, long? seed = null) =>
        new(Model, prompt.ToGenerationInputs(), generation,
            new GenerationOptions { Seed = seed, InterceptImageGeneration = Model.Parts.HasFlag(ModelParts.Generation), KeepHiddenStates = Model.Parts.HasFlag(ModelParts.Generation) });

    /// <summary>
    /// After a session stopped with <see cref="StopReason.ImageGeneration"/>: the next-scale image loop on its KV cache with the
    /// hidden states of every token before &lt;|image_gen_start|&gt; as cross-attention context (official get_ca_kv_cross).
    /// </summary>
    public GeneratedImage ContinueWithImage(TextGeneration session, ImageGenerationOptions options, Action<int, Generation.ScaleSchedule>? onScale = null,
        CancellationToken cancellationToken = default)
    {
        if (session.StopReason != StopReason.ImageGeneration)
            throw new InvalidOperationException($"the session stopped with {session.StopReason}, not at <|image_gen_start|>");
        using var hidden = session.HiddenStates; // [1, T, H]
        using var row = hidden[0];
        using var context = row.narrow(0, 0, hidden.shape[1] - 1);
        return ImageGeneration.AutoregressiveInferCfg(Model, session.Cache, context, options, onScale, null, cancellationToken);
    }

    /// <summary>One model turn: text until EOS / max tokens, or until the model starts an image, which is then generated.</summary>
    public VargptOutput Run(PreparedPrompt prompt, GenerationConfig generation, ImageGenerationOptions imageOptions, long? textSeed = null,
        Action<int, Generation.ScaleSchedule>? onScale = null, CancellationToken cancellationToken = default)
    {
        using var session = StartGeneration(prompt, generation, textSeed);
        foreach (var _ in session.Run(cancellationToken)) { }
        using var seq = session.Sequences.clone();
        var generated = seq[0].narrow(0, prompt.Length, seq.shape[1] - prompt.Length).data<long>().ToArray();
        // official: the token chosen after <|image_gen_start|> is appended but never forwarded; drop it from the text.
        var textIds = session.StopReason == StopReason.ImageGeneration ? generated[..^1] : generated;
        var text = Tokenizer.Decode(textIds.Select(i => (int)i), skipSpecialTokens: true);
        GeneratedImage? image = session.StopReason == StopReason.ImageGeneration
            ? ContinueWithImage(session, imageOptions, onScale, cancellationToken) : null;
        return new VargptOutput(text, textIds, session.StopReason, image);
    }

    public void Dispose() => Model.Dispose();
}
