using System.Globalization;
using System.Text.Json;
using SkiaSharp;
using VarGpt.Vision;

namespace VarGpt.Server.Http;

/// <summary>
/// Typed reads of a JSON request object; every error is an OpenAI-style 400 naming the parameter (<c>param</c>) and
/// what was expected.
/// </summary>
public readonly struct RequestFields(JsonElement obj, string prefix = "")
{
    public JsonElement Element => obj;

    string Name(string key) => prefix.Length == 0 ? key : $"{prefix}.{key}";

    public bool Has(string key) => obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    public IEnumerable<string> Keys => obj.EnumerateObject().Select(p => p.Name);

    JsonElement? Get(string key) => obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    static string Kind(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => "a string", JsonValueKind.Number => "a number", JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array", JsonValueKind.Object => "an object", _ => "null",
    };

    public string? String(string key, int maxLength = 1 << 20)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.String) throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected a string, but got {Kind(v)} instead.", Name(key), "invalid_type");
        var s = v.GetString()!;
        if (s.Length > maxLength) throw ApiException.BadRequest($"Invalid '{Name(key)}': string too long. Expected a string with maximum length {maxLength}, but got a string with length {s.Length} instead.", Name(key), "string_above_max_length");
        return s;
    }

    public string RequiredString(string key, int maxLength = 1 << 20) =>
        String(key, maxLength) ?? throw ApiException.BadRequest($"Missing required parameter: '{Name(key)}'.", Name(key), "missing_required_parameter");

    public double? Number(string key, double min, double max)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected a number, but got {Kind(v)} instead.", Name(key), "invalid_type");
        double d = v.GetDouble();
        if (!(d >= min && d <= max))
            throw ApiException.BadRequest($"Invalid '{Name(key)}': {d.ToString(CultureInfo.InvariantCulture)} is out of range; expected a number from {min.ToString(CultureInfo.InvariantCulture)} to {max.ToString(CultureInfo.InvariantCulture)}.", Name(key), "invalid_value");
        return d;
    }

    public long? Integer(string key, long min, long max)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long n))
            throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected an integer, but got {(v.ValueKind == JsonValueKind.Number ? "a decimal number" : Kind(v))} instead.", Name(key), "invalid_type");
        if (n < min || n > max)
            throw ApiException.BadRequest($"Invalid '{Name(key)}': {n} is out of range; expected an integer from {min} to {max}.", Name(key), "invalid_value");
        return n;
    }

    public bool? Bool(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected a boolean, but got {Kind(v)} instead.", Name(key), "invalid_type");
        return v.GetBoolean();
    }

    public JsonElement? Array(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected an array, but got {Kind(v)} instead.", Name(key), "invalid_type");
        return v;
    }

    public RequestFields? Object(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest($"Invalid type for '{Name(key)}': expected an object, but got {Kind(v)} instead.", Name(key), "invalid_type");
        return new RequestFields(v, Name(key));
    }

    /// <summary>Parameters the server does not know: OpenAI answers "Unrecognized request argument supplied".</summary>
    public void RejectUnknown(IReadOnlySet<string> known)
    {
        foreach (var p in obj.EnumerateObject())
            if (!known.Contains(p.Name))
                throw ApiException.BadRequest($"Unrecognized request argument supplied: {Name(p.Name)}", Name(p.Name), "unknown_parameter");
    }

    /// <summary>The root object of a JSON body, or the OpenAI-style 400 for a body that is not one.</summary>
    public static RequestFields Root(JsonDocument doc)
    {
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
            throw ApiException.BadRequest($"The request body must be a JSON object, but got {Kind(doc.RootElement)}.", null, "invalid_json");
        return new RequestFields(doc.RootElement);
    }
}

/// <summary>Input images: size limits checked from the encoded header before decoding, then decoded like the CLI does.</summary>
public static class InputImages
{
    static readonly string[] Types = ["image/png", "image/jpeg", "image/jpg", "image/webp"];

    /// <summary>Decodes a data: URI (PNG/JPEG/WebP base64); remote and other URLs are refused with a message that says what to send.</summary>
    public static RgbImage FromUrl(string url, string param, ServerOptions limits)
    {
        if (url.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || url.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"Invalid '{param}': this server never fetches remote image URLs. Send the image inline as a data URI (data:image/png;base64,...).", param, "remote_image_url_not_supported");
        if (!url.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"Invalid '{param}': expected a data URI (data:image/png;base64,...); got a URL with scheme '{url.Split(':')[0]}'.", param, "invalid_image_url");
        int comma = url.IndexOf(',');
        if (comma < 0) throw ApiException.BadRequest($"Invalid '{param}': the data URI has no ',' before its data.", param, "invalid_image_url");
        var header = url[5..comma];
        var media = header.Split(';')[0].Trim().ToLowerInvariant();
        if (!header.EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"Invalid '{param}': the data URI must be base64-encoded (data:{media};base64,...).", param, "invalid_image_url");
        if (!Types.Contains(media))
            throw ApiException.BadRequest($"Invalid '{param}': media type '{media}' is not supported; send image/png or image/jpeg (image/webp also works).", param, "invalid_image_format");
        long approx = (url.Length - comma - 1) / 4 * 3;
        if (approx > limits.MaxImageBytes) throw TooManyBytes(param, approx, limits);
        byte[] bytes;
        try { bytes = Convert.FromBase64String(url[(comma + 1)..]); }
        catch (FormatException) { throw ApiException.BadRequest($"Invalid '{param}': the data URI's base64 data is malformed.", param, "invalid_image_url"); }
        return FromBytes(bytes, param, limits);
    }

    public static RgbImage FromBytes(byte[] bytes, string param, ServerOptions limits)
    {
        if (bytes.Length > limits.MaxImageBytes) throw TooManyBytes(param, bytes.Length, limits);
        if (bytes.Length == 0) throw ApiException.BadRequest($"Invalid '{param}': the image is empty.", param, "invalid_image");
        // pixel limit from the header, before any pixel memory is allocated (decompression bombs)
        using (var stream = new SKMemoryStream(bytes))
        using (var codec = SKCodec.Create(stream))
        {
            if (codec is null)
                throw ApiException.BadRequest($"Invalid '{param}': the image could not be decoded (not a PNG/JPEG/WebP image, or corrupt).", param, "invalid_image");
            long pixels = (long)codec.Info.Width * codec.Info.Height;
            if (pixels > limits.MaxImagePixels)
                throw ApiException.BadRequest($"Invalid '{param}': the image is {codec.Info.Width}x{codec.Info.Height} = {pixels} pixels; the limit is {limits.MaxImagePixels} pixels.", param, "image_too_large");
        }
        try { return RgbImage.Decode(bytes, param); }
        catch (ImageLoadException e) { throw ApiException.BadRequest($"Invalid '{param}': {e.Message}", param, "invalid_image"); }
    }

    static ApiException TooManyBytes(string param, long bytes, ServerOptions limits) =>
        ApiException.BadRequest($"Invalid '{param}': the image has {bytes} bytes; the limit is {limits.MaxImageBytes} bytes.", param, "image_too_large");
}
