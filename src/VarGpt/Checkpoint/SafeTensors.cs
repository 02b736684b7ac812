using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    public long ByteLength => End - Begin;
}

/// <summary>Thrown for any malformed checkpoint file; the message names the file and the problem.</summary>
public sealed class CheckpointFormatException(string message) : Exception(message);

/// <summary>
/// Reader for the safetensors format: 8-byte little-endian header length N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}), then the raw little-endian data.
/// The header is fully validated on open so that no later read can run off the file.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    public string Path { get; }
    public long DataStart { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    readonly Dictionary<string, SafeTensorInfo> _tensors = new(StringComparer.Ordinal);
    readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);
    readonly FileStream _stream;

    /// <summary>Bytes per element of each safetensors dtype name.</summary>
    public static int DTypeSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => -1,
    };

    public static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new NotSupportedException($"safetensors dtype '{dtype}' has no TorchSharp equivalent"),
    };

    public static string FromScalarType(ScalarType t) => t switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new NotSupportedException($"dtype {t} cannot be stored in safetensors"),
    };

    SafeTensorsFile(string path)
    {
        Path = path;
        _stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.RandomAccess);
        try
        {
            FileLength = _stream.Length;
            if (FileLength < 8) throw Bad($"file is {FileLength} bytes, shorter than the 8-byte header length (truncated?)");
            Span<byte> lenBytes = stackalloc byte[8];
            _stream.ReadExactly(lenBytes);
            ulong n = BitConverter.ToUInt64(lenBytes);
            if (n > (ulong)(FileLength - 8))
                throw Bad($"header length {n} runs beyond the end of the file ({FileLength} bytes; truncated?)");
            if (n > 100_000_000) throw Bad($"header length {n} is implausibly large");
            var header = new byte[n];
            _stream.ReadExactly(header);
            DataStart = 8 + (long)n;
            ParseHeader(header);
        }
        catch
        {
            _stream.Dispose();
            throw;
        }
    }

    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        return new SafeTensorsFile(path);
    }

    CheckpointFormatException Bad(string what) => new($"{Path}: {what}");

    void ParseHeader(byte[] header)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Bad($"header is not valid JSON ({e.Message})"); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad("header JSON is not an object");
        long dataLength = FileLength - DataStart;
        foreach (var prop in doc.RootElement.EnumerateObject())
        {
            if (prop.Name == "__metadata__")
            {
                if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad("__metadata__ is not an object");
                foreach (var m in prop.Value.EnumerateObject())
                    _metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                continue;
            }
            var v = prop.Value;
            if (v.ValueKind != JsonValueKind.Object) throw Bad($"tensor '{prop.Name}': entry is not an object");
            if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad($"tensor '{prop.Name}': missing field 'dtype'");
            if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad($"tensor '{prop.Name}': missing field 'shape'");
            if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
                throw Bad($"tensor '{prop.Name}': missing or malformed field 'data_offsets'");
            string dtype = dt.GetString()!;
            int size = DTypeSize(dtype);
            if (size < 0) throw Bad($"tensor '{prop.Name}': unknown dtype '{dtype}'");
            long[] shape;
            long begin, end;
            try
            {
                shape = sh.EnumerateArray().Select(e => e.GetInt64()).ToArray();
                begin = off[0].GetInt64();
                end = off[1].GetInt64();
            }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            {
                throw Bad($"tensor '{prop.Name}': shape and data_offsets must be non-negative integers");
            }
            if (shape.Any(d => d < 0)) throw Bad($"tensor '{prop.Name}': negative dimension in shape [{string.Join(",", shape)}]");
            if (begin < 0 || end < begin) throw Bad($"tensor '{prop.Name}': data_offsets [{begin},{end}] are not an increasing pair");
            if (end > dataLength)
                throw Bad($"tensor '{prop.Name}': data_offsets [{begin},{end}] run beyond the data section ({dataLength} bytes; truncated?)");
            var info = new SafeTensorInfo(prop.Name, dtype, shape, begin, end);
            long expected = checked(info.ElementCount * size);
            if (info.ByteLength != expected)
                throw Bad($"tensor '{prop.Name}': byte length {info.ByteLength} != shape [{string.Join(",", shape)}] x {dtype} size {size} = {expected}");
            if (!_tensors.TryAdd(prop.Name, info)) throw Bad($"tensor '{prop.Name}' appears twice in the header");
        }
        // Overlap check: sort by begin, each must start at or after the previous end.
        SafeTensorInfo? prev = null;
        foreach (var t in _tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (prev != null && t.Begin < prev.End && t.ByteLength > 0 && prev.ByteLength > 0)
                throw Bad($"tensors '{prev.Name}' [{prev.Begin},{prev.End}] and '{t.Name}' [{t.Begin},{t.End}] overlap");
            if (t.ByteLength > 0) prev = t;
        }
    }

    /// <summary>Reads one tensor (CPU, its stored dtype), optionally converting dtype and moving to a device.</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        if (!_tensors.TryGetValue(name, out var info)) throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");
        var t = torch.empty(info.Shape, ToScalarType(info.DType));
        if (info.ByteLength > 0)
        {
            var span = t.bytes;
            lock (_stream)
            {
                _stream.Position = DataStart + info.Begin;
                _stream.ReadExactly(span);
            }
        }
        if ((dtype == null || dtype == t.dtype) && (device == null || device.type == DeviceType.CPU)) return t;
        using (t) return t.to(dtype ?? t.dtype, device ?? CPU);
    }

    public void Dispose() => _stream.Dispose();
}

/// <summary>Writer producing files the official Python safetensors library reads (8-byte aligned header, contiguous offsets).</summary>
public static class SafeTensorsWriter
{
    /// <summary>Writes tensors atomically (temp file + rename) in the given order.</summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = new Dictionary<string, object>(StringComparer.Ordinal);
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>()) { ["format"] = "pt" };
        header["__metadata__"] = meta;
        long offset = 0;
        foreach (var (name, t) in list)
        {
            long n = t.numel() * SafeTensorsFile.DTypeSize(SafeTensorsFile.FromScalarType(t.dtype));
            header[name] = new { dtype = SafeTensorsFile.FromScalarType(t.dtype), shape = t.shape, data_offsets = new[] { offset, offset + n } };
            offset += n;
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        var headerBytes = new byte[json.Length + pad];
        json.CopyTo(headerBytes, 0);
        for (int i = json.Length; i < headerBytes.Length; i++) headerBytes[i] = (byte)' ';

        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
                fs.Write(headerBytes);
                foreach (var (_, t) in list)
                {
                    using var c = t.detach().cpu().contiguous();
                    fs.Write(c.bytes);
                }
                fs.Flush(true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
