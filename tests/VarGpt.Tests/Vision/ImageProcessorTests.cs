using VarGpt.Checkpoint;
using System.Text.Json;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt;

namespace VarGpt.Tests.Vision;

public class ImageProcessorTests
{
    [Theory]
    [InlineData(70, 70, 56, 56)]      // 2.5 -> 2: Python round is half-to-even
    [InlineData(42, 98, 56, 112)]     // 1.5 -> 2, 3.5 -> 4
    [InlineData(252, 333, 252, 336)]
    [InlineData(30, 40, 56, 84)]      // below min_pixels: scaled up with ceil
    public void SmartResize_matches_the_official_rule(int h, int w, int eh, int ew)
    {
        var (rh, rw, shrunk) = ImageProcessor.SmartResize(h, w, 28, 3136, 12845056);
        Assert.Equal((eh, ew), (rh, rw));
        Assert.False(shrunk);
    }

    [Fact]
    public void SmartResize_rejects_small_and_extreme_images()
    {
        var e = Assert.Throws<ArgumentException>(() => ImageProcessor.SmartResize(27, 500));
        Assert.Contains("must be larger than factor:28", e.Message);
        var a = Assert.Throws<ArgumentException>(() => ImageProcessor.SmartResize(28, 28 * 201));
        Assert.Contains("aspect ratio", a.Message);
        ImageProcessor.SmartResize(28, 28 * 200); // exactly 200 is allowed
    }

    [Fact]
    public void Preprocess_names_the_bad_image()
    {
        TorchTestSetup.Init();
        var proc = new ImageProcessor(new PreprocessorConfig());
        var e = Assert.Throws<ArgumentException>(() => proc.Preprocess([TestImages.Pattern(40, 40), TestImages.Pattern(20, 60)]));
        Assert.Contains("image 1 (20x60)", e.Message);
        var x = Assert.Throws<ArgumentException>(() => proc.Preprocess([TestImages.Pattern(29 * 201, 29)]));
        Assert.Contains("aspect ratio", x.Message);
    }

    [Fact]
    public void Image_over_max_pixels_is_shrunk_and_flagged()
    {
        TorchTestSetup.Init();
        var proc = new ImageProcessor(new PreprocessorConfig { MaxPixels = 28 * 28 * 6 });
        using var r = proc.Preprocess([TestImages.Pattern(140, 90), TestImages.Pattern(56, 56)]);
        // 90x140: rounded 84x140 = 11760 > 4704 -> beta = sqrt(12600/4704) = 1.637, floor(1.96)=1, floor(3.05)=3 -> 28 x 84
        Assert.Equal([true, false], r.ShrunkForMaxPixels);
        Assert.True(r.AnyShrunkForMaxPixels);
        Assert.Equal((28, 84), r.ResizedSizes[0]);
        Assert.Equal(new long[] { 1, 2, 6, 1, 4, 4 }, r.ImageGridThw.data<long>().ToArray());
        Assert.Equal([3, 4], r.TokenCounts);
        Assert.Equal(new long[] { 12 + 16, 1176 }, r.PixelValues.shape);
        Assert.Equal(ScalarType.Float32, r.PixelValues.dtype);
    }

    [Fact]
    public void Patch_rows_follow_merge_window_order_with_features_C_T_py_px()
    {
        TorchTestSetup.Init();
        // identity normalisation so the output is the raw pixel value; small patches keep the check readable
        var s = new PreprocessorConfig { PatchSize = 2, MergeSize = 2, TemporalPatchSize = 2, ImageMean = [0, 0, 0], ImageStd = [1, 1, 1], RescaleFactor = 1 };
        int w = 8, h = 4; // grid 2 x 4 patches -> 1 x 2 merge windows
        var img = new RgbImage(w, h, Enumerable.Range(0, w * h * 3).Select(i => (byte)i).ToArray());
        using var rows = new ImageProcessor(s).Patchify(img, out var grid);
        Assert.Equal((1, 2, 4), grid);
        Assert.Equal(new long[] { 8, 3 * 2 * 2 * 2 }, rows.shape);
        var v = rows.data<float>().ToArray();
        for (int r = 0; r < 8; r++)
        {
            int bw = r / 4, ih = r / 2 % 2, iw = r % 2; // one merge-window row (bh = 0)
            for (int c = 0; c < 3; c++)
                for (int t = 0; t < 2; t++)
                    for (int py = 0; py < 2; py++)
                        for (int px = 0; px < 2; px++)
                        {
                            int y = ih * 2 + py, x = (bw * 2 + iw) * 2 + px;
                            float expected = img.Data[(y * w + x) * 3 + c];
                            Assert.Equal(expected, v[r * 24 + ((c * 2 + t) * 2 + py) * 2 + px]);
                        }
        }
    }

    [Fact]
    public void Processor_refuses_settings_it_cannot_honour()
    {
        Assert.Contains("do_normalize", Assert.Throws<NotSupportedException>(() => new ImageProcessor(new PreprocessorConfig { DoNormalize = false })).Message);
        Assert.Contains("resample", Assert.Throws<InvalidFileException>(() => new ImageProcessor(new PreprocessorConfig { Resample = 9 })).Message);
        Assert.Equal(PilFilter.Lanczos, new ImageProcessor(new PreprocessorConfig { Resample = 1 }).Resample);
    }

    [Fact]
    public void Nearest_resize_follows_pil_coordinates()
    {
        // PIL NEAREST samples the source at (i + 0.5) * in/out, truncated
        var img = new RgbImage(5, 1, Enumerable.Range(0, 15).Select(i => (byte)i).ToArray());
        var down = PilResize.Resize(img, 2, 1, PilFilter.Nearest);   // x = 1.25, 3.75 -> 1, 3
        Assert.Equal(new byte[] { 3, 4, 5, 9, 10, 11 }, down.Data);
        var up = PilResize.Resize(img, 7, 1, PilFilter.Nearest);     // (i+0.5)*5/7 -> 0,1,1,2,3,3,4
        Assert.Equal(new[] { 0, 1, 1, 2, 3, 3, 4 }, Enumerable.Range(0, 7).Select(i => up.Data[i * 3] / 3).ToArray());
    }

    [Fact]
    public void Bicubic_keeps_a_flat_image_flat_and_same_size_is_a_copy()
    {
        var flat = new RgbImage(37, 23, Enumerable.Repeat((byte)77, 37 * 23 * 3).ToArray());
        foreach (var f in new[] { PilFilter.Bicubic, PilFilter.Lanczos, PilFilter.Bilinear, PilFilter.Box, PilFilter.Hamming })
        {
            Assert.All(PilResize.Resize(flat, 11, 50, f).Data, b => Assert.Equal(77, b));
            Assert.All(PilResize.Resize(flat, 80, 9, f).Data, b => Assert.Equal(77, b));
        }
        var img = TestImages.Pattern(6, 4);
        var copy = PilResize.Resize(img, 6, 4, PilFilter.Bicubic);
        Assert.Equal(img.Data, copy.Data);
        Assert.NotSame(img.Data, copy.Data);
    }

    [Fact]
    public void Training_preshrink_follows_llamafactory()
    {
        // area over image_resolution: int() of each side times sqrt(res / area)
        var big = ImageProcessor.PreprocessImageForTraining(TestImages.Pattern(1000, 600), 262144);
        double f = Math.Sqrt(262144.0 / 600000);
        Assert.Equal(((int)(1000 * f), (int)(600 * f)), (big.Width, big.Height));
        // a side below 28 is raised to 28 (NEAREST)
        var small = ImageProcessor.PreprocessImageForTraining(TestImages.Pattern(10, 40));
        Assert.Equal((28, 40), (small.Width, small.Height));
        // aspect above 200 is squashed to 180
        var wide = ImageProcessor.PreprocessImageForTraining(TestImages.Pattern(6000, 28));
        Assert.Equal((28 * 180, 28), (wide.Width, wide.Height));
        var tall = ImageProcessor.PreprocessImageForTraining(TestImages.Pattern(28, 6000));
        Assert.Equal((28, 28 * 180), (tall.Width, tall.Height));
        // within limits: unchanged
        var ok = TestImages.Pattern(300, 200);
        Assert.Same(ok, ImageProcessor.PreprocessImageForTraining(ok));
        // the result is always accepted by smart_resize
        ImageProcessor.SmartResize(wide.Height, wide.Width);
    }
}
