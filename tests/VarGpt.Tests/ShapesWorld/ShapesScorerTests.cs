using SkiaSharp;
using VarGpt.ShapesWorld;

namespace VarGpt.Tests.ShapesWorld;

public class ShapesScorerTests(ITestOutputHelper output)
{
    /// <summary>Per-attribute accuracy over n random scenes (objects matched to the truth as the scorer does).</summary>
    (double Count, double Shape, double Color, double Size, double Position, double Overall, List<string> Failures) Measure(
        int n, int imageSize, Func<byte[], int, byte[]>? degrade = null, int seed = 1, float jitter = 0)
    {
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = seed, PositionJitter = jitter });
        int count = 0, objects = 0, shape = 0, color = 0, size = 0, pos = 0, overall = 0;
        var failures = new List<string>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < n; i++)
        {
            var scene = gen.RandomScene(new ShapesRng((ulong)(seed * 1000003 + i)));
            var rgb = ShapesRenderer.RenderRgb(scene, imageSize);
            if (degrade != null) rgb = degrade(rgb, i);
            var score = ShapesScorer.Score(scene.ToSpec(), rgb, imageSize, imageSize);
            count += score.Count ? 1 : 0; overall += score.Correct ? 1 : 0;
            foreach (var o in score.Objects)
            {
                objects++;
                shape += o.Shape ? 1 : 0; color += o.Color ? 1 : 0; size += o.Size == true ? 1 : 0; pos += o.Position == true ? 1 : 0;
            }
            if (!score.Correct && failures.Count < 8) failures.Add($"#{i} want [{scene}] got [{score.Analysis}]");
        }
        failures.Insert(0, $"{sw.Elapsed.TotalMilliseconds / n:F2} ms per scene (render + degrade + score)");
        return (count / (double)n, shape / (double)objects, color / (double)objects, size / (double)objects, pos / (double)objects, overall / (double)n, failures);
    }

    void Report(string name, (double Count, double Shape, double Color, double Size, double Position, double Overall, List<string> Failures) r)
    {
        output.WriteLine($"{name}: count {r.Count:P2} shape {r.Shape:P2} color {r.Color:P2} size {r.Size:P2} position {r.Position:P2} overall {r.Overall:P2}");
        foreach (var f in r.Failures) output.WriteLine("  " + f);
    }

    [Theory]
    [InlineData(128, 0f)]
    [InlineData(128, 0.02f)]
    [InlineData(64, 0f)]
    public void RenderedScenesScoreAtLeast99Percent(int imageSize, float jitter)
    {
        var r = Measure(500, imageSize, jitter: jitter);
        Report($"clean {imageSize}px jitter {jitter}", r);
        Assert.True(r.Count >= 0.99 && r.Shape >= 0.99 && r.Color >= 0.99 && r.Size >= 0.99 && r.Position >= 0.99,
            $"per-attribute accuracy below 99%: count {r.Count:P2} shape {r.Shape:P2} color {r.Color:P2} size {r.Size:P2} position {r.Position:P2}");
    }

    [Theory]
    [InlineData("noise", 0.97)]
    [InlineData("blur", 0.97)]
    [InlineData("jpeg", 0.97)]
    [InlineData("all", 0.90)]
    public void DegradedScenesScoreGracefully(string kind, double threshold)
    {
        const int size = 128;
        Func<byte[], int, byte[]> f = kind switch
        {
            "noise" => (rgb, i) => Degrade.GaussianNoise(rgb, 10, (ulong)i),
            "blur" => (rgb, _) => Degrade.Blur(rgb, size, 1.0f),
            "jpeg" => (rgb, _) => Degrade.Jpeg(rgb, size, 60),
            _ => (rgb, i) => Degrade.Jpeg(Degrade.GaussianNoise(Degrade.Blur(rgb, size, 1.0f), 10, (ulong)i), size, 60),
        };
        var r = Measure(300, size, f, seed: 2);
        Report($"{kind} {size}px", r);
        Assert.True(r.Count >= threshold && r.Shape >= threshold && r.Color >= threshold && r.Size >= threshold && r.Position >= threshold,
            $"{kind}: per-attribute accuracy below {threshold:P0}");
    }

    [Fact]
    public void WrongImagesAreRejected()
    {
        var a = new Scene([new ShapeObject(Shape.Circle, ShapeColor.Red, ObjectSize.Large, Position.Left)]);
        var variants = new (string, Scene)[]
        {
            ("shape", new Scene([a.Objects[0] with { Shape = Shape.Star }])),
            ("color", new Scene([a.Objects[0] with { Color = ShapeColor.Orange }])),
            ("size", new Scene([a.Objects[0] with { Size = ObjectSize.Small }])),
            ("position", new Scene([a.Objects[0] with { Position = Position.Top }])),
            ("count", new Scene([a.Objects[0], new ShapeObject(Shape.Square, ShapeColor.Blue, ObjectSize.Small, Position.Right)])),
            ("empty", new Scene([])),
        };
        Assert.True(ShapesScorer.Score(a.ToSpec(), ShapesRenderer.RenderRgb(a), 128, 128).Correct);
        foreach (var (what, v) in variants)
        {
            var s = ShapesScorer.Score(a.ToSpec(), ShapesRenderer.RenderRgb(v), 128, 128);
            Assert.False(s.Correct, $"{what}: image of [{v}] accepted for [{a}]");
            bool attr = what switch { "shape" => s.Shape, "color" => s.Color, "size" => s.Size, "position" => s.Position, _ => s.Count };
            Assert.False(attr, $"{what} reported correct for [{v}] vs [{a}]");
        }
        // Unrequested attributes are not checked.
        var loose = new SceneSpec([new ObjectSpec(Shape.Circle, ShapeColor.Red, null, null)]);
        Assert.True(ShapesScorer.Score(loose, ShapesRenderer.RenderRgb(variants[3].Item2), 128, 128).Correct);
    }

    [Fact]
    public void EditScoringSeparatesChangeFromRest()
    {
        var gen = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = 5 });
        int checkedEdits = 0;
        var kinds = new HashSet<EditKind>();
        foreach (var s in gen.Samples(ShapesSplit.Train, 60, ShapesTaskKind.Edit))
        {
            var e = s.Edit!;
            kinds.Add(e.Kind);
            var target = ShapesScorer.ScoreEdit(e, ShapesRenderer.RenderRgb(e.Target), 128, 128);
            Assert.True(target.Correct, $"{e.Kind} '{e.Instruction}': rendered target not accepted ({target.Target.Analysis})");
            // Returning the source unchanged: the change is missing but the rest is kept.
            var same = ShapesScorer.ScoreEdit(e, ShapesRenderer.RenderRgb(e.Source), 128, 128);
            Assert.False(same.ChangeMade, $"{e.Kind} '{e.Instruction}': unchanged source counted as change");
            if (e.Kind is not (EditKind.Add or EditKind.Remove)) Assert.True(same.RestKept, $"{e.Kind}: rest not kept for the unchanged source");
            // Target with the other object (if any) disturbed: change made, rest not kept.
            if (e.Kind != EditKind.Remove && e.Target.Objects.Count == 2)
            {
                int other = 1 - e.TargetIndex;
                var objs = e.Target.Objects.ToArray();
                var free = ShapesPalette.Colors.First(c => c != objs[other].Color && !(objs[e.TargetIndex].Shape == objs[other].Shape && objs[e.TargetIndex].Color == c));
                objs[other] = objs[other] with { Color = free };
                var broken = ShapesScorer.ScoreEdit(e, ShapesRenderer.RenderRgb(new Scene(objs)), 128, 128);
                Assert.True(broken.ChangeMade && !broken.RestKept, $"{e.Kind} '{e.Instruction}': disturbing the other object must break RestKept only");
            }
            checkedEdits++;
        }
        Assert.Equal(Enum.GetValues<EditKind>().Length, kinds.Count);
        Assert.Equal(60, checkedEdits);
    }

    [Fact]
    public void AnswersMatchExactly()
    {
        Assert.True(ShapesScorer.AnswerCorrect("red", " Red. "));
        Assert.False(ShapesScorer.AnswerCorrect("red", "orange"));
        Assert.False(ShapesScorer.AnswerCorrect("two", "two shapes"));
    }
}

/// <summary>Image degradations for robustness tests: additive Gaussian noise, Gaussian blur, JPEG round trip.</summary>
static class Degrade
{
    public static byte[] GaussianNoise(byte[] rgb, double sigma, ulong seed)
    {
        var rng = new ShapesRng(ShapesRng.Mix(seed + 77));
        var o = new byte[rgb.Length];
        for (int i = 0; i < rgb.Length; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            double z = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            o[i] = (byte)Math.Clamp(Math.Round(rgb[i] + sigma * z), 0, 255);
        }
        return o;
    }

    public static byte[] Blur(byte[] rgb, int size, float sigma)
    {
        using var src = ShapesRenderer.FromRgb(rgb, size, size);
        using var dst = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Opaque));
        using var canvas = new SKCanvas(dst);
        canvas.Clear(SKColors.White);
        using var filter = SKImageFilter.CreateBlur(sigma, sigma, SKShaderTileMode.Clamp);
        using var paint = new SKPaint { ImageFilter = filter };
        canvas.DrawBitmap(src, 0, 0, paint);
        canvas.Flush();
        return ShapesRenderer.ToRgb(dst);
    }

    public static byte[] Jpeg(byte[] rgb, int size, int quality)
    {
        using var src = ShapesRenderer.FromRgb(rgb, size, size);
        using var data = src.Encode(SKEncodedImageFormat.Jpeg, quality);
        using var back = SKBitmap.Decode(data);
        return ShapesRenderer.ToRgb(back);
    }
}
