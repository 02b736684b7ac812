using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.ShapesWorld;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.Tests.ShapesWorld;

[Collection(nameof(GlobalRngCollection))]
public class VaeTrainingTests(ITestOutputHelper output)
{
    /// <summary>A tiny VAE on 64² images (4×4 latent, scales 1,2,4) so a few steps run in seconds.</summary>
    static readonly ShapesModelConfig Tiny = new()
    {
        ImageSize = 64, Pn = "vae-test-64", Scales = [new(1, 1, 1), new(2, 2, 2), new(3, 4, 4)],
        VaeBaseCh = 24, VaeChMult = [1, 1, 1, 1, 1], CodebookDim = 8, VaePatchSize = 16,
    };

    static VaeTrainingOptions Options(string dir) => new()
    {
        OutputDir = dir, Seed = 3, Steps = 10, BatchSize = 2, CropSize = 32, CropBatchSize = 4, CropFraction = 0.5,
        LearningRate = 3e-3, LoggingSteps = 5, SaveSteps = 5, EvalImages = 4,
    };

    [Fact]
    public void A_few_steps_lower_the_loss_deterministically_and_write_loadable_weights()
    {
        TorchTestSetup.Init();
        using var d1 = TestPaths.Temp();
        using var d2 = TestPaths.Temp();
        var r1 = VaeTraining.Train(Tiny, Options(d1.Path));
        var losses = r1.Training.Steps.Select(s => s.Loss).ToArray();
        output.WriteLine(string.Join(" ", losses.Select(l => l.ToString("F4"))));
        output.WriteLine(r1.Fp32.ToString());
        Assert.True(r1.Training.Completed);
        // Crop steps (first half) and whole-image steps are separate regimes: compare within each.
        Assert.True(losses[4] < losses[0], $"crop-phase loss did not fall: {losses[0]} -> {losses[4]}");
        Assert.True(losses[9] < losses[5], $"full-image loss did not fall: {losses[5]} -> {losses[9]}");

        var r2 = VaeTraining.Train(Tiny, Options(d2.Path));
        Assert.Equal(losses, r2.Training.Steps.Select(s => s.Loss).ToArray());

        // vae.safetensors holds vae_local.* under the official names and loads strictly into a fresh BsqVae.
        using var f = SafeTensorsFile.Open(r1.WeightsPath);
        Assert.All(f.Tensors.Keys, k => Assert.StartsWith("vae_local.", k));
        using var vae = new BsqVae(VaeTraining.VaeConfigOf(Tiny));
        var sd = f.Tensors.Keys.ToDictionary(k => k, k => f.Load(k));
        StateDict.Load(vae, sd, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix });
        Assert.True(File.Exists(Path.Combine(d1.Path, VaeTraining.EvalFile)));
        Assert.InRange(r1.Fp32.BitStability, 0, 1);
        // every failed round trip is tallied by what went wrong, and the tally survives the file
        var shipped = VaeTraining.ReadEvaluation(d1.Path);
        int failed = (int)Math.Round(shipped.Images * (1 - shipped.ScorerAccuracy));
        Assert.True(shipped.Errors!.Values.Sum() >= failed, $"{failed} failed scenes, errors {string.Join(", ", shipped.Errors!)}");
        Assert.Equal(r1.Shipped.Errors, shipped.Errors);
    }

    [Fact]
    public void Small_star_share_redraws_that_share_of_objects_in_place_but_never_into_a_held_out_triple()
    {
        var world = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 3, ImageSize = 64 });
        List<Scene> Draw(double share) => new ShapesVaeData(world, Options("") with { SmallStarShare = share }, 16).DrawScenes(new ShapesRng(7), 400);
        var plain = Draw(0);
        var all = Draw(1);
        var half = Draw(0.5);
        Assert.Equal(plain, Draw(0)); // deterministic; share 0 draws the uniform mix
        var objects = all.SelectMany(s => s.Objects).ToList();
        Assert.All(all.Zip(plain), p => Assert.Equal(p.Second.Objects.Select(o => (o.Color, o.Position, o.Dx, o.Dy)), p.First.Objects.Select(o => (o.Color, o.Position, o.Dx, o.Dy))));
        Assert.DoesNotContain(objects, world.IsHeldOut);
        // share 1: every object a small star unless that would be a held-out (star, colour, position)
        Assert.All(objects, o => Assert.True(o is { Shape: Shape.Star, Size: ObjectSize.Small } || world.IsHeldOut(o with { Shape = Shape.Star, Size = ObjectSize.Small })));
        double starShare = half.SelectMany(s => s.Objects).Count(o => o is { Shape: Shape.Star, Size: ObjectSize.Small }) / (double)half.Sum(s => s.Objects.Count);
        Assert.InRange(starShare, 0.45, 0.65); // half redrawn, plus the tenth already small stars, minus held-out triples
    }

    [Fact]
    public void A_failed_round_trip_names_each_attribute_read_wrong()
    {
        var star = new ObjectSpec(Shape.Star, ShapeColor.Red, ObjectSize.Small, Position.Left);
        var square = new ObjectSpec(Shape.Square, ShapeColor.Blue, ObjectSize.Large, Position.Right);
        DetectedObject Seen(Shape shape, ShapeColor color, ObjectSize size, Position p, float x) => new(shape, color, size, p, 100, x, 0.5f, 0.14f, 0.9f, 1f);
        var analysis = new SceneAnalysis(64, 64, [Seen(Shape.Circle, ShapeColor.Red, ObjectSize.Small, Position.Left, 0.2f), Seen(Shape.Square, ShapeColor.Purple, ObjectSize.Large, Position.Right, 0.8f)]);
        var score = ShapesScorer.Score(new SceneSpec([star, square]), analysis);
        Assert.False(score.Correct);
        Assert.Equal(["small star: shape read as circle", "large square: colour read as purple"], VaeTraining.ErrorKinds(score).ToArray());
        var one = ShapesScorer.Score(new SceneSpec([star]), new SceneAnalysis(64, 64, []));
        Assert.Equal(["object count 1 read as 0", "small star: not found"], VaeTraining.ErrorKinds(one).ToArray());
    }

    [Fact]
    public void The_code_probe_trains_with_the_vae_but_stays_out_of_its_weights()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var r = VaeTraining.Train(Tiny, Options(d.Path) with { ProbeWeight = 1 });
        var losses = r.Training.Steps.Select(s => s.Loss).ToArray();
        output.WriteLine(string.Join(" ", losses.Select(l => l.ToString("F4"))));
        Assert.True(losses[4] < losses[0], $"crop-phase loss did not fall: {losses[0]} -> {losses[4]}");
        using var f = SafeTensorsFile.Open(r.WeightsPath);
        using var vae = new BsqVae(VaeTraining.VaeConfigOf(Tiny));
        Assert.Equal(vae.state_dict().Keys.Select(k => ModelComponents.Vae.Prefix + k).Order(), f.Tensors.Keys.Order());
    }

    [Fact]
    public void Cell_labels_name_the_object_covering_each_cell()
    {
        var scene = new Scene([new ShapeObject(Shape.Square, ShapeColor.Red, ObjectSize.Large, Position.Center),
            new ShapeObject(Shape.Circle, ShapeColor.Blue, ObjectSize.Small, Position.Left)]);
        var labels = ShapesRenderer.CellLabels(scene, 128, 8);
        var rgb = ShapesRenderer.RenderRgb(scene, 128);
        Assert.Equal(new CellLabel(1 + (int)ShapeColor.Red, 1 + (int)Shape.Square, 1 + (int)ObjectSize.Large, 1 + (int)Position.Center), labels[3 * 8 + 3]);
        Assert.Equal(default, labels[0]);
        Assert.Contains(labels, l => l.Color == 1 + (int)ShapeColor.Blue && l.Shape == 1 + (int)Shape.Circle && l.Size == 1 + (int)ObjectSize.Small && l.Position == 1 + (int)Position.Left);
        // against the rendered pixels: a labelled cell is at least ~10% non-white, an unlabelled one has < 10%
        for (int k = 0; k < 64; k++)
        {
            int cy = k / 8 * 16, cx = k % 8 * 16, ink = 0;
            for (int y = cy; y < cy + 16; y++)
                for (int x = cx; x < cx + 16; x++)
                    if (rgb[(y * 128 + x) * 3 + 2] < 200 || rgb[(y * 128 + x) * 3] < 200) ink++;
            double cover = ink / 256.0;
            if (labels[k] == default) Assert.True(cover < 0.12, $"cell {k}: {cover:P0} ink but no label");
            else Assert.True(cover > 0.08, $"cell {k}: labelled {labels[k]} but {cover:P0} ink");
        }
    }

    [Fact]
    public void Training_quantizer_matches_the_inference_ladder_and_passes_gradients()
    {
        TorchTestSetup.Init();
        manual_seed(1);
        var bsq = new MultiScaleBSQ(8);
        Scale[] sched = [new(1, 1, 1), new(1, 2, 2), new(1, 4, 4)];
        var h = randn(2, 8, 4, 4).requires_grad_(true);
        var (z, commit) = VaeTraining.QuantizeForTraining(bsq.lfq, h, sched);
        using var reference = bsq.forward(h.detach(), sched);
        Assert.True(z.allclose(reference.Z, rtol: 0, atol: 1e-6));
        (z.pow(2).sum() + commit).backward();
        Assert.True(h.grad is not null && h.grad.abs().sum().item<float>() > 0);
        Assert.True(commit.item<float>() > 0);
    }
}
