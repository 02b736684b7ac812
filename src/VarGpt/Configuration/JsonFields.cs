using System.Text.Json;

namespace VarGpt.Configuration;

/// <summary>Typed access to a JSON object with errors that name the file and the key.</summary>
public readonly struct JsonFields(JsonElement obj, string source)
{
    public JsonElement Element => obj;
    public string Source => source;
    public bool Has(string key) => obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    JsonElement Need(string key)
    {
        if (!Has(key)) throw new InvalidFileException($"{source}: missing required field '{key}'");
        return obj.GetProperty(key);
    }

    T Conv<T>(string key, JsonElement v, Func<JsonElement, T> f, string what)
    {
        try { return f(v); }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new InvalidFileException($"{source}: field '{key}' must be {what}, found {v.GetRawText()}");
        }
    }

    public int Int(string key) => Conv(key, Need(key), e => e.GetInt32(), "an integer");
    public int Int(string key, int dflt) => Has(key) ? Int(key) : dflt;
    public long Long(string key) => Conv(key, Need(key), e => e.GetInt64(), "an integer");
    public double Double(string key) => Conv(key, Need(key), e => e.GetDouble(), "a number");
    public double Double(string key, double dflt) => Has(key) ? Double(key) : dflt;
    public bool Bool(string key, bool dflt) => Has(key) ? Conv(key, obj.GetProperty(key), e => e.GetBoolean(), "true or false") : dflt;
    public string Str(string key) => Conv(key, Need(key), e => e.GetString()!, "a string");
    public string Str(string key, string dflt) => Has(key) ? Str(key) : dflt;
    public int[] Ints(string key) => Conv(key, Need(key), e => e.EnumerateArray().Select(x => x.GetInt32()).ToArray(), "a list of integers");
    public int[] Ints(string key, int[] dflt) => Has(key) ? Ints(key) : dflt;
    public double[] Doubles(string key) => Conv(key, Need(key), e => e.EnumerateArray().Select(x => x.GetDouble()).ToArray(), "a list of numbers");
    public double[] Doubles(string key, double[] dflt) => Has(key) ? Doubles(key) : dflt;
    public int? OptInt(string key) => Has(key) ? Int(key) : null;
    public bool Bool(string key) => Conv(key, Need(key), e => e.GetBoolean(), "true or false");
    /// <summary>An int or a list of ints (e.g. eos_token_id).</summary>
    public int[] IntOrInts(string key) => Need(key).ValueKind == JsonValueKind.Array ? Ints(key) : [Int(key)];
    /// <summary>An int or a list of ints, or the default when absent.</summary>
    public int[] IntOrInts(string key, int[] dflt) => Has(key) ? IntOrInts(key) : dflt;

    /// <summary>Parses a JSON file; a syntax error names the file (and line) instead of surfacing a bare JsonException.</summary>
    public static JsonDocument ParseFile(string path, string what)
    {
        if (!File.Exists(path)) throw new InputNotFoundException($"{what} not found: {path}", path);
        try { return JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not valid JSON ({e.Message})"); }
    }

    public JsonFields Obj(string key)
    {
        var v = Need(key);
        if (v.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{source}: field '{key}' must be an object");
        return new JsonFields(v, $"{source} -> {key}");
    }
}
