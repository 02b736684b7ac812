using System.Runtime.InteropServices;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Vision;

/// <summary>An image file that could not be read; the message names the file and the reason.</summary>
public sealed class ImageLoadException(string path, string reason) : VargptInputException($"{path}: {reason}")
{
    public string FilePath { get; } = path;
}

/// <summary>
/// An 8-bit RGB image stored row-major as HWC bytes (the layout of np.asarray(PIL RGB image)). This is the currency
/// of the vision side: understanding inputs, editing inputs and generated images.
/// </summary>
public sealed class RgbImage
{
    public int Width { get; }
    public int Height { get; }
    /// <summary>Height*Width*3 bytes, row-major, channels R, G, B.</summary>
    public byte[] Data { get; }

    public RgbImage(int width, int height, byte[] data)
    {
        if (width <= 0 || height <= 0) throw new ArgumentException($"image size must be positive, got {width}x{height}");
        ArgumentNullException.ThrowIfNull(data);
        if (data.LongLength != 3L * width * height)
            throw new ArgumentException($"RGB data for a {width}x{height} image must hold {3L * width * height} bytes, got {data.LongLength}");
        Width = width;
        Height = height;
        Data = data;
    }

    /// <summary>A black image.</summary>
    public RgbImage(int width, int height) : this(width, height, new byte[checked(3 * width * height)]) { }

    public long PixelCount => (long)Width * Height;

    public override string ToString() => $"RgbImage {Width}x{Height}";

    // ---------------------------------------------------------------- decoding

    static readonly (string Name, byte[] Magic, int Offset)[] KnownSignatures =
    [
        ("PNG", [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], 0),
        ("JPEG", [0xFF, 0xD8, 0xFF], 0),
        ("GIF", "GIF8"u8.ToArray(), 0),
        ("BMP", "BM"u8.ToArray(), 0),
        ("WebP", "WEBP"u8.ToArray(), 8),
    ];

    /// <summary>The supported format whose signature starts <paramref name="head"/>, or null.</summary>
    static string? Sniff(ReadOnlySpan<byte> head)
    {
        foreach (var (name, magic, off) in KnownSignatures)
            if (head.Length >= off + magic.Length && head.Slice(off, magic.Length).SequenceEqual(magic)
                && (name != "WebP" || head[..4].SequenceEqual("RIFF"u8)))
                return name;
        return null;
    }

    /// <summary>
    /// Images above this many pixels are refused before decoding: PIL's Image.MAX_IMAGE_PIXELS (89,478,485, where PIL
    /// starts warning about decompression bombs). The vision processor shrinks every image to max_pixels anyway.
    /// </summary>
    public const long DefaultMaxPixels = 89_478_485;

    /// <summary>
    /// The most pixels one byte of a supported file can describe: deflate expands at most 1032:1 and a 1-bit PNG holds 8
    /// pixels per byte (8256); JPEG needs at least a bit per 8x8 block and component, GIF's LZW 12 bits per 4096 pixels.
    /// A header claiming more pixels than the file's size allows (a truncated file or a decompression bomb) is refused
    /// before any pixel memory is allocated. (BMP run-length and WebP-lossless files of one flat colour can go further;
    /// such images are refused as bombs.)
    /// </summary>
    public const long MaxPixelsPerFileByte = 8 * 1032;

    /// <summary>
    /// Decodes a PNG, JPEG, WebP, BMP or GIF (first frame) file to RGB like PIL's Image.open(path).convert("RGB"):
    /// no colour management and no EXIF rotation (PIL applies neither), grayscale and palette images are expanded,
    /// and an alpha channel is dropped without compositing (the unpremultiplied colour is kept).
    /// Images above <paramref name="maxPixels"/> (default <see cref="DefaultMaxPixels"/>) are refused before decoding.
    /// </summary>
    public static RgbImage Load(string path, long maxPixels = DefaultMaxPixels)
    {
        if (!File.Exists(path))
            throw new InputNotFoundException(Directory.Exists(path) ? $"{path}: is a directory, not an image file" : $"image file not found: {path}", path);
        byte[] bytes;
        try { bytes = ReadBounded(path, MaxFileBytes(maxPixels), maxPixels); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageLoadException(path, $"cannot read file ({AtomicFile.Cause(e)})");
        }
        return Decode(bytes, path, maxPixels);
    }

    /// <summary>The largest image file worth reading for a pixel limit: uncompressed 32-bit BMP plus headers.</summary>
    static long MaxFileBytes(long maxPixels) => Math.Min(int.MaxValue - 64, 4 * maxPixels + (1 << 20));

    /// <summary>Reads at most <paramref name="limit"/> bytes (a device or pipe that never ends, or a huge file, is refused without reading it all).</summary>
    static byte[] ReadBounded(string path, long limit, long maxPixels)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        if (fs.CanSeek && fs.Length > limit)
            throw new ImageLoadException(path, $"file is {fs.Length} bytes; image files above {limit} bytes are refused (the pixel limit is {maxPixels} pixels)");
        var buffer = new MemoryStream();
        var chunk = new byte[1 << 16];
        int n;
        while ((n = fs.Read(chunk)) > 0)
        {
            // a device or pipe streaming something else (/dev/zero) is refused at its first bytes
            if (buffer.Length == 0 && n >= 16 && Sniff(chunk.AsSpan(0, 16)) is null)
                throw new ImageLoadException(path, "unsupported or unrecognised image format (supported: PNG, JPEG, WebP, BMP, GIF)");
            if (buffer.Length + n > limit) throw new ImageLoadException(path, $"more than {limit} bytes; not an image file of a size this program decodes");
            buffer.Write(chunk, 0, n);
        }
        return buffer.ToArray();
    }

    /// <summary>Decodes an encoded image held in memory; <paramref name="name"/> is used in error messages.</summary>
    public static RgbImage Decode(byte[] bytes, string name = "<memory>", long maxPixels = DefaultMaxPixels)
    {
        if (bytes.Length == 0) throw new ImageLoadException(name, "file is empty");
        string? format = Sniff(bytes.AsSpan(0, Math.Min(bytes.Length, 16)));
        if (format == null)
            throw new ImageLoadException(name, "unsupported or unrecognised image format (supported: PNG, JPEG, WebP, BMP, GIF)");

        using var stream = new SKMemoryStream(bytes);
        using var codec = SKCodec.Create(stream, out var createResult);
        if (codec == null)
            throw new ImageLoadException(name, $"corrupt {format} data: the decoder rejected the header ({createResult})");
        var src = codec.Info;
        if (src.Width <= 0 || src.Height <= 0)
            throw new ImageLoadException(name, $"corrupt {format} data: image size {src.Width}x{src.Height}");
        // limits from the header, before any pixel memory exists
        long pixels = (long)src.Width * src.Height;
        if (pixels > maxPixels)
            throw new ImageLoadException(name, $"image of {src.Width}x{src.Height} = {pixels} pixels is above the limit of {maxPixels} pixels");
        if (pixels > MaxPixelsPerFileByte * bytes.Length)
            throw new ImageLoadException(name, $"corrupt {format} data: the header says {src.Width}x{src.Height} pixels but the file has only {bytes.Length} bytes " +
                $"(at most {MaxPixelsPerFileByte * bytes.Length} pixels at the best compression of any supported format): truncated, or a decompression bomb");
        if (pixels > int.MaxValue / 4)
            throw new ImageLoadException(name, $"image of {src.Width}x{src.Height} pixels is too large to decode");

        // Unpremultiplied RGBA without a colour space: Skia then performs no colour conversion and keeps the
        // stored colour under transparent pixels, which is what PIL's RGBA->RGB (drop alpha) sees.
        var info = new SKImageInfo(src.Width, src.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[info.BytesSize];
        var handle = GCHandle.Alloc(rgba, GCHandleType.Pinned);
        SKCodecResult result;
        try { result = codec.GetPixels(info, handle.AddrOfPinnedObject()); }
        finally { handle.Free(); }
        if (result == SKCodecResult.IncompleteInput)
            throw new ImageLoadException(name, $"corrupt {format} data: the file is truncated");
        if (result != SKCodecResult.Success)
            throw new ImageLoadException(name, $"corrupt {format} data: decoding failed ({result})");

        // PIL opens a GIF's first frame as a palette image, so convert("RGB") shows the transparent index's palette
        // colour where Skia decodes transparent black.
        byte[]? transparent = format == "GIF" ? GifTransparentColor(bytes) : null;
        var rgb = new byte[3 * src.Width * src.Height];
        for (int i = 0, j = 0; j < rgb.Length; i += 4, j += 3)
        {
            if (transparent != null && rgba[i + 3] == 0)
            {
                rgb[j] = transparent[0]; rgb[j + 1] = transparent[1]; rgb[j + 2] = transparent[2];
                continue;
            }
            rgb[j] = rgba[i];
            rgb[j + 1] = rgba[i + 1];
            rgb[j + 2] = rgba[i + 2];
        }
        return new RgbImage(src.Width, src.Height, rgb);
    }

    /// <summary>The palette colour of the first frame's transparent index (graphic control extension before the first
    /// image descriptor; local palette if present, else global), or null.</summary>
    static byte[]? GifTransparentColor(byte[] b)
    {
        try
        {
            int p = 13;
            byte[]? palette = null;
            if ((b[10] & 0x80) != 0)
            {
                int n = 3 << ((b[10] & 7) + 1);
                palette = b[p..(p + n)];
                p += n;
            }
            int transparentIndex = -1;
            while (p < b.Length)
            {
                byte kind = b[p++];
                if (kind == 0x21)
                {
                    byte label = b[p++];
                    if (label == 0xF9 && b[p] >= 4) transparentIndex = (b[p + 1] & 1) != 0 ? b[p + 4] : -1;
                    while (b[p] != 0) p += b[p] + 1; // skip sub-blocks
                    p++;
                }
                else if (kind == 0x2C)
                {
                    byte packed = b[p + 8];
                    if ((packed & 0x80) != 0)
                    {
                        int n = 3 << ((packed & 7) + 1);
                        palette = b[(p + 9)..(p + 9 + n)];
                    }
                    break;
                }
                else return null;
            }
            if (transparentIndex < 0 || palette == null || 3 * transparentIndex + 3 > palette.Length) return null;
            return palette[(3 * transparentIndex)..(3 * transparentIndex + 3)];
        }
        catch (IndexOutOfRangeException) { return null; } // Skia decoded it, so a malformed tail only loses this detail
        catch (ArgumentOutOfRangeException) { return null; }
    }

    // ---------------------------------------------------------------- encoding

    /// <summary>PNG bytes of this image (8-bit RGB, no alpha).</summary>
    public byte[] EncodePng()
    {
        var rgba = new byte[4 * Width * Height];
        for (int i = 0, j = 0; j < Data.Length; i += 4, j += 3)
        {
            rgba[i] = Data[j];
            rgba[i + 1] = Data[j + 1];
            rgba[i + 2] = Data[j + 2];
            rgba[i + 3] = 255;
        }
        var info = new SKImageInfo(Width, Height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        var handle = GCHandle.Alloc(rgba, GCHandleType.Pinned);
        try
        {
            using var pixmap = new SKPixmap(info, handle.AddrOfPinnedObject(), info.RowBytes);
            using var encoded = pixmap.Encode(SKEncodedImageFormat.Png, 100)
                ?? throw new InvalidOperationException($"PNG encoding of a {Width}x{Height} image failed");
            return encoded.ToArray();
        }
        finally { handle.Free(); }
    }

    /// <summary>Writes a PNG atomically (<see cref="AtomicFile"/>): a temporary file in the same folder is renamed over
    /// the target, so a reader never sees a half-written image. Creates the folder if needed.</summary>
    public void SavePng(string path) => AtomicFile.WriteAllBytes(path, EncodePng());

    // ---------------------------------------------------------------- tensors

    /// <summary>A uint8 [H, W, 3] tensor (a copy) on the given device (CPU by default).</summary>
    public Tensor ToTensor(Device? device = null)
    {
        return tensor(Data, [Height, Width, 3], ScalarType.Byte, device ?? CPU);
    }

    /// <summary>From a uint8 [H, W, 3] tensor on any device (copied).</summary>
    public static RgbImage FromTensor(Tensor t)
    {
        if (t.dtype != ScalarType.Byte)
            throw new ArgumentException($"RgbImage.FromTensor expects a uint8 tensor, got {t.dtype}");
        if (t.dim() != 3 || t.shape[2] != 3)
            throw new ArgumentException($"RgbImage.FromTensor expects shape [H, W, 3], got [{string.Join(", ", t.shape)}]");
        using var c = t.detach().cpu().contiguous();
        var data = c.data<byte>().ToArray();
        return new RgbImage((int)t.shape[1], (int)t.shape[0], data);
    }
}
