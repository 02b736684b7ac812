using System.Text.Json;
using VarGpt.Checkpoint;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Vision;

/// <summary>The processor's output for a list of images (official BatchFeature pixel_values / image_grid_thw).</summary>
public sealed class ProcessedImages : IDisposable
{
    /// <summary>[sum of t*h*w, C*T*P*P] float32 on the CPU: rows of image 0, then image 1, ...</summary>
    public required Tensor PixelValues { get; init; }
    /// <summary>[n_images, 3] int64 (grid_t, grid_h, grid_w) in patches.</summary>
    public required Tensor ImageGridThw { get; init; }
    /// <summary>Per image, the number of &lt;|image_pad|&gt; tokens = t*h*w / merge^2.</summary>
    public required int[] TokenCounts { get; init; }
    /// <summary>Per image, (height, width) after smart_resize.</summary>
    public required (int Height, int Width)[] ResizedSizes { get; init; }
    /// <summary>Per image, true when max_pixels forced a shrink (smart_resize's max branch).</summary>
    public required bool[] ShrunkForMaxPixels { get; init; }

    public bool AnyShrunkForMaxPixels => ShrunkForMaxPixels.Any(x => x);

    public void Dispose()
    {
        PixelValues.Dispose();
        ImageGridThw.Dispose();
    }
}

/// <summary>
/// Official VARGPTQwen2VLImageProcessor (vargpt_qwen_v1_1/image_processing_qwen2_vl.py) for still images:
/// smart_resize -> PIL bicubic resize on uint8 -> rescale 1/255 (float64, stored float32) -> CLIP normalisation in
/// float32 -> tile to temporal_patch_size frames -> patches in 2x2 merge-window order with features (C, T, py, px).
/// </summary>
public sealed class ImageProcessor(PreprocessorConfig settings)
{
    public PreprocessorConfig Settings { get; } = Validated(settings);

    /// <summary>The PIL filter of the resize (preprocessor_config.json "resample"; BICUBIC = 3).</summary>
    public PilFilter Resample => (PilFilter)Settings.Resample;

    static PreprocessorConfig Validated(PreprocessorConfig s)
    {
        // The released processor runs every step; switching one off is not implemented, so refuse instead of diverging.
        foreach (var (key, on) in new[] { ("do_resize", s.DoResize), ("do_rescale", s.DoRescale), ("do_normalize", s.DoNormalize), ("do_convert_rgb", s.DoConvertRgb) })
            if (!on) throw new NotSupportedException($"preprocessor config: '{key}': false is not supported (the VARGPT processor always applies this step)");
        if (!Enum.IsDefined((PilFilter)s.Resample))
            throw new InvalidFileException($"preprocessor config: field 'resample' = {s.Resample} is not a PIL filter (0..5)");
        return s;
    }

    /// <summary>
    /// Official smart_resize: both sides a multiple of factor, area within [minPixels, maxPixels], aspect kept
    /// (Python round = half to even). Errors (ArgumentException, which the callers turn into input errors) for a side shorter
    /// than factor, an aspect ratio above 200, or a side that max_pixels would floor to 0.
    /// </summary>
    public static (int Height, int Width, bool ShrunkForMaxPixels) SmartResize(int height, int width, int factor = 28,
        long minPixels = 56 * 56, long maxPixels = 14 * 14 * 4 * 1280)
    {
        if (height < factor || width < factor)
            throw new ArgumentException($"height:{height} or width:{width} must be larger than factor:{factor}");
        double aspect = (double)Math.Max(height, width) / Math.Min(height, width);
        if (aspect > 200)
            throw new ArgumentException($"absolute aspect ratio must be smaller than 200, got {aspect.ToString(System.Globalization.CultureInfo.InvariantCulture)}");
        long hBar = (long)Math.Round((double)height / factor, MidpointRounding.ToEven) * factor;
        long wBar = (long)Math.Round((double)width / factor, MidpointRounding.ToEven) * factor;
        bool shrunk = false;
        double area = (double)((long)height * width);
        if (hBar * wBar > maxPixels)
        {
            double beta = Math.Sqrt(area / maxPixels);
            hBar = (long)Math.Floor(height / beta / factor) * factor;
            wBar = (long)Math.Floor(width / beta / factor) * factor;
            shrunk = true;
            // The official formula floors a side to 0 when max_pixels is below factor² × aspect ratio (a 4000x30 image
            // under the shipped max_pixels 14000 became 1344x0); refuse like the other impossible shapes.
            if (hBar < factor || wBar < factor)
                throw new ArgumentException($"a {width}x{height} image cannot be shrunk under max_pixels {maxPixels} with both sides multiples of {factor} (aspect ratio too extreme for this model's processor)");
        }
        else if (hBar * wBar < minPixels)
        {
            double beta = Math.Sqrt(minPixels / area);
            hBar = (long)Math.Ceiling(height * beta / factor) * factor;
            wBar = (long)Math.Ceiling(width * beta / factor) * factor;
        }
        return ((int)hBar, (int)wBar, shrunk);
    }

    /// <summary>Preprocesses each image independently (as the official preprocess loop does) and concatenates the rows.</summary>
    public ProcessedImages Preprocess(IReadOnlyList<RgbImage> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("Preprocess needs at least one image");
        var s = Settings;
        var rows = new List<float[]>(images.Count);
        var grids = new long[images.Count * 3];
        var tokens = new int[images.Count];
        var sizes = new (int, int)[images.Count];
        var shrunk = new bool[images.Count];
        long totalRows = 0;
        for (int i = 0; i < images.Count; i++)
        {
            var img = images[i] ?? throw new ArgumentNullException($"images[{i}]");
            int h, w;
            try { (h, w, shrunk[i]) = SmartResize(img.Height, img.Width, s.Factor, s.MinPixels, s.MaxPixels); }
            catch (ArgumentException e) { throw new ArgumentException($"image {i} ({img.Width}x{img.Height}): {e.Message}", e); }
            var resized = PilResize.Resize(img, w, h, Resample);
            rows.Add(NormalizeAndPatchify(resized, out var grid));
            grids[i * 3] = grid.T; grids[i * 3 + 1] = grid.H; grids[i * 3 + 2] = grid.W;
            tokens[i] = grid.T * grid.H * grid.W / (s.MergeSize * s.MergeSize);
            sizes[i] = (h, w);
            totalRows += (long)grid.T * grid.H * grid.W;
        }
        int rowLen = RowLength;
        var all = rows.Count == 1 ? rows[0] : new float[checked(totalRows * rowLen)];
        if (rows.Count > 1)
        {
            long off = 0;
            foreach (var r in rows) { Array.Copy(r, 0, all, off, r.Length); off += r.Length; }
        }
        return new ProcessedImages
        {
            PixelValues = tensor(all, [totalRows, rowLen], ScalarType.Float32, CPU), // host data, like HF; the model moves it
            ImageGridThw = tensor(grids, [images.Count, 3], ScalarType.Int64, CPU),
            TokenCounts = tokens,
            ResizedSizes = sizes,
            ShrunkForMaxPixels = shrunk,
        };
    }

    /// <summary>C*T*P*P features per patch row (1176 for the released settings).</summary>
    public int RowLength => 3 * Settings.TemporalPatchSize * Settings.PatchSize * Settings.PatchSize;

    /// <summary>
    /// The steps after the resize, for an image already at its target size (sides multiples of patch*merge):
    /// rescale, normalise, tile to temporal_patch_size frames and flatten to [gh*gw, C*T*P*P] rows (grid_t = 1).
    /// </summary>
    public Tensor Patchify(RgbImage resized, out (int T, int H, int W) grid)
    {
        var rows = NormalizeAndPatchify(resized, out grid);
        return tensor(rows, [(long)grid.T * grid.H * grid.W, RowLength], ScalarType.Float32, CPU);
    }

    float[] NormalizeAndPatchify(RgbImage img, out (int T, int H, int W) grid)
    {
        var s = Settings;
        int p = s.PatchSize, m = s.MergeSize, tp = s.TemporalPatchSize;
        if (img.Height % (p * m) != 0 || img.Width % (p * m) != 0)
            throw new ArgumentException($"image {img.Width}x{img.Height} must have sides divisible by patch_size*merge_size = {p * m}");
        int gh = img.Height / p, gw = img.Width / p;
        grid = (1, gh, gw);

        // transformers rescale: float64 multiply then cast to float32; normalize: (x - mean) / std in float32.
        var lut = new float[3 * 256];
        for (int c = 0; c < 3; c++)
        {
            float mean = (float)s.ImageMean[c], std = (float)s.ImageStd[c];
            for (int v = 0; v < 256; v++)
            {
                float x = (float)(v * s.RescaleFactor);
                lut[c * 256 + v] = (x - mean) / std;
            }
        }

        // Official: reshape(gt, T, C, gh/m, m, p, gw/m, m, p).transpose(0,3,6,4,7,2,1,5,8): rows ordered
        // (merged row, merged col, inner row, inner col), features (C, T, py, px); the T frames are identical copies.
        int rowLen = 3 * tp * p * p, block = p * p;
        var output = new float[checked((long)gh * gw * rowLen)];
        int W = img.Width;
        var data = img.Data;
        Parallel.For(0, gh / m, bh =>
        {
            var o = output.AsSpan();
            var d = data.AsSpan();
            for (int bw = 0; bw < gw / m; bw++)
                for (int ih = 0; ih < m; ih++)
                    for (int iw = 0; iw < m; iw++)
                    {
                        long row = ((long)(bh * (gw / m) + bw) * m + ih) * m + iw;
                        int y0 = (bh * m + ih) * p, x0 = (bw * m + iw) * p;
                        for (int c = 0; c < 3; c++)
                        {
                            var frame0 = o.Slice((int)(row * rowLen + c * tp * block), block);
                            var lc = lut.AsSpan(c * 256, 256);
                            for (int py = 0; py < p; py++)
                            {
                                var srcRow = d.Slice(((y0 + py) * W + x0) * 3 + c);
                                var dst = frame0.Slice(py * p, p);
                                for (int px = 0; px < p; px++) dst[px] = lc[srcRow[px * 3]];
                            }
                            for (int t = 1; t < tp; t++) frame0.CopyTo(o.Slice((int)(row * rowLen + (c * tp + t) * block), block));
                        }
                    }
        });
        return output;
    }

    /// <summary>
    /// LLaMA-Factory's training-time image pre-shrink (VARGPT-family-training mm_plugin.py: BasePlugin._preprocess_image
    /// as extended by VargptQwen2vlPlugin._preprocess_image), applied before this processor on the training and
    /// LLaMA-Factory predict paths (not by the README inference path): NEAREST-resize to at most imageResolution
    /// pixels (int() truncation of each side), then NEAREST-enlarge a side shorter than 28, then squash an aspect
    /// ratio above 200 to 180.
    /// </summary>
    public static RgbImage PreprocessImageForTraining(RgbImage image, long imageResolution = 512 * 512)
    {
        if ((long)image.Width * image.Height > imageResolution)
        {
            double f = Math.Sqrt(imageResolution / (double)((long)image.Width * image.Height));
            int w = (int)(image.Width * f), h = (int)(image.Height * f);
            if (w <= 0 || h <= 0)
                throw new ArgumentException($"image {image.Width}x{image.Height} shrinks to {w}x{h} under image_resolution {imageResolution}; its aspect ratio is too extreme");
            image = PilResize.Resize(image, w, h, PilFilter.Nearest);
        }
        if (Math.Min(image.Width, image.Height) < 28)
            image = PilResize.Resize(image, Math.Max(image.Width, 28), Math.Max(image.Height, 28), PilFilter.Nearest);
        if ((double)image.Width / image.Height > 200)
            image = PilResize.Resize(image, image.Height * 180, image.Height, PilFilter.Nearest);
        if ((double)image.Height / image.Width > 200)
            image = PilResize.Resize(image, image.Width, image.Width * 180, PilFilter.Nearest);
        return image;
    }
}
