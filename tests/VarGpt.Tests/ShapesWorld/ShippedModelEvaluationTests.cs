using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Inference;

namespace VarGpt.Tests.ShapesWorld;

/// <summary>
/// CI regression gate of the shipped ShapesWorld model (models/shapesworld) on the fast held-out subset (48 samples per
/// task, fixed seeds). The floors sit a few samples below what the shipped model measured there at ship time
/// (docs/shapesworld.md, run r4L: understanding 24/48, text-to-image colour 34/79, position 42/79 and size 47/64 of the
/// requested objects, edit change made 13/48, edit requests without an image 13/48 — a ceiling 4 above, as r3 left 33/48). The shipped model misses the issue's targets (whole-image text-to-image and editing
/// accuracy are 0, so those are gated per attribute instead, where it is measurably above zero); a model that
/// regresses to noise fails here.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ShippedModelEvaluationTests(ITestOutputHelper output)
{
    const double UnderstandingFloor = 0.41, ColorFloor = 0.37, PositionFloor = 0.48, SizeFloor = 0.67, ChangeMadeFloor = 0.18, NoImageCeiling = 0.36;

    [Fact]
    public void The_shipped_model_keeps_its_accuracy_on_the_fast_held_out_subset()
    {
        TorchTestSetup.Init();
        var dir = ShippedModel.Resolve();
        var log = new StringWriter();
        var r = ShapesEvaluation.Run(dir, ShapesEvaluationOptions.Fast with { Examples = 0 }, log, TestContext.Current.CancellationToken);
        output.WriteLine(log.ToString());
        output.WriteLine(r.ToTable());
        Assert.NotNull(r.AdapterDir);
        Assert.NotNull(r.DpoGain);
        Assert.True(r.Understanding.Accuracy >= UnderstandingFloor, $"understanding {r.Understanding.Count} < floor {UnderstandingFloor:P0}");
        Assert.True(r.Generation.Breakdown["color"].Accuracy >= ColorFloor, $"text-to-image colour {r.Generation.Breakdown["color"]} < floor {ColorFloor:P0}");
        Assert.True(r.Generation.Breakdown["position"].Accuracy >= PositionFloor, $"text-to-image position {r.Generation.Breakdown["position"]} < floor {PositionFloor:P0}");
        Assert.True(r.Generation.Breakdown["size"].Accuracy >= SizeFloor, $"text-to-image size {r.Generation.Breakdown["size"]} < floor {SizeFloor:P0}");
        Assert.True(r.Editing.Breakdown["change_made"].Accuracy >= ChangeMadeFloor, $"edit change made {r.Editing.Breakdown["change_made"]} < floor {ChangeMadeFloor:P0}");
        Assert.True(r.Editing.Breakdown["no_image"].Accuracy <= NoImageCeiling, $"edit requests without an image {r.Editing.Breakdown["no_image"]} > ceiling {NoImageCeiling:P0}");
    }
}
