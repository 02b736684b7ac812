using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Training;
using VarGpt.Inference;

using VarGpt;

namespace VarGpt.Tests.ShapesWorld;

/// <summary>The CI smoke test of `vargpt shapes train`: a few steps of every stage on the real ShapesWorld sizes.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ShapesTrainingTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(6, 5)]      // r3's 6 pairs: 3 epochs of batch 4 instead of 120 steps (80 epochs)
    [InlineData(1, 1)]
    [InlineData(0, 1)]
    [InlineData(160, 120)]  // 3 epochs would take 120 steps: DpoSteps bounds it
    [InlineData(1000, 120)]
    public void Dpo_steps_stop_after_DpoMaxEpochs_passes_over_few_pairs(int pairs, int steps) =>
        Assert.Equal(steps, ShapesTraining.DpoStepsFor(new ShapesTrainingOptions { OutputDir = "x" }, pairs));

    [Fact]
    public void The_DPO_stage_reads_the_pair_count_from_mining_json_and_names_the_file_when_it_is_broken()
    {
        using var dir = TestPaths.Temp();
        var file = Path.Combine(dir.Path, ShapesTraining.MiningFile);
        var stats = new ShapesDpoStats(300, 1200, 8, 6, 6, 0, 294, 0, AttributeErrors.None, 1.5);
        File.WriteAllText(file, JsonSerializer.Serialize(stats)); // as the mining stage writes it
        Assert.Equal(6, ShapesTraining.MinedPairs(dir.Path));
        foreach (var (text, expected) in new[] { ("{\"Prompts\": 300}", "no integer 'Pairs'"), ("{\"Pairs\": ", "not valid JSON") })
        {
            File.WriteAllText(file, text);
            var e = Assert.Throws<InvalidFileException>(() => ShapesTraining.MinedPairs(dir.Path));
            Assert.Contains(file, e.Message);
            Assert.Contains(expected, e.Message);
        }
    }

    [Fact]
    public void A_few_steps_of_every_stage_lower_the_loss_and_give_a_loadable_model_folder()
    {
        TorchTestSetup.Init();
        using var dir = TestPaths.Temp();
        var log = new StringWriter();
        var o = new ShapesTrainingOptions
        {
            OutputDir = dir.Path, Seed = 5, TrainSamples = 48, AlignSamples = 32, EvalSamples = 8, VaeSteps = 6, VaeEvalImages = 4,
            VisionSteps = 8, UnderstandingSamples = 32, UnderstandingSteps = 6, UnderstandingBatchSize = 4,
            AlignSteps = 6, GenerationSamples = 16, GenerationSteps = 6, GenerationBatchSize = 4, SftSteps = 8, BatchSize = 4, LoggingSteps = 1, Output = log,
            // a few prompts: an 8-step model may already start images, and 300 × 4 of them take minutes
            DpoPrompts = 4, DpoSamplesPerPrompt = 2, DpoSteps = 4, DpoBatchSize = 2,
            // a few steps per stage cannot pass the gates: measure and record them, and go on
            GateSamples = 4, StopAtFailedGate = false,
        };
        var model = ShapesTraining.Run(o, cancellationToken: TestContext.Current.CancellationToken);
        output.WriteLine(log.ToString());

        foreach (var stage in new[] { ShapesTraining.VaeDir, ShapesTraining.VisionDir, ShapesTraining.UnderstandingDir, ShapesTraining.AlignDir, ShapesTraining.GenerationDir, ShapesTraining.SftDir })
        {
            var losses = File.ReadAllLines(Path.Combine(dir.Path, stage, TrainerLog.JsonlFile))
                .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("loss").GetDouble()).ToArray();
            output.WriteLine($"{stage}: {string.Join(" ", losses.Select(l => l.ToString("F3")))}");
            Assert.True(losses.Length >= 6, $"{stage}: {losses.Length} logged steps");
            Assert.True(losses.TakeLast(2).Average() < losses[0], $"{stage}: loss did not fall ({losses[0]:F4} -> {losses[^1]:F4})");
            Assert.True(File.Exists(ShapesTraining.DoneMarker(dir.Path, stage)));
        }
        Assert.True(File.Exists(Path.Combine(dir.Path, "sft.yaml")), "each stage leaves its yaml");
        // every gate measured, in recipe order, and printed
        Assert.Equal(["vae", "vision", "understanding", "generation", "text_to_image"], ShapesGates.Read(dir.Path).Select(g => g.Name));
        Assert.Contains("[gate understanding]", log.ToString());
        // stage yamls name their files by absolute path: the run does not depend on the working directory
        var sftYaml = TrainingConfig.Load(Path.Combine(dir.Path, "sft.yaml"));
        Assert.True(Path.IsPathRooted(sftYaml.ModelNameOrPath) && Path.IsPathRooted(sftYaml.DatasetDir) && Path.IsPathRooted(sftYaml.OutputDir));
        Assert.Equal(GenTextLoss.Labels, TrainingConfig.Load(Path.Combine(dir.Path, "sft.yaml")).GenTextLoss);
        Assert.Equal(GenTextLoss.Official, TrainingConfig.Load(Path.Combine(dir.Path, "align.yaml")).GenTextLoss);
        // the generation stage trains on text-to-image pairs only, from the aligned model, and SFT starts from it
        var genYaml = TrainingConfig.Load(Path.Combine(dir.Path, "generation.yaml"));
        Assert.Equal([ShapesTraining.GenerationName], genYaml.Dataset);
        Assert.Equal(Path.Combine(dir.Path, ShapesTraining.AlignDir), genYaml.ModelNameOrPath);
        Assert.Equal(Path.Combine(dir.Path, ShapesTraining.GenerationDir), sftYaml.ModelNameOrPath);
        var genData = ShapesDataset.ReadTruth(Path.Combine(dir.Path, ShapesTraining.DataDir), ShapesTraining.GenerationName);
        Assert.Equal(16, genData.Count);
        Assert.All(genData, s => Assert.Equal(ShapesTaskKind.TextToImage, s.Kind));

        // between two stages' model.safetensors: the same tensor names, and exactly the expected ones of `keys` changed
        void AssertChanged(string fromStage, string toStage, string[] keys, Func<string, bool> changes)
        {
            using var before = SafeTensorsFile.Open(Path.Combine(dir.Path, fromStage, "model.safetensors"));
            using var after = SafeTensorsFile.Open(Path.Combine(dir.Path, toStage, "model.safetensors"));
            Assert.Equal(before.Tensors.Keys.Order(), after.Tensors.Keys.Order());
            foreach (var k in keys)
            {
                using var a = before.Load(k);
                using var b = after.Load(k);
                bool same = a.allclose(b, rtol: 0, atol: 0);
                Assert.True(changes(k) != same, $"{fromStage} -> {toStage}: {k} unchanged = {same}");
            }
        }
        string[] probed = ["visual.patch_embed.proj.weight", "visual.merger.mlp.2.weight", "model.embed_tokens.weight"];
        // the vision stage changes visual.* only, and writes a complete model folder
        AssertChanged(ShapesTraining.BaseDir, ShapesTraining.VisionDir, [.. probed, "vae_local.decoder.conv_out.conv.weight"], k => k.StartsWith("visual."));
        Assert.True(File.Exists(Path.Combine(dir.Path, ShapesTraining.VisionDir, "config.json")));
        // the LM stages keep the pretrained tower frozen (FreezeVisionTower) and train the language model
        AssertChanged(ShapesTraining.VisionDir, ShapesTraining.SftDir, probed, k => !k.StartsWith("visual."));
        // stage markers sit beside the stage folders: the model folder holds only the model
        Assert.True(File.Exists(ShapesTraining.DoneMarker(dir.Path, ShapesTraining.ModelDir)));
        Assert.False(File.Exists(Path.Combine(model, "DONE")));
        Assert.Equal(5, ShapesTraining.ReadWorld(model).Seed);
        Assert.True(File.Exists(Path.Combine(model, "training", "sft.jsonl")));

        // the folder is a model: it loads and draws (random quality after 8 steps; only the mechanics are checked)
        using (var images = VargptModel.Load(model))
        {
            var r = images.GenerateImage("Draw a red circle on the left.", new ImageOptions { Seed = 1, ForceImageStart = true }, cancellationToken: TestContext.Current.CancellationToken);
            Assert.Equal(64, r.Images[0].Image.Width);
        }

        // a second run finds every stage done and changes nothing
        var stamp = File.GetLastWriteTimeUtc(Path.Combine(model, "model.safetensors"));
        var log2 = new StringWriter();
        ShapesTraining.Run(o with { Output = log2 }, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Contains("done already", log2.ToString());
        Assert.Equal(stamp, File.GetLastWriteTimeUtc(Path.Combine(model, "model.safetensors")));
    }
}
