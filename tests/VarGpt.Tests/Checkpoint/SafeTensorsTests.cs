using System.Text;
using System.Text.Json;
using TorchSharp;
using VarGpt.Checkpoint;
using static TorchSharp.torch;

using VarGpt;

namespace VarGpt.Tests.Checkpoint;

public class SafeTensorsTests
{
    /// <summary>Writes a safetensors file by hand: 8-byte length, header text, data bytes.</summary>
    internal static string WriteRaw(TempDir dir, string header, byte[] data, ulong? lengthOverride = null, string name = "bad.safetensors")
    {
        var h = Encoding.UTF8.GetBytes(header);
        var path = dir[name];
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes(lengthOverride ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(data);
        return path;
    }

    static void AssertBad(string path, params string[] fragments)
    {
        var e = Assert.ThrowsAny<Exception>(() => { using var f = SafeTensorsFile.Open(path); });
        Assert.IsType<CheckpointFormatException>(e);
        Assert.Contains(path, e.Message);
        foreach (var frag in fragments) Assert.Contains(frag, e.Message);
    }

    [Fact]
    public void Truncated_file_shorter_than_length_prefix()
    {
        using var d = TestPaths.Temp();
        File.WriteAllBytes(d["t.safetensors"], [1, 2, 3]);
        AssertBad(d["t.safetensors"], "3 bytes", "truncated");
    }

    [Fact]
    public void Header_length_beyond_file()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, "{}", [], lengthOverride: 4096);
        AssertBad(p, "header length 4096", "beyond the end");
    }

    [Fact]
    public void Truncated_data_section()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", new byte[10]);
        AssertBad(p, "'w'", "[0, 16]", "beyond the data section", "truncated");
    }

    [Fact]
    public void Malformed_header_json()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, """{"w":{"dtype":"F32",""", new byte[8]);
        AssertBad(p, "not valid JSON");
    }

    [Fact]
    public void Header_not_an_object()
    {
        using var d = TestPaths.Temp();
        AssertBad(WriteRaw(d, "[1,2]", []), "not an object");
    }

    [Fact]
    public void Offsets_out_of_range()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, """{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[100,104]}}""", new byte[8]);
        AssertBad(p, "'b'", "[100, 104]", "beyond the data section (8 bytes");
    }

    [Fact]
    public void Negative_or_reversed_offsets()
    {
        using var d = TestPaths.Temp();
        AssertBad(WriteRaw(d, """{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}}""", new byte[8]), "'a'", "[4, 2]", "not an increasing pair");
    }

    [Fact]
    public void Overlapping_offsets()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", new byte[16]);
        AssertBad(p, "'a'", "'b'", "overlap");
    }

    [Fact]
    public void Unknown_dtype()
    {
        using var d = TestPaths.Temp();
        AssertBad(WriteRaw(d, """{"a":{"dtype":"F8_E4M3X","shape":[2],"data_offsets":[0,2]}}""", new byte[8]), "'a'", "unknown dtype 'F8_E4M3X'");
    }

    [Fact]
    public void Byte_length_differs_from_shape_times_dtype_size()
    {
        using var d = TestPaths.Temp();
        var p = WriteRaw(d, """{"a":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,8]}}""", new byte[16]);
        AssertBad(p, "'a'", "byte length 8", "[3, 2]", "BF16", "12");
    }

    [Fact]
    public void Missing_fields_and_bad_numbers()
    {
        using var d = TestPaths.Temp();
        AssertBad(WriteRaw(d, """{"a":{"shape":[2],"data_offsets":[0,2]}}""", new byte[8], name: "1.safetensors"), "'a'", "'dtype'");
        AssertBad(WriteRaw(d, """{"a":{"dtype":"U8","data_offsets":[0,2]}}""", new byte[8], name: "2.safetensors"), "'a'", "'shape'");
        AssertBad(WriteRaw(d, """{"a":{"dtype":"U8","shape":[2],"data_offsets":[0]}}""", new byte[8], name: "3.safetensors"), "'a'", "'data_offsets'");
        AssertBad(WriteRaw(d, """{"a":{"dtype":"U8","shape":[2.5],"data_offsets":[0,2]}}""", new byte[8], name: "4.safetensors"), "'a'", "integers");
        AssertBad(WriteRaw(d, """{"a":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}""", new byte[8], name: "5.safetensors"), "'a'", "negative dimension");
        AssertBad(WriteRaw(d, """{"a":{"dtype":"F64","shape":[4611686018427387904,8],"data_offsets":[0,2]}}""", new byte[8], name: "6.safetensors"), "'a'", "too large");
    }

    [Fact]
    public void Missing_file_names_the_path()
    {
        using var d = TestPaths.Temp();
        var e = Assert.Throws<InputNotFoundException>(() => SafeTensorsFile.Open(d["nope.safetensors"]));
        Assert.Contains("nope.safetensors", e.Message);
    }

    [Fact]
    public void Unknown_tensor_name_is_named()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using (var t = ones(2)) SafeTensorsWriter.Save(d["a.safetensors"], [new("x", t)]);
        using var f = SafeTensorsFile.Open(d["a.safetensors"]);
        var e = Assert.Throws<KeyNotFoundException>(() => f.Load("y"));
        Assert.Contains("'y'", e.Message);
    }

    internal static readonly ScalarType[] AllDTypes =
        [ScalarType.Float64, ScalarType.Float32, ScalarType.Float16, ScalarType.BFloat16, ScalarType.Int64, ScalarType.Int32,
         ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool];

    /// <summary>A tensor whose bytes are random (any bit pattern, NaN payloads included); bools are 0/1.</summary>
    internal static Tensor RandomBits(ScalarType dt, long[] shape, Random rng)
    {
        var t = empty(shape, dt);
        var span = t.bytes;
        rng.NextBytes(span);
        if (dt == ScalarType.Bool) for (int i = 0; i < span.Length; i++) span[i] &= 1;
        return t;
    }

    [Fact]
    public void Every_dtype_round_trips_bit_identical()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var rng = new Random(1234);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var dt in AllDTypes)
        {
            tensors.Add(new($"{dt}.matrix", RandomBits(dt, [3, 5], rng)));
            tensors.Add(new($"{dt}.scalar", RandomBits(dt, [], rng)));
            tensors.Add(new($"{dt}.empty", RandomBits(dt, [0, 4], rng)));
        }
        SafeTensorsWriter.Save(d["all.safetensors"], tensors, new Dictionary<string, string> { ["note"] = "x" });
        using var f = SafeTensorsFile.Open(d["all.safetensors"]);
        Assert.Equal(tensors.Count, f.Tensors.Count);
        Assert.Equal("x", f.Metadata["note"]);
        foreach (var (name, t) in tensors)
        {
            using var back = f.Load(name);
            Assert.Equal(t.dtype, back.dtype);
            Assert.Equal(t.shape, back.shape);
            Assert.True(t.bytes.SequenceEqual(back.bytes), $"{name}: bytes differ after the round trip");
        }
        foreach (var (_, t) in tensors) t.Dispose();
    }

    [Fact]
    public void Written_files_follow_the_format_rules()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var rng = new Random(7);
        // Odd sizes and mixed dtypes so unpadded headers or misordered offsets would show.
        var tensors = new List<KeyValuePair<string, Tensor>>
        {
            new("z.bytes", RandomBits(ScalarType.Byte, [3], rng)),
            new("a.f32", RandomBits(ScalarType.Float32, [7], rng)),
            new("m.bf16", RandomBits(ScalarType.BFloat16, [1, 5], rng)),
            new("q.i64", RandomBits(ScalarType.Int64, [2], rng)),
        };
        for (int extra = 0; extra < 8; extra++)
        {
            var path = d[$"f{extra}.safetensors"];
            SafeTensorsWriter.Save(path, tensors, new Dictionary<string, string> { ["pad"] = new string('p', extra) });
            var bytes = File.ReadAllBytes(path);
            ulong n = BitConverter.ToUInt64(bytes, 0);
            Assert.Equal(0UL, n % 8);
            using var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)n));
            Assert.Equal("pt", doc.RootElement.GetProperty("__metadata__").GetProperty("format").GetString());
            var entries = doc.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__")
                .Select(p => (Begin: p.Value.GetProperty("data_offsets")[0].GetInt64(), End: p.Value.GetProperty("data_offsets")[1].GetInt64()))
                .OrderBy(e => e.Begin).ToList();
            long expect = 0;
            foreach (var e in entries) { Assert.Equal(expect, e.Begin); expect = e.End; }
            Assert.Equal(bytes.Length - 8 - (long)n, expect); // offsets cover the whole data section, no trailing bytes
            Assert.EndsWith("}", Encoding.UTF8.GetString(bytes, 8, (int)n).TrimEnd(' '));
        }
        foreach (var (_, t) in tensors) t.Dispose();
    }

    [Fact]
    public void Writer_is_atomic_and_leaves_no_temp_files()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using var good = ones(4);
        SafeTensorsWriter.Save(d["m.safetensors"], [new("w", good)]);
        using var cplx = zeros(2, dtype: ScalarType.ComplexFloat32);
        var e = Assert.Throws<NotSupportedException>(() => SafeTensorsWriter.Save(d["m.safetensors"], [new("w", good), new("c", cplx)]));
        Assert.Contains("'c'", e.Message);
        using var f = SafeTensorsFile.Open(d["m.safetensors"]); // the earlier file is intact
        Assert.Single(f.Tensors);
        Assert.Equal(["m.safetensors"], Directory.GetFiles(d.Path).Select(Path.GetFileName));
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Save(d["dup.safetensors"], [new("w", good), new("w", good)]));
    }

    [Fact]
    public void Load_converts_dtype_and_LoadInto_fills_views_in_chunks()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        // 5.2M floats = 21 MB: more than one 16 MB staging chunk when converting.
        using var big = randn(5_200_001);
        using var small = randn(3, 4);
        SafeTensorsWriter.Save(d["c.safetensors"], [new("big", big), new("small", small)]);
        using var f = SafeTensorsFile.Open(d["c.safetensors"]);
        using var asBf16 = f.Load("big", ScalarType.BFloat16);
        using var expect = big.to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, asBf16.dtype);
        Assert.True(TestTensors.Same(asBf16, expect));
        // Direct path into a view with a storage offset (rows 2..4 of a larger tensor).
        using var host = zeros(6, 4);
        using (var rows = host.narrow(0, 2, 3)) f.LoadInto("small", rows);
        using (var rows = host.narrow(0, 2, 3)) Assert.True(TestTensors.Same(rows, small));
        Assert.Equal(0f, host.narrow(0, 0, 2).abs().sum().item<float>());
        Assert.Equal(0f, host.narrow(0, 5, 1).abs().sum().item<float>());
        // Strided (non-contiguous) target.
        using var wide = zeros(4, 3);
        using (var tr = wide.t()) f.LoadInto("small", tr);
        Assert.True(TestTensors.Same(wide.t(), small));
        var e = Assert.Throws<ArgumentException>(() => f.LoadInto("small", zeros(4, 3)));
        Assert.Contains("[3, 4]", e.Message);
    }

    [Fact]
    public void Reads_files_written_by_the_official_library()
    {
        TorchTestSetup.Init();
        // Golden fixture files were written by Python safetensors (shared/golden/README.md).
        var file = Directory.Exists(TestPaths.Golden)
            ? Directory.EnumerateFiles(TestPaths.Golden, "*.safetensors", SearchOption.AllDirectories).Order(StringComparer.Ordinal).FirstOrDefault()
            : null;
        if (file == null) Assert.Skip($"no golden safetensors under {TestPaths.Golden}");
        using var f = SafeTensorsFile.Open(file);
        Assert.NotEmpty(f.Tensors);
        foreach (var name in f.Tensors.Keys.Take(5)) { using var t = f.Load(name); Assert.Equal(f.Tensors[name].Shape, t.shape); }
    }
}
