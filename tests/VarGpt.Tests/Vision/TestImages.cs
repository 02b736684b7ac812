using System.Runtime.InteropServices;
using SkiaSharp;
using VarGpt.Vision;

namespace VarGpt.Tests.Vision;

/// <summary>Tiny generated images and encoders for the tests (Skia for PNG/JPEG/WebP, by hand for BMP and GIF).</summary>
static class TestImages
{
    /// <summary>A deterministic pattern with every channel varying.</summary>
    public static RgbImage Pattern(int w, int h, int seed = 0)
    {
        var d = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = (y * w + x) * 3;
                d[i] = (byte)(x * 37 + y * 11 + seed);
                d[i + 1] = (byte)(x * 5 + y * 53 + 2 * seed);
                d[i + 2] = (byte)((x ^ y) * 29 + 3 * seed);
            }
        return new RgbImage(w, h, d);
    }

    /// <summary>A smooth gradient (JPEG-friendly).</summary>
    public static RgbImage Gradient(int w, int h)
    {
        var d = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = (y * w + x) * 3;
                d[i] = (byte)(40 + 150 * x / Math.Max(1, w - 1));
                d[i + 1] = (byte)(60 + 120 * y / Math.Max(1, h - 1));
                d[i + 2] = 128;
            }
        return new RgbImage(w, h, d);
    }

    /// <summary>Encodes raw pixels of the given Skia colour/alpha type with Skia.</summary>
    public static byte[] SkiaEncode(byte[] pixels, int w, int h, SKColorType ct, SKAlphaType at, Func<SKPixmap, SKData?> encode)
    {
        var info = new SKImageInfo(w, h, ct, at);
        var handle = GCHandle.Alloc(pixels, GCHandleType.Pinned);
        try
        {
            using var pm = new SKPixmap(info, handle.AddrOfPinnedObject(), info.RowBytes);
            using var data = encode(pm) ?? throw new InvalidOperationException($"Skia could not encode {ct}");
            return data.ToArray();
        }
        finally { handle.Free(); }
    }

    public static byte[] Rgba(RgbImage img, byte alpha = 255)
    {
        var o = new byte[img.Width * img.Height * 4];
        for (int i = 0, j = 0; j < img.Data.Length; i += 4, j += 3)
        {
            o[i] = img.Data[j]; o[i + 1] = img.Data[j + 1]; o[i + 2] = img.Data[j + 2]; o[i + 3] = alpha;
        }
        return o;
    }

    public static byte[] Jpeg(RgbImage img) =>
        SkiaEncode(Rgba(img), img.Width, img.Height, SKColorType.Rgba8888, SKAlphaType.Opaque, pm => pm.Encode(SKEncodedImageFormat.Jpeg, 100));

    public static byte[] WebpLossless(RgbImage img) =>
        SkiaEncode(Rgba(img), img.Width, img.Height, SKColorType.Rgba8888, SKAlphaType.Opaque,
            pm => pm.Encode(new SKWebpEncoderOptions(SKWebpEncoderCompression.Lossless, 100)));

    /// <summary>An uncompressed 24-bit bottom-up BMP (BITMAPINFOHEADER).</summary>
    public static byte[] Bmp(RgbImage img)
    {
        int stride = (img.Width * 3 + 3) & ~3;
        int size = 54 + stride * img.Height;
        var b = new byte[size];
        b[0] = (byte)'B'; b[1] = (byte)'M';
        BitConverter.TryWriteBytes(b.AsSpan(2), size);
        BitConverter.TryWriteBytes(b.AsSpan(10), 54);
        BitConverter.TryWriteBytes(b.AsSpan(14), 40);
        BitConverter.TryWriteBytes(b.AsSpan(18), img.Width);
        BitConverter.TryWriteBytes(b.AsSpan(22), img.Height);
        BitConverter.TryWriteBytes(b.AsSpan(26), (short)1);
        BitConverter.TryWriteBytes(b.AsSpan(28), (short)24);
        BitConverter.TryWriteBytes(b.AsSpan(34), stride * img.Height);
        for (int y = 0; y < img.Height; y++)
        {
            int row = 54 + (img.Height - 1 - y) * stride;
            for (int x = 0; x < img.Width; x++)
            {
                int s = (y * img.Width + x) * 3;
                b[row + x * 3] = img.Data[s + 2];
                b[row + x * 3 + 1] = img.Data[s + 1];
                b[row + x * 3 + 2] = img.Data[s];
            }
        }
        return b;
    }

    /// <summary>
    /// A GIF89a with a 4-colour global palette and one image per entry of <paramref name="frames"/> (palette indices,
    /// row-major). LZW data is written with a clear code before every pair of pixels, so codes stay 3 bits wide and
    /// no dictionary logic is needed; any conforming decoder accepts it.
    /// </summary>
    public static byte[] Gif(int w, int h, byte[][] palette, params byte[][] frames)
    {
        var o = new List<byte>();
        o.AddRange("GIF89a"u8.ToArray());
        o.AddRange(BitConverter.GetBytes((ushort)w));
        o.AddRange(BitConverter.GetBytes((ushort)h));
        o.Add(0x91); // global colour table, colour resolution 2 bits, 4 entries
        o.Add(0); o.Add(0);
        foreach (var c in palette) o.AddRange(c);
        foreach (var idx in frames)
        {
            o.Add(0x2C);
            o.AddRange(BitConverter.GetBytes((ushort)0)); o.AddRange(BitConverter.GetBytes((ushort)0));
            o.AddRange(BitConverter.GetBytes((ushort)w)); o.AddRange(BitConverter.GetBytes((ushort)h));
            o.Add(0);
            o.Add(2); // LZW minimum code size: clear = 4, end = 5
            var codes = new List<int>();
            for (int i = 0; i < idx.Length; i += 2)
            {
                codes.Add(4);
                codes.Add(idx[i]);
                if (i + 1 < idx.Length) codes.Add(idx[i + 1]);
            }
            codes.Add(5);
            var bytes = new List<byte>();
            int acc = 0, nbits = 0;
            foreach (var c in codes)
            {
                acc |= c << nbits; nbits += 3;
                while (nbits >= 8) { bytes.Add((byte)(acc & 0xFF)); acc >>= 8; nbits -= 8; }
            }
            if (nbits > 0) bytes.Add((byte)acc);
            for (int i = 0; i < bytes.Count; i += 255)
            {
                int n = Math.Min(255, bytes.Count - i);
                o.Add((byte)n);
                o.AddRange(bytes.GetRange(i, n));
            }
            o.Add(0);
        }
        o.Add(0x3B);
        return o.ToArray();
    }

    /// <summary>A PNG whose IHDR claims <paramref name="w"/>x<paramref name="h"/> 8-bit RGB pixels, followed by an empty IDAT and IEND (valid CRCs; 57 bytes + <paramref name="idat"/>).</summary>
    public static byte[] PngHeaderOnly(int w, int h, byte[]? idat = null)
    {
        var o = new List<byte> { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A };
        void Chunk(string type, byte[] data)
        {
            o.AddRange(BigEndian((uint)data.Length));
            var body = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
            o.AddRange(body);
            o.AddRange(BigEndian(Crc32(body)));
        }
        Chunk("IHDR", [.. BigEndian((uint)w), .. BigEndian((uint)h), 8, 2, 0, 0, 0]);
        Chunk("IDAT", idat ?? []);
        Chunk("IEND", []);
        return o.ToArray();
    }

    static byte[] BigEndian(uint v) => [(byte)(v >> 24), (byte)(v >> 16), (byte)(v >> 8), (byte)v];

    static uint Crc32(byte[] data)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }
}
