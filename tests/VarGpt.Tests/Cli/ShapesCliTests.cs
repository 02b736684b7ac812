using System.Text.Json.Nodes;
using VarGpt.Cli;
using VarGpt.ShapesWorld;
using VarGpt.Training.Data;

namespace VarGpt.Tests.Cli;

[Collection(nameof(TorchDefaultsCollection))] // runs CLI commands in-process that load whole models: apart from the parallel tests
public class ShapesCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => VarGpt.Tests.Cli.CliHarness.Run(args);

    [Fact]
    public void Data_writes_a_dataset_the_training_loader_reads()
    {
        using var d = TestPaths.Temp();
        var (code, o, e) = Run("shapes", "data", "--out", d.Path, "--train", "12", "--eval", "5", "--seed", "4");
        Assert.True(code == 0, e);
        Assert.Contains("shapesworld_train: 12 samples", o);
        var info = JsonNode.Parse(File.ReadAllText(d["dataset_info.json"]))!.AsObject();
        Assert.True(info.ContainsKey(ShapesDataset.TrainName) && info.ContainsKey(ShapesDataset.EvalName));
        var records = DatasetLoader.Load([ShapesDataset.TrainName], new DatasetLoadOptions { DatasetDir = d.Path, Seed = 0 });
        Assert.Equal(12, records.Count);
        Assert.All(records.SelectMany(r => r.Images), im => Assert.True(File.Exists(Path.IsPathRooted(im.Path) ? im.Path : Path.Combine(d.Path, im.Path)), im.Path));
        var truth = ShapesDataset.ReadTruth(d.Path, ShapesDataset.EvalName);
        Assert.Equal(5, truth.Count);
        // Same seed, same dataset.
        using var d2 = TestPaths.Temp();
        Assert.Equal(0, Run("shapes", "data", "--out", d2.Path, "--train", "12", "--eval", "5", "--seed", "4").Code);
        Assert.Equal(File.ReadAllText(d["shapesworld_train.json"]), File.ReadAllText(d2["shapesworld_train.json"]));
    }

    [Fact]
    public void Data_with_a_task_writes_only_samples_of_that_task()
    {
        using var d = TestPaths.Temp();
        var (code, o, e) = Run("shapes", "data", "--out", d.Path, "--train", "8", "--eval", "3", "--task", "text-to-image", "--image-size", "64");
        Assert.True(code == 0, e);
        Assert.Contains("shapesworld_train: 8 samples (TextToImage 8)", o);
        Assert.All(ShapesDataset.ReadTruth(d.Path, ShapesDataset.EvalName), s => Assert.Equal(ShapesTaskKind.TextToImage, s.Kind));
        (code, _, e) = Run("shapes", "data", "--out", d.Path, "--task", "drawing");
        Assert.Equal(2, code);
        Assert.Contains("'drawing' not recognized", e);
    }

    [Fact]
    public void Eval_with_a_task_evaluates_that_task_only()
    {
        var (code, o, e) = Run("shapes", "eval", "--task", "text-to-image", "--count", "2", "--json");
        Assert.True(code == 0, e);
        var counts = JsonNode.Parse(o)!["counts"]!;
        Assert.Equal(2, (int)counts["generation"]!["total"]!);
        Assert.Equal(0, (int)counts["understanding"]!["total"]!);
        Assert.Equal(0, (int)counts["editing"]!["total"]!);
    }

    [Fact]
    public void Bad_arguments_are_user_errors()
    {
        var (code, _, e) = Run("shapes", "data", "--out", "/tmp/x", "--jitter", "0.5");
        Assert.Equal(2, code);
        Assert.Contains("--jitter", e);
        (code, _, e) = Run("shapes", "train-vae");
        Assert.Equal(2, code);
        Assert.Contains("--out", e);
        (code, _, e) = Run("shapes", "train-vae", "--out", "/tmp/never-written", "--jitter", "0.5");
        Assert.Equal(2, code);
        Assert.Contains("--jitter must be in [0, 0.02], got 0.5", e);
        (code, _, e) = Run("shapes", "train-vae", "--out", "/tmp/never-written", "--small-star-share", "1.5");
        Assert.Equal(2, code);
        Assert.Contains("--small-star-share must be in [0, 1], got 1.5", e);
        Assert.False(Directory.Exists("/tmp/never-written"));
        (code, _, e) = Run("shapes", "eval", "--fast", "--cfg", "0.5");
        Assert.Equal(2, code);
        Assert.Contains("--cfg must be ≥ 1, got 0.5", e);
        (code, _, e) = Run("shapes", "eval", "--task", "drawing");
        Assert.Equal(2, code);
        Assert.Contains("'drawing' not recognized", e);
        (code, _, e) = Run("shapes", "train", "--out", "/tmp/never-written", "--generation-steps", "0");
        Assert.Equal(2, code);
        Assert.Contains("--generation-steps must be ≥ 1", e);
        (code, _, e) = Run("shapes", "probe-text", "--count", "1");
        Assert.Equal(2, code);
        Assert.Contains("--count must be at least 2", e);
        (code, _, e) = Run("shapes", "train", "--out", "/tmp/never-written", "--sft-steps", "0");
        Assert.Equal(2, code);
        Assert.Contains("--sft-steps must be ≥ 1", e);
        Assert.False(Directory.Exists("/tmp/never-written"));
    }

    [Fact]
    public void Eval_of_a_folder_that_is_not_a_ShapesWorld_model_names_the_missing_file()
    {
        using var d = TestPaths.Temp();
        var (code, _, e) = Run("shapes", "eval", "--model", d.Path, "--fast");
        Assert.Equal(2, code);
        Assert.Contains("shapesworld.json", e);
        Assert.DoesNotContain("   at ", e);
    }

    [Fact]
    public void Eval_vae_of_a_model_folders_weights_uses_that_folders_vae_config_and_schedule()
    {
        TorchTestSetup.Init();
        // the tiny model keeps the shipped 128² layout (patch 16, five levels), not the recipe's 64² default
        var weights = Path.Combine(VarGpt.Tests.TestModels.TinyShapesModel.Dir, "model.safetensors");
        var (code, o, e) = Run("shapes", "eval-vae", weights, "--eval-images", "2", "--threads", "1");
        Assert.True(code == 0, e);
        Assert.Contains("128×128 schedule from", o);
        Assert.Contains("2 held-out renders (Float32)", o);
    }
}
