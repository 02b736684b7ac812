using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Checkpoint;

/// <summary>Options for <see cref="StateDict.Load(nn.Module, CheckpointReader, StateDictOptions?)"/>.</summary>
public sealed record StateDictOptions
{
    /// <summary>Module keys that may be absent from the source. Glob ('*' any run of characters, '?' one) or "re:REGEX" (full match).</summary>
    public IReadOnlyList<string> AllowMissing { get; init; } = [];
    /// <summary>Source keys that may have no module counterpart (they are ignored). Same pattern syntax.</summary>
    public IReadOnlyList<string> AllowUnexpected { get; init; } = [];
    /// <summary>
    /// Only source keys starting with this prefix take part, with the prefix removed: e.g. "vargpt_gen." loads the
    /// Infinity part of a full checkpoint into a standalone Infinity module.
    /// </summary>
    public string Prefix { get; init; } = "";
    /// <summary>Called after each copied tensor with (bytes copied so far, total bytes to copy), e.g. for load progress lines.</summary>
    public Action<long, long>? Progress { get; init; }
    /// <summary>
    /// Zero-copy loading (checkpoint readers only): a parameter or buffer on the CPU or META device whose dtype equals
    /// the stored dtype becomes a view of a private memory mapping of its safetensors file instead of a copy (pages
    /// are read on first touch, stay file-backed and evictable; writes such as training updates copy the touched
    /// page and never reach the file). Other tensors on META are materialised on the CPU and read; misaligned tensors
    /// are copied. The module's Parameter objects are replaced (as Module.to(device) does), so build the module on
    /// META to never allocate the weights twice, and load before creating optimizers. docs/notes/checkpoint-io.md.
    /// </summary>
    public bool MemoryMap { get; init; }
}

public sealed record ShapeMismatch(string Name, long[] Expected, long[] Found)
{
    public override string ToString() => $"{Name}: module expects [{string.Join(", ", Expected)}], checkpoint has [{string.Join(", ", Found)}]";
}

/// <summary>What a load did: keys copied, and the missing/unexpected keys the options allowed.</summary>
public sealed record StateDictReport(IReadOnlyList<string> Loaded, IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected)
{
    /// <summary>Module keys that became memory-mapped views (<see cref="StateDictOptions.MemoryMap"/>).</summary>
    public IReadOnlyList<string> Mapped { get; init; } = [];

    public override string ToString() =>
        $"loaded {Loaded.Count} tensors; allowed missing {Missing.Count}{List(Missing)}; ignored unexpected {Unexpected.Count}{List(Unexpected)}";
    static string List(IReadOnlyList<string> xs) => xs.Count == 0 ? "" : " (" + string.Join(", ", xs.Take(10)) + (xs.Count > 10 ? ", ..." : "") + ")";
}

/// <summary>
/// Result of <see cref="StateDict.Compare"/>: module keys matched to checkpoint keys (same shape), and every problem.
/// Missing = module keys absent from the checkpoint and Unexpected = checkpoint keys with no module key, both under
/// their checkpoint names (prefix included); ShapeMismatch names are checkpoint names too.
/// </summary>
public sealed record StateDictComparison(IReadOnlyList<(string Name, string Source)> Matched, IReadOnlyList<string> Missing,
    IReadOnlyList<string> Unexpected, IReadOnlyList<ShapeMismatch> ShapeMismatches, IReadOnlyList<string> AllowedMissing, IReadOnlyList<string> AllowedUnexpected)
{
    public bool IsMatch => Missing.Count == 0 && Unexpected.Count == 0 && ShapeMismatches.Count == 0;
}

/// <summary>Every key problem of one load, all listed in the message. Nothing was copied when this is thrown.</summary>
public sealed class StateDictMismatchException(string source, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected,
    IReadOnlyList<ShapeMismatch> shapeMismatches) : VargptInputException(Format(source, missing, unexpected, shapeMismatches))
{
    public IReadOnlyList<string> Missing { get; } = missing;
    public IReadOnlyList<string> Unexpected { get; } = unexpected;
    public IReadOnlyList<ShapeMismatch> ShapeMismatches { get; } = shapeMismatches;

    static string Format(string source, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected, IReadOnlyList<ShapeMismatch> shapes)
    {
        var sb = new StringBuilder($"state dict from {source} does not match the module: ");
        sb.Append($"{missing.Count} missing, {unexpected.Count} unexpected, {shapes.Count} shape mismatches");
        if (missing.Count > 0) sb.Append("\nmissing keys (in the module, not in the checkpoint):\n  ").AppendJoin("\n  ", missing);
        if (unexpected.Count > 0) sb.Append("\nunexpected keys (in the checkpoint, not in the module):\n  ").AppendJoin("\n  ", unexpected);
        if (shapes.Count > 0) sb.Append("\nshape mismatches:\n  ").AppendJoin("\n  ", shapes);
        return sb.ToString();
    }
}

/// <summary>
/// Strict state-dict copy by exact official key names (torch's load_state_dict(strict=True) semantics, but every problem
/// is reported at once). Values are copied in place into the module's parameters and persistent buffers under no_grad,
/// converted to each parameter's dtype and device, one tensor at a time.
/// </summary>
public static class StateDict
{
    public static StateDictReport Load(nn.Module module, CheckpointReader source, StateDictOptions? options = null)
    {
        var shapes = source.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value.Shape, StringComparer.Ordinal);
        var sourceName = source.IndexPath ?? source.Files.FirstOrDefault() ?? source.Directory;
        if (options?.MemoryMap != true) return Load(module, shapes, (src, _, target) => source.LoadInto(src, target), sourceName, options);

        var modules = module.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        var mapped = new List<string>();
        var report = Load(module, shapes, (src, name, target) =>
        {
            if (target.device_type is not (DeviceType.CPU or DeviceType.META)) { source.LoadInto(src, target); return; }
            var view = source.MapView(src);
            if (view is not null && view.dtype == target.dtype)
            {
                Replace(module, modules, name, view);
                mapped.Add(name);
                return;
            }
            view?.Dispose();
            if (target.device_type == DeviceType.META)
            {
                var t = torch.empty(target.shape, target.dtype, CPU);
                source.LoadInto(src, t);
                Replace(module, modules, name, t);
            }
            else source.LoadInto(src, target);
        }, sourceName, options);
        // Anything still on META (an allowed-missing key, a non-persistent buffer) has no data: fail now, not mid-forward.
        var meta = module.named_parameters().Select(p => p.name).Concat(module.named_buffers().Select(b => b.name))
            .Where(n => Find(module, modules, n).device_type == DeviceType.META).ToList();
        if (meta.Count > 0)
            throw new InvalidOperationException($"{sourceName}: {meta.Count} tensors of the module are still on the META device after a memory-mapped load (not in the checkpoint): "
                + string.Join(", ", meta.Take(10)) + (meta.Count > 10 ? ", ..." : ""));
        return report with { Mapped = mapped };
    }

    static (nn.Module Owner, string Leaf) Split(nn.Module root, Dictionary<string, nn.Module> modules, string name)
    {
        int dot = name.LastIndexOf('.');
        return dot < 0 ? (root, name) : (modules[name[..dot]], name[(dot + 1)..]);
    }

    static Tensor Find(nn.Module root, Dictionary<string, nn.Module> modules, string name)
    {
        var (owner, leaf) = Split(root, modules, name);
        foreach (var (n, p) in owner.named_parameters(recurse: false)) if (n == leaf) return p;
        foreach (var (n, b) in owner.named_buffers(recurse: false)) if (n == leaf) return b;
        throw new KeyNotFoundException(name);
    }

    /// <summary>
    /// Replaces parameter or buffer <paramref name="name"/> by <paramref name="value"/> the way TorchSharp's Module.to(device)
    /// does: a settable public property of that name (Linear.weight, ...) or else re-registration plus the field of that name.
    /// </summary>
    static void Replace(nn.Module root, Dictionary<string, nn.Module> modules, string name, Tensor value)
    {
        var (owner, leaf) = Split(root, modules, name);
        var type = owner.GetType();
        var old = Find(root, modules, name);
        bool isParam = old is TorchSharp.Modules.Parameter;
        Tensor replacement = isParam ? new TorchSharp.Modules.Parameter(value, old.requires_grad) : value;
        var prop = type.GetProperties(BindingFlags.Public | BindingFlags.Instance).FirstOrDefault(p => p.Name == leaf && p.CanWrite && p.PropertyType.IsInstanceOfType(replacement));
        if (prop is not null) prop.SetValue(owner, replacement);
        else
        {
            var register = typeof(nn.Module).GetMethods(BindingFlags.NonPublic | BindingFlags.Instance)
                .Where(m => m.Name == (isParam ? "ConditionallyRegisterParameter" : "ConditionallyRegisterBuffer"))
                .Select(m => (Method: m, Params: m.GetParameters()))
                .Where(m => m.Params.Length >= 2 && m.Params[0].ParameterType == typeof(string) && m.Params[1].ParameterType.IsInstanceOfType(replacement))
                .OrderByDescending(m => m.Params[1].ParameterType == replacement.GetType())
                .Select(m => m.Method).FirstOrDefault()
                ?? throw new MissingMethodException($"TorchSharp Module has no way to re-register '{name}'");
            var args = new object?[register.GetParameters().Length];
            args[0] = leaf; args[1] = replacement;
            for (int i = 2; i < args.Length; i++) args[i] = register.GetParameters()[i].HasDefaultValue ? register.GetParameters()[i].DefaultValue : true;
            register.Invoke(owner, args);
            for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
            {
                var field = t.GetField(leaf, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.DeclaredOnly);
                if (field is null) continue;
                field.SetValue(owner, replacement);
                break;
            }
        }
        if (!ReferenceEquals(old, replacement)) old.Dispose();
    }

    public static StateDictReport Load(nn.Module module, IReadOnlyDictionary<string, Tensor> source, StateDictOptions? options = null) =>
        Load(module, source.ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal),
            (name, _, target) => target.copy_(source[name]), "a tensor dictionary", options);

    /// <summary>Opens a checkpoint (folder, file or index) and loads it.</summary>
    public static StateDictReport Load(nn.Module module, string path, StateDictOptions? options = null)
    {
        using var reader = CheckpointReader.Open(path);
        return Load(module, reader, options);
    }

    /// <param name="copy">(checkpoint name, module name, module tensor) for every matched key.</param>
    static StateDictReport Load(nn.Module module, Dictionary<string, long[]> sourceShapes, Action<string, string, Tensor> copy, string sourceName, StateDictOptions? options)
    {
        options ??= new StateDictOptions();
        var targets = module.state_dict();
        var c = Compare(targets.ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal), sourceShapes, options);
        if (!c.IsMatch)
            throw new StateDictMismatchException(sourceName + (options.Prefix.Length > 0 ? $" (prefix '{options.Prefix}')" : ""), c.Missing, c.Unexpected, c.ShapeMismatches);

        long total = options.Progress is null ? 0 : c.Matched.Sum(m => Bytes(targets[m.Name])), done = 0;
        using (torch.no_grad())
            foreach (var (name, src) in c.Matched)
            {
                long bytes = options.Progress is null ? 0 : Bytes(targets[name]); // before: a mapped load replaces (disposes) the target
                copy(src, name, targets[name]);
                if (options.Progress is { } progress) progress(done += bytes, total);
            }
        return new StateDictReport(c.Matched.Select(p => p.Name).ToList(), c.AllowedMissing, c.AllowedUnexpected);
    }

    static long Bytes(Tensor t) => t.numel() * t.element_size();

    /// <summary>
    /// Key-by-key comparison of module keys/shapes with checkpoint keys/shapes under the load rules (prefix, allowed
    /// missing/unexpected patterns), without copying anything: what <see cref="Load(nn.Module, CheckpointReader, StateDictOptions?)"/>
    /// would do or report. E.g. `vargpt info` checks a folder against the architecture built on the META device.
    /// </summary>
    public static StateDictComparison Compare(IReadOnlyDictionary<string, long[]> moduleShapes, IReadOnlyDictionary<string, long[]> sourceShapes, StateDictOptions? options = null)
    {
        options ??= new StateDictOptions();
        var allowMissing = options.AllowMissing.Select(Pattern).ToList();
        var allowUnexpected = options.AllowUnexpected.Select(Pattern).ToList();
        // Checkpoint key -> module key (prefix stripped).
        var src = sourceShapes.Where(kv => kv.Key.StartsWith(options.Prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[options.Prefix.Length..], kv => (Full: kv.Key, Shape: kv.Value), StringComparer.Ordinal);

        var missing = new List<string>();
        var allowedMissing = new List<string>();
        var shapes = new List<ShapeMismatch>();
        var matched = new List<(string Name, string Source)>();
        foreach (var (name, shape) in moduleShapes.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!src.TryGetValue(name, out var s))
            {
                // reported under the checkpoint's name (prefix included): that is what the user can look for in the file
                (allowMissing.Any(p => p.IsMatch(name)) ? allowedMissing : missing).Add(options.Prefix + name);
                continue;
            }
            if (!s.Shape.SequenceEqual(shape)) shapes.Add(new ShapeMismatch(s.Full, shape, s.Shape));
            else matched.Add((name, s.Full));
        }
        var unexpected = new List<string>();
        var allowedUnexpected = new List<string>();
        foreach (var (name, s) in src.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            if (!moduleShapes.ContainsKey(name))
                (allowUnexpected.Any(p => p.IsMatch(name) || p.IsMatch(s.Full)) ? allowedUnexpected : unexpected).Add(s.Full);
        return new StateDictComparison(matched, missing, unexpected, shapes, allowedMissing, allowedUnexpected);
    }

    /// <summary>Glob ('*', '?') or "re:REGEX", matched against the whole key.</summary>
    internal static Regex Pattern(string p) => p.StartsWith("re:", StringComparison.Ordinal)
        ? new Regex("^(?:" + p[3..] + ")$", RegexOptions.CultureInvariant)
        : new Regex("^" + Regex.Escape(p).Replace(@"\*", ".*").Replace(@"\?", ".") + "$", RegexOptions.CultureInvariant);

    /// <summary>
    /// Saves the module's parameters and persistent buffers under their names. A path ending in .safetensors gives one
    /// file; any other path is a folder receiving a (sharded if needed) Hugging Face layout. floatDType converts
    /// floating-point tensors while writing (e.g. bfloat16 like the official release).
    /// </summary>
    public static IReadOnlyList<string> Save(nn.Module module, string path, ScalarType? floatDType = null,
        long maxShardBytes = SafeTensorsWriter.DefaultMaxShardBytes, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var sd = module.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            SafeTensorsWriter.Save(path, sd, metadata, floatDType);
            return [path];
        }
        return SafeTensorsWriter.SaveSharded(path, sd, maxShardBytes, metadata, floatDType);
    }
}
