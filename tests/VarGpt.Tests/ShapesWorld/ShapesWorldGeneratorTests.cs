using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using VarGpt.ShapesWorld;

namespace VarGpt.Tests.ShapesWorld;

public class ShapesWorldGeneratorTests(ITestOutputHelper output)
{
    static string Json(ShapesSample s) => JsonSerializer.Serialize(s, ShapesDataset.TruthJson);

    [Fact]
    public void SamplesAreDeterministicFromSeed()
    {
        var a = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 3 });
        var b = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 3 });
        var c = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 4 });
        var sa = a.Samples(ShapesSplit.Train, 200).Select(Json).ToList();
        Assert.Equal(sa, b.Samples(ShapesSplit.Train, 200).Select(Json).ToList());
        // Index-addressable: sample i does not depend on which other samples were drawn.
        Assert.Equal(sa[150], Json(b.Sample(ShapesSplit.Train, 150)));
        Assert.True(sa.Zip(c.Samples(ShapesSplit.Train, 200).Select(Json)).Count(p => p.First != p.Second) > 150);
        Assert.NotEqual(a.Samples(ShapesSplit.Eval, 50).Select(Json), sa.Take(50));
        Assert.Equal(a.HeldOut.OrderBy(t => t).ToList(), b.HeldOut.OrderBy(t => t).ToList());
        // Same scenes render to identical pixels.
        var scene = a.Sample(ShapesSplit.Train, 7, ShapesTaskKind.TextToImage).Images[0];
        Assert.Equal(ShapesRenderer.RenderRgb(scene), ShapesRenderer.RenderRgb(b.Sample(ShapesSplit.Train, 7, ShapesTaskKind.TextToImage).Images[0]));
    }

    [Fact]
    public void HeldOutCombinationsNeverAppearInTraining()
    {
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 11 });
        int triples = ShapesPalette.Shapes.Length * ShapesPalette.Colors.Length * ShapesPalette.Positions.Length;
        Assert.Equal((int)Math.Round(0.1 * triples), gen.HeldOut.Count);
        // Every shape×colour pair keeps training positions.
        foreach (var s in ShapesPalette.Shapes)
            foreach (var c in ShapesPalette.Colors)
                Assert.True(gen.HeldOut.Count(t => t.Item1 == s && t.Item2 == c) <= 1);

        var seenTrain = new HashSet<(Shape, ShapeColor, Position)>();
        foreach (var s in gen.Samples(ShapesSplit.Train, 3000))
            foreach (var o in s.Images.SelectMany(im => im.Objects))
            {
                Assert.False(gen.IsHeldOut(o), $"train #{s.Index} ({s.Kind}) shows held-out {o}");
                seenTrain.Add((o.Shape, o.Color, o.Position));
            }
        output.WriteLine($"held out {gen.HeldOut.Count}/{triples} triples; training covered {seenTrain.Count}/{triples - gen.HeldOut.Count} of the rest");
        Assert.True(seenTrain.Count > 0.9 * (triples - gen.HeldOut.Count));

        var kinds = new Dictionary<ShapesTaskKind, int>();
        foreach (var s in gen.Samples(ShapesSplit.Eval, 400))
        {
            kinds[s.Kind] = kinds.GetValueOrDefault(s.Kind) + 1;
            Assert.Contains(s.Images.SelectMany(im => im.Objects), gen.IsHeldOut);
            if (s.Kind == ShapesTaskKind.TextToImage) Assert.Contains(s.Requested!.Objects, gen.IsHeldOut);
        }
        Assert.Equal(4, kinds.Count);
    }

    [Fact]
    public void Image_only_training_scenes_hold_no_held_out_triple()
    {
        // the VAE and the vision tower's pretraining draw RandomTrainingScene; plain RandomScene does show held-out triples
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 11 });
        var rng = new ShapesRng(7);
        var training = Enumerable.Range(0, 500).Select(i => gen.RandomTrainingScene(rng, 1 + i % 4)).ToList();
        Assert.DoesNotContain(training.SelectMany(s => s.Objects), gen.IsHeldOut);
        Assert.Equal(Enumerable.Range(0, 500).Select(i => 1 + i % 4), training.Select(s => s.Objects.Count));
        Assert.Contains(Enumerable.Range(0, 500).SelectMany(_ => gen.RandomScene(rng, 4).Objects), gen.IsHeldOut);
    }

    [Fact]
    public void SamplesAreWellFormed()
    {
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 1, PositionJitter = 0.02f });
        var questionKinds = new HashSet<QuestionKind>();
        foreach (var s in gen.Samples(ShapesSplit.Train, 1000).Concat(gen.Samples(ShapesSplit.Eval, 200)))
        {
            int placeholders = Regex.Matches(s.User + s.Assistant, "<image>|<image_gen>").Count;
            Assert.Equal(s.Images.Count, placeholders);
            foreach (var im in s.Images)
            {
                Assert.InRange(im.Objects.Count, 1, 2);
                Assert.Equal(im.Objects.Count, im.Objects.Select(o => o.Position).Distinct().Count());
                Assert.Equal(im.Objects.Count, im.Objects.Select(o => (o.Shape, o.Color)).Distinct().Count());
            }
            switch (s.Kind)
            {
                case ShapesTaskKind.Understanding:
                case ShapesTaskKind.Description:
                    Assert.StartsWith("<image>", s.User);
                    Assert.Equal(s.Answer, s.Assistant);
                    if (s.Question is { } q) questionKinds.Add(q);
                    if (s.Kind == ShapesTaskKind.Description) Assert.Equal(s.Images[0].Describe(), s.Answer);
                    break;
                case ShapesTaskKind.TextToImage:
                    Assert.EndsWith("<image_gen>", s.Assistant);
                    Assert.DoesNotContain("<image>", s.User);
                    // The requested spec agrees with the target scene wherever it says something.
                    Assert.All(s.Requested!.Objects.Zip(s.Images[0].Objects), p =>
                        Assert.True(p.First.Shape == p.Second.Shape && p.First.Color == p.Second.Color &&
                                    (p.First.Size ?? p.Second.Size) == p.Second.Size && (p.First.Position ?? p.Second.Position) == p.Second.Position));
                    Assert.Contains(ShapesText.Phrase(s.Requested), s.User);
                    break;
                case ShapesTaskKind.Edit:
                    Assert.Equal("The output image is: <image_gen>", s.Assistant);
                    Assert.Contains("<image>", s.User);
                    var e = s.Edit!;
                    Assert.Same(e.Source, s.Images[0]); Assert.Same(e.Target, s.Images[1]);
                    Assert.NotEqual(e.Source, e.Target);
                    int expectedCount = e.Source.Objects.Count + e.Kind switch { EditKind.Add => 1, EditKind.Remove => -1, _ => 0 };
                    Assert.Equal(expectedCount, e.Target.Objects.Count);
                    if (e.Kind is not (EditKind.Add or EditKind.Remove))
                    {
                        // Exactly the edited object changed, in exactly the named attribute.
                        var (a, b) = (e.Source.Objects[e.SourceIndex], e.Target.Objects[e.TargetIndex]);
                        Assert.Equal(e.Kind == EditKind.ChangeColor, a.Color != b.Color);
                        Assert.Equal(e.Kind == EditKind.ChangeShape, a.Shape != b.Shape);
                        Assert.Equal(e.Kind == EditKind.Move, a.Position != b.Position);
                        Assert.Equal(e.Kind == EditKind.Resize, a.Size != b.Size);
                        Assert.All(e.Source.Objects.Where((_, i) => i != e.SourceIndex), o => Assert.Contains(o, e.Target.Objects));
                    }
                    Assert.Contains(ShapesText.Ref(e.Kind == EditKind.Add ? e.Target.Objects[e.TargetIndex] : e.Source.Objects[e.SourceIndex]), e.Instruction);
                    break;
            }
        }
        Assert.Equal(Enum.GetValues<QuestionKind>().Length, questionKinds.Count);
    }

    [Fact]
    public void UnderstandingAnswersAreTrueOfTheRenderedImage()
    {
        // The scorer reads the rendered image; its reading must agree with every generated answer.
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 9 });
        foreach (var s in gen.Samples(ShapesSplit.Train, 150, ShapesTaskKind.Understanding))
        {
            var seen = ShapesScorer.Analyze(ShapesRenderer.RenderRgb(s.Images[0]), 128, 128).Objects;
            var q = s.User["<image>".Length..];
            string? expect = s.Question switch
            {
                QuestionKind.Count => ShapesText.Count(seen.Count),
                QuestionKind.Exists => seen.Any(o => Regex.IsMatch(q, $@"\b{ShapesText.Ref(o.ToShapeObject())}\b")) ? "yes" : "no",
                QuestionKind.PositionOf => ShapesText.Word(seen.Single(o => q.Contains(ShapesText.Ref(o.ToShapeObject()))).Position),
                QuestionKind.SizeOf => ShapesText.Word(seen.Single(o => q.Contains(ShapesText.Ref(o.ToShapeObject()))).Size),
                _ => null,
            };
            if (expect != null) Assert.True(ShapesScorer.AnswerCorrect(expect, s.Answer!), $"'{q}' -> '{s.Answer}', image shows {expect}");
        }
    }

    [Fact]
    public void DatasetFolderParses()
    {
        using var tmp = TestPaths.Temp();
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 2, ImageSize = 64 });
        ShapesDataset.Write(tmp.Path, gen, trainCount: 40, evalCount: 12);

        var info = JsonNode.Parse(File.ReadAllText(tmp["dataset_info.json"]))!.AsObject();
        foreach (var (name, count) in new[] { (ShapesDataset.TrainName, 40), (ShapesDataset.EvalName, 12) })
        {
            var entry = info[name]!;
            Assert.Equal("sharegpt", (string?)entry["formatting"]);
            Assert.Equal("messages", (string?)entry["columns"]!["messages"]);
            var records = JsonNode.Parse(File.ReadAllText(Path.Combine(tmp.Path, (string)entry["file_name"]!)))!.AsArray();
            Assert.Equal(count, records.Count);
            var truth = ShapesDataset.ReadTruth(tmp.Path, name);
            Assert.Equal(count, truth.Count);
            for (int i = 0; i < count; i++)
            {
                var r = records[i]!;
                var msgs = r["messages"]!.AsArray();
                Assert.Equal(["user", "assistant"], msgs.Select(m => (string)m!["role"]!));
                var images = r["images"]!.AsArray().Select(p => (string)p!).ToList();
                int placeholders = msgs.Sum(m => Regex.Matches((string)m!["content"]!, "<image>|<image_gen>").Count);
                Assert.Equal(images.Count, placeholders);
                Assert.Equal(i, (int)r["id"]!);
                var t = truth[i];
                Assert.Equal(i, t.Index);
                Assert.Equal((string)msgs[0]!["content"]!, t.User);
                for (int k = 0; k < images.Count; k++)
                {
                    var (rgb, w, h) = ShapesRenderer.LoadRgb(Path.Combine(tmp.Path, images[k]));
                    Assert.Equal((64, 64), (w, h));
                    // The PNG on disk is the ground-truth scene, as the scorer sees it.
                    Assert.True(ShapesScorer.Score(t.Images[k].ToSpec(), rgb, w, h).Correct, $"{name}#{i} image {k}: {t.Images[k]}");
                }
                // Ground truth round-trips through JSON unchanged.
                Assert.Equal(Json(gen.Sample(name == ShapesDataset.TrainName ? ShapesSplit.Train : ShapesSplit.Eval, i)), Json(t));
            }
        }
    }
}
