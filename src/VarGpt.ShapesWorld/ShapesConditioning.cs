using VarGpt.Model;
using VarGpt.Inference;
using VarGpt.Training;
using VarGpt.Training.Data;

namespace VarGpt.ShapesWorld;

/// <summary>
/// <see cref="ConditioningProbe"/> on a ShapesWorld model folder (`vargpt shapes probe-text`): text-to-image samples of
/// the folder's world, held-out (Eval split, the combinations never trained on) and in-distribution (Train split), each
/// target scored after its own prompt and after another sample's prompt.
/// </summary>
public static class ShapesConditioning
{
    /// <summary>The collator the recipe's stages use for a folder of this world: side² images, no target augmentation.</summary>
    public static VargptCollator Collator(ModelFolder folder, int side) => new(folder.Tokenizer, folder.Config, new VargptCollatorOptions
    {
        CutoffLen = 512, ImageResolution = side * side, ImageGenResolution = side, Processor = folder.Preprocessor, TargetAugment = false,
    });

    public static (ConditioningProbeResult HeldOut, ConditioningProbeResult Train) Run(string modelDir, int count, VargptModelOptions load, TextWriter log)
    {
        if (count < 2) throw new VargptInputException($"--count must be at least 2 (targets are paired with each other's prompts), got {count}");
        modelDir = Path.GetFullPath(modelDir);
        var world = new ShapesWorldGenerator(ShapesTraining.ReadWorld(modelDir));
        var folder = ModelFolder.Read(modelDir);
        using var model = VargptModel.Load(folder, load with { Parts = ModelParts.All });
        int side = world.Options.ImageSize;
        var collator = Collator(folder, side);
        var tmp = Path.Combine(Path.GetTempPath(), "vargpt-probe-" + Guid.NewGuid().ToString("N"));
        try
        {
            ConditioningProbeResult Probe(ShapesSplit split, string name)
            {
                ShapesDataset.WriteDataset(tmp, name, world.Samples(split, count, ShapesTaskKind.TextToImage), side);
                var records = DatasetLoader.Load([name], new DatasetLoadOptions { DatasetDir = tmp });
                var r = ConditioningProbe.Run(model.Module, collator, records);
                log.WriteLine($"{split} split ({(split == ShapesSplit.Eval ? "held-out combinations" : "training combinations")}):");
                log.WriteLine(r);
                return r;
            }
            return (Probe(ShapesSplit.Eval, "probe_eval"), Probe(ShapesSplit.Train, "probe_train"));
        }
        finally { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); }
    }
}
