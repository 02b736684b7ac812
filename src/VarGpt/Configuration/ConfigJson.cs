using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace VarGpt.Configuration;

/// <summary>
/// Reading the checkpoint's JSON configs onto records with System.Text.Json: snake_case names (as the Hugging Face
/// files spell them), [JsonRequired] for the fields without a default, [JsonExtensionData] keeping unknown fields.
/// Every failure becomes an <see cref="InvalidFileException"/> that names the file and the field.
/// </summary>
public static class ConfigJson
{
    public static JsonSerializerOptions Options { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        RespectRequiredConstructorParameters = true,
        WriteIndented = true,
    };

    /// <summary>Reads <paramref name="path"/> onto <typeparamref name="T"/>; <paramref name="what"/> names the file kind in the not-found error.</summary>
    public static T Read<T>(string path, string what)
    {
        if (!File.Exists(path)) throw new InputNotFoundException($"{what} not found: {path}", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not valid JSON ({e.Message})", e); }
        using (doc) return Parse<T>(doc.RootElement, path);
    }

    /// <summary>Deserializes <paramref name="element"/> (a JSON object) onto <typeparamref name="T"/>; errors name <paramref name="source"/> and the field.</summary>
    public static T Parse<T>(JsonElement element, string source)
    {
        if (element.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{source}: expected a JSON object, found {element.ValueKind}");
        try { return element.Deserialize<T>(Options) ?? throw new InvalidFileException($"{source}: empty"); }
        catch (JsonException e) { throw new InvalidFileException(Describe(e, element, typeof(T), source), e); }
    }

    public static string Serialize<T>(T value) => JsonSerializer.Serialize(value, Options);

    /// <summary>"file: missing required field 'x' in 'special_tokens'" / "file: field 'hidden_size' must be an integer, found "big"".</summary>
    static string Describe(JsonException e, JsonElement root, Type type, string source)
    {
        var path = (e.Path ?? "$").TrimStart('$').TrimStart('.');
        var where = path.Length == 0 ? "" : $" in '{path}'";
        var missing = System.Text.RegularExpressions.Regex.Match(e.Message, @"missing required properties including: (.*?)\.?$");
        if (missing.Success) return $"{source}: missing required field {missing.Groups[1].Value}{where}";
        if (e is FieldException) return $"{source}: {e.Message}";   // a converter's own message
        var segments = path.Split('.', StringSplitOptions.RemoveEmptyEntries);
        if (segments.Length == 0) return $"{source}: {e.Message}";
        var leaf = segments[^1];
        int bracket = leaf.IndexOf('[');
        var name = bracket >= 0 ? leaf[..bracket] : leaf;
        var target = TypeAt(type, segments);
        var found = Find(root, segments) is { } v ? $", found {v.GetRawText()}" : "";
        var parent = segments.Length > 1 ? $" of '{string.Join(".", segments[..^1])}'" : "";
        return $"{source}: field '{name}'{parent} must be {Kind(target)}{found}";
    }

    static Type? TypeAt(Type type, string[] segments)
    {
        Type? t = type;
        foreach (var seg in segments)
        {
            if (t is null) return null;
            var name = seg.Contains('[') ? seg[..seg.IndexOf('[')] : seg;
            var prop = t.GetProperties(BindingFlags.Public | BindingFlags.Instance).FirstOrDefault(p =>
                (p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name ?? JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Name)) == name);
            t = prop?.PropertyType;
            if (t is not null) t = Nullable.GetUnderlyingType(t) ?? t;
            if (seg.Contains('[') && t is not null) t = t.IsArray ? t.GetElementType() : t.GetGenericArguments().FirstOrDefault();
        }
        return t;
    }

    static JsonElement? Find(JsonElement root, string[] segments)
    {
        var e = root;
        foreach (var seg in segments)
        {
            var name = seg.Contains('[') ? seg[..seg.IndexOf('[')] : seg;
            if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out e)) return null;
            if (seg.Contains('[') && int.TryParse(seg[(seg.IndexOf('[') + 1)..seg.IndexOf(']')], out int i))
            {
                if (e.ValueKind != JsonValueKind.Array || i >= e.GetArrayLength()) return null;
                e = e[i];
            }
        }
        return e;
    }

    static string Kind(Type? t) => t switch
    {
        null => "of another type",
        _ when t == typeof(int) || t == typeof(long) => "an integer",
        _ when t == typeof(double) || t == typeof(float) => "a number",
        _ when t == typeof(bool) => "true or false",
        _ when t == typeof(string) => "a string",
        _ when t == typeof(int[]) || t == typeof(long[]) => "an integer or a list of integers",
        _ when t == typeof(double[]) => "a list of numbers",
        _ when t == typeof(string[]) => "a list of strings",
        _ => "an object",
    };

    /// <summary>A converter's error whose message already names the field.</summary>
    internal sealed class FieldException(string message) : JsonException(message);

    /// <summary>
    /// eos_token_id: an int or a list of ints in the files, always a list here. Hand-written because System.Text.Json
    /// reads one JSON shape per type.
    /// </summary>
    public sealed class IntOrIntList : JsonConverter<int[]>
    {
        public override int[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            ReadLongs(ref reader).Select(x => x is >= int.MinValue and <= int.MaxValue ? (int)x
                : throw new FieldException($"eos_token_id {x} does not fit in 32 bits")).ToArray();   // was an OverflowException (found by fuzzing)
        public override void Write(Utf8JsonWriter writer, int[] value, JsonSerializerOptions options) => JsonSerializer.Serialize(writer, value);
    }

    /// <inheritdoc cref="IntOrIntList"/>
    public sealed class LongOrLongList : JsonConverter<long[]>
    {
        public override long[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => ReadLongs(ref reader);
        public override void Write(Utf8JsonWriter writer, long[] value, JsonSerializerOptions options) => JsonSerializer.Serialize(writer, value);
    }

    static long[] ReadLongs(ref Utf8JsonReader reader)
    {
        static long One(ref Utf8JsonReader reader) => reader.TokenType == JsonTokenType.Number && reader.TryGetInt64(out long v) ? v : throw new JsonException();
        if (reader.TokenType != JsonTokenType.StartArray) return [One(ref reader)];
        var list = new List<long>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray) list.Add(One(ref reader));
        return list.ToArray();
    }
}
