namespace VarGpt.ShapesWorld;

/// <summary>One object found in an image.</summary>
/// <param name="CenterX">Centre of the fitted box, fraction of the width.</param>
/// <param name="Extent">Longer side of the fitted box, fraction of the shorter image side (small ≈ 0.14, large ≈ 0.24).</param>
/// <param name="ShapeIoU">IoU of the mask with the best shape template (placed by moment matching).</param>
/// <param name="ColorShare">Share of the object's solid pixels voting for the chosen colour.</param>
public sealed record DetectedObject(Shape Shape, ShapeColor Color, ObjectSize Size, Position Position,
    int Area, float CenterX, float CenterY, float Extent, float ShapeIoU, float ColorShare)
{
    public ShapeObject ToShapeObject() => new(Shape, Color, Size, Position);
    public override string ToString() => $"{ShapesText.Describe(ToShapeObject().ToSpec())} (area {Area}, IoU {ShapeIoU:F2}, color share {ColorShare:F2})";
}

public sealed record SceneAnalysis(int Width, int Height, IReadOnlyList<DetectedObject> Objects)
{
    public override string ToString() => $"{Objects.Count} object(s): " + string.Join("; ", Objects);
}

/// <summary>Per-attribute result for one requested object; null = attribute not requested.</summary>
public sealed record ObjectScore(ObjectSpec Requested, DetectedObject? Matched, bool Shape, bool Color, bool? Size, bool? Position)
{
    public bool Correct => Shape && Color && Size != false && Position != false;
}

/// <summary>GenEval-style result: Correct iff the object count is right and every requested attribute of every object is.</summary>
public sealed record SceneScore(SceneSpec Requested, SceneAnalysis Analysis, bool Count, IReadOnlyList<ObjectScore> Objects)
{
    public bool Shape => Objects.All(o => o.Shape);
    public bool Color => Objects.All(o => o.Color);
    public bool Size => Objects.All(o => o.Size != false);
    public bool Position => Objects.All(o => o.Position != false);
    public bool Correct => Count && Objects.All(o => o.Correct);
}

/// <summary>Edit result: ChangeMade (the requested change is visible), RestKept (everything else is as in the source).</summary>
public sealed record EditScore(ShapesEdit Edit, SceneScore Target, bool ChangeMade, bool RestKept)
{
    public bool Correct => ChangeMade && RestKept;
}

/// <summary>
/// Deterministic classical scorer for ShapesWorld images (no model). Steps:
/// 1. background = per-channel median of the 2-px border ring;
/// 2. every pixel is "unmixed" against each palette colour p: the closest point of the segment background→p gives a
///    coverage α and a residual; the palette colour with the smallest residual labels the pixel, so anti-aliased edge
///    pixels (background/colour blends) keep the right colour;
/// 3. foreground = α ≥ 0.5 (the 50%-coverage contour); 8-connected components, specks below 0.2% of the image dropped;
///    a component whose solid pixels split into two colours (≥ 30% each) is split along colour labels;
/// 4. per component: colour = mode of the labels of its solid (α ≥ 0.75) pixels; shape: every template fills its box
///    exactly (see <see cref="ShapesRenderer.Contains"/>) and has known moments, so
///    each shape template is placed on the mask by matching centroid and variances (robust to blunted tips and blur,
///    unlike the extreme-point box) and the one with the highest IoU wins; size = the fitted box extent against the
///    midpoint of the two sizes; position = nearest anchor to the fitted box centre.
/// </summary>
public static class ShapesScorer
{
    const float ForegroundAlpha = 0.5f, SolidAlpha = 0.75f, MinAreaFraction = 0.002f, SplitShare = 0.3f;
    const int MaxObjects = 16;
    /// <summary>Box extent separating small (2·0.07) from large (2·0.12).</summary>
    public const float SizeThreshold = 0.19f;

    public static SceneAnalysis Analyze(ReadOnlySpan<byte> rgb, int width, int height)
    {
        if (width < 8 || height < 8) throw new ArgumentException($"image {width}x{height} is too small to score");
        if (rgb.Length != width * height * 3) throw new ArgumentException($"expected {width}x{height}x3 = {width * height * 3} RGB bytes, got {rgb.Length}", nameof(rgb));
        int n = width * height;
        var bg = BorderMedian(rgb, width, height);

        // Step 2: unmixing against each background→colour segment.
        var colors = ShapesPalette.Colors;
        var dirs = colors.Select(c => { var p = ShapesPalette.Rgb(c); return (R: p.R - bg.R, G: p.G - bg.G, B: p.B - bg.B); }).ToArray();
        var norms = dirs.Select(d => (float)(d.R * d.R + d.G * d.G + d.B * d.B)).ToArray();
        var alpha = new float[n];
        var label = new byte[n];
        for (int i = 0; i < n; i++)
        {
            float xr = rgb[3 * i] - bg.R, xg = rgb[3 * i + 1] - bg.G, xb = rgb[3 * i + 2] - bg.B;
            float best = float.MaxValue, bestT = 0; int bestK = 0;
            for (int k = 0; k < dirs.Length; k++)
            {
                var d = dirs[k];
                float t = norms[k] > 0 ? Math.Clamp((xr * d.R + xg * d.G + xb * d.B) / norms[k], 0f, 1f) : 0f;
                float er = xr - t * d.R, eg = xg - t * d.G, eb = xb - t * d.B, res = er * er + eg * eg + eb * eb;
                if (res < best) { best = res; bestT = t; bestK = k; }
            }
            alpha[i] = bestT; label[i] = (byte)bestK;
        }

        // Step 3: components.
        int minArea = Math.Max(4, (int)(MinAreaFraction * n));
        var comps = new List<int[]>();
        var fg = new bool[n];
        for (int i = 0; i < n; i++) fg[i] = alpha[i] >= ForegroundAlpha;
        foreach (var c in Components(width, height, fg, null))
        {
            if (c.Length < minArea) continue;
            comps.AddRange(SplitByColor(c, width, height, alpha, label, minArea));
        }
        comps.Sort((a, b) => b.Length.CompareTo(a.Length));
        if (comps.Count > MaxObjects) comps.RemoveRange(MaxObjects, comps.Count - MaxObjects);

        // Step 4: attributes; objects listed in reading order (top-to-bottom, left-to-right by box centre).
        var owner = new int[n];
        for (int k = 0; k < comps.Count; k++) foreach (int i in comps[k]) owner[i] = k + 1;
        var objs = comps.Select((c, k) => Describe(c, k + 1, owner, width, height, alpha, label)).ToList();
        objs.Sort((a, b) => a.CenterY != b.CenterY && Math.Abs(a.CenterY - b.CenterY) > 0.1f ? a.CenterY.CompareTo(b.CenterY) : a.CenterX.CompareTo(b.CenterX));
        return new SceneAnalysis(width, height, objs);
    }

    static (float R, float G, float B) BorderMedian(ReadOnlySpan<byte> rgb, int w, int h)
    {
        var rs = new List<byte>(); var gs = new List<byte>(); var bs = new List<byte>();
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                if (x >= 2 && x < w - 2 && y >= 2 && y < h - 2) continue;
                int i = 3 * (y * w + x);
                rs.Add(rgb[i]); gs.Add(rgb[i + 1]); bs.Add(rgb[i + 2]);
            }
        static float Med(List<byte> v) { v.Sort(); return v[v.Count / 2]; }
        return (Med(rs), Med(gs), Med(bs));
    }

    /// <summary>8-connected components of the pixels with inPix set; with sameLabel, neighbours join only when their
    /// colour labels agree. pixels: the candidate pixels to start from (default all).</summary>
    static List<int[]> Components(int w, int h, bool[] inPix, byte[]? sameLabel, IEnumerable<int>? pixels = null)
    {
        var seen = new bool[w * h];
        var result = new List<int[]>();
        var stack = new Stack<int>();
        foreach (int start in pixels ?? Enumerable.Range(0, w * h))
        {
            if (!inPix[start] || seen[start]) continue;
            var comp = new List<int>();
            seen[start] = true; stack.Push(start);
            while (stack.Count > 0)
            {
                int p = stack.Pop(); comp.Add(p);
                int px = p % w, py = p / w;
                for (int qy = Math.Max(0, py - 1); qy <= Math.Min(h - 1, py + 1); qy++)
                    for (int qx = Math.Max(0, px - 1); qx <= Math.Min(w - 1, px + 1); qx++)
                    {
                        int q = qy * w + qx;
                        if (!seen[q] && inPix[q] && (sameLabel == null || sameLabel[q] == sameLabel[p])) { seen[q] = true; stack.Push(q); }
                    }
            }
            comp.Sort();
            result.Add(comp.ToArray());
        }
        return result;
    }

    /// <summary>Splits a component whose solid pixels carry two strong colours (touching objects in generated images).</summary>
    static IEnumerable<int[]> SplitByColor(int[] comp, int w, int h, float[] alpha, byte[] label, int minArea)
    {
        var votes = Votes(comp, alpha, label);
        var top = votes.Select((v, k) => (v, k)).OrderByDescending(t => t.v).ThenBy(t => t.k).Take(2).ToArray();
        int total = votes.Sum();
        if (total == 0 || top[1].v < SplitShare * total || top[1].v < minArea) return [comp];
        var inPix = new bool[w * h];
        foreach (int i in comp) inPix[i] = label[i] == top[0].k || label[i] == top[1].k;
        var parts = Components(w, h, inPix, label, comp).Where(p => p.Length >= minArea).ToList();
        return parts.Count >= 2 ? parts : [comp];
    }

    static int[] Votes(int[] comp, float[] alpha, byte[] label)
    {
        var votes = new int[ShapesPalette.Colors.Length];
        foreach (int i in comp) if (alpha[i] >= SolidAlpha) votes[label[i]]++;
        if (votes.Sum() == 0) foreach (int i in comp) votes[label[i]]++;
        return votes;
    }

    /// <summary>Moments of each unit shape (uniform density over the shape inside [-1,1]²): centroid v and variances.</summary>
    static readonly Dictionary<Shape, (double Cv, double Vu, double Vv)> UnitMoments = ShapesPalette.Shapes.ToDictionary(s => s, s =>
    {
        const int n = 400;
        double sum = 0, su = 0, sv = 0, suu = 0, svv = 0;
        for (int y = 0; y < n; y++)
            for (int x = 0; x < n; x++)
            {
                double u = (x + 0.5) / n * 2 - 1, v = (y + 0.5) / n * 2 - 1;
                if (!ShapesRenderer.Contains(s, u, v)) continue;
                sum++; su += u; sv += v; suu += u * u; svv += v * v;
            }
        double cu = su / sum, cv = sv / sum;
        return (cv, suu / sum - cu * cu, svv / sum - cv * cv);
    });

    static DetectedObject Describe(int[] comp, int id, int[] owner, int w, int h, float[] alpha, byte[] label)
    {
        // Mask moments at pixel centres.
        double mx = 0, my = 0, mxx = 0, myy = 0;
        int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
        foreach (int i in comp)
        {
            int x = i % w, y = i / w;
            mx += x + 0.5; my += y + 0.5; mxx += (x + 0.5) * (x + 0.5); myy += (y + 0.5) * (y + 0.5);
            x0 = Math.Min(x0, x); x1 = Math.Max(x1, x); y0 = Math.Min(y0, y); y1 = Math.Max(y1, y);
        }
        int area = comp.Length;
        mx /= area; my /= area; mxx = mxx / area - mx * mx; myy = myy / area - my * my;

        var votes = Votes(comp, alpha, label);
        int ck = Array.IndexOf(votes, votes.Max());
        float share = votes[ck] / (float)Math.Max(1, votes.Sum());

        // Shape: place each template by moment matching (robust to blunted tips, unlike the extreme-point box), then
        // compare by IoU with the mask at pixel centres.
        Shape best = Shape.Circle; float bestIoU = -1;
        (double Cx, double Cy, double Rx, double Ry) bestBox = default;
        foreach (var s in ShapesPalette.Shapes)
        {
            var (cv, vu, vv) = UnitMoments[s];
            double rx = Math.Sqrt(Math.Max(mxx, 0.01) / vu), ry = Math.Sqrt(Math.Max(myy, 0.01) / vv);
            double cx = mx, cy = my - cv * ry;
            int bx0 = Math.Max(0, Math.Min(x0, (int)Math.Floor(cx - rx))), bx1 = Math.Min(w - 1, Math.Max(x1, (int)Math.Ceiling(cx + rx)));
            int by0 = Math.Max(0, Math.Min(y0, (int)Math.Floor(cy - ry))), by1 = Math.Min(h - 1, Math.Max(y1, (int)Math.Ceiling(cy + ry)));
            int inter = 0, union = 0;
            for (int y = by0; y <= by1; y++)
            {
                double v = (y + 0.5 - cy) / ry;
                for (int x = bx0; x <= bx1; x++)
                {
                    bool t = Math.Abs(v) <= 1 && ShapesRenderer.Contains(s, (x + 0.5 - cx) / rx, v), m = owner[y * w + x] == id;
                    if (t && m) inter++;
                    if (t || m) union++;
                }
            }
            float iou = union == 0 ? 0 : inter / (float)union;
            if (iou > bestIoU) { bestIoU = iou; best = s; bestBox = (cx, cy, rx, ry); }
        }

        // Size and position from the fitted box of the chosen shape.
        float fcx = (float)(bestBox.Cx / w), fcy = (float)(bestBox.Cy / h);
        float extent = (float)(2 * Math.Max(bestBox.Rx, bestBox.Ry) / Math.Min(w, h));
        var pos = ShapesPalette.Positions.MinBy(p => { var a = ShapesPalette.Anchor(p); return (a.X - fcx) * (a.X - fcx) + (a.Y - fcy) * (a.Y - fcy); });
        return new DetectedObject(best, ShapesPalette.Colors[ck], extent >= SizeThreshold ? ObjectSize.Large : ObjectSize.Small,
            pos, area, fcx, fcy, extent, bestIoU, share);
    }

    public static SceneScore Score(SceneSpec requested, ReadOnlySpan<byte> rgb, int width, int height) =>
        Score(requested, Analyze(rgb, width, height));

    /// <summary>Matches requested objects one-to-one to detected ones (the assignment with the most correct attributes,
    /// first in enumeration order on ties) and checks every requested attribute.</summary>
    public static SceneScore Score(SceneSpec requested, SceneAnalysis analysis)
    {
        var req = requested.Objects;
        var det = analysis.Objects;
        int[] bestAssign = Enumerable.Repeat(-1, req.Count).ToArray();
        int bestScore = -1;
        var assign = new int[req.Count];
        var used = new bool[det.Count];
        void Search(int r, int score)
        {
            if (r == req.Count) { if (score > bestScore) { bestScore = score; assign.CopyTo(bestAssign, 0); } return; }
            bool any = false;
            for (int d = 0; d < det.Count; d++)
            {
                if (used[d]) continue;
                any = true; used[d] = true; assign[r] = d;
                Search(r + 1, score + Matches(req[r], det[d]));
                used[d] = false;
            }
            if (!any) { assign[r] = -1; Search(r + 1, score); }
        }
        Search(0, 0);

        var objs = req.Select((o, r) =>
        {
            var m = bestAssign[r] >= 0 ? det[bestAssign[r]] : null;
            return new ObjectScore(o, m, m?.Shape == o.Shape, m?.Color == o.Color,
                o.Size is { } s ? m?.Size == s : null, o.Position is { } p ? m?.Position == p : null);
        }).ToArray();
        return new SceneScore(requested, analysis, det.Count == req.Count, objs);
    }

    static int Matches(ObjectSpec r, DetectedObject d) =>
        (r.Shape == d.Shape ? 1 : 0) + (r.Color == d.Color ? 1 : 0) +
        (r.Size is { } s && s == d.Size ? 1 : 0) + (r.Position is { } p && p == d.Position ? 1 : 0);

    public static EditScore ScoreEdit(ShapesEdit edit, ReadOnlySpan<byte> rgb, int width, int height) =>
        ScoreEdit(edit, Analyze(rgb, width, height));

    /// <summary>Scores an edit result against the expected target. ChangeMade: the changed attribute of the edited object
    /// (Add: the added object with its requested attributes and the new count; Remove: the new count and no object
    /// left where the removed one was). RestKept: every other attribute of every other object (and the count for
    /// attribute edits).</summary>
    public static EditScore ScoreEdit(ShapesEdit edit, SceneAnalysis analysis)
    {
        var score = Score(edit.Expected, analysis);
        var objs = score.Objects;
        bool change, rest;
        switch (edit.Kind)
        {
            case EditKind.Add:
                change = score.Count && objs[edit.TargetIndex].Correct;
                rest = objs.Where((_, i) => i != edit.TargetIndex).All(o => o.Correct);
                break;
            case EditKind.Remove:
                var removed = edit.Source.Objects[edit.SourceIndex];
                change = score.Count && !analysis.Objects.Any(d => d.Shape == removed.Shape && d.Color == removed.Color && d.Position == removed.Position);
                rest = objs.All(o => o.Correct);
                break;
            default:
                var e = objs[edit.TargetIndex];
                change = edit.Kind switch
                {
                    EditKind.ChangeColor => e.Color,
                    EditKind.ChangeShape => e.Shape,
                    EditKind.Move => e.Position == true,
                    EditKind.Resize => e.Size == true,
                    _ => throw new ArgumentOutOfRangeException(nameof(edit), edit.Kind, "unknown edit kind"),
                };
                bool editedRest = (edit.Kind == EditKind.ChangeColor || e.Color) && (edit.Kind == EditKind.ChangeShape || e.Shape)
                    && (edit.Kind == EditKind.Move || e.Position != false) && (edit.Kind == EditKind.Resize || e.Size != false);
                rest = score.Count && editedRest && objs.Where((_, i) => i != edit.TargetIndex).All(o => o.Correct);
                break;
        }
        return new EditScore(edit, score, change, rest);
    }

    /// <summary>Exact-match check of a short answer (case, surrounding spaces and a trailing period ignored).</summary>
    public static bool AnswerCorrect(string expected, string predicted)
    {
        static string Norm(string s) => s.Trim().TrimEnd('.', '!').Trim().ToLowerInvariant();
        return Norm(expected) == Norm(predicted);
    }
}
