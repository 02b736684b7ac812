using VarGpt.Cli;
using VarGpt.Vision;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Cli;

/// <summary>vargpt generate / edit end to end on the tiny random checkpoint, and their user errors (exit 2, clear message).</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ImageCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args)
    {
        TorchTestSetup.Init();
        return VarGpt.Tests.Cli.CliHarness.Run(args);
    }

    [Fact]
    public void Generate_writes_numbered_pngs_prints_seeds_and_reproduces()
    {
        var model = TinyImageModel.Folder();
        using var d = TestPaths.Temp();
        var (code, o, e) = Run("generate", "--model", model, "A red circle.", "--force-image-start", "--seed", "41", "--count", "2", "-o", d["out.png"]);
        Assert.True(code == 0, e);
        Assert.Contains("seed 41", o);
        Assert.Contains("scale 7/7 (16x16)", e);
        Assert.Contains("image 2/2", e);
        Assert.Contains($"wrote {d["out-2.png"]} (256x256, seed 42)", o);
        Assert.False(File.Exists(d["out.png"]));
        (code, o, e) = Run("generate", "--model", model, "A red circle.", "--force-image-start", "--seed", "42", "-o", d["again.png"]);
        Assert.True(code == 0, e);
        Assert.Equal(File.ReadAllBytes(d["out-2.png"]), File.ReadAllBytes(d["again.png"]));
        // without --seed a random seed is printed, and it reproduces the image
        (code, o, e) = Run("generate", "--model", model, "A red circle.", "--force-image-start", "-o", d["random.png"]);
        Assert.True(code == 0, e);
        var seed = System.Text.RegularExpressions.Regex.Match(o, @"^seed (\d+)", System.Text.RegularExpressions.RegexOptions.Multiline).Groups[1].Value;
        (code, _, e) = Run("generate", "--model", model, "A red circle.", "--force-image-start", "--seed", seed, "-o", d["random2.png"]);
        Assert.True(code == 0, e);
        Assert.Equal(File.ReadAllBytes(d["random.png"]), File.ReadAllBytes(d["random2.png"]));
    }

    [Fact]
    public void Edit_writes_a_png()
    {
        var model = TinyImageModel.Folder();
        using var d = TestPaths.Temp();
        var src = new RgbImage(40, 30);
        for (int i = 0; i < src.Data.Length; i++) src.Data[i] = (byte)(i * 7);
        src.SavePng(d["in.png"]);
        var (code, o, e) = Run("edit", "--model", model, "--image", d["in.png"], "Transform this image <image> to match the style of a poster",
            "--force-image-start", "--seed", "3", "-o", d["edited.png"]);
        Assert.True(code == 0, e);
        Assert.Contains("seed 3", o);
        var img = RgbImage.Load(d["edited.png"]);
        Assert.Equal((256, 256), (img.Width, img.Height));
    }

    [Fact]
    public void Bad_input_is_a_user_error_with_a_clear_message()
    {
        var model = TinyImageModel.Folder();
        using var d = TestPaths.Temp();
        string[] Gen(params string[] extra) => ["generate", "--model", model, "A red circle.", "--force-image-start", "-o", d["x.png"], .. extra];

        var (code, _, e) = Run(Gen("--aspect", "5:7"));
        Assert.Equal(2, code);
        Assert.Contains("unknown aspect ratio '5:7'", e);
        Assert.Contains("4:3", e);
        (code, _, e) = Run(Gen("--aspect", "wide"));
        Assert.Equal(2, code);
        Assert.Contains("W:H", e);
        (code, _, e) = Run(Gen("--pixels", "0.3M"));
        Assert.Equal(2, code);
        Assert.Contains("unknown pixel budget '0.3M'", e);
        Assert.Contains("0.25M", e);
        foreach (var (opt, val, word) in new[] { ("--cfg", "0.5", "cfg"), ("--tau", "0", "tau"), ("--top-p", "1.5", "top-p"), ("--count", "0", "count") })
        {
            (code, _, e) = Run(Gen(opt, val));
            Assert.True(code == 2, $"{opt} {val}: exit {code}: {e}");
            Assert.Contains(word, e);
            Assert.DoesNotContain("   at ", e);
        }
        // the prompt context longer than the checkpoint's cfg_uncond rows
        var small = TinyImageModel.Folder(textMaxLen: 48);
        (code, _, e) = Run("generate", "--model", small, string.Join(" ", Enumerable.Repeat("a large red circle", 30)), "--force-image-start", "-o", d["x.png"]);
        Assert.Equal(2, code);
        Assert.Contains("supports at most 48", e);
        // unreadable edit image
        File.WriteAllText(d["bad.png"], "not an image");
        (code, _, e) = Run("edit", "--model", model, "--image", d["bad.png"], "make it blue", "-o", d["x.png"]);
        Assert.Equal(2, code);
        Assert.Contains("cannot read the edit image", e);
        Assert.Contains("bad.png", e);
        (code, _, e) = Run("edit", "--model", model, "--image", d["missing.png"], "make it blue", "-o", d["x.png"]);
        Assert.Equal(2, code);
        Assert.Contains("missing.png", e);
        // a checkpoint without the generation half
        (code, _, e) = Run("generate", "--model", TinyImageModel.Folder(withGeneration: false), "A red circle.", "-o", d["x.png"]);
        Assert.Equal(2, code);
        Assert.Contains("vargpt_gen.*", e);
        Assert.Contains("vae_local.*", e);
        // a text-only answer without --force-image-start
        (code, _, e) = Run("generate", "--model", model, "A red circle.", "--max-new-tokens", "3", "-o", d["x.png"]);
        Assert.Equal(2, code);
        Assert.Contains("did not start an image", e);
    }

    [Fact]
    public void Bench_generate_times_a_model_folder_and_reports_the_flop_bound()
    {
        var model = TinyImageModel.Folder();
        var (code, o, e) = Run("bench", "generate", "--model", model, "--json", "--dtype", "float32");
        Assert.True(code == 0, e);
        var j = System.Text.Json.Nodes.JsonNode.Parse(o)!;
        Assert.Equal("generate", (string?)j["benchmark"]);
        Assert.Equal(521, (int)j["settings"]!["image_tokens"]!);
        Assert.True((double)j["metrics"]!["seconds_per_image"]!["value"]! > 0);
        Assert.True((double)j["metrics"]!["multiple_of_flop_bound"]!["value"]! > 0);
        Assert.NotNull(j["metrics"]!["scale_6_16x16"]);
        Assert.True((double)j["metrics"]!["peak_rss"]!["value"]! > 0);
        (code, _, e) = Run("bench", "generate", "--preset", "huge");
        Assert.Equal(2, code);
        Assert.Contains("tiny", e);
    }
}
