using System.Text.Json;
using TorchSharp;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

namespace VarGpt.Golden;

/// <summary>
/// One golden fixture folder (see shared/golden/README.md): fixture.json + optional weights*.safetensors + io.safetensors.
/// Inputs are io tensors named "in.*", expected outputs "out.*".
/// </summary>
public sealed class Fixture : IDisposable
{
    public string Dir { get; }
    public string Name => System.IO.Path.GetFileName(Dir.TrimEnd('/'));
    public string Kind { get; }
    public string Description { get; }
    public JsonElement Config { get; }
    public JsonElement Params { get; }
    public JsonElement Tolerance { get; }
    public string? WeightsFile { get; }
    public string? IoFile { get; }
    public string Id => $"{Kind}/{Name}";

    readonly JsonDocument _doc;
    SafeTensorsFile? _io;

    public Fixture(string dir)
    {
        Dir = System.IO.Path.GetFullPath(dir);
        var jsonPath = System.IO.Path.Combine(Dir, "fixture.json");
        if (!File.Exists(jsonPath)) throw new InputNotFoundException($"fixture folder {Dir} has no fixture.json", jsonPath);
        _doc = JsonDocument.Parse(File.ReadAllText(jsonPath));
        var r = _doc.RootElement;
        Kind = r.GetProperty("kind").GetString() ?? throw new InvalidFileException($"{jsonPath}: 'kind' is null");
        Description = r.TryGetProperty("description", out var d) && d.ValueKind == JsonValueKind.String ? d.GetString()! : "";
        Config = r.TryGetProperty("config", out var c) ? c : default;
        Params = r.TryGetProperty("params", out var p) ? p : default;
        Tolerance = r.TryGetProperty("tolerance", out var t) ? t : default;
        WeightsFile = r.TryGetProperty("weights", out var w) && w.ValueKind == JsonValueKind.String ? w.GetString() : null;
        IoFile = r.TryGetProperty("io", out var io) && io.ValueKind == JsonValueKind.String ? io.GetString() : null;
    }

    /// <summary>All fixture folders (those holding a fixture.json) directly under or below each root.</summary>
    public static IEnumerable<string> Discover(IEnumerable<string> roots)
    {
        foreach (var root in roots)
        {
            if (!Directory.Exists(root)) continue;
            if (File.Exists(System.IO.Path.Combine(root, "fixture.json"))) { yield return System.IO.Path.GetFullPath(root); continue; }
            foreach (var f in Directory.EnumerateFiles(root, "fixture.json", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
                yield return System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(f))!;
        }
    }

    public double Atol(string key = "atol", double fallback = 0) =>
        Tolerance.ValueKind == JsonValueKind.Object && Tolerance.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : fallback;

    SafeTensorsFile Io => _io ??= SafeTensorsFile.Open(System.IO.Path.Combine(Dir, IoFile ?? throw new InvalidOperationException($"{Id}: fixture has no io file")));

    public bool Has(string name) => IoFile != null && Io.Tensors.ContainsKey(name);
    public IEnumerable<string> IoNames => IoFile == null ? [] : Io.Tensors.Keys;

    /// <summary>io tensor "in.{name}" (CPU, stored dtype).</summary>
    public Tensor In(string name) => Io.Load("in." + name);
    /// <summary>io tensor "out.{name}" (CPU, stored dtype).</summary>
    public Tensor Out(string name) => Io.Load("out." + name);

    /// <summary>All tensors of a weights file of this fixture (default: the fixture's "weights" entry), converted to dtype if given.</summary>
    public Dictionary<string, Tensor> LoadWeights(string? file = null, ScalarType? dtype = null)
    {
        file ??= WeightsFile ?? throw new InvalidOperationException($"{Id}: fixture has no weights file");
        using var st = SafeTensorsFile.Open(System.IO.Path.Combine(Dir, file));
        return st.Tensors.Keys.ToDictionary(k => k, k => st.Load(k, dtype), StringComparer.Ordinal);
    }

    /// <summary>
    /// Strictly loads a weights file of this fixture into a module (StateDict.Load: every module key present with its
    /// shape, no extra key under <paramref name="prefix"/>; values converted to each parameter's dtype).
    /// </summary>
    public StateDictReport LoadInto(TorchSharp.torch.nn.Module module, string? file = null, string prefix = "")
    {
        var weights = LoadWeights(file);
        try { return StateDict.Load(module, weights, new StateDictOptions { Prefix = prefix }); }
        finally { foreach (var t in weights.Values) t.Dispose(); }
    }

    public void Dispose()
    {
        _io?.Dispose();
        _doc.Dispose();
    }
}
