using System.Collections.Concurrent;
using VarGpt.Server.Http;

namespace VarGpt.Fuzz;

/// <summary>
/// One fuzz target: a name (the folder of its corpus and regressions), what it covers, and the function that feeds
/// one input through the product's own reader. The function returns normally when the input was accepted or rejected
/// with an error of the product's input-error family (<see cref="FuzzTargets.IsInputError"/>); anything else escaping
/// it (an IndexOutOfRange, a NullReference, a NotSupportedException, an OutOfMemory, an invariant the harness checks) is
/// a finding: afl records it as a crash, the replay test fails on it.
/// </summary>
public sealed record FuzzTarget(string Name, string Covers, Action<byte[]> Run)
{
    /// <summary>Feeds one input; null when the reader accepted it, else the message of the input error it answered with.</summary>
    public string? Execute(byte[] input)
    {
        try
        {
            Run(input);
            return null;
        }
        catch (Exception e) when (FuzzTargets.IsInputError(e)) { return e.Message.Length == 0 ? e.GetType().Name : e.Message; }
    }

    public override string ToString() => Name;
}

/// <summary>An invariant of a reader that the harness checks after it accepted an input (e.g. a loaded tensor has the header's element count).</summary>
public sealed class FuzzInvariantException(string message) : Exception(message);

/// <summary>Helpers shared by the targets: splitting a multi-file input, a scratch folder per target.</summary>
static class FuzzInput
{
    /// <summary>
    /// Splits an input holding several files at NUL bytes (JSON and yaml never contain a raw NUL), into at most
    /// <paramref name="max"/> parts (the last part keeps any further NULs).
    /// </summary>
    public static List<byte[]> Split(byte[] input, int max)
    {
        var parts = new List<byte[]>();
        int start = 0;
        for (int i = 0; i < input.Length && parts.Count < max - 1; i++)
            if (input[i] == 0)
            {
                parts.Add(input[start..i]);
                start = i + 1;
            }
        parts.Add(input[start..]);
        return parts;
    }

    /// <summary>The first byte that is not JSON whitespace, or -1.</summary>
    public static int FirstNonSpace(byte[] input)
    {
        foreach (var b in input)
            if (b is not ((byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')) return b;
        return -1;
    }

    static readonly ConcurrentDictionary<string, string> Dirs = new();

    /// <summary>
    /// A scratch folder of this process for one target (in /dev/shm when it exists: the readers take paths, and a
    /// tmpfs keeps the per-input file writes cheap). Removed when the process exits normally.
    /// </summary>
    public static string WorkDir(string target) => Dirs.GetOrAdd(target, t =>
    {
        var root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        var dir = Path.Combine(root, $"vargpt-fuzz-{Environment.ProcessId}", t);
        Directory.CreateDirectory(dir);
        if (Dirs.IsEmpty)
            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                try { Directory.Delete(Path.Combine(root, $"vargpt-fuzz-{Environment.ProcessId}"), recursive: true); }
                catch (IOException) { }
            };
        return dir;
    });

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/>, or deletes the file when the part is absent (null).</summary>
    public static void Put(string path, byte[]? bytes)
    {
        if (bytes is null) File.Delete(path);
        else File.WriteAllBytes(path, bytes);
    }

    /// <summary>True for the OpenAI-style errors the server answers with a 4xx status.</summary>
    public static bool IsClientError(Exception e) => e is ApiException { Status: >= 400 and < 500 };
}
