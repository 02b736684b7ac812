using System.Globalization;
using System.Text.Json;
using SkiaSharp;

namespace VarGpt.Training;

/// <summary>
/// Training output: progress lines (a live status line when stdout is a terminal, plain lines otherwise),
/// output_dir/trainer_log.jsonl (LLaMA-Factory LogCallback field names plus grad_norm and tokens_per_second) and
/// output_dir/training_loss.png (raw + smoothed loss, like LLaMA-Factory's plot_loss).
/// </summary>
public sealed class TrainerLog
{
    public const string JsonlFile = "trainer_log.jsonl";
    public const string PlotFile = "training_loss.png";

    readonly string _outputDir;
    readonly TextWriter _out;
    readonly bool _tty;

    public TrainerLog(string outputDir, TextWriter? output = null, bool? isTerminal = null)
    {
        _outputDir = outputDir;
        _out = output ?? Console.Out;
        _tty = isTerminal ?? (output == null && !Console.IsOutputRedirected);
    }

    public void Line(string text)
    {
        if (_tty) _out.Write("\r\x1b[2K");
        _out.WriteLine(text);
        _out.Flush();
    }

    /// <summary>Overwritten status line between logging steps (terminal only).</summary>
    public void Status(string text)
    {
        if (!_tty) return;
        _out.Write("\r\x1b[2K" + text);
        _out.Flush();
    }

    public static string Duration(double seconds)
    {
        if (!double.IsFinite(seconds) || seconds < 0) return "--:--:--";
        var t = TimeSpan.FromSeconds(Math.Round(seconds));
        return t.TotalHours >= 100 ? $"{(int)t.TotalHours}h" : $"{(int)t.TotalHours:00}:{t.Minutes:00}:{t.Seconds:00}";
    }

    public static string Progress(int step, int total, double epoch, double loss, double lr, double gradNorm, double tokensPerSecond, double elapsed)
    {
        double eta = step > 0 ? elapsed / step * (total - step) : double.NaN;
        return string.Create(CultureInfo.InvariantCulture,
            $"step {step}/{total} | epoch {epoch:F2} | loss {loss:F4} | lr {lr:E2} | grad_norm {gradNorm:F3} | {tokensPerSecond:F0} tok/s | elapsed {Duration(elapsed)} | ETA {Duration(eta)}");
    }

    /// <summary>Appends one JSON line for a logging step.</summary>
    public void AppendJsonl(int step, int total, double epoch, double loss, double lr, double gradNorm, double tokensPerSecond, double elapsed)
    {
        double eta = step > 0 ? elapsed / step * (total - step) : 0;
        var obj = new Dictionary<string, object>
        {
            ["current_steps"] = step, ["total_steps"] = total, ["loss"] = Math.Round(loss, 6), ["lr"] = lr,
            ["epoch"] = Math.Round(epoch, 4), ["percentage"] = Math.Round(100.0 * step / total, 2),
            ["elapsed_time"] = Duration(elapsed), ["remaining_time"] = Duration(eta),
            ["grad_norm"] = Math.Round(gradNorm, 6), ["tokens_per_second"] = Math.Round(tokensPerSecond, 1),
        };
        Directory.CreateDirectory(_outputDir);
        File.AppendAllText(Path.Combine(_outputDir, JsonlFile), JsonSerializer.Serialize(obj) + "\n");
    }

    /// <summary>On resume, drops JSONL lines logged after the checkpoint step (they belong to the abandoned run).</summary>
    public void TruncateJsonlAfter(int step)
    {
        var path = Path.Combine(_outputDir, JsonlFile);
        if (!File.Exists(path)) return;
        var keep = File.ReadAllLines(path).Where(l =>
        {
            if (string.IsNullOrWhiteSpace(l)) return false;
            try { using var d = JsonDocument.Parse(l); return d.RootElement.GetProperty("current_steps").GetInt32() <= step; }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException) { return false; }
        }).ToList();
        File.WriteAllLines(path, keep);
    }

    /// <summary>LLaMA-Factory's smoothing (extras/ploting.smooth): EMA with weight 1.8*(sigmoid(0.05 n) - 0.5).</summary>
    public static double[] Smooth(IReadOnlyList<double> y)
    {
        if (y.Count == 0) return [];
        double w = 1.8 * (1 / (1 + Math.Exp(-0.05 * y.Count)) - 0.5);
        var r = new double[y.Count];
        double last = y[0];
        for (int i = 0; i < y.Count; i++) r[i] = last = last * w + (1 - w) * y[i];
        return r;
    }

    /// <summary>Writes the loss curve PNG (per-step loss, light; smoothed, dark).</summary>
    public static void PlotLoss(string path, IReadOnlyList<(int Step, double Loss)> points)
    {
        const int W = 800, H = 500, L = 70, R = 20, T = 40, B = 50;
        using var surface = SKSurface.Create(new SKImageInfo(W, H));
        var c = surface.Canvas;
        c.Clear(SKColors.White);
        using var axis = new SKPaint { Color = SKColors.Black, StrokeWidth = 1, IsAntialias = true, Style = SKPaintStyle.Stroke };
        using var font = new SKFont(SKTypeface.Default, 13);
        using var text = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        c.DrawText("training loss", W / 2f - 40, 24, font, text);
        c.DrawLine(L, H - B, W - R, H - B, axis);
        c.DrawLine(L, T, L, H - B, axis);
        var pts = points.Where(p => double.IsFinite(p.Loss)).ToList();
        if (pts.Count > 0)
        {
            double x0 = pts[0].Step, x1 = Math.Max(pts[^1].Step, x0 + 1);
            double y0 = pts.Min(p => p.Loss), y1 = pts.Max(p => p.Loss);
            if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
            float X(double s) => (float)(L + (s - x0) / (x1 - x0) * (W - L - R));
            float Y(double v) => (float)(H - B - (v - y0) / (y1 - y0) * (H - T - B));
            for (int i = 0; i <= 4; i++)
            {
                double v = y0 + (y1 - y0) * i / 4;
                c.DrawText(v.ToString("G4", CultureInfo.InvariantCulture), 5, Y(v) + 4, font, text);
                c.DrawText(Math.Round(x0 + (x1 - x0) * i / 4).ToString(CultureInfo.InvariantCulture), X(x0 + (x1 - x0) * i / 4) - 10, H - B + 20, font, text);
            }
            c.DrawText("step", W / 2f, H - 10, font, text);
            void Curve(IReadOnlyList<double> ys, SKColor color, float width)
            {
                using var paint = new SKPaint { Color = color, StrokeWidth = width, IsAntialias = true, Style = SKPaintStyle.Stroke };
                using var path = new SKPath();
                path.MoveTo(X(pts[0].Step), Y(ys[0]));
                for (int i = 1; i < pts.Count; i++) path.LineTo(X(pts[i].Step), Y(ys[i]));
                if (pts.Count == 1) c.DrawCircle(X(pts[0].Step), Y(ys[0]), 2, paint);
                c.DrawPath(path, paint);
            }
            var raw = pts.Select(p => p.Loss).ToList();
            Curve(raw, new SKColor(31, 119, 180, 90), 1);
            Curve(Smooth(raw), new SKColor(31, 119, 180), 2);
        }
        using var img = surface.Snapshot();
        using var data = img.Encode(SKEncodedImageFormat.Png, 100);
        var tmp = path + ".tmp";
        using (var fs = File.Create(tmp)) data.SaveTo(fs);
        File.Move(tmp, path, overwrite: true);
    }
}
