using System.Text.Json;
using TorchSharp;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

using VarGpt;

namespace VarGpt.Tests.Checkpoint;

public class CheckpointReaderTests
{
    static List<KeyValuePair<string, Tensor>> SomeTensors(int n, long rows = 64)
    {
        var list = new List<KeyValuePair<string, Tensor>>();
        for (int i = 0; i < n; i++) list.Add(new($"model.layers.{i}.weight", randn(rows, 16)));
        list.Add(new("lm_head.weight", randn(8, 16)));
        return list;
    }

    [Fact]
    public void Sharded_save_round_trips_and_writes_a_valid_index()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var ts = SomeTensors(5);
        // 64x16 f32 = 4 KB each: a 9000-byte limit gives 2 per shard -> 3 shards.
        var written = SafeTensorsWriter.SaveSharded(d.Path, ts, maxShardBytes: 9000);
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json"],
            written.Select(Path.GetFileName));
        using (var doc = JsonDocument.Parse(File.ReadAllText(d["model.safetensors.index.json"])))
        {
            Assert.Equal(ts.Sum(kv => kv.Value.numel() * 4), doc.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
            Assert.Equal(ts.Count, doc.RootElement.GetProperty("weight_map").EnumerateObject().Count());
        }
        using (var r = CheckpointReader.Open(d.Path))
        {
            Assert.NotNull(r.IndexPath);
            Assert.Equal(3, r.Files.Count);
            Assert.Equal(ts.Select(kv => kv.Key).Order(), r.Names.Order());
            Assert.EndsWith("model-00003-of-00003.safetensors", r.FileOf("lm_head.weight"));
            foreach (var (name, t) in ts)
            {
                using var back = r.Load(name, ScalarType.Float64);
                Assert.Equal(ScalarType.Float64, back.dtype);
                Assert.True(TestTensors.Same(back, t.to(ScalarType.Float64)), name);
            }
        }
        // Re-saving as one file removes the index and the stale shards.
        SafeTensorsWriter.SaveSharded(d.Path, ts);
        Assert.Equal(["model.safetensors"], Directory.GetFiles(d.Path).Select(Path.GetFileName));
        using (var r = CheckpointReader.Open(d.Path)) { Assert.Null(r.IndexPath); Assert.Equal(ts.Count, r.Tensors.Count); }
        foreach (var (_, t) in ts) t.Dispose();
    }

    [Fact]
    public void Missing_shard_is_named_with_the_index()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var ts = SomeTensors(3);
        SafeTensorsWriter.SaveSharded(d.Path, ts, maxShardBytes: 5000);
        File.Delete(d["model-00002-of-00003.safetensors"]);
        var e = Assert.Throws<InputNotFoundException>(() => CheckpointReader.Open(d.Path));
        Assert.Contains("model-00002-of-00003.safetensors", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
        Assert.DoesNotContain("model-00001", e.Message);
        foreach (var (_, t) in ts) t.Dispose();
    }

    [Fact]
    public void Index_naming_a_tensor_its_shard_lacks_is_an_error()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using var w = ones(2);
        SafeTensorsWriter.Save(d["a.safetensors"], [new("w", w)]);
        File.WriteAllText(d["model.safetensors.index.json"], """{"metadata":{},"weight_map":{"w":"a.safetensors","ghost":"a.safetensors"}}""");
        var e = Assert.Throws<CheckpointFormatException>(() => CheckpointReader.Open(d.Path));
        Assert.Contains("'ghost'", e.Message);
        Assert.Contains("a.safetensors", e.Message);
    }

    [Fact]
    public void Malformed_index_and_escaping_shard_names_are_errors()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["model.safetensors.index.json"], "{\"weight_map\": [");
        var e1 = Assert.Throws<CheckpointFormatException>(() => CheckpointReader.Open(d.Path));
        Assert.Contains("model.safetensors.index.json", e1.Message);
        File.WriteAllText(d["model.safetensors.index.json"], """{"metadata":{}}""");
        Assert.Contains("weight_map", Assert.Throws<CheckpointFormatException>(() => CheckpointReader.Open(d.Path)).Message);
        File.WriteAllText(d["model.safetensors.index.json"], """{"weight_map":{"w":"../elsewhere.safetensors"}}""");
        Assert.Contains("../elsewhere.safetensors", Assert.Throws<CheckpointFormatException>(() => CheckpointReader.Open(d.Path)).Message);
    }

    [Fact]
    public void Folder_without_weights_says_what_it_found()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        Assert.Contains("no model.safetensors", Assert.Throws<InputNotFoundException>(() => CheckpointReader.Open(d.Path)).Message);
        using var w = ones(2);
        SafeTensorsWriter.Save(d["weights.safetensors"], [new("w", w)]);
        Assert.Contains("weights.safetensors", Assert.Throws<InputNotFoundException>(() => CheckpointReader.Open(d.Path)).Message);
        using var r = CheckpointReader.Open(d["weights.safetensors"]); // a file path works
        Assert.True(r.Contains("w"));
    }

    [Fact]
    public void Tensor_in_two_shards_is_an_error()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using var w = ones(2);
        SafeTensorsWriter.Save(d["a.safetensors"], [new("w", w)]);
        SafeTensorsWriter.Save(d["b.safetensors"], [new("w", w), new("v", w)]);
        File.WriteAllText(d["model.safetensors.index.json"], """{"weight_map":{"w":"a.safetensors","v":"b.safetensors"}}""");
        var e = Assert.Throws<CheckpointFormatException>(() => CheckpointReader.Open(d.Path));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("a.safetensors", e.Message);
        Assert.Contains("b.safetensors", e.Message);
    }
}
