using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using VarGpt.Training;

namespace VarGpt.ShapesWorld;

/// <summary>One training stage's loss curve read from MODEL/training/&lt;stage&gt;.jsonl (TrainerLog's trainer_log.jsonl lines).</summary>
public sealed record TrainingCurve(string Stage, IReadOnlyList<(int Step, double Loss)> Points);

/// <summary>
/// The picture report of `vargpt shapes eval --report`: one self-contained HTML file (PNGs as base64 data URIs, curves as
/// inline SVG) with the accuracy table, text-to-image and editing grids (✓/✗ and what the scorer read), understanding
/// examples, the training curves of MODEL/training/*.jsonl and the figures of MODEL/training/vae_eval.json.
/// </summary>
public static class ShapesReport
{
    public const string TrainingFolder = "training";
    /// <summary>Stages in recipe order (docs/shapesworld.md); other *.jsonl files follow alphabetically.</summary>
    public static readonly string[] Stages = ["vae", "align", "sft", "dpo"];

    public static void Write(string path, ShapesEvaluationResult result)
    {
        AtomicFile.WriteAllText(Path.GetFullPath(path), Html(result));
    }

    /// <summary>The loss curves of MODEL/training/*.jsonl (lines with current_steps and a finite loss; others are skipped).</summary>
    public static IReadOnlyList<TrainingCurve> ReadTrainingCurves(string modelDir)
    {
        var dir = Path.Combine(modelDir, TrainingFolder);
        if (!Directory.Exists(dir)) return [];
        var files = Directory.EnumerateFiles(dir, "*.jsonl").Select(f => (Stage: Path.GetFileNameWithoutExtension(f), Path: f))
            .OrderBy(f => Array.IndexOf(Stages, f.Stage) is int i && i >= 0 ? i : Stages.Length).ThenBy(f => f.Stage, StringComparer.Ordinal).ToList();
        var curves = new List<TrainingCurve>();
        foreach (var (stage, file) in files)
        {
            var points = new List<(int, double)>();
            foreach (var line in File.ReadLines(file))
            {
                if (string.IsNullOrWhiteSpace(line)) continue;
                try
                {
                    using var d = JsonDocument.Parse(line);
                    var r = d.RootElement;
                    if (r.ValueKind == JsonValueKind.Object && r.TryGetProperty("current_steps", out var st) && st.TryGetInt32(out int step)
                        && r.TryGetProperty("loss", out var l) && l.ValueKind == JsonValueKind.Number && double.IsFinite(l.GetDouble()))
                        points.Add((step, l.GetDouble()));
                }
                catch (JsonException) { }   // a torn last line of a killed run
            }
            curves.Add(new TrainingCurve(stage, points));
        }
        return curves;
    }

    public static string Html(ShapesEvaluationResult r)
    {
        var sb = new StringBuilder();
        var ci = CultureInfo.InvariantCulture;
        sb.Append("""
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>ShapesWorld evaluation</title>
            <style>
            body{font-family:system-ui,sans-serif;margin:24px;color:#222}
            table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
            .grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:290px;font-size:13px}
            .card.ok{border-color:#2a2;background:#f3fbf3}.card.bad{border-color:#c33;background:#fdf3f3}
            img.px{width:128px;height:128px;image-rendering:pixelated;border:1px solid #ddd}
            .mark{font-weight:bold;font-size:16px}.ok .mark{color:#2a2}.bad .mark{color:#c33}.muted{color:#777}
            svg{border:1px solid #ddd;margin:4px}
            </style></head><body>
            """);
        sb.Append("<h1>ShapesWorld evaluation</h1>");
        sb.Append(ci, $"<p>model <code>{E(r.ModelDir)}</code>{(r.AdapterDir is null ? " (no adapter)" : $" + adapter <code>{E(r.AdapterDir)}</code>")}; " +
            $"world seed {r.World.Seed}, image size {r.World.ImageSize}; image seeds {r.Options.ImageSeed} + sample index; " +
            $"total {r.TotalSeconds:F1} s</p>");

        sb.Append("<h2>Accuracy (held-out samples)</h2><table><tr><th>task</th><th>correct / total</th><th>accuracy</th><th>seconds</th></tr>");
        void Row(string name, ShapesTaskResult? t)
        {
            if (t is null) return;
            sb.Append(ci, $"<tr><td>{E(name)}</td><td>{t.Count.Correct} / {t.Count.Total}</td><td>{Pct(t.Accuracy)}</td><td>{t.Seconds:F1}</td></tr>");
        }
        Row("understanding", r.Understanding);
        Row("description", r.Description);
        Row("text-to-image", r.Generation);
        Row("text-to-image before DPO (adapter not merged)", r.GenerationBeforeDpo);
        Row("editing", r.Editing);
        sb.Append("</table>");
        sb.Append(r.DpoGain is double g
            ? string.Create(ci, $"<p>DPO gain on text-to-image: <b>{(double.IsFinite(g) ? (g >= 0 ? "+" : "") + (100 * g).ToString("F1", ci) + " points" : "-")}</b> (same prompts and seeds)</p>")
            : "<p class=\"muted\">DPO gain: no adapter merged.</p>");
        foreach (var (name, t) in new[] { ("understanding by question", r.Understanding), ("description by objects", r.Description), ("text-to-image", r.Generation), ("editing", r.Editing) })
        {
            if (t.Breakdown.Count == 0) continue;
            sb.Append(ci, $"<p><b>{E(name)}</b>: ").Append(string.Join(", ", t.Breakdown.Select(kv => $"{E(kv.Key)} {E(kv.Value.ToString())}"))).Append("</p>");
        }

        var t2i = r.Examples.Where(e => e.Kind == ShapesTaskKind.TextToImage).ToList();
        if (t2i.Count > 0)
        {
            sb.Append("<h2>Text-to-image: prompt → image</h2><div class=\"grid\">");
            foreach (var e in t2i)
            {
                Card(sb, e);
                sb.Append(ci, $"<div>{E(e.Prompt)}</div><div class=\"muted\">seed {e.Seed}</div>");
                sb.Append(Img(e.ImagePng, "generated"));
                if (e.BeforeDpoPng is not null || e.BeforeDpoCorrect is not null)
                    sb.Append(ci, $" {Img(e.BeforeDpoPng, "before DPO")}<div class=\"muted\">before DPO: {(e.BeforeDpoCorrect == true ? "✓" : "✗")} {E(e.BeforeDpoReading ?? "")}</div>");
                sb.Append(ci, $"<div>requested: {E(e.Expected)}</div><div>scorer read: {E(e.Reading ?? "")}</div>");
                if (e.Answer.Length > 0) sb.Append(ci, $"<div class=\"muted\">text: {E(e.Answer)}</div>");
                sb.Append("</div>");
            }
            sb.Append("</div>");
        }

        var edits = r.Examples.Where(e => e.Kind == ShapesTaskKind.Edit).ToList();
        if (edits.Count > 0)
        {
            sb.Append("<h2>Editing: source → result</h2><div class=\"grid\">");
            foreach (var e in edits)
            {
                Card(sb, e);
                sb.Append(ci, $"<div>{E(e.Prompt)}</div>{Img(e.SourcePng, "source")} → {Img(e.ImagePng, "result")}");
                sb.Append(ci, $"<div>expected: {E(e.Expected)}</div><div>scorer read: {E(e.Reading ?? "")}</div></div>");
            }
            sb.Append("</div>");
        }

        foreach (var (kind, title) in new[] { (ShapesTaskKind.Understanding, "Understanding"), (ShapesTaskKind.Description, "Description") })
        {
            var xs = r.Examples.Where(e => e.Kind == kind).ToList();
            if (xs.Count == 0) continue;
            sb.Append(ci, $"<h2>{title}: question / expected / answer</h2><table><tr><th>image</th><th>question</th><th>expected</th><th>answer</th><th></th></tr>");
            foreach (var e in xs)
                sb.Append(ci, $"<tr class=\"{(e.Correct ? "ok" : "bad")}\"><td>{Img(e.SourcePng, "shown")}</td><td>{E(e.Prompt.Replace("<image>", ""))}</td><td>{E(e.Expected)}</td>" +
                    $"<td>{E(e.Answer)}</td><td class=\"mark\">{(e.Correct ? "✓" : "✗")}</td></tr>");
            sb.Append("</table>");
        }

        var curves = ReadTrainingCurves(r.ModelDir);
        sb.Append("<h2>Training</h2>");
        if (curves.Count == 0) sb.Append(ci, $"<p class=\"muted\">no {TrainingFolder}/*.jsonl in the model folder</p>");
        else
        {
            sb.Append("<div>");
            foreach (var c in curves) sb.Append(Svg(c));
            sb.Append("</div>");
        }
        var vaePath = Path.Combine(r.ModelDir, TrainingFolder, VaeTraining.EvalFile);
        if (File.Exists(vaePath))
        {
            sb.Append(ci, $"<h3>VAE evaluation ({TrainingFolder}/{VaeTraining.EvalFile})</h3>");
            try
            {
                var rows = new List<(string, string)>();
                Flatten(JsonNode.Parse(File.ReadAllText(vaePath)), "", rows);
                sb.Append("<table>");
                foreach (var (k, v) in rows) sb.Append(ci, $"<tr><td>{E(k)}</td><td>{E(v)}</td></tr>");
                sb.Append("</table>");
            }
            catch (JsonException e) { sb.Append(ci, $"<p class=\"muted\">not valid JSON: {E(e.Message)}</p>"); }
        }
        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    static void Card(StringBuilder sb, ShapesExample e) =>
        sb.Append(CultureInfo.InvariantCulture, $"<div class=\"card {(e.Correct ? "ok" : "bad")}\"><span class=\"mark\">{(e.Correct ? "✓" : "✗")}</span> <span class=\"muted\">#{e.Index}</span>");

    static string Img(byte[]? png, string alt) => png is null
        ? $"<span class=\"muted\">(no {E(alt)} image)</span>"
        : $"<img class=\"px\" alt=\"{E(alt)}\" title=\"{E(alt)}\" src=\"data:image/png;base64,{Convert.ToBase64String(png)}\">";

    static string E(string s) => WebUtility.HtmlEncode(s);

    static string Pct(double a) => double.IsFinite(a) ? (100 * a).ToString("F1", CultureInfo.InvariantCulture) + "%" : "-";

    /// <summary>Leaves of a JSON document as "a.b[0]" → value rows (vae_eval.json is nested: fp32/bf16 figures, config).</summary>
    static void Flatten(JsonNode? node, string prefix, List<(string, string)> rows)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o) Flatten(v, prefix.Length == 0 ? k : prefix + "." + k, rows);
                break;
            case JsonArray a when a.All(x => x is JsonValue):
                rows.Add((prefix, "[" + string.Join(", ", a.Select(x => x!.ToJsonString())) + "]"));
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++) Flatten(a[i], $"{prefix}[{i}]", rows);
                break;
            case null: rows.Add((prefix, "null")); break;
            default: rows.Add((prefix, node.ToJsonString().Trim('"'))); break;
        }
    }

    /// <summary>Loss vs step as an inline SVG: raw (light) and TrainerLog's smoothing (dark), min/max labels.</summary>
    static string Svg(TrainingCurve c)
    {
        const int W = 420, H = 240, L = 56, R = 12, T = 24, B = 34;
        var ci = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append(ci, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"11\" font-family=\"sans-serif\">");
        sb.Append(ci, $"<text x=\"{W / 2}\" y=\"15\" text-anchor=\"middle\" font-weight=\"bold\">{E(c.Stage)} loss ({c.Points.Count} points)</text>");
        sb.Append(ci, $"<line x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\" stroke=\"#000\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{H - B}\" stroke=\"#000\"/>");
        if (c.Points.Count > 0)
        {
            double x0 = c.Points.Min(p => p.Step), x1 = Math.Max(c.Points.Max(p => p.Step), x0 + 1);
            double y0 = c.Points.Min(p => p.Loss), y1 = c.Points.Max(p => p.Loss);
            if (y1 - y0 < 1e-12) { y0 -= 0.5; y1 += 0.5; }
            double X(double s) => L + (s - x0) / (x1 - x0) * (W - L - R);
            double Y(double v) => H - B - (v - y0) / (y1 - y0) * (H - T - B);
            string Poly(IReadOnlyList<double> ys, string color, double width) =>
                $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width.ToString(ci)}\" points=\"" +
                string.Join(" ", c.Points.Select((p, i) => X(p.Step).ToString("F1", ci) + "," + Y(ys[i]).ToString("F1", ci))) + "\"/>";
            var raw = c.Points.Select(p => p.Loss).ToList();
            sb.Append(Poly(raw, "#9ecae1", 1)).Append(Poly(TrainerLog.Smooth(raw), "#1f77b4", 2));
            sb.Append(ci, $"<text x=\"{L - 4}\" y=\"{T + 4}\" text-anchor=\"end\">{y1:G4}</text><text x=\"{L - 4}\" y=\"{H - B}\" text-anchor=\"end\">{y0:G4}</text>");
            sb.Append(ci, $"<text x=\"{L}\" y=\"{H - B + 14}\">{x0:G6}</text><text x=\"{W - R}\" y=\"{H - B + 14}\" text-anchor=\"end\">{x1:G6}</text>");
            sb.Append(ci, $"<text x=\"{(L + W - R) / 2}\" y=\"{H - 6}\" text-anchor=\"middle\">step</text>");
        }
        else sb.Append(ci, $"<text x=\"{W / 2}\" y=\"{H / 2}\" text-anchor=\"middle\" fill=\"#777\">no loss lines</text>");
        sb.Append("</svg>");
        return sb.ToString();
    }
}
