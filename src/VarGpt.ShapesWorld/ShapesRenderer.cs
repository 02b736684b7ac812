using SkiaSharp;

namespace VarGpt.ShapesWorld;

/// <summary>
/// Renders scenes with SkiaSharp (anti-aliased fills on the white background). Every shape fills exactly the square box
/// [-1,1]² of its object (unit coordinates, y down), so a detected bounding box determines the template the scorer fits.
/// </summary>
public static class ShapesRenderer
{
    static readonly Dictionary<Shape, (float U, float V)[]> Polygons = new()
    {
        [Shape.Square] = [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        [Shape.Triangle] = [(0, -1), (1, 1), (-1, 1)],
        [Shape.Diamond] = [(0, -1), (1, 0), (0, 1), (-1, 0)],
        [Shape.Star] = StarPolygon(points: 5, innerRatio: 0.5),
    };

    /// <summary>Polygon of a shape in unit box coordinates; null for the circle.</summary>
    public static IReadOnlyList<(float U, float V)>? Polygon(Shape s) => s == Shape.Circle ? null : Polygons[s];

    /// <summary>5-point star, point up, stretched so its vertices span exactly [-1,1]² (fatter than a pentagram so
    /// small stars keep visible arms at 128 px).</summary>
    static (float, float)[] StarPolygon(int points, double innerRatio)
    {
        var v = new (double X, double Y)[2 * points];
        for (int k = 0; k < v.Length; k++)
        {
            double a = -Math.PI / 2 + Math.PI * k / points, r = k % 2 == 0 ? 1 : innerRatio;
            v[k] = (r * Math.Cos(a), r * Math.Sin(a));
        }
        double x0 = v.Min(p => p.X), x1 = v.Max(p => p.X), y0 = v.Min(p => p.Y), y1 = v.Max(p => p.Y);
        return v.Select(p => ((float)(2 * (p.X - x0) / (x1 - x0) - 1), (float)(2 * (p.Y - y0) / (y1 - y0) - 1))).ToArray();
    }

    /// <summary>Whether unit-box point (u,v) lies inside the shape (even-odd rule).</summary>
    public static bool Contains(Shape s, double u, double v)
    {
        if (s == Shape.Circle) return u * u + v * v <= 1;
        if (s == Shape.Square) return Math.Abs(u) <= 1 && Math.Abs(v) <= 1;
        var poly = Polygons[s];
        bool inside = false;
        for (int i = 0, j = poly.Length - 1; i < poly.Length; j = i++)
        {
            var (ui, vi) = poly[i];
            var (uj, vj) = poly[j];
            if ((vi > v) != (vj > v) && u < (uj - ui) * (v - vi) / (vj - vi) + ui) inside = !inside;
        }
        return inside;
    }

    /// <summary>
    /// Per cell of a cells×cells grid over the image: the object covering most of the cell (at least minCover of it,
    /// pixel centres tested with <see cref="Contains"/>), as labels 1 + colour / 1 + shape / 1 + size, 0 = background.
    /// Row-major cells. Training targets of the probes that teach the VAE codes and the vision tower's tokens what is
    /// where (<see cref="VaeTrainingOptions.ProbeWeight"/>, <see cref="VisionPretraining"/>).
    /// </summary>
    public static CellLabel[] CellLabels(Scene scene, int imageSize, int cells, double minCover = 0.1)
    {
        int cell = imageSize / cells;
        var best = new double[cells * cells];
        var labels = new CellLabel[cells * cells];
        foreach (var o in scene.Objects)
        {
            var (cx, cy, h) = Box(o, imageSize);
            var cover = new double[cells * cells];
            int x0 = Math.Max(0, (int)(cx - h)), x1 = Math.Min(imageSize - 1, (int)(cx + h) + 1);
            int y0 = Math.Max(0, (int)(cy - h)), y1 = Math.Min(imageSize - 1, (int)(cy + h) + 1);
            for (int y = y0; y <= y1; y++)
                for (int x = x0; x <= x1; x++)
                    if (Contains(o.Shape, (x + 0.5 - cx) / h, (y + 0.5 - cy) / h) && y / cell < cells && x / cell < cells)
                        cover[y / cell * cells + x / cell] += 1.0 / (cell * cell);
            for (int k = 0; k < cover.Length; k++)
                if (cover[k] >= minCover && cover[k] > best[k])
                {
                    best[k] = cover[k];
                    labels[k] = new CellLabel((byte)(1 + (int)o.Color), (byte)(1 + (int)o.Shape), (byte)(1 + (int)o.Size), (byte)(1 + (int)o.Position));
                }
        }
        return labels;
    }

    /// <summary>Box of an object in pixels: centre and half side.</summary>
    public static (float Cx, float Cy, float Half) Box(ShapeObject o, int imageSize)
    {
        var (ax, ay) = ShapesPalette.Anchor(o.Position);
        return ((ax + o.Dx) * imageSize, (ay + o.Dy) * imageSize, ShapesPalette.HalfExtent(o.Size) * imageSize);
    }

    /// <summary>Renders a square RGBA image (opaque) of side imageSize.</summary>
    public static SKBitmap Render(Scene scene, int imageSize = 128)
    {
        if (imageSize < 16) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "ShapesWorld images need a side of at least 16 px");
        var bmp = new SKBitmap(new SKImageInfo(imageSize, imageSize, SKColorType.Rgba8888, SKAlphaType.Opaque));
        using var canvas = new SKCanvas(bmp);
        var bg = ShapesPalette.Background;
        canvas.Clear(new SKColor(bg.R, bg.G, bg.B));
        using var paint = new SKPaint { IsAntialias = true, Style = SKPaintStyle.Fill };
        foreach (var o in scene.Objects)
        {
            var (r, g, b) = ShapesPalette.Rgb(o.Color);
            paint.Color = new SKColor(r, g, b);
            var (cx, cy, h) = Box(o, imageSize);
            if (o.Shape == Shape.Circle) { canvas.DrawCircle(cx, cy, h, paint); continue; }
            using var path = new SKPath();
            var poly = Polygons[o.Shape];
            path.MoveTo(cx + poly[0].U * h, cy + poly[0].V * h);
            for (int i = 1; i < poly.Length; i++) path.LineTo(cx + poly[i].U * h, cy + poly[i].V * h);
            path.Close();
            canvas.DrawPath(path, paint);
        }
        canvas.Flush();
        return bmp;
    }

    /// <summary>Rendered scene as packed RGB bytes [H, W, 3].</summary>
    public static byte[] RenderRgb(Scene scene, int imageSize = 128)
    {
        using var bmp = Render(scene, imageSize);
        return ToRgb(bmp);
    }

    public static void SavePng(Scene scene, string path, int imageSize = 128)
    {
        using var bmp = Render(scene, imageSize);
        SavePng(bmp, path);
    }

    public static void SavePng(SKBitmap bmp, string path)
    {
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException($"SkiaSharp could not encode a {bmp.Width}x{bmp.Height} PNG for {path}");
        using var f = File.Create(path);
        data.SaveTo(f);
    }

    /// <summary>Packed RGB bytes [H, W, 3] of any bitmap (converted to RGBA8888 first when needed).</summary>
    public static byte[] ToRgb(SKBitmap bmp)
    {
        SKBitmap src = bmp;
        if (bmp.ColorType != SKColorType.Rgba8888)
        {
            src = new SKBitmap(new SKImageInfo(bmp.Width, bmp.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
            if (!bmp.CopyTo(src, SKColorType.Rgba8888)) throw new InvalidOperationException($"cannot convert {bmp.ColorType} to RGBA8888");
        }
        try
        {
            var px = src.GetPixelSpan();
            var rgb = new byte[src.Width * src.Height * 3];
            for (int i = 0, j = 0; j < rgb.Length; i += 4, j += 3) { rgb[j] = px[i]; rgb[j + 1] = px[i + 1]; rgb[j + 2] = px[i + 2]; }
            return rgb;
        }
        finally { if (!ReferenceEquals(src, bmp)) src.Dispose(); }
    }

    /// <summary>Decodes an image file (PNG/JPEG/...) to packed RGB. Returns (rgb, width, height).</summary>
    public static (byte[] Rgb, int Width, int Height) LoadRgb(string path)
    {
        using var bmp = SKBitmap.Decode(path) ?? throw new InvalidFileException($"cannot decode image {path}");
        return (ToRgb(bmp), bmp.Width, bmp.Height);
    }

    /// <summary>Packed RGB [H, W, 3] back to an opaque bitmap (for saving model outputs or degraded copies).</summary>
    public static SKBitmap FromRgb(ReadOnlySpan<byte> rgb, int width, int height)
    {
        if (rgb.Length != width * height * 3) throw new ArgumentException($"expected {width}x{height}x3 = {width * height * 3} bytes, got {rgb.Length}", nameof(rgb));
        var bmp = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        var px = bmp.GetPixelSpan();
        unsafe
        {
            var dst = new Span<byte>((void*)bmp.GetPixels(), px.Length);
            for (int i = 0, j = 0; j < rgb.Length; i += 4, j += 3) { dst[i] = rgb[j]; dst[i + 1] = rgb[j + 1]; dst[i + 2] = rgb[j + 2]; dst[i + 3] = 255; }
        }
        return bmp;
    }
}

/// <summary>What covers one grid cell of a scene: 1 + ShapeColor, 1 + Shape, 1 + ObjectSize, 1 + Position (the object's
/// named place, not the cell's); all 0 = background.</summary>
public readonly record struct CellLabel(byte Color, byte Shape, byte Size, byte Position)
{
    public const int ColorClasses = 8, ShapeClasses = 6, SizeClasses = 3, PositionClasses = 6;
}
