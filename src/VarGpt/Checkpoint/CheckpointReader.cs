using System.Text.Json;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>
/// A model's weights as one name space: a folder with model.safetensors, or a sharded folder whose
/// model.safetensors.index.json weight_map names the shard of every tensor (Hugging Face layout). Opening reads only
/// headers; tensors are loaded one at a time straight to the requested dtype and device, so peak memory stays near the
/// model size in the target dtype (plus a 16 MB staging buffer when converting).
/// </summary>
public sealed class CheckpointReader : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>The folder holding the weight files.</summary>
    public string Directory { get; }
    /// <summary>The index file when the checkpoint is sharded.</summary>
    public string? IndexPath { get; }
    /// <summary>The safetensors files in use (one, or the shards in index order).</summary>
    public IReadOnlyList<string> Files => _files.Select(f => f.Path).ToList();
    /// <summary>Every tensor of every file, by name.</summary>
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors => _infos;
    public IEnumerable<string> Names => _infos.Keys;
    public long TotalBytes => _infos.Values.Sum(t => t.ByteLength);

    readonly List<SafeTensorsFile> _files = new();
    readonly Dictionary<string, SafeTensorsFile> _owner = new(StringComparer.Ordinal);
    readonly Dictionary<string, SafeTensorInfo> _infos = new(StringComparer.Ordinal);

    CheckpointReader(string directory, string? indexPath)
    {
        Directory = directory;
        IndexPath = indexPath;
    }

    /// <summary>
    /// Opens a model folder (index preferred over a single file), a .safetensors file, or an index .json file.
    /// Errors name the folder/index/shard at fault.
    /// </summary>
    public static CheckpointReader Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        if (System.IO.Directory.Exists(full))
        {
            var index = System.IO.Path.Combine(full, IndexFileName);
            if (File.Exists(index)) return OpenIndex(index);
            var single = System.IO.Path.Combine(full, SingleFileName);
            if (File.Exists(single)) return OpenFiles(full, [single]);
            var others = System.IO.Directory.EnumerateFiles(full, "*.safetensors").Select(System.IO.Path.GetFileName).Order().ToList();
            throw new InputNotFoundException(others.Count == 0
                ? $"{full}: no {SingleFileName} or {IndexFileName} (not a model folder?)"
                : $"{full}: no {SingleFileName} or {IndexFileName}; found {string.Join(", ", others)} — pass one of them as a file path");
        }
        if (File.Exists(full))
            return full.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? OpenIndex(full) : OpenFiles(System.IO.Path.GetDirectoryName(full)!, [full]);
        throw new InputNotFoundException($"checkpoint not found: {full}", full);
    }

    static CheckpointReader OpenFiles(string dir, IReadOnlyList<string> files)
    {
        var r = new CheckpointReader(dir, null);
        try
        {
            foreach (var f in files) r.Add(SafeTensorsFile.Open(f));
            return r;
        }
        catch { r.Dispose(); throw; }
    }

    static CheckpointReader OpenIndex(string indexPath)
    {
        var dir = System.IO.Path.GetDirectoryName(indexPath)!;
        var weightMap = ReadWeightMap(indexPath);
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).ToList();
        foreach (var s in shardNames)
        {
            if (s.Length == 0 || s.Contains('/') || s.Contains('\\') || s == "." || s == "..")
                throw new CheckpointFormatException($"{indexPath}: weight_map names shard '{s}', which is not a plain file name in {dir}");
            if (!File.Exists(System.IO.Path.Combine(dir, s)))
            {
                var missing = shardNames.Where(n => !File.Exists(System.IO.Path.Combine(dir, n))).ToList();
                throw new InputNotFoundException($"{indexPath}: shard file{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing)} named in the index "
                    + $"{(missing.Count > 1 ? "are" : "is")} missing from {dir} (incomplete download?)", System.IO.Path.Combine(dir, missing[0]));
            }
        }
        var r = new CheckpointReader(dir, indexPath);
        try
        {
            var byName = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
            foreach (var s in shardNames)
            {
                var f = SafeTensorsFile.Open(System.IO.Path.Combine(dir, s));
                r.Add(f);
                byName[s] = f;
            }
            foreach (var (tensor, shard) in weightMap)
                if (!byName[shard].Tensors.ContainsKey(tensor))
                    throw new CheckpointFormatException($"{indexPath}: weight_map puts tensor '{tensor}' in {shard}, but that file has no such tensor");
            return r;
        }
        catch { r.Dispose(); throw; }
    }

    static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(indexPath)); }
        catch (JsonException e) { throw new CheckpointFormatException($"{indexPath}: not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
            throw new CheckpointFormatException($"{indexPath}: missing object field 'weight_map'");
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var p in wm.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.String)
                throw new CheckpointFormatException($"{indexPath}: weight_map entry '{p.Name}' must be a file name string, found {p.Value.GetRawText()}");
            map[p.Name] = p.Value.GetString()!;
        }
        if (map.Count == 0) throw new CheckpointFormatException($"{indexPath}: weight_map is empty");
        return map;
    }

    void Add(SafeTensorsFile f)
    {
        _files.Add(f);
        foreach (var (name, info) in f.Tensors)
        {
            if (_owner.TryGetValue(name, out var other))
                throw new CheckpointFormatException($"tensor '{name}' appears in both {other.Path} and {f.Path}");
            _owner[name] = f;
            _infos[name] = info;
        }
    }

    public bool Contains(string name) => _infos.ContainsKey(name);

    /// <summary>The file holding a tensor.</summary>
    public string FileOf(string name) => Owner(name).Path;

    SafeTensorsFile Owner(string name) =>
        _owner.TryGetValue(name, out var f) ? f : throw new KeyNotFoundException($"{IndexPath ?? Directory}: no tensor named '{name}'");

    /// <summary>Loads one tensor into new memory (default: CPU, stored dtype).</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => Owner(name).Load(name, dtype, device);

    /// <summary>Copies one tensor into an existing tensor of the same shape, converting dtype/device.</summary>
    public void LoadInto(string name, Tensor target) => Owner(name).LoadInto(name, target);

    /// <summary>
    /// The guards of the files' memory mappings (<see cref="SafeTensorsFile.DetachLease"/>): whoever keeps the mapped
    /// views after the reader is disposed disposes these when done with them.
    /// </summary>
    public IReadOnlyList<MappedFileLease> DetachLeases() => _files.Select(f => f.DetachLease()).OfType<MappedFileLease>().ToList();

    /// <summary>Zero-copy memory-mapped CPU view of one tensor in its stored dtype, or null if it is not aligned (see <see cref="SafeTensorsFile.MapView"/>).</summary>
    public Tensor? MapView(string name) => Owner(name).MapView(name);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
