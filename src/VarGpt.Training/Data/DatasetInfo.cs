using System.Text.Json;

namespace VarGpt.Training.Data;

/// <summary>
/// One entry of LLaMA-Factory's <c>dataset_info.json</c> (mirrors <c>data/parser.py</c> <c>DatasetAttr</c>):
/// where the records live, their formatting and which JSON columns/tags hold what. Only local files in the
/// "sharegpt" formatting are supported; everything else is rejected by name so a user is never surprised.
/// </summary>
public sealed record DatasetAttr
{
    public required string Name { get; init; }
    /// <summary>file_name: a .json/.jsonl file or a folder of them, relative to dataset_dir.</summary>
    public required string FileName { get; init; }
    public string Formatting { get; init; } = "alpaca";
    public bool Ranking { get; init; }
    public int? NumSamples { get; init; }

    // columns (parser.py defaults for sharegpt)
    public string Messages { get; init; } = "conversations";
    public string? System { get; init; }
    public string? Images { get; init; }
    public string? Chosen { get; init; }
    public string? Rejected { get; init; }

    // tags
    public string RoleTag { get; init; } = "from";
    public string ContentTag { get; init; } = "value";
    public string UserTag { get; init; } = "human";
    public string AssistantTag { get; init; } = "gpt";
    public string ObservationTag { get; init; } = "observation";
    public string FunctionTag { get; init; } = "function_call";
    public string SystemTag { get; init; } = "system";
}

/// <summary>Reads <c>dataset_info.json</c> and resolves the requested dataset names (parser.get_dataset_list).</summary>
public static class DatasetInfo
{
    public const string FileName = "dataset_info.json";

    static readonly HashSet<string> KnownEntryKeys =
        ["file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset", "folder", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url"];
    static readonly HashSet<string> KnownColumns = ["messages", "images", "chosen", "rejected", "system", "tools", "videos", "kto_tag", "prompt", "query", "response", "history"];
    static readonly HashSet<string> KnownTags = ["role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"];

    /// <summary>Parses the entries for <paramref name="names"/> from <c>{datasetDir}/dataset_info.json</c>.</summary>
    public static IReadOnlyList<DatasetAttr> Load(string datasetDir, IReadOnlyList<string> names)
    {
        var path = Path.Combine(datasetDir, FileName);
        if (!File.Exists(path)) throw new InputNotFoundException($"{path} not found (dataset_dir must contain {FileName})", path);
        var bytes = File.ReadAllBytes(path);
        // JsonDocument checks UTF-8 only when a string is read (found by fuzzing: fuzz/regressions/dataset)
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new InvalidFileException($"{path}: not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true }); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{path}: the root must be an object of dataset entries");
        var result = new List<DatasetAttr>();
        foreach (var name in names)
        {
            if (!doc.RootElement.TryGetProperty(name, out var entry))
                throw new InvalidFileException($"{path}: undefined dataset '{name}' (defined: {string.Join(", ", doc.RootElement.EnumerateObject().Select(p => p.Name).Take(20))}...)");
            result.Add(Parse(entry, name, path));
        }
        return result;
    }

    static DatasetAttr Parse(JsonElement e, string name, string path)
    {
        string where = $"{path}: dataset '{name}'";
        if (e.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{where}: entry must be an object");
        foreach (var p in e.EnumerateObject())
            if (!KnownEntryKeys.Contains(p.Name)) throw new InvalidFileException($"{where}: unknown key '{p.Name}'");
        foreach (var remote in new[] { "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url" })
            if (e.TryGetProperty(remote, out _) && !e.TryGetProperty("file_name", out _))
                throw new InvalidFileException($"{where}: '{remote}' datasets are not supported; download the files and point 'file_name' at them");
        string fileName = Str(e, "file_name", where) ?? throw new InvalidFileException($"{where}: missing 'file_name'");
        string formatting = Str(e, "formatting", where) ?? "alpaca";
        if (formatting != "sharegpt")
            throw new InvalidFileException($"{where}: formatting '{formatting}' is not supported (VARGPT data uses \"formatting\": \"sharegpt\")");
        foreach (var k in new[] { "subset", "folder" })
            if (e.TryGetProperty(k, out var v) && v.ValueKind != JsonValueKind.Null)
                throw new InvalidFileException($"{where}: '{k}' only applies to hub datasets and is not supported");
        if (Str(e, "split", where) is { } split && split != "train")   // Str: a non-string split is an error naming it, not an InvalidOperationException (found by fuzzing)
            throw new InvalidFileException($"{where}: split '{split}' is not supported for local files (only 'train')");

        bool ranking = false;
        if (e.TryGetProperty("ranking", out var r))
        {
            if (r.ValueKind is not (JsonValueKind.True or JsonValueKind.False)) throw new InvalidFileException($"{where}: 'ranking' must be true or false");
            ranking = r.GetBoolean();
        }
        int? numSamples = null;
        if (e.TryGetProperty("num_samples", out var ns) && ns.ValueKind != JsonValueKind.Null)
        {
            // TryGetInt32 throws for a non-number (found by fuzzing: fuzz/regressions/dataset)
            if (ns.ValueKind != JsonValueKind.Number || !ns.TryGetInt32(out int n) || n <= 0) throw new InvalidFileException($"{where}: 'num_samples' must be a positive integer, found {ns.GetRawText()}");
            numSamples = n;
        }

        var attr = new DatasetAttr { Name = name, FileName = fileName, Formatting = formatting, Ranking = ranking, NumSamples = numSamples };
        if (e.TryGetProperty("columns", out var cols))
        {
            if (cols.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{where}: 'columns' must be an object");
            foreach (var c in cols.EnumerateObject())
            {
                if (!KnownColumns.Contains(c.Name)) throw new InvalidFileException($"{where}: unknown column key '{c.Name}'");
                if (c.Name is "tools" or "videos" or "kto_tag")
                    throw new InvalidFileException($"{where}: column '{c.Name}' is not supported by VARGPT training");
                if (c.Name is "prompt" or "query" or "response" or "history")
                    throw new InvalidFileException($"{where}: column '{c.Name}' belongs to the alpaca formatting, not sharegpt");
            }
            attr = attr with
            {
                Messages = Str(cols, "messages", where) ?? attr.Messages,
                System = Str(cols, "system", where),
                Images = Str(cols, "images", where),
                Chosen = Str(cols, "chosen", where),
                Rejected = Str(cols, "rejected", where),
            };
        }
        if (e.TryGetProperty("tags", out var tags))
        {
            if (tags.ValueKind != JsonValueKind.Object) throw new InvalidFileException($"{where}: 'tags' must be an object");
            foreach (var t in tags.EnumerateObject())
                if (!KnownTags.Contains(t.Name)) throw new InvalidFileException($"{where}: unknown tag key '{t.Name}'");
            attr = attr with
            {
                RoleTag = Str(tags, "role_tag", where) ?? attr.RoleTag,
                ContentTag = Str(tags, "content_tag", where) ?? attr.ContentTag,
                UserTag = Str(tags, "user_tag", where) ?? attr.UserTag,
                AssistantTag = Str(tags, "assistant_tag", where) ?? attr.AssistantTag,
                ObservationTag = Str(tags, "observation_tag", where) ?? attr.ObservationTag,
                FunctionTag = Str(tags, "function_tag", where) ?? attr.FunctionTag,
                SystemTag = Str(tags, "system_tag", where) ?? attr.SystemTag,
            };
        }
        if (ranking && (attr.Chosen == null || attr.Rejected == null))
            throw new InvalidFileException($"{where}: a ranking dataset needs columns 'chosen' and 'rejected'");
        return attr;
    }

    static string? Str(JsonElement obj, string key, string where)
    {
        if (!obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String) throw new InvalidFileException($"{where}: '{key}' must be a string, found {v.GetRawText()}");
        return v.GetString();
    }
}
