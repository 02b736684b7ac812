using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Tests.Cli;
using VarGpt.Inference;

using VarGpt;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.ShapesWorld;

/// <summary>
/// ShapesEvaluation, the report and `vargpt shapes eval` on a random-weight ShapesWorld folder. A random model is
/// wrong almost always: only ranges, structure, determinism and the adapter arithmetic are checked, never accuracies.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ShapesEvaluationTests(ITestOutputHelper output)
{
    /// <summary>A handful per task; forced image start so a random model produces images to score and show.</summary>
    static ShapesEvaluationOptions Small(int n = 3) => ShapesEvaluationOptions.PerTask(n) with
    {
        Image = new ShapesEvaluationOptions().Image with { ForceImageStart = true }, Examples = n, MaxAnswerTokens = 8, BatchSize = 2,
    };

    static void InRange01(JsonObject j, string field)
    {
        Assert.True(j[field] is JsonValue, $"{field} missing or null in {j.ToJsonString()}");
        Assert.InRange(j[field]!.GetValue<double>(), 0.0, 1.0);
    }

    [Fact]
    public void World_file_round_trips_and_requires_the_seed()
    {
        using var tmp = TestPaths.Temp();
        var w = new ShapesWorldOptions { Seed = 42, ImageSize = 96, HeldOutFraction = 0.15, PositionJitter = 0.01f };
        ShapesTraining.WriteWorld(tmp.Path, w);
        var text = File.ReadAllText(tmp[ShapesTraining.WorldFile]);
        Assert.Contains("\"seed\": 42", text);
        Assert.Contains("\"image_size\": 96", text);
        Assert.Equal(w, ShapesTraining.ReadWorld(tmp.Path));
        File.WriteAllText(tmp[ShapesTraining.WorldFile], """{"seed": 5, "image_size": 128, "train_samples": 20000}""");   // extra fields are ignored
        Assert.Equal(new ShapesWorldOptions { Seed = 5 }, ShapesTraining.ReadWorld(tmp.Path));
        File.WriteAllText(tmp[ShapesTraining.WorldFile], """{"image_size": 128}""");
        Assert.Contains("'seed'", Assert.Throws<InvalidFileException>(() => ShapesTraining.ReadWorld(tmp.Path)).Message);
        File.Delete(tmp[ShapesTraining.WorldFile]);
        Assert.Contains(ShapesTraining.WorldFile, Assert.Throws<InputNotFoundException>(() => ShapesEvaluation.Run(tmp.Path, cancellationToken: TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void Evaluation_json_has_every_field_in_range_and_the_report_embeds_the_images()
    {
        TorchTestSetup.Init();
        var log = new StringWriter();
        var r = ShapesEvaluation.Run(TinyShapesModel.Dir, Small(), log, TestContext.Current.CancellationToken);
        output.WriteLine(log.ToString());
        output.WriteLine(r.ToTable());
        var j = r.ToJson();
        foreach (var f in new[] { "understanding_acc", "description_acc", "generation_acc", "editing_acc" }) InRange01(j, f);
        Assert.Null(r.AdapterDir);
        Assert.Null(j["dpo_gain"]);
        Assert.Null(j["generation_acc_before_dpo"]);
        Assert.Equal(3, j["counts"]!["understanding"]!["total"]!.GetValue<int>());
        Assert.Equal(3, j["counts"]!["editing"]!["total"]!.GetValue<int>());
        Assert.Equal(0, r.Generation.Breakdown["no_image"].Correct);   // forced start: every prompt got an image
        foreach (var k in new[] { "shape", "color", "object_count" }) Assert.True(r.Generation.Breakdown[k].Total >= 3, k);
        Assert.Equal(3, r.Editing.Breakdown.Where(kv => kv.Key.StartsWith("kind_")).Sum(kv => kv.Value.Total));
        Assert.Equal(3, r.Understanding.Breakdown.Values.Sum(c => c.Total));
        Assert.Contains("understanding 3/3", log.ToString());
        Assert.Equal(TinyShapesModel.World, r.World);

        // the examples carry the images the report shows
        Assert.Equal(12, r.Examples.Count);
        Assert.All(r.Examples.Where(e => e.Kind is ShapesTaskKind.TextToImage or ShapesTaskKind.Edit), e => Assert.NotNull(e.ImagePng));
        Assert.All(r.Examples.Where(e => e.Kind is ShapesTaskKind.Edit or ShapesTaskKind.Understanding), e => Assert.NotNull(e.SourcePng));

        using var tmp = TestPaths.Temp();
        ShapesReport.Write(tmp["report.html"], r);
        var html = File.ReadAllText(tmp["report.html"]);
        // 3 text-to-image results + 3 edit sources + 3 edit results + 3 understanding + 3 description images
        Assert.Equal(15, html.Split("src=\"data:image/png;base64,").Length - 1);
        var first = r.Examples.First(e => e.Kind == ShapesTaskKind.TextToImage);
        Assert.Contains(Convert.ToBase64String(first.ImagePng!), html);
        Assert.Contains(System.Net.WebUtility.HtmlEncode(first.Prompt), html);
        Assert.Contains("<svg", html);
        Assert.Contains("vae loss (5 points)", html);
        Assert.Contains("sft loss (8 points)", html);
        Assert.Contains("fp32.psnr", html);
        Assert.DoesNotContain("src=\"http", html);   // self-contained
    }

    [Fact]
    public void Zero_adapter_gives_exactly_zero_dpo_gain_and_identical_images()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var dir = TinyShapesModel.Copy(tmp["model"]);
        TinyShapesModel.WriteAdapter(Path.Combine(dir, VargptModelOptions.DefaultAdapterFolder), bScale: 0).Dispose();
        var options = Small() with { Understanding = 0, Description = 0, Edit = 0, TextToImage = 3 };
        var r = ShapesEvaluation.Run(dir, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(Path.Combine(dir, "adapter"), r.AdapterDir);
        Assert.NotNull(r.GenerationBeforeDpo);
        Assert.Equal(0.0, r.DpoGain);
        Assert.Equal(r.Generation.Count, r.GenerationBeforeDpo!.Count);
        var j = r.ToJson();
        Assert.Equal(0.0, j["dpo_gain"]!.GetValue<double>());
        InRange01(j, "generation_acc_before_dpo");
        Assert.Null(j["understanding_acc"]);   // no samples: null, not 0
        // B = 0: the merged model is the base model, so every image is the same bit for bit
        var t2i = r.Examples.Where(e => e.Kind == ShapesTaskKind.TextToImage).ToList();
        Assert.Equal(3, t2i.Count);
        Assert.All(t2i, e => Assert.Equal(e.ImagePng, e.BeforeDpoPng));

        // a non-zero adapter changes the images on the same prompts and seeds (the adapter really is in the eval path)
        TinyShapesModel.WriteAdapter(Path.Combine(dir, VargptModelOptions.DefaultAdapterFolder), bScale: 1).Dispose();
        var r2 = ShapesEvaluation.Run(dir, options, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Contains(r2.Examples, e => e.Kind == ShapesTaskKind.TextToImage && !e.ImagePng!.SequenceEqual(e.BeforeDpoPng!));
        Assert.True(r2.DpoGain is double g && g >= -1 && g <= 1);
    }

    [Fact]
    public void Evaluation_is_deterministic()
    {
        TorchTestSetup.Init();
        var o = Small(2) with { Understanding = 2, Description = 0, Edit = 2 };
        var a = ShapesEvaluation.Run(TinyShapesModel.Dir, o, cancellationToken: TestContext.Current.CancellationToken);
        var b = ShapesEvaluation.Run(TinyShapesModel.Dir, o, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(a.Examples.Select(e => (e.Answer, e.Reading, Convert.ToBase64String(e.ImagePng ?? []))),
            b.Examples.Select(e => (e.Answer, e.Reading, Convert.ToBase64String(e.ImagePng ?? []))));
    }

    [Fact]
    public void Cli_json_is_one_object_and_report_is_written()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var (code, stdout, stderr) = CliHarness.Run("shapes", "eval", "--model", TinyShapesModel.Dir, "--count", "1", "--json",
            "--report", tmp["r.html"], "--force-image-start", "--threads", "1");
        output.WriteLine(stderr);
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);   // exactly one JSON value: Parse fails on trailing content
        var j = JsonNode.Parse(stdout)!.AsObject();
        foreach (var f in new[] { "understanding_acc", "generation_acc", "editing_acc" }) InRange01(j, f);
        Assert.True(j.ContainsKey("dpo_gain"));
        Assert.Null(j["dpo_gain"]);
        Assert.Contains("data:image/png;base64,", File.ReadAllText(tmp["r.html"]));

        var (code2, stdout2, _) = CliHarness.Run("shapes", "eval", "--model", TinyShapesModel.Dir, "--count", "1", "--threads", "1");
        Assert.Equal(0, code2);
        Assert.Contains("understanding", stdout2);
        Assert.Contains("DPO gain: - (no adapter merged)", stdout2);

        var (code3, _, err3) = CliHarness.Run("shapes", "eval", "--model", TinyShapesModel.Dir, "--fast", "--count", "3");
        Assert.Equal(2, code3);
        Assert.Contains("--fast and --count", err3);
        var (code4, _, err4) = CliHarness.Run("shapes", "eval", "--model", TinyShapesModel.Dir, "--adapter", tmp["x"], "--no-adapter", "--count", "1");
        Assert.Equal(2, code4);
        Assert.Contains("--adapter and --no-adapter", err4);
    }
}
