using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;
using VarGpt.Inference;

namespace VarGpt.ShapesWorld;

/// <summary>Settings of <see cref="ShapesEvaluation.Run"/>. Defaults: 200 held-out samples per task; <see cref="Fast"/>: 48.</summary>
public sealed record ShapesEvaluationOptions
{
    public const int DefaultCount = 200, FastCount = 48;

    public int Understanding { get; init; } = DefaultCount;
    public int Description { get; init; } = DefaultCount;
    public int TextToImage { get; init; } = DefaultCount;
    public int Edit { get; init; } = DefaultCount;
    /// <summary>Seed of the image sampler for sample i of a task = ImageSeed + i (the same for the before-DPO pass).</summary>
    public long ImageSeed { get; init; }
    /// <summary>
    /// Image sampling (cfg, tau, top-k, top-p, forced start, ...): <see cref="ImageOptions"/> defaults except the text
    /// budget before &lt;|image_gen_start|&gt; (64 tokens: the longest ShapesWorld reply text is far shorter, and a
    /// model that rambles past it has failed the sample). Seed and Count are set per sample.
    /// </summary>
    public ImageOptions Image { get; init; } = new() { MaxNewTokens = 64 };
    /// <summary>New-token budget of understanding / description answers (greedy).</summary>
    public int MaxAnswerTokens { get; init; } = 64;
    /// <summary>Understanding / description conversations per left-padded batch (greedy: same tokens as one by one).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>When an adapter was merged: measure text-to-image again without it (generation_acc_before_dpo, dpo_gain).</summary>
    public bool MeasureBeforeDpo { get; init; } = true;
    /// <summary>The first this-many samples of each task are kept with their images for the report.</summary>
    public int Examples { get; init; } = 16;
    /// <summary>Device, dtype, memory mapping and adapter of the load (the before-DPO pass loads without the adapter).</summary>
    public VargptModelOptions Load { get; init; } = new();

    public static ShapesEvaluationOptions Fast { get; } = PerTask(FastCount);

    /// <summary>n samples of every task.</summary>
    public static ShapesEvaluationOptions PerTask(int n) => new() { Understanding = n, Description = n, TextToImage = n, Edit = n };

    /// <summary>n samples of <paramref name="task"/>, none of the others (the gates; `shapes eval --task`).</summary>
    public static ShapesEvaluationOptions Only(ShapesTaskKind task, int n) => task switch
    {
        ShapesTaskKind.Understanding => PerTask(0) with { Understanding = n },
        ShapesTaskKind.Description => PerTask(0) with { Description = n },
        ShapesTaskKind.TextToImage => PerTask(0) with { TextToImage = n },
        ShapesTaskKind.Edit => PerTask(0) with { Edit = n },
        _ => throw new ArgumentOutOfRangeException(nameof(task), task, null),
    };

    public void Validate()
    {
        foreach (var (name, n) in new[] { ("Understanding", Understanding), ("Description", Description), ("TextToImage", TextToImage), ("Edit", Edit) })
            if (n < 0) throw new InvalidOptionException($"sample counts must be ≥ 0, got {n}", name);
        if (BatchSize < 1) throw new InvalidOptionException($"batch size must be ≥ 1, got {BatchSize}", nameof(BatchSize));
        if (MaxAnswerTokens < 1) throw new InvalidOptionException($"max answer tokens must be ≥ 1, got {MaxAnswerTokens}", nameof(MaxAnswerTokens));
        if (Examples < 0) throw new InvalidOptionException($"examples must be ≥ 0, got {Examples}", nameof(Examples));
        Image.ValidateSampling();
    }
}

/// <summary>correct of total; Accuracy is NaN when total is 0.</summary>
public sealed record ShapesCount(int Correct, int Total)
{
    public double Accuracy => Total == 0 ? double.NaN : (double)Correct / Total;
    public ShapesCount Add(bool correct) => new(Correct + (correct ? 1 : 0), Total + 1);
    public override string ToString() => Total == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{Correct}/{Total} ({100.0 * Correct / Total:F1}%)");
}

/// <summary>One task's result: the headline count, breakdowns by name (question kind, attribute, edit kind) and time.</summary>
public sealed record ShapesTaskResult(string Task, ShapesCount Count, IReadOnlyDictionary<string, ShapesCount> Breakdown, double Seconds)
{
    public double Accuracy => Count.Accuracy;
}

/// <summary>
/// One evaluated sample kept for the report. Prompt = the user text; Expected = the exact answer or the requested
/// scene; Answer = the model's text (for images: the text before &lt;|image_gen_start|&gt; or why no image came);
/// Reading = what the scorer saw in the image. PNGs: the shown/source image and the generated one.
/// </summary>
public sealed record ShapesExample(ShapesTaskKind Kind, long Index, string Prompt, string Expected, string Answer, bool Correct, string? Reading,
    byte[]? SourcePng, byte[]? ImagePng, long? Seed)
{
    /// <summary>Text-to-image with an adapter: the same prompt and seed without the adapter.</summary>
    public byte[]? BeforeDpoPng { get; init; }
    public bool? BeforeDpoCorrect { get; init; }
    public string? BeforeDpoReading { get; init; }
}

/// <summary>Everything <see cref="ShapesEvaluation.Run"/> measured.</summary>
public sealed record ShapesEvaluationResult
{
    public required string ModelDir { get; init; }
    /// <summary>The merged adapter folder, or null.</summary>
    public string? AdapterDir { get; init; }
    public required ShapesWorldOptions World { get; init; }
    public required ShapesEvaluationOptions Options { get; init; }
    public required ShapesTaskResult Understanding { get; init; }
    public required ShapesTaskResult Description { get; init; }
    public required ShapesTaskResult Generation { get; init; }
    public required ShapesTaskResult Editing { get; init; }
    /// <summary>Text-to-image without the adapter (same prompts and seeds); null when no adapter was merged or not measured.</summary>
    public ShapesTaskResult? GenerationBeforeDpo { get; init; }
    public required IReadOnlyList<ShapesExample> Examples { get; init; }
    public required double LoadSeconds { get; init; }
    public required double TotalSeconds { get; init; }

    /// <summary>generation_acc − generation_acc_before_dpo (fractions), or null.</summary>
    public double? DpoGain => GenerationBeforeDpo is { } b ? Generation.Accuracy - b.Accuracy : null;

    /// <summary>The JSON object of `vargpt shapes eval --json` (fractions 0–1; null for tasks with no samples).</summary>
    public JsonObject ToJson()
    {
        static JsonNode? Acc(ShapesCount c) => c.Total == 0 ? null : JsonValue.Create(Math.Round(c.Accuracy, 6));
        static JsonObject Count(ShapesCount c) => new() { ["correct"] = c.Correct, ["total"] = c.Total, ["acc"] = Acc(c) };
        static JsonObject Breakdown(ShapesTaskResult t) => new(t.Breakdown.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)Count(kv.Value))));
        static double S(double s) => Math.Round(s, 3);
        var world = JsonSerializer.SerializeToNode(World, ShapesEvaluation.WorldJson)!;
        var img = Options.Image;
        return new JsonObject
        {
            ["model"] = ModelDir,
            ["adapter"] = AdapterDir,
            ["understanding_acc"] = Acc(Understanding.Count),
            ["description_acc"] = Acc(Description.Count),
            ["generation_acc"] = Acc(Generation.Count),
            ["editing_acc"] = Acc(Editing.Count),
            ["generation_acc_before_dpo"] = GenerationBeforeDpo is { } b ? Acc(b.Count) : null,
            ["dpo_gain"] = DpoGain is double g && double.IsFinite(g) ? Math.Round(g, 6) : null,
            ["counts"] = new JsonObject
            {
                ["understanding"] = Count(Understanding.Count), ["description"] = Count(Description.Count),
                ["generation"] = Count(Generation.Count), ["editing"] = Count(Editing.Count),
                ["generation_before_dpo"] = GenerationBeforeDpo is { } b2 ? Count(b2.Count) : null,
            },
            ["understanding_by_question"] = Breakdown(Understanding),
            ["description_by_objects"] = Breakdown(Description),
            ["generation_breakdown"] = Breakdown(Generation),
            ["generation_before_dpo_breakdown"] = GenerationBeforeDpo is { } b3 ? Breakdown(b3) : null,
            ["editing_breakdown"] = Breakdown(Editing),
            ["seconds"] = new JsonObject
            {
                ["load"] = S(LoadSeconds), ["understanding"] = S(Understanding.Seconds), ["description"] = S(Description.Seconds),
                ["generation"] = S(Generation.Seconds), ["editing"] = S(Editing.Seconds),
                ["generation_before_dpo"] = GenerationBeforeDpo is { } b4 ? S(b4.Seconds) : null, ["total"] = S(TotalSeconds),
            },
            ["image_options"] = new JsonObject
            {
                ["cfg"] = img.Cfg, ["tau"] = img.Tau, ["top_k"] = img.TopK, ["top_p"] = img.TopP, ["pn"] = img.Pn,
                ["force_image_start"] = img.ForceImageStart, ["max_new_tokens"] = img.MaxNewTokens, ["seed_base"] = Options.ImageSeed,
            },
            ["world"] = world,
        };
    }

    /// <summary>A readable table: task, correct/total, accuracy, seconds; then the breakdowns and the DPO gain.</summary>
    public string ToTable()
    {
        var sb = new StringBuilder();
        var ci = CultureInfo.InvariantCulture;
        sb.AppendLine(ci, $"model {ModelDir}{(AdapterDir is null ? "" : $" + adapter {AdapterDir}")}");
        sb.AppendLine(ci, $"{"task",-26} {"correct",8} {"total",6} {"accuracy",9} {"seconds",8}");
        void Row(string name, ShapesTaskResult t) =>
            sb.AppendLine(ci, $"{name,-26} {t.Count.Correct,8} {t.Count.Total,6} {Pct(t.Accuracy),9} {t.Seconds,8:F1}");
        Row("understanding", Understanding);
        Row("description", Description);
        Row("text-to-image", Generation);
        if (GenerationBeforeDpo is { } b) Row("text-to-image before DPO", b);
        Row("editing", Editing);
        if (DpoGain is double g) sb.AppendLine(ci, $"DPO gain: {(double.IsFinite(g) ? (g >= 0 ? "+" : "") + (100 * g).ToString("F1", ci) + " points" : "-")} (text-to-image with the adapter − without, same prompts and seeds)");
        else sb.AppendLine("DPO gain: - (no adapter merged)");
        foreach (var (name, t) in new[] { ("understanding by question", Understanding), ("text-to-image", Generation), ("editing", Editing) })
            if (t.Breakdown.Count > 0)
                sb.AppendLine(name + ": " + string.Join(", ", t.Breakdown.Select(kv => $"{kv.Key} {kv.Value}")));
        sb.AppendLine(ci, $"load {LoadSeconds:F1} s, total {TotalSeconds:F1} s");
        return sb.ToString();
    }

    static string Pct(double a) => double.IsFinite(a) ? (100 * a).ToString("F1", CultureInfo.InvariantCulture) + "%" : "-";
}

/// <summary>
/// Held-out evaluation of a ShapesWorld model folder through the product path (<see cref="VargptModel"/>: batch chat
/// for answers, GenerateImage / EditImage for text-to-image and editing). The Eval split is regenerated from the folder's
/// shapesworld.json (<see cref="ShapesTraining.ReadWorld"/>); task k uses samples <c>Sample(Eval, i, k)</c> for i = 0..n−1, so the
/// same folder and options always give the same samples, prompts and image seeds. Scoring: exact answers
/// (<see cref="ShapesScorer.AnswerCorrect"/>), every requested attribute of a generated image
/// (<see cref="ShapesScorer.Score(SceneSpec, ReadOnlySpan{byte}, int, int)"/>.Correct) and edits
/// (<see cref="ShapesScorer.ScoreEdit(ShapesEdit, ReadOnlySpan{byte}, int, int)"/>.Correct). A model that does not
/// start an image (no &lt;|image_gen_start|&gt;) fails that sample.
/// </summary>
public static class ShapesEvaluation
{
    /// <summary>snake_case names of <see cref="ShapesWorldOptions"/> (seed, image_size, held_out_fraction, ...), as in shapesworld.json.</summary>
    internal static readonly JsonSerializerOptions WorldJson = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Loads <paramref name="modelDir"/> (with its adapter unless the options say otherwise) and evaluates it; progress lines go to <paramref name="log"/>.</summary>
    public static ShapesEvaluationResult Run(string modelDir, ShapesEvaluationOptions? options = null, TextWriter? log = null, CancellationToken cancellationToken = default)
    {
        options ??= new ShapesEvaluationOptions();
        options.Validate();
        log ??= TextWriter.Null;
        modelDir = Path.GetFullPath(modelDir);
        var world = ShapesTraining.ReadWorld(modelDir);
        var generator = new ShapesWorldGenerator(world);
        var total = Stopwatch.StartNew();

        var sw = Stopwatch.StartNew();
        var model = VargptModel.Load(modelDir, options.Load with { Parts = ModelParts.All });
        double load = sw.Elapsed.TotalSeconds;
        string? adapter = model.Adapter?.Directory;
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"loaded {modelDir}{(adapter is null ? "" : $" + adapter {adapter} ({model.Adapter!.Merged.Count} layers)")} in {load:F1} s; world seed {world.Seed}, image size {world.ImageSize}"));
        var examples = new List<ShapesExample>();
        ShapesTaskResult understanding, description, generation, editing;
        using (model)
        {
            understanding = Answers(model, generator, ShapesTaskKind.Understanding, options.Understanding, options, examples, log, cancellationToken);
            description = Answers(model, generator, ShapesTaskKind.Description, options.Description, options, examples, log, cancellationToken);
            generation = TextToImage(model, generator, options, examples, "text-to-image", log, cancellationToken);
            editing = Edits(model, generator, options, examples, log, cancellationToken);
        }

        ShapesTaskResult? before = null;
        if (adapter is not null && options.MeasureBeforeDpo && options.TextToImage > 0)
        {
            sw.Restart();
            // the SFT state: the same folder without the adapter; text-to-image needs no vision tower
            using var baseModel = VargptModel.Load(modelDir, options.Load with
            {
                Adapter = null, MergeAdapter = false, Parts = ModelParts.LanguageModel | ModelParts.Generation,
            });
            log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"loaded {modelDir} without the adapter in {sw.Elapsed.TotalSeconds:F1} s"));
            load += sw.Elapsed.TotalSeconds;
            var beforeExamples = new List<ShapesExample>();
            before = TextToImage(baseModel, generator, options, beforeExamples, "text-to-image before DPO", log, cancellationToken);
            foreach (var b in beforeExamples)
            {
                int at = examples.FindIndex(e => e.Kind == ShapesTaskKind.TextToImage && e.Index == b.Index);
                if (at >= 0) examples[at] = examples[at] with { BeforeDpoPng = b.ImagePng, BeforeDpoCorrect = b.Correct, BeforeDpoReading = b.Reading };
            }
        }
        return new ShapesEvaluationResult
        {
            ModelDir = modelDir, AdapterDir = adapter, World = world, Options = options,
            Understanding = understanding, Description = description, Generation = generation, Editing = editing,
            GenerationBeforeDpo = before, Examples = examples, LoadSeconds = load, TotalSeconds = total.Elapsed.TotalSeconds,
        };
    }

    /// <summary>The shown scene rendered as the dataset renders it.</summary>
    static RgbImage Render(Scene scene, int size) => new(size, size, ShapesRenderer.RenderRgb(scene, size));

    /// <summary>The user turn of a sample: its text with the image at the &lt;image&gt; placeholder (as LLaMA-Factory places it in training).</summary>
    static ChatMessage UserTurn(string user, RgbImage image)
    {
        var pieces = user.Split("<image>");
        if (pieces.Length != 2) throw new InvalidOperationException($"ShapesWorld sample text must hold exactly one <image>: \"{user}\"");
        var parts = new List<ContentPart>();
        if (pieces[0].Length > 0) parts.Add(ContentPart.FromText(pieces[0]));
        parts.Add(ContentPart.FromImage(image));
        if (pieces[1].Length > 0) parts.Add(ContentPart.FromText(pieces[1]));
        return new ChatMessage("user", parts);
    }

    /// <summary>Prints a progress line about every 10% of the samples.</summary>
    sealed class Progress(TextWriter log, string task, int total)
    {
        readonly Stopwatch _clock = Stopwatch.StartNew();
        int _next = 1;
        public double Seconds => _clock.Elapsed.TotalSeconds;

        public void Report(int done, ShapesCount count)
        {
            if (done < _next && done < total) return;
            _next = done + Math.Max(1, total / 10);
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {task} {done}/{total}: {count.Correct} correct ({(count.Total == 0 ? 0 : 100.0 * count.Accuracy):F1}%), {Seconds:F1} s"));
        }
    }

    /// <summary>Understanding or description: greedy answers to the question about the rendered scene, exact match.</summary>
    static ShapesTaskResult Answers(VargptModel chat, ShapesWorldGenerator gen, ShapesTaskKind kind, int n, ShapesEvaluationOptions o,
        List<ShapesExample> examples, TextWriter log, CancellationToken ct)
    {
        string task = kind == ShapesTaskKind.Understanding ? "understanding" : "description";
        var progress = new Progress(log, task, n);
        var count = new ShapesCount(0, 0);
        var breakdown = new SortedDictionary<string, ShapesCount>(StringComparer.Ordinal);
        var chatOptions = new VargptChatOptions { MaxNewTokens = o.MaxAnswerTokens, DoSample = false, GenerateImages = false };
        var samples = gen.Samples(ShapesSplit.Eval, n, kind).ToList();
        for (int start = 0; start < samples.Count; start += o.BatchSize)
        {
            ct.ThrowIfCancellationRequested();
            var batch = samples.Skip(start).Take(o.BatchSize).ToList();
            var shown = batch.Select(s => Render(s.Images[0], gen.Options.ImageSize)).ToList();
            var conversations = batch.Select((s, i) => (IReadOnlyList<ChatMessage>)[UserTurn(s.User, shown[i])]).ToList();
            var replies = chat.ChatBatch(conversations, chatOptions, ct);
            for (int i = 0; i < batch.Count; i++)
            {
                var s = batch[i];
                bool ok = ShapesScorer.AnswerCorrect(s.Answer!, replies[i].Text);
                count = count.Add(ok);
                string key = kind == ShapesTaskKind.Understanding ? Snake(s.Question!.Value.ToString()) : $"{s.Images[0].Objects.Count}_objects";
                breakdown[key] = breakdown.GetValueOrDefault(key, new ShapesCount(0, 0)).Add(ok);
                if (s.Index < o.Examples)
                    examples.Add(new ShapesExample(kind, s.Index, s.User, s.Answer!, replies[i].Text, ok, null, shown[i].EncodePng(), null, null));
            }
            progress.Report(start + batch.Count, count);
        }
        return new ShapesTaskResult(task, count, breakdown, progress.Seconds);
    }

    /// <summary>Text-to-image with seed ImageSeed + i; every requested attribute must be right (ShapesScorer.Score).</summary>
    static ShapesTaskResult TextToImage(VargptModel images, ShapesWorldGenerator gen, ShapesEvaluationOptions o, List<ShapesExample> examples,
        string task, TextWriter log, CancellationToken ct)
    {
        int n = o.TextToImage;
        var progress = new Progress(log, task, n);
        var count = new ShapesCount(0, 0);
        ShapesCount shape = new(0, 0), color = new(0, 0), size = new(0, 0), position = new(0, 0), objects = new(0, 0), noImage = new(0, 0);
        foreach (var s in gen.Samples(ShapesSplit.Eval, n, ShapesTaskKind.TextToImage))
        {
            ct.ThrowIfCancellationRequested();
            long seed = o.ImageSeed + s.Index;
            var (image, text) = Generate(() => images.GenerateImage(s.User, o.Image with { Seed = seed, Count = 1 }, cancellationToken: ct));
            noImage = noImage.Add(image is null);
            bool ok = false;
            string reading = "no image: the model did not start one";
            if (image is not null)
            {
                var score = ShapesScorer.Score(s.Requested!, image.Data, image.Width, image.Height);
                ok = score.Correct;
                reading = Reading(score.Analysis);
                objects = objects.Add(score.Count);
                foreach (var os in score.Objects)
                {
                    shape = shape.Add(os.Shape);
                    color = color.Add(os.Color);
                    if (os.Size is bool sz) size = size.Add(sz);
                    if (os.Position is bool ps) position = position.Add(ps);
                }
            }
            else
            {
                // no image: every requested attribute is wrong
                objects = objects.Add(false);
                foreach (var r in s.Requested!.Objects)
                {
                    shape = shape.Add(false);
                    color = color.Add(false);
                    if (r.Size is not null) size = size.Add(false);
                    if (r.Position is not null) position = position.Add(false);
                }
            }
            count = count.Add(ok);
            if (s.Index < o.Examples)
                examples.Add(new ShapesExample(ShapesTaskKind.TextToImage, s.Index, s.User, s.Requested!.ToString(), text, ok, reading, null, image?.EncodePng(), seed));
            progress.Report((int)s.Index + 1, count);
        }
        var breakdown = new Dictionary<string, ShapesCount>
        {
            ["shape"] = shape, ["color"] = color, ["size"] = size, ["position"] = position, ["object_count"] = objects, ["no_image"] = noImage,
        };
        return new ShapesTaskResult(task, count, breakdown, progress.Seconds);
    }

    /// <summary>Editing: the source scene rendered, EditImage with the sample's instruction (its &lt;image&gt; placement), ShapesScorer.ScoreEdit.</summary>
    static ShapesTaskResult Edits(VargptModel images, ShapesWorldGenerator gen, ShapesEvaluationOptions o, List<ShapesExample> examples,
        TextWriter log, CancellationToken ct)
    {
        int n = o.Edit;
        var progress = new Progress(log, "editing", n);
        var count = new ShapesCount(0, 0);
        var byKind = new SortedDictionary<string, ShapesCount>(StringComparer.Ordinal);
        ShapesCount change = new(0, 0), rest = new(0, 0), noImage = new(0, 0);
        foreach (var s in gen.Samples(ShapesSplit.Eval, n, ShapesTaskKind.Edit))
        {
            ct.ThrowIfCancellationRequested();
            var edit = s.Edit!;
            long seed = o.ImageSeed + s.Index;
            var source = Render(edit.Source, gen.Options.ImageSize);
            var (image, text) = Generate(() => images.EditImage(source, s.User, o.Image with { Seed = seed, Count = 1 }, cancellationToken: ct));
            noImage = noImage.Add(image is null);
            bool ok = false;
            string reading = "no image: the model did not start one";
            if (image is not null)
            {
                var score = ShapesScorer.ScoreEdit(edit, image.Data, image.Width, image.Height);
                ok = score.Correct;
                reading = Reading(score.Target.Analysis);
                change = change.Add(score.ChangeMade);
                rest = rest.Add(score.RestKept);
            }
            else { change = change.Add(false); rest = rest.Add(false); }
            count = count.Add(ok);
            var key = Snake(edit.Kind.ToString());
            byKind[key] = byKind.GetValueOrDefault(key, new ShapesCount(0, 0)).Add(ok);
            if (s.Index < o.Examples)
                examples.Add(new ShapesExample(ShapesTaskKind.Edit, s.Index, s.User, edit.Expected.ToString(), text, ok, reading, source.EncodePng(), image?.EncodePng(), seed));
            progress.Report((int)s.Index + 1, count);
        }
        var breakdown = new Dictionary<string, ShapesCount>(byKind.Select(kv => KeyValuePair.Create("kind_" + kv.Key, kv.Value)))
        {
            ["change_made"] = change, ["rest_kept"] = rest, ["no_image"] = noImage,
        };
        return new ShapesTaskResult("editing", count, breakdown, progress.Seconds);
    }

    /// <summary>The image (null when the model answered without starting one) and the text written before it.</summary>
    static (RgbImage? Image, string Text) Generate(Func<ImageResult> run)
    {
        try
        {
            var r = run();
            return (r.Images[0].Image, r.Text);
        }
        catch (NoImageGeneratedException e) { return (null, e.Text); }
    }

    /// <summary>What the scorer detected, in words: "a large red circle on the left; a small blue star at the top".</summary>
    static string Reading(SceneAnalysis a) => a.Objects.Count == 0 ? "nothing detected"
        : string.Join("; ", a.Objects.Select(d => ShapesText.Describe(d.ToShapeObject().ToSpec())));

    /// <summary>PascalCase enum name → snake_case ("ChangeColor" → "change_color").</summary>
    static string Snake(string name) => JsonNamingPolicy.SnakeCaseLower.ConvertName(name);
}
