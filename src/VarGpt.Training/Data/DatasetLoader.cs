using System.Text.Json;

namespace VarGpt.Training.Data;

/// <summary>Where to find datasets and how many records to take (the data_args of LLaMA-Factory that matter here).</summary>
public sealed record DatasetLoadOptions
{
    /// <summary>Folder holding dataset_info.json (dataset_dir, official default "data").</summary>
    public required string DatasetDir { get; init; }
    /// <summary>Folder image paths are relative to (image_dir; defaults to DatasetDir as in data_args.py).</summary>
    public string? ImageDir { get; init; }
    /// <summary>Stage dpo reads ranking datasets (chosen/rejected), stage sft the others (loader._get_merged_dataset).</summary>
    public bool Ranking { get; init; }
    /// <summary>max_samples: keep the first N records of each dataset.</summary>
    public int? MaxSamples { get; init; }
    /// <summary>Seed of the num_samples subsampling.</summary>
    public int Seed { get; init; } = 42;
}

/// <summary>
/// Loads LLaMA-Factory sharegpt datasets (dataset_info.json + .json/.jsonl files), converts each record like
/// aligner.convert_sharegpt, then validates and classifies it for VARGPT training. Unlike the official loader, which
/// logs a warning and silently drops malformed records, every problem is collected and raised at once
/// (<see cref="DatasetValidationException"/>), and every missing image file is listed at once
/// (<see cref="MissingImagesException"/>), before any training starts.
/// </summary>
public static class DatasetLoader
{
    /// <summary>IMAGE_PLACEHOLDER / IMAGE_GEN_PLACEHOLDER of extras/constants.py (their defaults).</summary>
    public const string ImagePlaceholder = "<image>";
    public const string ImageGenPlaceholder = "<image_gen>";

    static readonly string[] SupportedExtensions = [".json", ".jsonl"];

    /// <summary>Loads, validates and concatenates the named datasets (mix_strategy "concat").</summary>
    public static IReadOnlyList<TrainingRecord> Load(IReadOnlyList<string> datasetNames, DatasetLoadOptions options)
    {
        if (datasetNames.Count == 0) throw new InvalidOptionException("no dataset given (the 'dataset' key lists dataset_info.json entries)");
        var attrs = DatasetInfo.Load(options.DatasetDir, datasetNames);
        var issues = new List<DatasetIssue>();
        var missing = new List<(string, string, IReadOnlyList<string>)>();
        var all = new List<TrainingRecord>();
        foreach (var attr in attrs)
        {
            if (options.Ranking && !attr.Ranking)
                throw new InvalidFileException($"dataset '{attr.Name}' is not a ranking dataset (\"ranking\": true) and cannot be used for stage dpo");
            if (!options.Ranking && attr.Ranking)
                throw new InvalidFileException($"dataset '{attr.Name}' is a ranking dataset and cannot be used for stage sft");
            all.AddRange(LoadDataset(attr, options, issues, missing));
        }
        if (issues.Count > 0) throw new DatasetValidationException(issues);
        if (missing.Count > 0) throw new MissingImagesException(missing);
        return all;
    }

    static List<TrainingRecord> LoadDataset(DatasetAttr attr, DatasetLoadOptions o, List<DatasetIssue> issues,
        List<(string, string, IReadOnlyList<string>)> missing)
    {
        var local = Path.Combine(o.DatasetDir, attr.FileName);
        List<string> files;
        if (Directory.Exists(local)) files = Directory.GetFiles(local).Order(StringComparer.Ordinal).ToList();
        else if (File.Exists(local)) files = [local];
        else throw new InputNotFoundException($"dataset '{attr.Name}': file {local} not found", local);
        foreach (var f in files)
            if (!SupportedExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                throw new InvalidFileException($"dataset '{attr.Name}': {f}: allowed file types are {string.Join(", ", SupportedExtensions)}");
        if (files.Select(f => Path.GetExtension(f).ToLowerInvariant()).Distinct().Count() > 1)
            throw new InvalidFileException($"dataset '{attr.Name}': file types in {local} should be identical");

        var records = new List<(string File, int Index, JsonElement Rec)>();
        foreach (var f in files)
        {
            int i = 0;
            foreach (var rec in ReadRecords(f)) records.Add((f, i++, rec));
        }
        if (attr.NumSamples is int n) records = Subsample(records, n, o.Seed);
        if (o.MaxSamples is int max && records.Count > max) records = records.Take(max).ToList();

        var imageDir = o.ImageDir ?? o.DatasetDir;
        var result = new List<TrainingRecord>(records.Count);
        foreach (var (file, index, rec) in records)
        {
            var r = Convert(attr, file, index, rec, imageDir, o.DatasetDir, issues, missing);
            if (r != null) result.Add(r);
        }
        return result;
    }

    /// <summary>Reads a JSON array of objects or JSON lines (the HF "json" builder accepts both, whatever the extension).</summary>
    public static IEnumerable<JsonElement> ReadRecords(string file)
    {
        var text = File.ReadAllText(file);
        var trimmed = text.AsSpan().TrimStart();
        var opts = new JsonDocumentOptions { AllowTrailingCommas = true };
        if (trimmed.Length > 0 && trimmed[0] == '[')
        {
            JsonDocument doc;
            try { doc = JsonDocument.Parse(text, opts); }
            catch (JsonException e) { throw new InvalidFileException($"{file}: not valid JSON ({e.Message})"); }
            using (doc)
                return doc.RootElement.EnumerateArray().Select(e => e.Clone()).ToList();
        }
        var list = new List<JsonElement>();
        int lineNo = 0;
        foreach (var line in text.Split('\n'))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line, opts);
                list.Add(doc.RootElement.Clone());
            }
            catch (JsonException e) { throw new InvalidFileException($"{file}: line {lineNo}: not valid JSON ({e.Message})"); }
        }
        return list;
    }

    /// <summary>num_samples: a seeded permutation, then sampling with replacement if more are asked than exist (loader.py).</summary>
    static List<(string, int, JsonElement)> Subsample(List<(string, int, JsonElement)> recs, int n, int seed)
    {
        var rng = new SplitMix64((ulong)seed);
        var perm = Enumerable.Range(0, recs.Count).ToArray();
        for (int i = perm.Length - 1; i > 0; i--) { int j = (int)rng.NextBelow((ulong)(i + 1)); (perm[i], perm[j]) = (perm[j], perm[i]); }
        var idx = perm.Take(n).ToList();
        while (idx.Count < n && recs.Count > 0) idx.Add((int)rng.NextBelow((ulong)recs.Count));
        return idx.Select(i => recs[i]).ToList();
    }

    static TrainingRecord? Convert(DatasetAttr a, string file, int index, JsonElement rec, string imageDir, string datasetDir,
        List<DatasetIssue> issues, List<(string, string, IReadOnlyList<string>)> missing)
    {
        int before = issues.Count;
        void Bad(string field, string reason) => issues.Add(new DatasetIssue(file, index, field, reason));
        if (rec.ValueKind != JsonValueKind.Object) { Bad("(record)", $"must be a JSON object, found {rec.ValueKind}"); return null; }

        // messages -> turns (role tags mapped to user/assistant)
        if (!rec.TryGetProperty(a.Messages, out var msgs) || msgs.ValueKind != JsonValueKind.Array)
        {
            Bad(a.Messages, "missing or not a list of messages");
            return null;
        }
        var raw = new List<(string Role, string Content, string Field)>();
        int mi = 0;
        foreach (var m in msgs.EnumerateArray())
        {
            string field = $"{a.Messages}[{mi++}]";
            var t = ReadTurn(a, m, field, Bad);
            if (t != null) raw.Add((t.Value.Role, t.Value.Content, field));
        }
        if (issues.Count > before) return null;

        string system = "";
        int sysOff = 0; // message index offset when the first message is the system prompt
        if (raw.Count > 0 && raw[0].Role == a.SystemTag)
        {
            system = raw[0].Content;
            raw.RemoveAt(0);
            sysOff = 1;
        }
        else if (a.System != null && rec.TryGetProperty(a.System, out var sys) && sys.ValueKind != JsonValueKind.Null)
        {
            if (sys.ValueKind != JsonValueKind.String) Bad(a.System, "must be a string");
            else system = sys.GetString()!;
        }

        var turns = new List<ChatTurn>();
        for (int i = 0; i < raw.Count; i++)
        {
            var (role, content, field) = raw[i];
            string want = i % 2 == 0 ? a.UserTag : a.AssistantTag;
            if (role == a.ObservationTag || role == a.FunctionTag)
                Bad($"{field}.{a.RoleTag}", $"tool turns ('{role}') are not supported by VARGPT training");
            else if (role != want)
                Bad($"{field}.{a.RoleTag}", $"expected '{want}' at position {i} (turns must alternate {a.UserTag}/{a.AssistantTag}), found '{role}'");
            turns.Add(new ChatTurn(i % 2 == 0 ? "user" : "assistant", content));
        }

        List<ChatTurn> prompt, response;
        if (a.Ranking)
        {
            if (turns.Count % 2 != 1) Bad(a.Messages, $"a ranking record needs an odd number of turns ending with the {a.UserTag} prompt, found {turns.Count}");
            var chosen = ReadTurn(a, rec.TryGetProperty(a.Chosen!, out var c) ? c : default, a.Chosen!, Bad);
            var rejected = ReadTurn(a, rec.TryGetProperty(a.Rejected!, out var r) ? r : default, a.Rejected!, Bad);
            if (chosen is { } ch && ch.Role != a.AssistantTag) Bad($"{a.Chosen}.{a.RoleTag}", $"must be '{a.AssistantTag}', found '{ch.Role}'");
            if (rejected is { } rj && rj.Role != a.AssistantTag) Bad($"{a.Rejected}.{a.RoleTag}", $"must be '{a.AssistantTag}', found '{rj.Role}'");
            if (issues.Count > before) return null;
            prompt = turns;
            response = [new("assistant", chosen!.Value.Content), new("assistant", rejected!.Value.Content)];
        }
        else
        {
            if (turns.Count < 2 || turns.Count % 2 != 0)
                Bad(a.Messages, $"needs an even number (>= 2) of turns ending with the {a.AssistantTag} answer, found {turns.Count}");
            if (issues.Count > before) return null;
            prompt = turns.Take(turns.Count - 1).ToList();
            response = [turns[^1]];
        }

        // images column: a string or a list of strings
        var images = new List<string>();
        if (a.Images != null && rec.TryGetProperty(a.Images, out var imgs) && imgs.ValueKind != JsonValueKind.Null)
        {
            if (imgs.ValueKind == JsonValueKind.String) images.Add(imgs.GetString()!);
            else if (imgs.ValueKind == JsonValueKind.Array)
            {
                int k = 0;
                foreach (var im in imgs.EnumerateArray())
                {
                    if (im.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(im.GetString())) Bad($"{a.Images}[{k}]", "must be a non-empty path string");
                    else images.Add(im.GetString()!);
                    k++;
                }
            }
            else Bad(a.Images, "must be a path or a list of paths");
        }
        else if (a.Images == null && rec.TryGetProperty("images", out var undeclared) && undeclared.ValueKind == JsonValueKind.Array && undeclared.GetArrayLength() > 0)
            Bad("images", "the record has images but dataset_info.json maps no 'images' column (they would be ignored)");

        // placeholders: <image> only where the user speaks, <image_gen> only where the assistant answers
        var slotsInOrder = new List<bool>(); // IsTarget per placeholder, conversation order
        int nImage = 0, nGen = 0;
        var all = prompt.Select((t, i) => (t, Field: $"{a.Messages}[{i + sysOff}]")).ToList();
        if (a.Ranking)
        {
            all.Add((response[0], a.Chosen!));
            all.Add((response[1], a.Rejected!));
        }
        else all.Add((response[0], $"{a.Messages}[{prompt.Count + sysOff}]"));
        foreach (var (t, field) in all)
        {
            var marks = Placeholders(t.Content);
            int img = marks.Count(x => !x), gen = marks.Count(x => x);
            if (t.Role == "assistant" && img > 0) Bad($"{field}.{a.ContentTag}", $"{ImagePlaceholder} may only appear in {a.UserTag} turns");
            if (t.Role == "user" && gen > 0) Bad($"{field}.{a.ContentTag}", $"{ImageGenPlaceholder} may only appear in {a.AssistantTag} turns (the generated image is the answer)");
            nImage += img; nGen += gen;
            slotsInOrder.AddRange(marks);
        }

        RecordKind kind;
        if (a.Ranking)
        {
            kind = RecordKind.Preference;
            if (nImage > 0) Bad(a.Messages, $"{ImagePlaceholder} in a preference prompt is not supported (pairwise.py gives each branch only its own target image)");
            if (Placeholders(response[0].Content).Count(x => x) != 1) Bad($"{a.Chosen}.{a.ContentTag}", $"must contain exactly one {ImageGenPlaceholder}");
            if (Placeholders(response[1].Content).Count(x => x) != 1) Bad($"{a.Rejected}.{a.ContentTag}", $"must contain exactly one {ImageGenPlaceholder}");
            if (images.Count != 2) Bad(a.Images ?? "images", $"a preference record needs exactly 2 images [chosen_target, rejected_target], found {images.Count}");
        }
        else
        {
            if (nGen > 1) Bad(a.Messages, $"{nGen} {ImageGenPlaceholder} placeholders; the official training forward supports one generated image per record");
            kind = nGen > 0 ? (nImage > 0 ? RecordKind.Editing : RecordKind.Generation) : (nImage > 0 ? RecordKind.Understanding : RecordKind.Text);
            if (images.Count != nImage + nGen)
                Bad(a.Images ?? "images", $"{images.Count} image(s) for {nImage} {ImagePlaceholder} + {nGen} {ImageGenPlaceholder} placeholder(s); they must match (mm_plugin.process_messages)");
        }
        if (issues.Count > before) return null;

        var slots = new List<ImageSlot>(images.Count);
        string where = $"{file}: record {index}";
        for (int i = 0; i < images.Count; i++)
        {
            bool target = a.Ranking || slotsInOrder[i];
            var resolved = ResolveImage(images[i], imageDir, datasetDir, out var tried);
            if (resolved == null) missing.Add(($"{where} {a.Images}[{i}]", images[i], tried));
            slots.Add(new ImageSlot(resolved ?? images[i], target));
        }
        return new TrainingRecord(a.Name, file, index, kind, system, prompt, response, slots);
    }

    static (string Role, string Content)? ReadTurn(DatasetAttr a, JsonElement m, string field, Action<string, string> bad)
    {
        if (m.ValueKind != JsonValueKind.Object) { bad(field, m.ValueKind == JsonValueKind.Undefined ? "missing" : "must be an object with role and content"); return null; }
        bool ok = true;
        if (!m.TryGetProperty(a.RoleTag, out var role) || role.ValueKind != JsonValueKind.String) { bad($"{field}.{a.RoleTag}", "missing or not a string"); ok = false; }
        if (!m.TryGetProperty(a.ContentTag, out var content) || content.ValueKind != JsonValueKind.String) { bad($"{field}.{a.ContentTag}", "missing or not a string"); ok = false; }
        return ok ? (role.GetString()!, content.GetString()!) : null;
    }

    /// <summary>Placeholders of a text in order: false = &lt;image&gt;, true = &lt;image_gen&gt; (mm_plugin.find_placeholder_positions).</summary>
    public static List<bool> Placeholders(string text)
    {
        var found = new List<(int Pos, bool Gen)>();
        for (int p = text.IndexOf(ImagePlaceholder, StringComparison.Ordinal); p >= 0; p = text.IndexOf(ImagePlaceholder, p + 1, StringComparison.Ordinal)) found.Add((p, false));
        for (int p = text.IndexOf(ImageGenPlaceholder, StringComparison.Ordinal); p >= 0; p = text.IndexOf(ImageGenPlaceholder, p + 1, StringComparison.Ordinal)) found.Add((p, true));
        return found.OrderBy(f => f.Pos).Select(f => f.Gen).ToList();
    }

    /// <summary>
    /// Image path resolution. Official (aligner._convert_images): image_dir/path if that file exists, else the path as
    /// written (relative to the working directory). Official data paths are written relative to the official repo root,
    /// whose "data/" folder is the dataset_dir ("data/vargpt_demo/1.jpg"), so as a last resort the path with its first
    /// folder dropped is tried under dataset_dir: that finds the images of a dataset folder copied out of the official repo.
    /// </summary>
    public static string? ResolveImage(string path, string imageDir, string datasetDir, out IReadOnlyList<string> tried)
    {
        var candidates = new List<string>();
        if (Path.IsPathRooted(path)) candidates.Add(path);
        else
        {
            candidates.Add(Path.Combine(imageDir, path));
            candidates.Add(Path.GetFullPath(path));
            var norm = path.Replace('\\', '/');
            int slash = norm.IndexOf('/');
            if (slash > 0) candidates.Add(Path.Combine(datasetDir, norm[(slash + 1)..]));
        }
        tried = candidates.Select(Path.GetFullPath).Distinct().ToList();
        return tried.FirstOrDefault(File.Exists);
    }
}

/// <summary>SplitMix64: a tiny, version-stable PRNG for data order (System.Random's sequence is not a documented contract).</summary>
public struct SplitMix64(ulong seed)
{
    ulong _state = seed;
    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
    /// <summary>Uniform integer in [0, n) by rejection (no modulo bias).</summary>
    public ulong NextBelow(ulong n)
    {
        ulong limit = ulong.MaxValue - ulong.MaxValue % n;
        ulong x;
        do x = Next(); while (x >= limit);
        return x % n;
    }
}
