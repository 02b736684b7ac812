using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Model;
using VarGpt.Training.Data;
using VarGpt.Vision;
using VarGpt.Inference;

namespace VarGpt.ShapesWorld;

/// <summary>Settings of <see cref="ShapesDpoPairs.Mine"/>.</summary>
public sealed record ShapesDpoMiningOptions
{
    /// <summary>Text-to-image prompts to sample (Train split indices Start, Start+1, ...).</summary>
    public int Prompts { get; init; } = 200;
    /// <summary>First Train index. The default keeps the prompts away from an SFT dataset written by
    /// <see cref="ShapesDataset.Write"/> (indices 0..N-1) even when it was written with kind TextToImage.</summary>
    public long Start { get; init; } = 1_000_000;
    /// <summary>Images drawn per prompt (K ≥ 2).</summary>
    public int SamplesPerPrompt { get; init; } = 4;
    /// <summary>At most this many (correct, wrong) pairs per prompt (distinct pairs; fewer when the prompt has fewer).</summary>
    public int PairsPerPrompt { get; init; } = 1;
    /// <summary>Seed of the image sampler: prompt index i draws its K images with seeds
    /// <see cref="ShapesDpoPairs.PromptSeed"/>(Seed, i) + 0..K-1, so the result depends only on (model, world, options).</summary>
    public long Seed { get; init; }
    /// <summary>Sampling settings (cfg, tau, top-k/p, text budget, forced image start). Seed and Count must be left unset:
    /// they are set per prompt from <see cref="Seed"/> and <see cref="SamplesPerPrompt"/>.</summary>
    public ImageOptions Image { get; init; } = new();
    /// <summary>
    /// The assistant answer of the written pairs: false (default) = the sample's own answer ("Here is a red circle.&lt;image_gen&gt;");
    /// true = the text the model wrote before &lt;|image_gen_start|&gt; + "&lt;image_gen&gt;", i.e. exactly the context the images
    /// were drawn under (empty text when the image start is forced).
    /// </summary>
    public bool ModelAnswer { get; init; }
    /// <summary>A progress line every this many prompts (0 = none).</summary>
    public int ProgressEvery { get; init; } = 10;

    public void Validate()
    {
        if (Prompts < 1) throw new InvalidOptionException($"prompts must be ≥ 1, got {Prompts}", nameof(Prompts));
        if (Start < 0) throw new InvalidOptionException($"start index must be ≥ 0, got {Start}", nameof(Start));
        if (SamplesPerPrompt < 2) throw new InvalidOptionException($"samples per prompt must be ≥ 2 (a pair needs a correct and a wrong image), got {SamplesPerPrompt}", nameof(SamplesPerPrompt));
        if (PairsPerPrompt < 1) throw new InvalidOptionException($"pairs per prompt must be ≥ 1, got {PairsPerPrompt}", nameof(PairsPerPrompt));
        if (ProgressEvery < 0) throw new InvalidOptionException($"progress interval must be ≥ 0, got {ProgressEvery}", nameof(ProgressEvery));
        if (Image.Seed is not null || Image.Count != 1)
            throw new InvalidOptionException("ShapesDpoMiningOptions.Image: leave Seed and Count unset; the miner sets them per prompt from Seed and SamplesPerPrompt", nameof(Image));
    }
}

/// <summary>One sampled image: its place among the prompt's K samples, the sampler seed that reproduces it, and the scorer's reading.</summary>
public sealed record MinedImage(RgbImage Image, int Sample, long Seed, SceneScore Score)
{
    public bool Correct => Score.Correct;
}

/// <summary>A preference pair: the prompt of <paramref name="Sample"/>, the assistant answer (with &lt;image_gen&gt;) shared by both
/// branches, a scorer-correct image and a scorer-wrong one.</summary>
public sealed record ShapesDpoPair(ShapesSample Sample, string Answer, MinedImage Chosen, MinedImage Rejected);

/// <summary>Requested attributes the rejected images got wrong (an image may count under several).</summary>
public sealed record AttributeErrors(int Count, int Shape, int Color, int Size, int Position)
{
    public static readonly AttributeErrors None = new(0, 0, 0, 0, 0);
    public AttributeErrors Add(SceneScore s) => new(Count + (s.Count ? 0 : 1), Shape + (s.Shape ? 0 : 1), Color + (s.Color ? 0 : 1),
        Size + (s.Size ? 0 : 1), Position + (s.Position ? 0 : 1));
    public override string ToString() => $"count {Count}, shape {Shape}, color {Color}, size {Size}, position {Position}";
}

/// <summary>What a mining run saw. <see cref="FractionCorrect"/> = the SFT model's text-to-image accuracy on these train prompts
/// (over the images drawn; prompts without an image count as no images).</summary>
/// <param name="NoImage">prompts where the model answered with text only (no &lt;|image_gen_start|&gt;), so nothing was drawn</param>
public sealed record ShapesDpoStats(int Prompts, int Images, int CorrectImages, int Pairs, int PromptsWithPairs, int AllCorrect, int AllWrong,
    int NoImage, AttributeErrors RejectedErrors, double Seconds)
{
    public double FractionCorrect => Images == 0 ? 0 : (double)CorrectImages / Images;
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Prompts} prompts, {Images} images, {FractionCorrect:P1} correct; {Pairs} pairs from {PromptsWithPairs} prompts; " +
        $"all correct {AllCorrect}, all wrong {AllWrong}, no image {NoImage}; rejected errors: {RejectedErrors}; {Seconds:F1} s");
}

/// <summary>Per prompt: the model's text and the seed and scorer verdict of each image (the images themselves are kept only in the pairs).</summary>
public sealed record MinedPrompt(ShapesSample Sample, string Text, IReadOnlyList<long> Seeds, IReadOnlyList<SceneScore> Scores);

public sealed record ShapesDpoMiningResult(IReadOnlyList<ShapesDpoPair> Pairs, IReadOnlyList<MinedPrompt> Prompts, ShapesDpoStats Stats);

/// <summary>
/// Stage E of the ShapesWorld recipe (docs/shapesworld.md): DPO pairs mined from the SFT model. K images per Train
/// text-to-image prompt are drawn with fixed seeds and scored by <see cref="ShapesScorer"/>; every prompt with at least one
/// correct and one wrong image gives pairs chosen = correct, rejected = wrong. The pairs are written as a LLaMA-Factory
/// sharegpt preference dataset (the official ranking format: messages + chosen + rejected, images [chosen_target,
/// rejected_target], processors/pairwise.py) that `vargpt train dpo` reads through DatasetLoader (RecordKind.Preference).
/// How the VARGPT authors built their pairs is not published (reference §7.6); this is the recipe's own choice.
/// </summary>
public static class ShapesDpoPairs
{
    public const string DatasetName = "shapesworld_dpo";

    /// <summary>Base sampler seed of Train prompt <paramref name="index"/>: a 32-bit hash of (seed, index), so runs with different
    /// seeds or overlapping index ranges do not share seed sequences; image k uses base + k (ImageOptions.Count semantics).</summary>
    public static long PromptSeed(long seed, long index) =>
        (long)(ShapesRng.Mix(ShapesRng.Mix((ulong)seed ^ 0x44504F5041495253UL) ^ (ulong)index) >> 32);

    public static ShapesDpoMiningResult Mine(VargptModel model, ShapesWorldGenerator world, ShapesDpoMiningOptions o, TextWriter? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(world);
        o.Validate();
        var sw = Stopwatch.StartNew();
        var pairs = new List<ShapesDpoPair>();
        var prompts = new List<MinedPrompt>();
        int images = 0, correct = 0, withPairs = 0, allCorrect = 0, allWrong = 0, noImage = 0;
        var errors = AttributeErrors.None;
        int done = 0;
        foreach (var sample in world.Samples(ShapesSplit.Train, o.Prompts, ShapesTaskKind.TextToImage, o.Start))
        {
            cancellationToken.ThrowIfCancellationRequested();
            ImageResult? result = null;
            string text = "";
            try
            {
                result = model.GenerateImage(sample.User, o.Image with { Seed = PromptSeed(o.Seed, sample.Index), Count = o.SamplesPerPrompt },
                    cancellationToken: cancellationToken);
            }
            catch (NoImageGeneratedException e) { noImage++; text = e.Text; }
            if (result is not null)
            {
                var mined = result.Images.Select((p, k) => new MinedImage(p.Image, k, p.Seed,
                    ShapesScorer.Score(sample.Requested!, p.Image.Data, p.Image.Width, p.Image.Height))).ToList();
                int c = mined.Count(m => m.Correct);
                images += mined.Count; correct += c;
                if (c == mined.Count) allCorrect++;
                if (c == 0) allWrong++;
                var answer = o.ModelAnswer ? result.Text + "<image_gen>" : sample.Assistant;
                var formed = FormPairs(sample, answer, mined, o.PairsPerPrompt);
                if (formed.Count > 0) withPairs++;
                foreach (var pair in formed) errors = errors.Add(pair.Rejected.Score);
                pairs.AddRange(formed);
                prompts.Add(new MinedPrompt(sample, result.Text, mined.Select(m => m.Seed).ToList(), mined.Select(m => m.Score).ToList()));
            }
            else prompts.Add(new MinedPrompt(sample, text, [], []));
            done++;
            if (progress is not null && o.ProgressEvery > 0 && (done % o.ProgressEvery == 0 || done == o.Prompts))
                progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {done}/{o.Prompts} prompts: {images} images, {(images == 0 ? 0 : (double)correct / images):P1} correct, {pairs.Count} pairs ({sw.Elapsed.TotalSeconds:F1} s)"));
        }
        var stats = new ShapesDpoStats(o.Prompts, images, correct, pairs.Count, withPairs, allCorrect, allWrong, noImage, errors, sw.Elapsed.TotalSeconds);
        return new ShapesDpoMiningResult(pairs, prompts, stats);
    }

    /// <summary>
    /// Which (correct, wrong) index pairs to keep, given each image's verdict: at most <paramref name="maxPairs"/> distinct
    /// pairs. Correct images C[0..nc) and wrong ones W[0..nw) in sample order; pairs are enumerated shift by shift,
    /// (C[i], W[(i + s) mod nw]) for s = 0.., i = 0..nc-1, which visits every (correct, wrong) combination once and uses
    /// each image as evenly as possible among the first pairs. Pure and deterministic.
    /// </summary>
    public static IReadOnlyList<(int Chosen, int Rejected)> ChoosePairs(IReadOnlyList<bool> correct, int maxPairs)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(maxPairs);
        var c = Enumerable.Range(0, correct.Count).Where(i => correct[i]).ToArray();
        var w = Enumerable.Range(0, correct.Count).Where(i => !correct[i]).ToArray();
        var pairs = new List<(int, int)>();
        for (int s = 0; s < w.Length && pairs.Count < maxPairs; s++)
            for (int i = 0; i < c.Length && pairs.Count < maxPairs; i++)
                pairs.Add((c[i], w[(i + s) % w.Length]));
        return pairs;
    }

    /// <summary>The pairs of one prompt from its scored images (<see cref="ChoosePairs"/> on <see cref="MinedImage.Correct"/>).</summary>
    public static IReadOnlyList<ShapesDpoPair> FormPairs(ShapesSample sample, string answer, IReadOnlyList<MinedImage> images, int maxPairs)
    {
        if (sample.Kind != ShapesTaskKind.TextToImage || sample.Requested is null)
            throw new ArgumentException($"sample {sample.Split} #{sample.Index} is a {sample.Kind} sample; DPO pairs are mined from text-to-image prompts", nameof(sample));
        if (DatasetLoader.Placeholders(answer).Count(gen => gen) != 1)
            throw new ArgumentException($"the answer must contain <image_gen> exactly once: \"{answer}\"", nameof(answer));
        return ChoosePairs(images.Select(m => m.Correct).ToList(), maxPairs)
            .Select(p => new ShapesDpoPair(sample, answer, images[p.Chosen], images[p.Rejected])).ToList();
    }

    /// <summary>
    /// Writes the pairs as dataset <paramref name="name"/> of <paramref name="folder"/> (entry added to dataset_info.json with
    /// "ranking": true): NAME.json records <c>{"messages":[user], "chosen":{assistant}, "rejected":{assistant},
    /// "images":[chosen.png, rejected.png], "id":n}</c>, each distinct image once as images/NAME/INDEX_K.png (K = its place
    /// among the prompt's samples), and NAME_truth.json aligned by "id": the sample (prompt, requested spec, ground-truth
    /// scene) plus the seed and full scorer reading of the chosen and rejected image.
    /// </summary>
    public static void Write(string folder, IReadOnlyList<ShapesDpoPair> pairs, string name = DatasetName)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Directory.CreateDirectory(Path.Combine(folder, "images", name));
        var records = new JsonArray();
        var truth = new JsonArray();
        var written = new HashSet<string>(StringComparer.Ordinal);
        string Save(ShapesDpoPair p, MinedImage m)
        {
            var rel = $"images/{name}/{p.Sample.Index:D7}_{m.Sample}.png";
            if (written.Add(rel)) m.Image.SavePng(Path.Combine(folder, rel));
            return rel;
        }
        JsonObject Reading(MinedImage m)
        {
            var r = JsonSerializer.SerializeToNode(m.Score, ShapesDataset.TruthJson)!.AsObject();
            r.Remove("requested"); // the sample's "requested" already holds it
            var head = new JsonObject { ["sample"] = m.Sample, ["seed"] = m.Seed, ["correct"] = m.Correct, ["detected"] = m.Score.Analysis.ToString() };
            foreach (var (k, v) in r.ToList()) { r.Remove(k); head[k] = v; }
            return head;
        }
        for (int id = 0; id < pairs.Count; id++)
        {
            var p = pairs[id];
            records.Add(new JsonObject
            {
                ["messages"] = new JsonArray(ShapesDataset.Message("user", p.Sample.User)),
                ["chosen"] = ShapesDataset.Message("assistant", p.Answer),
                ["rejected"] = ShapesDataset.Message("assistant", p.Answer),
                ["images"] = new JsonArray(Save(p, p.Chosen), Save(p, p.Rejected)),
                ["id"] = id,
            });
            var t = JsonSerializer.SerializeToNode(p.Sample, ShapesDataset.TruthJson)!.AsObject();
            t["id"] = id;
            t["chosen"] = Reading(p.Chosen);
            t["rejected"] = Reading(p.Rejected);
            truth.Add(t);
        }
        ShapesDataset.WriteJson(Path.Combine(folder, name + ".json"), records);
        ShapesDataset.WriteJson(Path.Combine(folder, name + "_truth.json"), truth);
        ShapesDataset.RegisterDataset(folder, name, ranking: true);
    }
}
