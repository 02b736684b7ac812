using System.Diagnostics;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using VarGpt.Checkpoint;
using VarGpt.Configuration;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Vision;
using static TorchSharp.torch;
using ChatMessage = VarGpt.Text.ChatMessage;

namespace VarGpt.Inference;

/// <summary>
/// A loaded VARGPT-v1.1 model folder (the official checkpoint layout: config.json, generation_config.json,
/// preprocessor_config.json, tokenizer files, safetensors, optionally a PEFT adapter/) — the one entry point of the
/// library. It owns the weights and turns chat messages and images into turns of the official generate loop
/// (<see cref="Turn"/>): chat (whole, streamed, or a batch of conversations), text-to-image and editing, and the
/// Microsoft.Extensions.AI views <see cref="AsChatClient"/> and <see cref="AsImageGenerator"/>. Training and the CLI load
/// through it too.
/// <para>Thread safety: after <see cref="Load"/> the weights are only read; every call builds its own prompt tensors,
/// KV caches and generators, so one model may serve concurrent calls from any threads (they share the cores; bound the
/// concurrency); loading builds every module with an explicit device and dtype and never touches libtorch's process-wide
/// defaults, so models may load while others run. Dispose only when no call runs.</para>
/// </summary>
public sealed class VargptModel : IDisposable
{
    public string Directory { get; }
    public VargptConfig Config { get; }
    /// <summary>generation_config.json (or the ids of config.json when the folder has none).</summary>
    public GenerationConfig GenerationConfig { get; }
    public PreprocessorConfig Preprocessor { get; }
    public QwenTokenizer Tokenizer { get; }
    public ImageProcessor ImageProcessor { get; }
    /// <summary>The module tree (= the official state dict).</summary>
    public VargptForConditionalGeneration Module { get; }
    public VargptModelOptions Options { get; }
    /// <summary>The LoRA adapter merged at load (<see cref="VargptModelOptions.Adapter"/>), or null.</summary>
    public LoraAdapterMergeReport? Adapter { get; }

    /// <summary>Guards of the memory-mapped weight files against in-place writers, for as long as the model lives.</summary>
    IReadOnlyList<MappedFileLease> _leases = [];

    VargptModel(string dir, VargptConfig config, GenerationConfig generation, PreprocessorConfig preprocessor, QwenTokenizer tokenizer,
        VargptForConditionalGeneration module, VargptModelOptions options, LoraAdapterMergeReport? adapter)
    {
        Directory = dir; Config = config; GenerationConfig = generation; Preprocessor = preprocessor; Tokenizer = tokenizer;
        ImageProcessor = new ImageProcessor(preprocessor); Module = module; Options = options; Adapter = adapter;
    }

    // ------------------------------------------------------------------------------------------------ loading

    /// <summary>
    /// Loads a model folder. <paramref name="progress"/> receives (stage, fraction) such as ("weights", 0.4).
    /// Missing generation_config.json / preprocessor_config.json fall back to config.json ids / the processor defaults.
    /// The ids in config.json must name the same tokens in the tokenizer files; a folder without image-generation
    /// weights fails naming them unless <see cref="VargptModelOptions.Parts"/> leaves the generation half out.
    /// </summary>
    public static VargptModel Load(string dir, VargptModelOptions? options = null, Action<string, double>? progress = null)
    {
        progress?.Invoke("tokenizer", 0);
        return Load(ModelFolder.Read(dir), options, progress);
    }

    /// <summary>Loads the weights of a folder whose configs and tokenizer were read already (<see cref="ModelFolder.Read"/>).</summary>
    public static VargptModel Load(ModelFolder folder, VargptModelOptions? options = null, Action<string, double>? progress = null)
    {
        options ??= new VargptModelOptions();
        var dir = folder.Directory;
        if (options.UseMemoryMap && options.Device.type != TorchSharp.DeviceType.CPU)
            throw new InvalidOptionException($"VargptModelOptions.MemoryMap needs the CPU device, not {options.Device}", nameof(options.MemoryMap));
        options.CheckQuantize();
        using var reader = CheckpointReader.Open(dir);
        if (options.Parts.HasFlag(ModelParts.Generation)) CheckGenerationWeights(reader, dir);
        progress?.Invoke("model", 0);
        // Build directly in the compute dtype/device so a 9B model is never allocated in float32 first; with memory
        // mapping on META, the load then gives every parameter its storage.
        var buildDevice = options.UseMemoryMap ? META : options.Device;
        var model = new VargptForConditionalGeneration(folder.Config, buildDevice, options.DType, options.Parts);
        model.eval();
        var notLoaded = ModelComponents.PrefixesOutside(options.Parts);
        progress?.Invoke("weights", 0);
        LoraAdapterMergeReport? adapter = null;
        try
        {
            var loaded = StateDict.Load(model, reader, new StateDictOptions
            {
                AllowUnexpected = notLoaded.Select(p => p + "*").ToList(),
                MemoryMap = options.UseMemoryMap,
                Progress = progress is null ? null : (done, total) => progress("weights", total == 0 ? 1 : (double)done / total),
            });
            progress?.Invoke("weights", 1);
            if (options.ResolveAdapter(dir) is { } adapterDir)
            {
                progress?.Invoke("adapter", 0);
                // layers of parts that were not loaded (options.Parts) are skipped, not errors
                adapter = LoraAdapter.Merge(model, adapterDir, name => notLoaded.Any(p => (name + ".").StartsWith(p, StringComparison.Ordinal)));
                progress?.Invoke("adapter", 1);
            }
            if (options.Quantize == WeightQuantization.Int8)
            {
                progress?.Invoke("quantize", 0);
                // a merged layer's weight is a new tensor, no longer a view of the file
                var mapped = loaded.Mapped.Except(adapter?.Merged.Select(n => n + ".weight") ?? []).ToHashSet(StringComparer.Ordinal);
                LanguageModelQuantization.QuantizeInt8(model, mapped, progress is null ? null : (done, total) => progress("quantize", (double)done / total));
            }
        }
        catch { model.Dispose(); throw; }
        return new VargptModel(dir, folder.Config, folder.GenerationConfig, folder.Preprocessor, folder.Tokenizer, model, options, adapter)
        {
            _leases = reader.DetachLeases(),
        };
    }

    /// <summary>Fails when the checkpoint has no tensor at all under one of the generation prefixes (e.g. an understanding-only export).</summary>
    static void CheckGenerationWeights(CheckpointReader reader, string dir)
    {
        var missing = ModelComponents.PrefixesOf(ModelParts.Generation).Where(p => !reader.Names.Any(n => n.StartsWith(p, StringComparison.Ordinal))).ToList();
        if (missing.Count > 0)
            throw new InvalidFileException(
                $"{dir}: the checkpoint has no image-generation weights for {string.Join(", ", missing.Select(p => p + "*"))} " +
                $"({reader.Names.Count()} tensors, none under these prefixes). Image generation needs the full VARGPT-v1.1 checkpoint " +
                "(vargpt_gen = Infinity, vae_local = BSQ-VAE, image_gen_projector(_out), sos_embedding); this one looks understanding-only: " +
                "load it with ModelParts.Understanding to chat.");
    }

    // ------------------------------------------------------------------------------------------------ prompts and turns

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
            if (!Module.Parts.HasFlag(ModelParts.Vision)) throw new InvalidOperationException("this model was loaded without its vision tower; images cannot be used");
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
            using (no_grad()) embeds = Module.Visual.forward(processed.PixelValues.to(Module.Device), grid);
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
            Text = text, InputIds = inputIds, AttentionMask = ones_like(inputIds), ImageEmbeds = embeds, ImageGridThw = grid,
            ShrunkForMaxPixels = shrunk, ImageTokens = imageTokens,
        };
    }

    /// <summary>
    /// The generation settings of the checkpoint (generation_config.json, so e.g. its repetition_penalty applies as in
    /// HF generate) with the overrides the official inference scripts pass (do_sample False, max_new_tokens).
    /// </summary>
    public GenerationConfig DefaultTextGeneration(int maxNewTokens) => GenerationConfig with { DoSample = false, MaxNewTokens = maxNewTokens };

    /// <summary>Starts one turn on prepared prompts (one, or several as a left-padded batch); the caller keeps the prompts alive while the turn runs.</summary>
    public Turn StartTurn(IReadOnlyList<PreparedPrompt> prompts, TurnOptions options) => new(this, prompts, options);

    // ------------------------------------------------------------------------------------------------ chat

    /// <summary>The reply to the conversation (runs on the calling thread).</summary>
    public VargptChatReply Chat(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        foreach (var u in ChatUpdates(messages, options, cancellationToken))
            if (u.Reply is { } r) return r;
        throw new InvalidOperationException("the chat loop ended without a reply");
    }

    /// <summary>Single-turn shortcut: one user message with the images first, then the text (the Qwen2-VL examples' order).</summary>
    public VargptChatReply Chat(string prompt, IReadOnlyList<RgbImage>? images = null, VargptChatOptions? options = null, CancellationToken cancellationToken = default) =>
        Chat([ChatMessages.User(prompt, images ?? [])], options, cancellationToken);

    /// <summary>The reply text as it is generated (complete UTF-8 characters only), off the caller's thread.</summary>
    public async IAsyncEnumerable<string> ChatStreamingAsync(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await foreach (var u in ChatUpdatesAsync(messages, options, cancellationToken).ConfigureAwait(false))
            if (u.Text.Length > 0) yield return u.Text;
    }

    /// <summary>Text pieces, an ImageStarting marker when the model starts an image, and finally the whole reply (usage, finish, image).</summary>
    public async IAsyncEnumerable<VargptChatUpdate> ChatUpdatesAsync(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // every step (prefill, one decode step, the image) runs on the thread pool; the iterator holds no dispose scope across yields
        using var e = ChatUpdates(messages, options, cancellationToken).GetEnumerator();
        while (await Task.Run(e.MoveNext, cancellationToken).ConfigureAwait(false))
            yield return e.Current;
    }

    /// <summary>The synchronous update stream behind every chat call: one element per forward pass that completed text, then the reply.</summary>
    public IEnumerable<VargptChatUpdate> ChatUpdates(IReadOnlyList<ChatMessage> messages, VargptChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new();
        var generation = options.Resolve(GenerationConfig);   // validates before any work
        var (textMessages, images) = ChatMessages.SplitImages(messages);
        return RunChat(textMessages, images, generation, options, cancellationToken);
    }

    IEnumerable<VargptChatUpdate> RunChat(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, GenerationConfig generation,
        VargptChatOptions options, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        ct.ThrowIfCancellationRequested();
        using var prompt = Prepare(messages, images);
        var prepared = clock.Elapsed;
        bool draw = options.GenerateImages && Module.Parts.HasFlag(ModelParts.Generation);
        using var turn = StartTurn([prompt], new TurnOptions
        {
            Generation = generation, Seed = options.Seed, StopSequences = options.StopSequences,
            ImageStart = draw ? ImageStartMode.Draw : ImageStartMode.End,
        });
        foreach (var step in turn.Run(ct))
            if (step.Pieces[0].Length > 0) yield return new VargptChatUpdate(step.Pieces[0]);
        var row = turn.Rows[0];
        GeneratedImage? image = null;
        var imageTime = TimeSpan.Zero;
        if (turn.ImageReady)
        {
            yield return new VargptChatUpdate("") { ImageStarting = true };
            var imageOptions = options.Image ?? new ImageOptions();
            long seed = imageOptions.Seed ?? options.Seed ?? Seeds.Random();
            var start = clock.Elapsed;
            image = turn.DrawImage(imageOptions, seed, options.ImageProgress, ct);
            imageTime = clock.Elapsed - start;
        }
        yield return new VargptChatUpdate("")
        {
            Reply = new VargptChatReply
            {
                Text = row.Text, TokenIds = row.TokenIds, Finish = row.Finish!.Value, Image = image?.Image, ImageSeed = image?.Seed,
                PromptTokens = prompt.Length, ImagesResized = prompt.ShrunkForMaxPixels,
                Timings = new VargptChatTimings(prepared, prepared + turn.TimeToFirstToken, turn.TextTime - turn.TimeToFirstToken, turn.DecodeSteps, imageTime),
            },
        };
    }

    /// <summary>
    /// Several independent conversations in one left-padded batch. Greedy decoding gives exactly the tokens of calling
    /// <see cref="Chat(IReadOnlyList{ChatMessage}, VargptChatOptions?, CancellationToken)"/> one by one; sampling draws
    /// from one generator for the whole batch, so seeded batch replies differ from seeded single replies.
    /// A row that starts an image stops there (Finish = Image) without drawing it: the official loop draws images at batch size 1 only.
    /// </summary>
    public IReadOnlyList<VargptChatReply> ChatBatch(IReadOnlyList<IReadOnlyList<ChatMessage>> conversations, VargptChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(conversations);
        if (conversations.Count == 0) return [];
        options ??= new();
        var generation = options.Resolve(GenerationConfig);
        var clock = Stopwatch.StartNew();
        var prompts = new List<PreparedPrompt>();
        try
        {
            for (int b = 0; b < conversations.Count; b++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                try
                {
                    var (m, imgs) = ChatMessages.SplitImages(conversations[b]);
                    prompts.Add(Prepare(m, imgs));
                }
                catch (InvalidPromptException e) { throw new InvalidPromptException($"conversation {b}: {e.Message}", e); }
            }
            var prepared = clock.Elapsed;
            using var turn = StartTurn(prompts, new TurnOptions
            {
                Generation = generation, Seed = options.Seed, StopSequences = options.StopSequences, ImageStart = ImageStartMode.End,
            });
            foreach (var _ in turn.Run(cancellationToken)) { }
            var timings = new VargptChatTimings(prepared, prepared + turn.TimeToFirstToken, turn.TextTime - turn.TimeToFirstToken, turn.DecodeSteps, TimeSpan.Zero);
            return turn.Rows.Select((row, b) => new VargptChatReply
            {
                Text = row.Text, TokenIds = row.TokenIds, Finish = row.Finish!.Value, PromptTokens = prompts[b].Length,
                ImagesResized = prompts[b].ShrunkForMaxPixels, Timings = timings,
            }).ToList();
        }
        finally
        {
            foreach (var p in prompts) p.Dispose();
        }
    }

    // ------------------------------------------------------------------------------------------------ images

    /// <summary>
    /// Text-to-image as the official inference does it (generation_vargpt_v1_1.py): the prompt is one user chat turn
    /// (Qwen2-VL template with the default system message, generation prompt added); text is decoded greedily until the
    /// model emits &lt;|image_gen_start|&gt;; then autoregressive_infer_cfg draws the image.
    /// </summary>
    public ImageResult GenerateImage(string prompt, ImageOptions? options = null, Action<ImageProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(prompt);
        return RunImage([ChatMessage.User(prompt)], [], options ?? new ImageOptions(), progress, cancellationToken);
    }

    /// <summary>Several prompts with the same options; result p equals <see cref="GenerateImage"/>(prompts[p], options) (same seeds).</summary>
    public IReadOnlyList<ImageResult> GenerateImages(IReadOnlyList<string> prompts, ImageOptions? options = null, Action<int, ImageProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        options ??= new ImageOptions();
        if (options.Seed is null) options = options with { Seed = Seeds.Random() };
        var results = new List<ImageResult>();
        for (int p = 0; p < prompts.Count; p++)
        {
            int pi = p;
            results.Add(GenerateImage(prompts[p], options, progress is null ? null : e => progress(pi, e), cancellationToken));
        }
        return results;
    }

    /// <summary>
    /// Editing in the official format (<see cref="ChatMessages.EditRequest"/>): the source image in the user turn, then
    /// the instruction (or the image where the instruction says "&lt;image&gt;"). The source image is pre-shrunk to
    /// <see cref="ImageOptions.EditMaxPixels"/>.
    /// </summary>
    public ImageResult EditImage(RgbImage image, string instruction, ImageOptions? options = null, Action<ImageProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentException.ThrowIfNullOrWhiteSpace(instruction);
        options ??= new ImageOptions();
        var message = ChatMessages.EditRequest(instruction);
        options.Validate(Config);
        var source = options.EditMaxPixels is long px ? ImageProcessor.PreprocessImageForTraining(image, px) : image;
        return RunImage([message], [source], options, progress, cancellationToken);
    }

    /// <summary>
    /// Count &gt; 1 runs the text phase once and draws the images one after another on the same prompt KV cache (each
    /// image's tokens dropped before the next), which gives exactly the images of separate calls.
    /// </summary>
    ImageResult RunImage(IReadOnlyList<ChatMessage> messages, IReadOnlyList<RgbImage> images, ImageOptions options, Action<ImageProgress>? progress,
        CancellationToken cancellationToken)
    {
        if (!Module.Parts.HasFlag(ModelParts.Generation))
            throw new InvalidOperationException($"this model was loaded without its generation half (parts {Module.Parts}); load it with ModelParts.All to draw images");
        using var scope = NewDisposeScope();
        options.Validate(Config);
        long seed = options.Seed ?? Seeds.Random();
        bool editing = images.Count > 0;
        using var prompt = Prepare(messages, images);
        // fail before generating text: the context will be at least the prompt
        ImageGeneration.CheckContextLength(Module, prompt.Length, options.Cfg, 0, ContextFix(prompt, options, editing));
        using var turn = StartTurn([prompt], new TurnOptions
        {
            Generation = DefaultTextGeneration(options.MaxNewTokens), ForceImageStart = options.ForceImageStart, ImageStart = ImageStartMode.Draw,
        });
        foreach (var _ in turn.Run(cancellationToken)) { }
        var row = turn.Rows[0];
        if (!turn.ImageReady) throw new NoImageGeneratedException(row.Text, turn.StopReason, row.TokenIds.Count);
        int lc = turn.ContextTokens;
        ImageGeneration.CheckContextLength(Module, lc, options.Cfg, lc - prompt.Length, ContextFix(prompt, options, editing));
        var pictures = new List<GeneratedImage>();
        for (int i = 0; i < options.Count; i++)
        {
            int index = i;
            pictures.Add(turn.DrawImage(options, seed + i, progress is null ? null : p => progress(p with { Image = index, Images = options.Count }), cancellationToken));
        }
        return new ImageResult(pictures, row.Text, options.ForceImageStart, prompt.Length, lc);
    }

    static string ContextFix(PreparedPrompt prompt, ImageOptions options, bool editing) => editing
        ? $"The source image alone yields {prompt.ImageTokens} image tokens: lower the edit image's max pixels (ImageOptions.EditMaxPixels / --max-pixels, " +
          $"now {(options.EditMaxPixels?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unlimited")}; each image token covers 28×28 = 784 pixels), or shorten the instruction."
        : "Shorten the prompt.";

    // ------------------------------------------------------------------------------------------------ Microsoft.Extensions.AI

    /// <summary>This model as an <see cref="IChatClient"/> (the client does not own the model).</summary>
    public IChatClient AsChatClient() => new VargptChatClient(this);

    /// <summary>This model as an <see cref="IImageGenerator"/> with <paramref name="defaults"/> for unset options (the generator does not own the model).</summary>
    [System.Diagnostics.CodeAnalysis.Experimental("MEAI001")]
    public IImageGenerator AsImageGenerator(ImageOptions? defaults = null) => new VargptImageGenerator(this, defaults);

    public void Dispose()
    {
        Module.Dispose();
        foreach (var lease in _leases) lease.Dispose();
    }
}

/// <summary>
/// The descriptive files of a model folder, read and checked: config.json, generation_config.json (or the ids of
/// config.json), preprocessor_config.json (or the processor defaults) and the tokenizer, whose ids must be the ones
/// config.json names. What <see cref="VargptModel.Load(string, VargptModelOptions?, Action{string, double}?)"/> reads
/// before the weights; training reads it first, to encode its data before the (long) weight load.
/// </summary>
public sealed record ModelFolder(string Directory, VargptConfig Config, GenerationConfig GenerationConfig, PreprocessorConfig Preprocessor, QwenTokenizer Tokenizer)
{
    public static ModelFolder Read(string dir)
    {
        if (!System.IO.Directory.Exists(dir)) throw new InputNotFoundException($"model folder not found: {dir}");
        var config = VargptConfig.Load(Path.Combine(dir, "config.json"));
        var generation = File.Exists(Path.Combine(dir, GenerationConfig.FileName))
            ? GenerationConfig.Load(Path.Combine(dir, GenerationConfig.FileName)) : GenerationConfig.FromModelConfig(config);
        var pre = File.Exists(Path.Combine(dir, PreprocessorConfig.FileName))
            ? PreprocessorConfig.Load(Path.Combine(dir, PreprocessorConfig.FileName)) : new PreprocessorConfig();
        var tokenizer = QwenTokenizer.FromDirectory(dir);
        CheckTokenIds(config, tokenizer, dir);
        return new ModelFolder(dir, config, generation, pre, tokenizer);
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
                throw new InvalidFileException($"{dir}: config.json {name} = {id} but the tokenizer maps '{token}' to {(got?.ToString() ?? "nothing")}");
        }
    }
}
