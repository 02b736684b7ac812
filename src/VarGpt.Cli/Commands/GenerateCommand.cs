using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.Configuration;
using VarGpt.Inference;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt generate --model DIR "PROMPT" -o out.png: text-to-image with the official defaults, the seed printed.</summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var image = new ImageCommandOptions();
        var prompt = new Argument<string>("PROMPT") { Description = "What to draw; sent as one user chat turn, as the official generation script does." };
        var cmd = new Command("generate", "Text-to-image: the model writes its answer and draws the image (official sampler and defaults).") { prompt };
        model.AddTo(cmd);
        image.AddTo(cmd);
        cmd.WithDetails(ImageCommandOptions.Details);
        cmd.WithExamples(
            "vargpt generate --model ~/models/VARGPT-v1.1 \"Please design a drawing of a butterfly on a flower.\" -o butterfly.png",
            "vargpt generate -m DIR \"A rabbit sitting in the grass.\" --seed 42 --count 4 -o rabbit.png   # rabbit-1.png ... rabbit-4.png",
            "vargpt generate -m DIR \"A red fox\" --aspect 4:3 --pixels 0.06M --cfg 4");
        cmd.SetAction(parse =>
        {
            var o = parse.InvocationConfiguration.Output;
            var log = parse.InvocationConfiguration.Error;
            var options = image.Read(parse);
            using var images = model.Load(parse, log);
            return ImageCommandOptions.RunAndSave(images, options, image.OutputPath(parse), o, log,
                (opts, progress) => images.GenerateImage(parse.GetRequiredValue(prompt), opts, progress));
        });
        return cmd;
    }
}

/// <summary>The sampling/output options shared by generate and edit, and their run-and-save loop.</summary>
public sealed class ImageCommandOptions
{
    static readonly ImageOptions D = new();

    public static readonly string Details =
        $"""
        The defaults are the official inference settings: cfg {F(D.Cfg)}, tau {F(D.Tau)}, top-k {D.TopK}, top-p {F(D.TopP)}, square, at the
        checkpoint's pixel budget (vargpt_gen_args.pn), greedy text decoding. Without --model: {ModelOptions.DefaultModelFacts()}.
        The model must start the image itself (<|image_gen_start|>); if it answers with text only, the command fails with its text — --force-image-start
        begins the answer with <|image_gen_start|> instead (not an official option). Without --seed a random seed is
        chosen and printed: rerun with --seed N to reproduce an image (same model, prompt, options, device, dtype).
        With --count N the images use seeds N, N+1, ... and are written as OUT-1.png ... OUT-N.png.
        Aspect ratios (W:H): 1:1 4:5 3:4 2:3 4:7 1:2 2:5 1:3 5:4 4:3 3:2 7:4 2:1 5:2 3:1.
        Pixel budgets: 0.06M (256x256 square), 0.25M (512x512), 0.60M, 1M, and the checkpoint's own (see the error for the full list).
        """;

    static string F(double x) => x.ToString("G6", CultureInfo.InvariantCulture);

    public Option<string> Output { get; } = new("--output", "-o") { Description = "PNG file to write (the official script writes output.png).", DefaultValueFactory = _ => "output.png" };
    public Option<long?> Seed { get; } = new("--seed") { Description = "Seed of the bit sampler (default: random, printed)." };
    public Option<double> Cfg { get; } = new("--cfg") { Description = "Classifier-free guidance scale (≥ 1; 1 = off).", DefaultValueFactory = _ => D.Cfg };
    public Option<double> Tau { get; } = new("--tau") { Description = "Temperature divisor of the bit logits (> 0).", DefaultValueFactory = _ => D.Tau };
    public Option<int> TopK { get; } = new("--top-k") { Description = "Top-k of the bit sampler (0 = off).", DefaultValueFactory = _ => D.TopK };
    public Option<double> TopP { get; } = new("--top-p") { Description = "Top-p of the bit sampler, in [0, 1] (0 = off).", DefaultValueFactory = _ => D.TopP };
    public Option<string> Aspect { get; } = new("--aspect") { Description = "Aspect ratio W:H (or h/w as a number); must be one of the templates.", DefaultValueFactory = _ => "1:1" };
    public Option<string?> Pixels { get; } = new("--pixels") { Description = $"Pixel budget, e.g. 0.06M, 0.25M, 1M (default: the checkpoint's vargpt_gen_args.pn; {ModelOptions.DefaultModelFacts()})." };
    public Option<int> Count { get; } = new("--count", "-n") { Description = "Images to draw (seeds N, N+1, ...).", DefaultValueFactory = _ => D.Count };
    public Option<bool> ForceImageStart { get; } = new("--force-image-start") { Description = "Begin the answer with <|image_gen_start|> (not an official option)." };
    public Option<int> MaxNewTokens { get; } = new("--max-new-tokens") { Description = "Text tokens allowed before the image must start.", DefaultValueFactory = _ => D.MaxNewTokens };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Output, Seed, Cfg, Tau, TopK, TopP, Aspect, Pixels, Count, ForceImageStart, MaxNewTokens }) cmd.Options.Add(o);
    }

    public string OutputPath(ParseResult parse) => Path.GetFullPath(parse.GetValue(Output)!);

    public ImageOptions Read(ParseResult parse)
    {
        var o = new ImageOptions
        {
            Seed = parse.GetValue(Seed) ?? Seeds.Random(),
            Cfg = parse.GetValue(Cfg), Tau = parse.GetValue(Tau), TopK = parse.GetValue(TopK), TopP = parse.GetValue(TopP),
            AspectRatio = ParseAspect(parse.GetValue(Aspect)!), Pn = parse.GetValue(Pixels),
            Count = parse.GetValue(Count), ForceImageStart = parse.GetValue(ForceImageStart), MaxNewTokens = parse.GetValue(MaxNewTokens),
        };
        return o;
    }

    /// <summary>"W:H" (e.g. 4:3 = landscape) or a number = h/w; returns h/w.</summary>
    public static double ParseAspect(string s)
    {
        var parts = s.Split(':');
        double hw;
        if (parts.Length == 2 && double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var w)
            && double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var h) && w > 0 && h > 0) hw = h / w;
        else if (parts.Length == 1 && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var r) && r > 0) hw = r;
        else throw new VargptInputException($"cannot read aspect ratio '{s}': use W:H such as 1:1, 4:3, 3:4 (or h/w as a number)");
        double t = ScaleSchedules.NearestTemplate(hw);
        if (Math.Abs(Math.Log(t / hw)) > 0.01)
            throw new VargptInputException($"unknown aspect ratio '{s}' (h/w = {hw.ToString("0.###", CultureInfo.InvariantCulture)}); valid W:H: " +
                string.Join(", ", ScaleSchedules.Templates.Select(WidthToHeight)));
        return t;
    }

    /// <summary>Template h/w → the smallest "W:H" that matches it within 1%.</summary>
    public static string WidthToHeight(double hw)
    {
        for (int w = 1; w <= 12; w++)
        {
            double h = hw * w;
            if (Math.Abs(h - Math.Round(h)) < 0.01 * h && Math.Round(h) >= 1) return $"{w}:{Math.Round(h)}";
        }
        return hw.ToString("0.###", CultureInfo.InvariantCulture);
    }

    /// <summary>Runs one generate/edit call with per-scale progress on <paramref name="log"/>, writes the PNG(s) and prints seeds.</summary>
    public static int RunAndSave(VargptModel images, ImageOptions options, string output, TextWriter o, TextWriter log,
        Func<ImageOptions, Action<ImageProgress>, ImageResult> run)
    {
        var dir = Path.GetDirectoryName(output)!;
        if (!Directory.Exists(dir)) throw new VargptInputException($"output folder does not exist: {dir}");
        o.WriteLine($"seed {options.Seed}");
        var sw = Stopwatch.StartNew();
        var result = run(options, p => log.WriteLine(
            $"  image {p.Image + 1}/{p.Images} scale {p.ScaleIndex + 1}/{p.Scales} ({p.Scale.H}x{p.Scale.W}) {p.Elapsed.TotalSeconds:F1} s"));
        if (result.Text.Length > 0) o.WriteLine($"model: {result.Text}");
        for (int i = 0; i < result.Images.Count; i++)
        {
            var p = result.Images[i];
            var path = result.Images.Count == 1 ? output : NumberedPath(output, i + 1);
            p.Image.SavePng(path);
            o.WriteLine($"wrote {path} ({p.Image.Width}x{p.Image.Height}, seed {p.Seed})");
        }
        log.WriteLine($"done in {sw.Elapsed.TotalSeconds:F1} s");
        return ExitCodes.Ok;
    }

    /// <summary>out.png → out-3.png.</summary>
    public static string NumberedPath(string path, int n)
    {
        var ext = Path.GetExtension(path);
        return Path.Combine(Path.GetDirectoryName(path)!, $"{Path.GetFileNameWithoutExtension(path)}-{n}{(ext.Length == 0 ? ".png" : ext)}");
    }
}
