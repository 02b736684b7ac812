using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
    public long ByteLength => End - Begin;
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>Thrown for any malformed checkpoint file; the message names the file and the problem.</summary>
public sealed class CheckpointFormatException(string message) : VargptInputException(message);

/// <summary>
/// Reader for the safetensors format: 8-byte little-endian header length N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}), then the raw little-endian data.
/// The header is fully validated on open so that no later read can run off the file.
/// Tensors are read with FileStream straight into the destination tensor's memory (chunked when a dtype/device
/// conversion needs a staging buffer); docs/notes/checkpoint-io.md has the measurements against a from_file mmap path.
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
    /// <summary>Private (copy-on-write) mappings of the whole file, one per element type viewed through it; owned by <see cref="_lease"/>.</summary>
    readonly Dictionary<ScalarType, Tensor> _maps = new();

    /// <summary>Staging buffer size when converting dtype/device (bounds the extra memory of a load).</summary>
    const long ConvertChunkBytes = 16L << 20;
    /// <summary>Direct reads go in pieces below Span's 2 GB limit.</summary>
    const long DirectChunkBytes = 1L << 30;

    /// <summary>Bytes per element of each safetensors dtype name; -1 for names we do not know.</summary>
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
        _stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1 << 16, FileOptions.RandomAccess);
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
        if (!File.Exists(path)) throw new InputNotFoundException($"safetensors file not found: {path}", path);
        return new SafeTensorsFile(path);
    }

    CheckpointFormatException Bad(string what) => new($"{Path}: {what}");

    void ParseHeader(byte[] header)
    {
        // JsonDocument checks UTF-8 only when a string is read: without this an invalid byte in a name surfaces later
        // as an InvalidOperationException (found by fuzzing: fuzz/regressions/safetensors)
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw Bad("header is not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (Exception e) when (e is JsonException or ArgumentException) { throw Bad($"header is not valid JSON ({e.Message})"); }
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
            // U16/U32/U64 are valid safetensors but have no TorchSharp type: refuse them here, naming the tensor, rather
            // than with a NotSupportedException when the tensor is loaded (found by fuzzing)
            if (dtype is "U16" or "U32" or "U64") throw Bad($"tensor '{prop.Name}': dtype {dtype} is not supported (TorchSharp has no unsigned {8 * size}-bit type)");
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
            if (shape.Any(d => d < 0)) throw Bad($"tensor '{prop.Name}': negative dimension in shape [{string.Join(", ", shape)}]");
            // An empty tensor's other dimensions still make strides: [0, 2^62, 2^62] passes the byte-length check (0 bytes)
            // and then overflows libtorch's stride computation in a native error (found by fuzzing)
            try { shape.Where(d => d > 0).Aggregate((long)size, (a, d) => checked(a * d)); }
            catch (OverflowException) { throw Bad($"tensor '{prop.Name}': shape [{string.Join(", ", shape)}] is too large"); }
            if (begin < 0 || end < begin) throw Bad($"tensor '{prop.Name}': data_offsets [{begin}, {end}] are not an increasing pair");
            if (end > dataLength)
                throw Bad($"tensor '{prop.Name}': data_offsets [{begin}, {end}] run beyond the data section ({dataLength} bytes; truncated?)");
            var info = new SafeTensorInfo(prop.Name, dtype, shape, begin, end);
            long expected;
            try { expected = checked(info.ElementCount * size); }
            catch (OverflowException) { throw Bad($"tensor '{prop.Name}': shape {info.ShapeText} is too large"); }
            if (info.ByteLength != expected)
                throw Bad($"tensor '{prop.Name}': byte length {info.ByteLength} != shape {info.ShapeText} x {dtype} size {size} = {expected}");
            if (!_tensors.TryAdd(prop.Name, info)) throw Bad($"tensor '{prop.Name}' appears twice in the header");
        }
        // Overlap check: sorted by begin, each non-empty tensor must start at or after the previous one's end.
        // Gaps are tolerated (the official writer never makes them, and our writer test checks contiguity).
        SafeTensorInfo? prev = null;
        foreach (var t in _tensors.Values.Where(t => t.ByteLength > 0).OrderBy(t => t.Begin).ThenBy(t => t.End))
        {
            if (prev != null && t.Begin < prev.End)
                throw Bad($"tensors '{prev.Name}' [{prev.Begin}, {prev.End}] and '{t.Name}' [{t.Begin}, {t.End}] overlap");
            prev = t;
        }
    }

    public SafeTensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var info) ? info : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    /// <summary>Reads one tensor into new memory (default: CPU, its stored dtype), converting dtype and device if asked.</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var info = Info(name);
        var t = torch.empty(info.Shape, dtype ?? ToScalarType(info.DType), device: device ?? CPU);
        try { ReadInto(info, t); }
        catch { t.Dispose(); throw; }
        return t;
    }

    /// <summary>
    /// Copies one tensor into an existing tensor of the same shape (any dtype/device; e.g. a module parameter).
    /// Same dtype on CPU: bytes go straight from the file into the target. Otherwise through a 16 MB staging buffer.
    /// </summary>
    public void LoadInto(string name, Tensor target)
    {
        var info = Info(name);
        if (!info.Shape.SequenceEqual(target.shape))
            throw new ArgumentException($"{Path}: tensor '{name}' has shape {info.ShapeText}, target has [{string.Join(", ", target.shape)}]");
        ReadInto(info, target);
    }

    void ReadInto(SafeTensorInfo info, Tensor target)
    {
        if (info.ByteLength == 0) return;
        var stored = ToScalarType(info.DType);
        int size = DTypeSize(info.DType);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        if (!target.is_contiguous())
        {
            // Rare (a strided view): read whole, then copy.
            var whole = torch.empty(info.Shape, stored);
            ReadBytes(info.Begin, whole.bytes);
            target.copy_(whole);
            return;
        }
        bool direct = target.device_type == DeviceType.CPU && target.dtype == stored;
        var flat = target.view(-1);
        long total = info.ElementCount, step = Math.Max(1, (direct ? DirectChunkBytes : ConvertChunkBytes) / size);
        Tensor? staging = direct ? null : torch.empty(Math.Min(step, total), stored);
        for (long start = 0; start < total; start += step)
        {
            long n = Math.Min(step, total - start);
            using var dst = flat.narrow(0, start, n);
            if (direct) ReadBytes(info.Begin + start * size, dst.bytes);
            else
            {
                using var src = n == staging!.shape[0] ? staging.alias() : staging.narrow(0, 0, n);
                ReadBytes(info.Begin + start * size, src.bytes);
                dst.copy_(src);
            }
        }
    }

    /// <summary>
    /// A zero-copy CPU view of one tensor over a MAP_PRIVATE mapping of the file (torch.from_file, shared = false):
    /// pages stay file-backed (read on first touch, evictable under memory pressure), and a write into the view copies
    /// that page privately, never reaching the file. The mapping lives as long as any view of it. Null when the
    /// tensor's absolute offset is not a multiple of its element size (the format does not require alignment; files
    /// of the official writer and ours are aligned), when it is empty, or when the file cannot be leased against
    /// in-place writers (<see cref="MappedFileLease"/>): the caller then copies instead.
    /// </summary>
    public Tensor? MapView(string name)
    {
        var info = Info(name);
        int size = DTypeSize(info.DType);
        long offset = DataStart + info.Begin;
        if (info.ByteLength == 0 || offset % size != 0) return null;
        var dtype = ToScalarType(info.DType);
        lock (_maps)
        {
            if (!_maps.TryGetValue(dtype, out var map))
            {
                if (_mapRefused is not null) return null;
                // without a lease a writer that truncates the file in place would SIGBUS us: copy instead
                _lease ??= MappedFileLease.TryTake(Path, out _mapRefused);
                if (_lease is null) return null;
                map = _lease.Map(() => torch.from_file(Path, shared: false, size: FileLength / size, dtype: dtype).DetachFromDisposeScope())
                    ?? throw ChangedWhileLoading();
                _maps[dtype] = map;
            }
            if (_lease!.Broken) throw ChangedWhileLoading();
            using var flat = map.narrow(0, offset / size, info.ElementCount);
            return flat.view(info.Shape).DetachFromDisposeScope();
        }
    }

    /// <summary>Why <see cref="MapView"/> copies instead of mapping (no file lease could be taken), or null.</summary>
    public string? MapRefused => _mapRefused;

    /// <summary>
    /// Hands the guard of the mappings (<see cref="MappedFileLease"/>) to the caller, to be disposed when the mapped
    /// views are no longer used; without this, <see cref="Dispose"/> ends the guard. Null when nothing was mapped.
    /// </summary>
    public MappedFileLease? DetachLease()
    {
        lock (_maps)
        {
            _leaseDetached = _lease is not null;
            return _lease;
        }
    }

    InvalidFileException ChangedWhileLoading() =>
        new($"{Path}: another program wrote to the file while it was being loaded (memory-mapped); load it again");

    MappedFileLease? _lease;
    bool _leaseDetached;
    string? _mapRefused;

    void ReadBytes(long offset, Span<byte> dst)
    {
        lock (_stream)
        {
            _stream.Position = DataStart + offset;
            _stream.ReadExactly(dst);
        }
    }

    /// <summary>
    /// Closes the file; views handed out by <see cref="MapView"/> keep their mapping alive but, unless the lease was
    /// taken over (<see cref="DetachLease"/>), no longer guarded against in-place writers.
    /// </summary>
    public void Dispose()
    {
        _stream.Dispose();
        lock (_maps)
        {
            if (!_leaseDetached) _lease?.Dispose();
            _maps.Clear();
        }
    }
}

/// <summary>
/// One tensor of a streaming save: name, stored dtype and shape. Its bytes are produced later, piece by piece,
/// so that a file (or a 9B-parameter sharded checkpoint) can be written without holding the tensors in memory.
/// </summary>
public sealed record TensorEntry(string Name, ScalarType DType, long[] Shape)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
    public long ByteLength => checked(ElementCount * SafeTensorsFile.DTypeSize(SafeTensorsFile.FromScalarType(DType)));
}

/// <summary>
/// Receives the data of one <see cref="TensorEntry"/> in order: each call appends the elements of a tensor of any
/// shape (flattened, converted to the entry's dtype on the CPU). The writer checks that exactly the entry's element
/// count arrives.
/// </summary>
public delegate void TensorSink(Tensor piece);

/// <summary>
/// Writer producing files the official Python safetensors library reads: header padded with spaces to a multiple
/// of 8, offsets contiguous from 0 in the given order, {"format":"pt"} metadata. Writes are atomic (temp + rename).
/// The in-memory forms (<see cref="Save"/>, <see cref="SaveSharded"/>) and the streaming forms
/// (<see cref="SaveStreaming"/>, <see cref="SaveShardedStreaming"/>) share the header, sharding and writing code.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>Default shard size for <see cref="SaveSharded"/> (the Hugging Face save_pretrained default).</summary>
    public const long DefaultMaxShardBytes = 5_000_000_000;

    /// <summary>Writes tensors atomically (temp file + rename) in the given order.</summary>
    /// <param name="floatDType">If set, floating-point tensors are converted to it one at a time while writing.</param>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors,
        IReadOnlyDictionary<string, string>? metadata = null, ScalarType? floatDType = null)
    {
        var (entries, byName) = Entries(tensors, floatDType, path);
        SaveStreaming(path, entries, (e, sink) => sink(byName[e.Name]), metadata);
    }

    /// <summary>
    /// Writes a file whose header is known up front (<paramref name="entries"/>, in file order) and whose data
    /// <paramref name="produce"/> streams in, one entry at a time, through the sink. Atomic (temp file + rename).
    /// </summary>
    public static void SaveStreaming(string path, IReadOnlyList<TensorEntry> entries, Action<TensorEntry, TensorSink> produce,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var headerBytes = Header(path, entries, metadata);
        AtomicFile.Write(path, fs =>
        {
            fs.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
            fs.Write(headerBytes);
            foreach (var e in entries)
            {
                long written = 0, expected = e.ElementCount;
                produce(e, piece =>
                {
                    if (written + piece.numel() > expected)
                        throw new InvalidOperationException($"{path}: tensor '{e.Name}' {ShapeText(e.Shape)}: more than {expected} elements supplied");
                    WriteData(fs, piece, e.DType);
                    written += piece.numel();
                });
                if (written != expected)
                    throw new InvalidOperationException($"{path}: tensor '{e.Name}' {ShapeText(e.Shape)}: {written} of {expected} elements supplied");
                FailPoints.Hit("safetensors.tensor");
            }
        });
    }

    static string ShapeText(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>The padded JSON header for entries laid out contiguously in the given order.</summary>
    static byte[] Header(string path, IReadOnlyList<TensorEntry> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (e.Name == "__metadata__") throw new ArgumentException($"{path}: '__metadata__' cannot be used as a tensor name");
            if (!seen.Add(e.Name)) throw new ArgumentException($"{path}: tensor '{e.Name}' given twice");
        }
        var header = new Dictionary<string, object>(StringComparer.Ordinal);
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
        meta["format"] = "pt";
        header["__metadata__"] = meta;
        long offset = 0;
        foreach (var e in entries)
        {
            string dtype = FileDType(e.Name, e.DType, path);
            long n = e.ByteLength;
            header[e.Name] = new { dtype, shape = e.Shape, data_offsets = new[] { offset, offset + n } };
            offset += n;
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        var headerBytes = new byte[json.Length + pad];
        json.CopyTo(headerBytes, 0);
        for (int i = json.Length; i < headerBytes.Length; i++) headerBytes[i] = (byte)' ';
        return headerBytes;
    }

    /// <summary>Entries for in-memory tensors (floating ones stored as <paramref name="floatDType"/> when given).</summary>
    static (List<TensorEntry> Entries, Dictionary<string, Tensor> ByName) Entries(IEnumerable<KeyValuePair<string, Tensor>> tensors, ScalarType? floatDType, string path)
    {
        var entries = new List<TensorEntry>();
        var byName = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, t) in tensors)
        {
            if (!byName.TryAdd(name, t)) throw new ArgumentException($"{path}: tensor '{name}' given twice");
            var dt = floatDType is { } f && t.is_floating_point() ? f : t.dtype;
            FileDType(name, dt, path);
            entries.Add(new TensorEntry(name, dt, t.shape));
        }
        return (entries, byName);
    }

    static string FileDType(string name, ScalarType dt, string path)
    {
        try { return SafeTensorsFile.FromScalarType(dt); }
        catch (NotSupportedException e) { throw new NotSupportedException($"{path}: tensor '{name}': {e.Message}"); }
    }

    static void WriteData(Stream fs, Tensor t, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var c = t.detach().to(dtype, CPU).contiguous().view(-1);
        long total = c.numel(), step = Math.Max(1, (1L << 30) / Math.Max(1, SafeTensorsFile.DTypeSize(SafeTensorsFile.FromScalarType(dtype))));
        for (long s = 0; s < total; s += step)
        {
            using var piece = c.narrow(0, s, Math.Min(step, total - s));
            fs.Write(piece.bytes);
        }
    }

    /// <summary>
    /// Hugging Face style sharded save into <paramref name="dir"/>: model-0000k-of-0000N.safetensors plus
    /// model.safetensors.index.json ({"metadata":{"total_size"}, "weight_map"}); a single model.safetensors when
    /// everything fits in one shard. Shards fill greedily in the given order. Each file is written atomically and
    /// the index last; weight files of an earlier save that the new one does not use are removed.
    /// </summary>
    public static IReadOnlyList<string> SaveSharded(string dir, IEnumerable<KeyValuePair<string, Tensor>> tensors,
        long maxShardBytes = DefaultMaxShardBytes, IReadOnlyDictionary<string, string>? metadata = null, ScalarType? floatDType = null)
    {
        var (entries, byName) = Entries(tensors, floatDType, dir);
        return SaveShardedStreaming(dir, entries, (e, sink) => sink(byName[e.Name]), maxShardBytes, metadata);
    }

    /// <summary>
    /// <see cref="SaveSharded"/> with the data streamed in by <paramref name="produce"/> (called once per entry, in
    /// order), so the checkpoint never has to be in memory.
    /// </summary>
    public static IReadOnlyList<string> SaveShardedStreaming(string dir, IReadOnlyList<TensorEntry> entries, Action<TensorEntry, TensorSink> produce,
        long maxShardBytes = DefaultMaxShardBytes, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "must be positive");
        var shards = new List<List<TensorEntry>> { new() };
        long cur = 0, totalSize = 0;
        foreach (var e in entries)
        {
            long n = e.ByteLength;
            if (shards[^1].Count > 0 && cur + n > maxShardBytes) { shards.Add(new()); cur = 0; }
            shards[^1].Add(e);
            cur += n;
            totalSize += n;
        }
        AtomicFile.EnsureFolder(dir);
        var written = new List<string>();
        string indexPath = System.IO.Path.Combine(dir, CheckpointReader.IndexFileName);
        if (shards.Count == 1)
        {
            var p = System.IO.Path.Combine(dir, CheckpointReader.SingleFileName);
            SaveStreaming(p, shards[0], produce, metadata);
            written.Add(p);
            if (File.Exists(indexPath)) File.Delete(indexPath);
        }
        else
        {
            var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < shards.Count; i++)
            {
                var file = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
                SaveStreaming(System.IO.Path.Combine(dir, file), shards[i], produce, metadata);
                written.Add(System.IO.Path.Combine(dir, file));
                foreach (var e in shards[i]) weightMap[e.Name] = file;
            }
            var index = new { metadata = new { total_size = totalSize }, weight_map = weightMap };
            AtomicFile.WriteAllText(indexPath, JsonSerializer.Serialize(index, new JsonSerializerOptions { WriteIndented = true }) + "\n");
            written.Add(indexPath);
            var single = System.IO.Path.Combine(dir, CheckpointReader.SingleFileName);
            if (File.Exists(single)) File.Delete(single);
        }
        // Stale shards of an earlier save with a different shard count would confuse readers that glob.
        var keep = new HashSet<string>(written.Select(System.IO.Path.GetFileName)!, StringComparer.Ordinal);
        foreach (var f in Directory.EnumerateFiles(dir, "model-*-of-*.safetensors"))
            if (!keep.Contains(System.IO.Path.GetFileName(f)) &&
                System.Text.RegularExpressions.Regex.IsMatch(System.IO.Path.GetFileName(f), @"^model-\d{5}-of-\d{5}\.safetensors$"))
                File.Delete(f);
        return written;
    }
}
