using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Text;
using VarGpt.Training;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Presets;

using VarGpt;
using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.ShapesWorld;

/// <summary>(Builds and loads a random-weight ShapesWorld model: runs apart from the parallel tests, which it would slow.)</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ShapesDpoPairsTests(ITestOutputHelper output)
{
    /// <summary>A ShapesWorld model folder (the shipped 128² generation schedule, VAE and tokenizer) with a smaller LM and
    /// Infinity and seeded random weights: it draws noise, fast.</summary>
    static readonly Lazy<string> ModelDir = new(() =>
    {
        var dir = TestPaths.ProcessTemp("shapes-dpo-model");
        var sizes = TinyShapesModel.ShippedLayout with
        {
            HiddenSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, IntermediateSize = 128, MropeSection = [4, 6, 6],
            VisionDepth = 1, VisionEmbedDim = 32, VisionHeads = 2, InfinityDepth = 2, InfinityEmbedDim = 128, InfinityHeads = 2, InfinityBlockChunks = 1,
        };
        sizes.Validate();
        sizes.WriteModelFolder(dir, BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(), samples: 2000));
        RandomCheckpoint.WriteWeights(dir, ModelArchitecture.Enumerate(VargptConfig.Load(dir), ScalarType.Float32), seed: 11);
        return dir;
    });

    static readonly Lazy<VargptModel> Model = new(() => VargptModel.Load(ModelDir.Value, new VargptModelOptions { Parts = ModelParts.LanguageModel | ModelParts.Generation }));

    static VargptModel LoadModel()
    {
        TorchTestSetup.Init();
        return Model.Value;
    }

    static readonly ShapesWorldGenerator World = new(new ShapesWorldOptions { Seed = 3 });

    [Fact]
    public void Pairs_are_distinct_correct_wrong_combinations_spread_over_the_images()
    {
        bool[] v = [true, false, true, false];
        Assert.Equal([(0, 1)], ShapesDpoPairs.ChoosePairs(v, 1));
        // the first min(#correct, #wrong) pairs use each image at most once
        Assert.Equal([(0, 1), (2, 3)], ShapesDpoPairs.ChoosePairs(v, 2));
        var all = ShapesDpoPairs.ChoosePairs(v, 100);
        Assert.Equal(4, all.Count);
        Assert.Equal(4, all.Distinct().Count());
        Assert.All(all, p => { Assert.True(v[p.Chosen]); Assert.False(v[p.Rejected]); });
        Assert.Equal([(0, 1), (0, 2), (0, 3)], ShapesDpoPairs.ChoosePairs([true, false, false, false], 5));
        Assert.Equal([(1, 0), (2, 0)], ShapesDpoPairs.ChoosePairs([false, true, true], 2));
        Assert.Empty(ShapesDpoPairs.ChoosePairs([true, true, true], 3));
        Assert.Empty(ShapesDpoPairs.ChoosePairs([false, false], 3));
        Assert.Empty(ShapesDpoPairs.ChoosePairs([], 3));
        // deterministic
        Assert.Equal(ShapesDpoPairs.ChoosePairs([false, true, true, false, true], 4), ShapesDpoPairs.ChoosePairs([false, true, true, false, true], 4));
    }

    /// <summary>Scored images without a model: the render of the target scene (correct) and renders with the first object recoloured (wrong).</summary>
    static List<MinedImage> Rendered(ShapesSample s, params bool[] correct)
    {
        var target = s.Images[0];
        return correct.Select((ok, k) =>
        {
            var scene = ok ? target : new Scene(target.Objects.Select((o, i) => i == 0
                ? o with { Color = ShapesPalette.Colors.First(c => c != o.Color && !target.Objects.Any(x => x.Shape == o.Shape && x.Color == c)) } : o).ToArray());
            var img = new RgbImage(128, 128, ShapesRenderer.RenderRgb(scene, 128));
            return new MinedImage(img, k, 1000 + k, ShapesScorer.Score(s.Requested!, img.Data, 128, 128));
        }).ToList();
    }

    static List<ShapesDpoPair> RenderedPairs(int prompts)
    {
        var pairs = new List<ShapesDpoPair>();
        foreach (var s in World.Samples(ShapesSplit.Train, prompts, ShapesTaskKind.TextToImage, start: 500))
        {
            var images = Rendered(s, false, true, false, true);
            Assert.Equal([false, true, false, true], images.Select(m => m.Correct)); // the scorer reads the renders right
            pairs.AddRange(ShapesDpoPairs.FormPairs(s, s.Assistant, images, 2));
        }
        return pairs;
    }

    [Fact]
    public void Written_pairs_load_as_preference_records_and_collate_two_targets_per_pair()
    {
        TorchTestSetup.Init();
        var pairs = RenderedPairs(3);
        Assert.Equal(6, pairs.Count);
        Assert.All(pairs, p => { Assert.True(p.Chosen.Correct); Assert.False(p.Rejected.Correct); });
        using var d = TestPaths.Temp();
        ShapesDataset.Write(d.Path, World, 2, 1); // an SFT dataset already in the folder keeps its entry
        ShapesDpoPairs.Write(d.Path, pairs);

        var info = JsonNode.Parse(File.ReadAllText(d["dataset_info.json"]))!.AsObject();
        Assert.True(info.ContainsKey(ShapesDataset.TrainName));
        var entry = info[ShapesDpoPairs.DatasetName]!;
        Assert.True(entry["ranking"]!.GetValue<bool>());
        Assert.Equal("sharegpt", entry["formatting"]!.GetValue<string>());
        Assert.Equal("chosen", entry["columns"]!["chosen"]!.GetValue<string>());
        Assert.Equal("rejected", entry["columns"]!["rejected"]!.GetValue<string>());
        // each distinct image written once: 3 prompts x 4 samples
        Assert.Equal(12, Directory.GetFiles(Path.Combine(d.Path, "images", ShapesDpoPairs.DatasetName)).Length);

        var records = DatasetLoader.Load([ShapesDpoPairs.DatasetName], new DatasetLoadOptions { DatasetDir = d.Path, Ranking = true });
        Assert.Equal(pairs.Count, records.Count);
        for (int i = 0; i < records.Count; i++)
        {
            var r = records[i];
            Assert.Equal(RecordKind.Preference, r.Kind);
            Assert.Equal(pairs[i].Sample.User, Assert.Single(r.Prompt).Content);
            Assert.Equal(pairs[i].Sample.Assistant, r.Response[0].Content);
            Assert.Equal(pairs[i].Sample.Assistant, r.Response[1].Content);
            Assert.All(r.Images, im => Assert.True(im.IsTarget));
            // images[0] is the chosen image, images[1] the rejected one: the files decode to the mined pixels
            Assert.Equal(pairs[i].Chosen.Image.Data, RgbImage.Load(r.Images[0].Path).Data);
            Assert.Equal(pairs[i].Rejected.Image.Data, RgbImage.Load(r.Images[1].Path).Data);
        }

        var truth = JsonNode.Parse(File.ReadAllText(d[ShapesDpoPairs.DatasetName + "_truth.json"]))!.AsArray();
        Assert.Equal(pairs.Count, truth.Count);
        Assert.True(truth[0]!["chosen"]!["correct"]!.GetValue<bool>());
        Assert.False(truth[0]!["rejected"]!["correct"]!.GetValue<bool>());
        Assert.False(truth[0]!["rejected"]!["color"]!.GetValue<bool>());
        Assert.Equal(pairs[0].Sample.Index, truth[0]!["index"]!.GetValue<long>());
        Assert.NotNull(truth[0]!["requested"]);
        output.WriteLine(truth[0]!.ToJsonString());
        // the rejected renders have exactly one wrong attribute: the recoloured object's colour
        Assert.Equal(new AttributeErrors(0, 0, 6, 0, 0), pairs.Aggregate(AttributeErrors.None, (e, p) => e.Add(p.Rejected.Score)));

        var cfg = VargptConfig.Load(ModelDir.Value);
        var collator = new VargptCollator(QwenTokenizer.FromDirectory(ModelDir.Value), cfg, new VargptCollatorOptions { ImageGenResolution = 128 });
        var encoded = collator.EncodeAll(records, TrainingStage.Dpo);
        Assert.Empty(encoded.Skipped);
        Assert.Equal(pairs.Count, encoded.Items.Count);
        Assert.All(encoded.Items, it => Assert.NotNull(it.Rejected));
        using var batch = collator.Collate(encoded.Items.Take(4).ToList(), epoch: 0, index: 0);
        Assert.Equal(4, batch.Pairs);
        Assert.Equal(8, batch.InputIds.shape[0]);
        Assert.Equal([8L, 3, 128, 128], batch.PixelGenValues!.shape);
        // chosen (rows 0..3) and rejected (rows 4..7) targets differ (a recoloured object)
        Assert.True(batch.PixelGenValues[0].sub(batch.PixelGenValues[4]).abs().max().item<float>() > 0.1f);
    }

    [Fact]
    public void Mining_is_deterministic_and_counts_every_image()
    {
        var model = LoadModel();
        var o = new ShapesDpoMiningOptions { Prompts = 3, SamplesPerPrompt = 2, Start = 40, Seed = 5, ProgressEvery = 2, Image = new ImageOptions { ForceImageStart = true } };
        var log = new StringWriter();
        var a = ShapesDpoPairs.Mine(model, World, o, log, TestContext.Current.CancellationToken);
        output.WriteLine(a.Stats.ToString());
        output.WriteLine(log.ToString());
        Assert.Equal(2, log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length); // after prompt 2 and the last one
        var s = a.Stats;
        Assert.Equal((3, 6, 0), (s.Prompts, s.Images, s.NoImage));
        Assert.Equal(s.Images, a.Prompts.Sum(p => p.Scores.Count));
        Assert.Equal(s.CorrectImages, a.Prompts.Sum(p => p.Scores.Count(x => x.Correct)));
        Assert.Equal(s.Pairs, a.Pairs.Count);
        Assert.Equal(s.AllWrong, a.Prompts.Count(p => p.Scores.All(x => !x.Correct)));
        Assert.Equal(s.AllCorrect, a.Prompts.Count(p => p.Scores.All(x => x.Correct)));
        Assert.Equal(s.PromptsWithPairs, s.Prompts - s.AllCorrect - s.AllWrong); // K = 2, one pair per mixed prompt
        Assert.Equal([40L, 41, 42], a.Prompts.Select(p => p.Sample.Index));
        Assert.All(a.Prompts, p => Assert.Equal(ShapesTaskKind.TextToImage, p.Sample.Kind));
        Assert.All(a.Prompts, p => Assert.Equal([ShapesDpoPairs.PromptSeed(5, p.Sample.Index), ShapesDpoPairs.PromptSeed(5, p.Sample.Index) + 1], p.Seeds));
        Assert.Equal(6, a.Prompts.SelectMany(p => p.Seeds).Distinct().Count());

        var b = ShapesDpoPairs.Mine(model, World, o, null, TestContext.Current.CancellationToken);
        Assert.Equal(Fingerprint(a), Fingerprint(b));
        Assert.Equal(a.Pairs.Select(p => (p.Sample.Index, p.Chosen.Seed, p.Rejected.Seed)), b.Pairs.Select(p => (p.Sample.Index, p.Chosen.Seed, p.Rejected.Seed)));
        // another sampler seed draws other images
        var c = ShapesDpoPairs.Mine(model, World, o with { Seed = 6, Prompts = 1 }, null, TestContext.Current.CancellationToken);
        Assert.NotEqual(a.Prompts[0].Seeds, c.Prompts[0].Seeds);
    }

    /// <summary>Seeds and the scorer's full reading of every image (the detected objects depend on every pixel that matters).</summary>
    static List<string> Fingerprint(ShapesDpoMiningResult r) =>
        r.Prompts.SelectMany(p => p.Seeds.Zip(p.Scores, (seed, sc) => $"{p.Sample.Index} {seed} {sc.Correct} {string.Join(";", sc.Analysis.Objects)}")).ToList();

    [Fact]
    public void Options_are_checked_before_any_work()
    {
        var o = new ShapesDpoMiningOptions();
        Assert.Contains("samples per prompt", Assert.Throws<InvalidOptionException>(() => (o with { SamplesPerPrompt = 1 }).Validate()).Message);
        Assert.Contains("Seed and Count", Assert.Throws<InvalidOptionException>(() => (o with { Image = new ImageOptions { Count = 2 } }).Validate()).Message);
        var edit = World.Sample(ShapesSplit.Train, 0, ShapesTaskKind.Edit);
        Assert.Contains("text-to-image", Assert.Throws<ArgumentException>(() => ShapesDpoPairs.FormPairs(edit, edit.Assistant, [], 1)).Message);
        var t2i = World.Sample(ShapesSplit.Train, 0, ShapesTaskKind.TextToImage);
        Assert.Contains("<image_gen>", Assert.Throws<ArgumentException>(() => ShapesDpoPairs.FormPairs(t2i, "Here it is.", [], 1)).Message);
    }

    [Fact]
    public void Cli_mines_and_reports_the_train_prompt_accuracy()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var (code, o, e) = VarGpt.Tests.Cli.CliHarness.Run("shapes", "mine-dpo", "--model", ModelDir.Value, "--out", d.Path, "--prompts", "2", "--samples", "2",
            "--seed", "3", "--force-image-start", "--threads", "1");
        output.WriteLine(o + e);
        Assert.Contains("train-prompt accuracy", o);
        Assert.Contains("4 images", o);
        // a random model draws noise: normally no pair (exit 1, nothing written); a pair would give a loadable dataset
        if (code == 0) Assert.NotEmpty(DatasetLoader.Load([ShapesDpoPairs.DatasetName], new DatasetLoadOptions { DatasetDir = d.Path, Ranking = true }));
        else { Assert.Equal(1, code); Assert.Contains("no pairs", e); }

        (code, _, e) = VarGpt.Tests.Cli.CliHarness.Run("shapes", "mine-dpo", "--model", ModelDir.Value, "--out", d.Path, "--samples", "1");
        Assert.Equal(2, code);
        Assert.Contains("samples per prompt", e);
    }
}
