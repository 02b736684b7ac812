using System.Text.Json;
using System.Text.Json.Nodes;

namespace VarGpt.ShapesWorld;

/// <summary>
/// Writes ShapesWorld samples as a LLaMA-Factory dataset folder (the layout of the official VARGPT demo data):
/// <c>dataset_info.json</c> (one sharegpt entry per dataset), <c>NAME.json</c> (records
/// <c>{"messages":[user, assistant], "images":[...], "id":n}</c>), PNG images under <c>images/NAME/</c> with paths
/// relative to the folder (LLaMA-Factory resolves them against its media_dir = dataset_dir), and
/// <c>NAME_truth.json</c>: the ground truth of every record (scenes with their canonical descriptions, requested
/// spec, edit, question kind and exact answer), aligned by "id".
/// </summary>
public static class ShapesDataset
{
    public const string TrainName = "shapesworld_train", EvalName = "shapesworld_eval";

    public static readonly JsonSerializerOptions TruthJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Writes trainCount training and evalCount held-out samples (kind = null: the generator's task mix).</summary>
    public static void Write(string folder, ShapesWorldGenerator generator, int trainCount, int evalCount, ShapesTaskKind? kind = null)
    {
        WriteDataset(folder, TrainName, generator.Samples(ShapesSplit.Train, trainCount, kind), generator.Options.ImageSize);
        WriteDataset(folder, EvalName, generator.Samples(ShapesSplit.Eval, evalCount, kind), generator.Options.ImageSize);
    }

    /// <summary>Writes one dataset and adds (or replaces) its entry in folder/dataset_info.json.</summary>
    public static void WriteDataset(string folder, string name, IEnumerable<ShapesSample> samples, int imageSize = 128)
    {
        var imageDir = Path.Combine(folder, "images", name);
        Directory.CreateDirectory(imageDir);
        var records = new JsonArray();
        var truth = new JsonArray();
        foreach (var s in samples)
        {
            var paths = new JsonArray();
            for (int k = 0; k < s.Images.Count; k++)
            {
                var rel = $"images/{name}/{s.Index:D6}_{k}.png";
                ShapesRenderer.SavePng(s.Images[k], Path.Combine(folder, rel), imageSize);
                paths.Add(rel);
            }
            records.Add(new JsonObject
            {
                ["messages"] = new JsonArray(Message("user", s.User), Message("assistant", s.Assistant)),
                ["images"] = paths,
                ["id"] = s.Index,
            });
            var t = JsonSerializer.SerializeToNode(s, TruthJson)!.AsObject();
            t["descriptions"] = new JsonArray(s.Images.Select(im => (JsonNode)im.Describe()).ToArray());
            truth.Add(t);
        }
        WriteJson(Path.Combine(folder, name + ".json"), records);
        WriteJson(Path.Combine(folder, name + "_truth.json"), truth);
        RegisterDataset(folder, name, ranking: false);
    }

    /// <summary>A sharegpt message with the role/content tags of <see cref="RegisterDataset"/>.</summary>
    internal static JsonObject Message(string role, string content) => new() { ["role"] = role, ["content"] = content };

    // Relaxed escaping keeps "<image>" readable (as in the official demo files) instead of "\u003Cimage\u003E".
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    internal static void WriteJson(string path, JsonNode node) => File.WriteAllText(path, node.ToJsonString(Indented));

    /// <summary>Adds (or replaces) the sharegpt entry of dataset name in folder/dataset_info.json; a ranking (DPO) dataset
    /// also maps the chosen/rejected columns (LLaMA-Factory data/README.md, "Preference Dataset" in sharegpt format).</summary>
    internal static void RegisterDataset(string folder, string name, bool ranking)
    {
        var infoPath = Path.Combine(folder, "dataset_info.json");
        var info = File.Exists(infoPath) ? JsonNode.Parse(File.ReadAllText(infoPath))!.AsObject() : new JsonObject();
        var columns = new JsonObject { ["messages"] = "messages" };
        if (ranking) { columns["chosen"] = "chosen"; columns["rejected"] = "rejected"; }
        columns["images"] = "images";
        var entry = new JsonObject { ["file_name"] = name + ".json", ["formatting"] = "sharegpt" };
        if (ranking) entry["ranking"] = true;
        entry["columns"] = columns;
        entry["tags"] = new JsonObject { ["role_tag"] = "role", ["content_tag"] = "content", ["user_tag"] = "user", ["assistant_tag"] = "assistant" };
        info[name] = entry;
        WriteJson(infoPath, info);
    }

    /// <summary>Reads NAME_truth.json back into samples (for scoring a model's outputs on a written dataset).</summary>
    public static IReadOnlyList<ShapesSample> ReadTruth(string folder, string name)
    {
        var path = Path.Combine(folder, name + "_truth.json");
        if (!File.Exists(path)) throw new InputNotFoundException($"ShapesWorld ground truth {path} not found", path);
        return JsonSerializer.Deserialize<List<ShapesSample>>(File.ReadAllText(path), TruthJson)
            ?? throw new InvalidFileException($"{path}: empty ground truth");
    }
}
