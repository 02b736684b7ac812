using SkiaSharp;
using VarGpt.Vision;
using static TorchSharp.torch;

using VarGpt;

namespace VarGpt.Tests.Vision;

public class RgbImageTests
{
    [Fact]
    public void Png_roundtrip_is_exact_and_atomic()
    {
        using var tmp = TestPaths.Temp();
        var img = TestImages.Pattern(13, 7);
        var path = tmp["sub/out.png"];
        img.SavePng(path);
        TestImages.Pattern(5, 5, seed: 9).SavePng(path); // overwrite
        img.SavePng(path);
        var back = RgbImage.Load(path);
        Assert.Equal((13, 7), (back.Width, back.Height));
        Assert.Equal(img.Data, back.Data);
        Assert.Equal(new[] { "out.png" }, Directory.GetFiles(tmp["sub"]).Select(p => Path.GetFileName(p)).ToArray()); // no temp files left
    }

    [Fact]
    public void Webp_lossless_and_bmp_decode_exactly()
    {
        using var tmp = TestPaths.Temp();
        var img = TestImages.Pattern(9, 6, seed: 3);
        File.WriteAllBytes(tmp["a.webp"], TestImages.WebpLossless(img));
        File.WriteAllBytes(tmp["a.bmp"], TestImages.Bmp(img));
        Assert.Equal(img.Data, RgbImage.Load(tmp["a.webp"]).Data);
        var bmp = RgbImage.Load(tmp["a.bmp"]);
        Assert.Equal((9, 6), (bmp.Width, bmp.Height));
        Assert.Equal(img.Data, bmp.Data);
    }

    [Fact]
    public void Jpeg_decodes_close_to_the_source()
    {
        using var tmp = TestPaths.Temp();
        var img = TestImages.Gradient(32, 24);
        File.WriteAllBytes(tmp["a.jpg"], TestImages.Jpeg(img));
        var back = RgbImage.Load(tmp["a.jpg"]);
        Assert.Equal((32, 24), (back.Width, back.Height));
        int maxDiff = img.Data.Zip(back.Data, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(maxDiff <= 6, $"JPEG q100 of a smooth gradient differs by {maxDiff} levels");
    }

    [Fact]
    public void Gif_decodes_the_first_frame_through_the_palette()
    {
        using var tmp = TestPaths.Temp();
        byte[][] palette = [[255, 0, 0], [0, 200, 0], [10, 20, 250], [90, 90, 90]];
        var f0 = new byte[] { 0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2 };   // 11 pixels: odd count exercises the tail
        var f1 = new byte[11];
        Array.Fill(f1, (byte)3);
        File.WriteAllBytes(tmp["a.gif"], TestImages.Gif(11, 1, palette, f0, f1));
        var img = RgbImage.Load(tmp["a.gif"]);
        Assert.Equal((11, 1), (img.Width, img.Height));
        Assert.Equal(f0.SelectMany(i => palette[i]).ToArray(), img.Data);
    }

    [Fact]
    public void Gif_transparent_index_shows_its_palette_colour_like_pil()
    {
        byte[][] palette = [[255, 0, 0], [0, 200, 0], [10, 20, 250], [90, 90, 90]];
        var gif = TestImages.Gif(4, 1, palette, [0, 1, 2, 3]).ToList();
        // graphic control extension with transparent index 2, before the image descriptor (after header + palette)
        gif.InsertRange(13 + 12, new byte[] { 0x21, 0xF9, 4, 0x01, 0, 0, 2, 0 });
        var img = RgbImage.Decode(gif.ToArray(), "t.gif");
        Assert.Equal(new byte[] { 255, 0, 0, 0, 200, 0, 10, 20, 250, 90, 90, 90 }, img.Data);
    }

    [Fact]
    public void Grayscale_expands_and_alpha_is_dropped_without_compositing()
    {
        using var tmp = TestPaths.Temp();
        var gray = new byte[] { 0, 50, 100, 150, 200, 255 };
        File.WriteAllBytes(tmp["g.png"], TestImages.SkiaEncode(gray, 3, 2, SKColorType.Gray8, SKAlphaType.Opaque, pm => pm.Encode(SKEncodedImageFormat.Png, 100)));
        Assert.Equal(gray.SelectMany(v => new[] { v, v, v }).ToArray(), RgbImage.Load(tmp["g.png"]).Data);

        // RGBA with alpha 0 and 128: PIL's convert("RGB") keeps the stored colour (no white/black background).
        var rgba = new byte[] { 200, 100, 50, 0, 10, 220, 30, 128 };
        File.WriteAllBytes(tmp["a.png"], TestImages.SkiaEncode(rgba, 2, 1, SKColorType.Rgba8888, SKAlphaType.Unpremul, pm => pm.Encode(SKEncodedImageFormat.Png, 100)));
        Assert.Equal(new byte[] { 200, 100, 50, 10, 220, 30 }, RgbImage.Load(tmp["a.png"]).Data);
    }

    [Fact]
    public void Missing_file_is_named()
    {
        using var tmp = TestPaths.Temp();
        var e = Assert.Throws<InputNotFoundException>(() => RgbImage.Load(tmp["nope.png"]));
        Assert.Contains("nope.png", e.Message);
        var d = Assert.Throws<InputNotFoundException>(() => RgbImage.Load(tmp.Path));
        Assert.Contains("directory", d.Message);
    }

    [Fact]
    public void Corrupt_data_is_reported_with_the_file_name()
    {
        using var tmp = TestPaths.Temp();
        var good = TestImages.Pattern(20, 20).EncodePng();
        File.WriteAllBytes(tmp["trunc.png"], good[..(good.Length / 2)]);
        var garbage = good[..8].Concat(Enumerable.Repeat((byte)0x5A, 100)).ToArray();
        File.WriteAllBytes(tmp["garbage.png"], garbage);
        var jpegHead = new byte[] { 0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3 };
        File.WriteAllBytes(tmp["bad.jpg"], jpegHead);
        File.WriteAllBytes(tmp["empty.png"], []);
        foreach (var name in new[] { "trunc.png", "garbage.png", "bad.jpg", "empty.png" })
        {
            var e = Assert.Throws<ImageLoadException>(() => RgbImage.Load(tmp[name]));
            Assert.Contains(name, e.Message);
            Assert.Equal(tmp[name], e.FilePath);
            Assert.True(e.Message.Contains("corrupt") || e.Message.Contains("empty"), e.Message);
        }
    }

    [Fact]
    public void A_tiny_file_claiming_a_huge_image_is_refused_before_pixel_memory_is_allocated()
    {
        // issue 18 finding 6: a 74-byte PNG claiming 23000x23000 (under the old 536M-pixel cap) took 2.1 GB before
        // "truncated"; it is now over the pixel limit, and one claiming 9000x9000 (under it) is over what 74 bytes justify
        using var tmp = TestPaths.Temp();
        foreach (var (side, expected) in new[] { (23000, "above the limit of 89478485 pixels"), (9000, "only 74 bytes") })
        {
            var bomb = TestImages.PngHeaderOnly(side, side, idat: new byte[17]);
            Assert.Equal(74, bomb.Length);
            File.WriteAllBytes(tmp["bomb.png"], bomb);
            long before = GC.GetAllocatedBytesForCurrentThread();
            var e = Assert.Throws<ImageLoadException>(() => RgbImage.Load(tmp["bomb.png"]));
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 4 << 20, $"{allocated} bytes allocated");
            Assert.Contains("bomb.png", e.Message);
            Assert.Contains($"{side}x{side}", e.Message);
            Assert.Contains(expected, e.Message);
        }
    }

    [Fact]
    public void Images_above_the_pixel_limit_are_refused_from_the_header_and_well_compressed_ones_decode()
    {
        using var tmp = TestPaths.Temp();
        // a flat 1500x1500 image compresses ~1000:1 and is still within what its bytes justify
        var flat = new RgbImage(1500, 1500);
        var png = flat.EncodePng();
        Assert.True(png.Length < 1500L * 1500 * 3 / 300, $"{png.Length} bytes");
        File.WriteAllBytes(tmp["flat.png"], png);
        Assert.Equal((1500, 1500), (RgbImage.Load(tmp["flat.png"]).Width, RgbImage.Load(tmp["flat.png"]).Height));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<ImageLoadException>(() => RgbImage.Load(tmp["flat.png"], maxPixels: 1_000_000));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
        Assert.Contains("1500x1500 = 2250000 pixels is above the limit of 1000000 pixels", e.Message);
        Assert.Equal(89_478_485, RgbImage.DefaultMaxPixels);   // PIL's MAX_IMAGE_PIXELS
    }

    [Fact]
    public void A_device_that_streams_forever_is_refused_at_its_first_bytes()
    {
        if (!File.Exists("/dev/zero")) return;
        var e = Assert.Throws<ImageLoadException>(() => RgbImage.Load("/dev/zero"));
        Assert.Contains("unsupported", e.Message);
    }

    [Fact]
    public void Unsupported_format_is_reported_with_the_file_name()
    {
        using var tmp = TestPaths.Temp();
        File.WriteAllBytes(tmp["a.tif"], [0x49, 0x49, 0x2A, 0x00, 8, 0, 0, 0, 0, 0]);
        File.WriteAllText(tmp["notes.png"], "this is not an image");
        foreach (var name in new[] { "a.tif", "notes.png" })
        {
            var e = Assert.Throws<ImageLoadException>(() => RgbImage.Load(tmp[name]));
            Assert.Contains(name, e.Message);
            Assert.Contains("unsupported", e.Message);
        }
    }

    [Fact]
    public void Tensor_roundtrip_and_shape_checks()
    {
        TorchTestSetup.Init();
        var img = TestImages.Pattern(5, 3);
        using var t = img.ToTensor();
        Assert.Equal(new long[] { 3, 5, 3 }, t.shape);
        Assert.Equal(ScalarType.Byte, t.dtype);
        Assert.Equal(img.Data[(2 * 5 + 4) * 3 + 1], t[2, 4, 1].item<byte>());
        img.Data[0] ^= 0xFF; // the tensor is a copy
        Assert.NotEqual(img.Data[0], t[0, 0, 0].item<byte>());
        img.Data[0] ^= 0xFF;
        Assert.Equal(img.Data, RgbImage.FromTensor(t).Data);
        using var chw = t.permute(2, 0, 1);
        Assert.Throws<ArgumentException>(() => RgbImage.FromTensor(chw));
        using var f = t.to(ScalarType.Float32);
        Assert.Throws<ArgumentException>(() => RgbImage.FromTensor(f));
        using var nc = t.permute(1, 0, 2).contiguous().permute(1, 0, 2); // non-contiguous view, same values
        Assert.Equal(img.Data, RgbImage.FromTensor(nc).Data);
    }
}
