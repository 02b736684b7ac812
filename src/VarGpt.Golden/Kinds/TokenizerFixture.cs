using System.Collections.Concurrent;
using System.Text.Json;
using VarGpt.Text;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "tokenizer": ids of the real Rust tokenizers library for many strings (exact), decode with and without special
/// tokens (exact), the special-token ids and len(tokenizer), all read from the fixture's tokenizer folder.
/// </summary>
public sealed class TokenizerFixture : IFixtureKind
{
    public string Kind => "tokenizer";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        var p = f.Params;
        var tok = FixtureTokenizers.Load(f, p.GetProperty("tokenizer_dir").GetString()!);
        cmp.ExactList("len_tokenizer", [tok.VocabularySize], [p.GetProperty("len_tokenizer").GetInt64()]);
        foreach (var s in p.GetProperty("special_token_ids").EnumerateObject())
            cmp.ExactList($"token_id({s.Name})", [tok.TryTokenToId(s.Name) ?? -1], [s.Value.GetInt64()]);
        foreach (var (key, got) in new[] { ("eos_token", tok.EosToken), ("pad_token", tok.PadToken), ("bos_token", tok.BosToken) })
            if (f.Config.ValueKind == JsonValueKind.Object && f.Config.TryGetProperty(key, out var e))
                cmp.Equal(key, got ?? "<null>", e.ValueKind == JsonValueKind.Null ? "<null>" : e.GetString()!);

        int i = 0;
        foreach (var c in p.GetProperty("cases").EnumerateArray())
        {
            string text = c.GetProperty("text").GetString()!;
            var expIds = c.GetProperty("ids").EnumerateArray().Select(v => v.GetInt64()).ToArray();
            var ids = tok.Encode(text);
            string name = $"case{i++}";
            cmp.ExactList($"{name}.ids", ids.Select(x => (long)x).ToArray(), expIds);
            var exp = expIds.Select(x => (int)x).ToArray();
            cmp.Equal($"{name}.decoded", tok.Decode(exp, skipSpecialTokens: false), c.GetProperty("decoded").GetString()!);
            cmp.Equal($"{name}.rust_decode", tok.Decode(exp, skipSpecialTokens: true), c.GetProperty("rust_decode").GetString()!);
            var stream = tok.CreateStreamingDecoder(skipSpecialTokens: false);
            cmp.Equal($"{name}.streamed", string.Concat(exp.Select(stream.Push)) + stream.Flush(), c.GetProperty("decoded").GetString()!);
        }
    }
}

/// <summary>Resolves a fixture's tokenizer folder ("shared/tokenizers/...") and caches the loaded tokenizer.</summary>
static class FixtureTokenizers
{
    static readonly ConcurrentDictionary<string, QwenTokenizer> _cache = new(StringComparer.Ordinal);

    public static QwenTokenizer Load(Fixture f, string relative) => _cache.GetOrAdd(Resolve(f, relative), QwenTokenizer.FromDirectory);

    /// <summary>
    /// The path is relative to the folder that contains "shared": tried above the fixture folder, above the running
    /// assembly and under VARGPT_SHARED (for held-out fixture copies that live elsewhere).
    /// </summary>
    static string Resolve(Fixture f, string relative)
    {
        var tried = new List<string>();
        IEnumerable<string> Ancestors(string? d) { for (var x = d == null ? null : new DirectoryInfo(d); x != null; x = x.Parent) yield return x.FullName; }
        var candidates = Ancestors(f.Dir).Concat(Ancestors(AppContext.BaseDirectory)).Select(a => Path.Combine(a, relative)).ToList();
        if (Environment.GetEnvironmentVariable("VARGPT_SHARED") is { Length: > 0 } shared && relative.StartsWith("shared/", StringComparison.Ordinal))
            candidates.Insert(0, Path.Combine(shared, relative["shared/".Length..]));
        foreach (var c in candidates)
        {
            if (Directory.Exists(c)) return Path.GetFullPath(c);
            tried.Add(c);
        }
        throw new InputNotFoundException($"{f.Id}: tokenizer folder '{relative}' not found; tried {string.Join(", ", tried.Distinct().Take(6))} ...");
    }
}
