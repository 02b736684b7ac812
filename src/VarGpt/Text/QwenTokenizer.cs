using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using VarGpt.Checkpoint;
using VarGpt.Configuration;

namespace VarGpt.Text;

/// <summary>An added (usually special) token as listed in tokenizer.json "added_tokens" / tokenizer_config.json "added_tokens_decoder".</summary>
public sealed record AddedToken(int Id, string Content, bool Special, bool LStrip = false, bool RStrip = false);

/// <summary>
/// The Qwen2 byte-level BPE tokenizer (transformers Qwen2TokenizerFast / Hugging Face tokenizers), built only from the
/// files of a checkpoint folder: tokenizer.json (+ tokenizer_config.json), or vocab.json + merges.txt (+ added_tokens.json,
/// tokenizer_config.json, special_tokens_map.json) when tokenizer.json is absent.
/// Encoding: added tokens are matched atomically anywhere in the raw text (leftmost, longest first); every piece between
/// them is NFC-normalised, split with the pre-tokenizer regex, mapped to byte-level characters and BPE-merged
/// (Microsoft.ML.Tokenizers BpeTokenizer). Decoding mirrors the ByteLevel decoder: token characters back to bytes, one
/// lossy UTF-8 decode. Ids are never hard-coded: every id is looked up in the files.
/// </summary>
public sealed class QwenTokenizer
{
    /// <summary>transformers' Qwen2Tokenizer PRETOKENIZE_REGEX; used only when there is no tokenizer.json to read it from.</summary>
    const string Qwen2SplitPattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    /// <summary>The GPT-2 split of the ByteLevel pre-tokenizer when "use_regex" is true.</summary>
    const string Gpt2SplitPattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly BpeTokenizer _bpe;
    readonly bool _nfc;
    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<string, AddedToken> _addedByContent;
    readonly Dictionary<int, AddedToken> _addedById;
    /// <summary>id → token; a dictionary, not an array indexed by id: the ids are the file's word (one claiming 2^31-1 must not cost 16 GB).</summary>
    readonly Dictionary<int, string> _idToToken;
    readonly Regex? _addedSplit;

    /// <summary>Folder or file the tokenizer was read from (for error messages).</summary>
    public string Source { get; }
    /// <summary>Added tokens in id order.</summary>
    public IReadOnlyList<AddedToken> AddedTokens { get; }
    /// <summary>len(tokenizer) in transformers: distinct ids of the BPE vocabulary plus the added tokens (151660 for VARGPT-v1.1).</summary>
    public int VocabularySize { get; }
    public string? EosToken { get; }
    public string? PadToken { get; }
    public string? BosToken { get; }
    public int? EosTokenId => EosToken == null ? null : TokenToId(EosToken);
    public int? PadTokenId => PadToken == null ? null : TokenToId(PadToken);
    public int? BosTokenId => BosToken == null ? null : TokenToId(BosToken);
    /// <summary>The Jinja chat template string of tokenizer_config.json, if any (rendered by <see cref="ChatTemplate"/>).</summary>
    public string? ChatTemplateSource { get; }

    QwenTokenizer(string source, Dictionary<string, int> vocab, IReadOnlyList<string> merges, string splitPattern, bool nfc,
        IEnumerable<AddedToken> added, string? unkToken, JsonFields? config, JsonFields? specialMap)
    {
        Source = source;
        _vocab = vocab;
        _nfc = nfc;
        _addedByContent = new(StringComparer.Ordinal);
        foreach (var a in added)
        {
            if (a.Content.Length == 0) throw new InvalidFileException($"{source}: added token {a.Id} has empty content");
            _addedByContent[a.Content] = a;
        }
        // tokens named by special_tokens_map.json / tokenizer_config.json (eos, pad, additional_special_tokens) are special
        var namedSpecial = new HashSet<string>(StringComparer.Ordinal);
        string? Named(string key)
        {
            foreach (var src in new[] { config, specialMap })
                if (src is { } s && s.Has(key)) return TokenContent(s.Element.GetProperty(key), s.Source, key);
            return null;
        }
        EosToken = Named("eos_token"); PadToken = Named("pad_token"); BosToken = Named("bos_token");
        foreach (var t in new[] { EosToken, PadToken, BosToken }) if (t != null) namedSpecial.Add(t);
        foreach (var src in new[] { config, specialMap })
            if (src is { } s && s.Has("additional_special_tokens"))
                foreach (var e in s.Element.GetProperty("additional_special_tokens").EnumerateArray())
                    namedSpecial.Add(TokenContent(e, s.Source, "additional_special_tokens"));
        foreach (var (content, a) in _addedByContent.ToList())
            if (!a.Special && namedSpecial.Contains(content)) _addedByContent[content] = a with { Special = true };

        if (_addedByContent.Values.GroupBy(a => a.Id).FirstOrDefault(g => g.Count() > 1) is { } dup)
            throw new InvalidFileException($"{source}: added tokens {string.Join(", ", dup.Select(a => $"'{a.Content}'"))} share id {dup.Key}");
        _addedById = _addedByContent.Values.ToDictionary(a => a.Id);
        AddedTokens = _addedById.Values.OrderBy(a => a.Id).ToList();

        _idToToken = new Dictionary<int, string>(vocab.Count + AddedTokens.Count);
        foreach (var (tok, id) in vocab)
        {
            if (id < 0) throw new InvalidFileException($"{source}: token '{tok}' has negative id {id}");
            _idToToken[id] = tok;
        }
        foreach (var a in AddedTokens)
        {
            if (a.Id < 0) throw new InvalidFileException($"{source}: added token '{a.Content}' has negative id {a.Id}");
            _idToToken[a.Id] = a.Content;
        }
        VocabularySize = vocab.Values.Concat(_addedById.Keys).Distinct().Count();
        ChatTemplateSource = config is { } c && c.Has("chat_template") && c.Element.GetProperty("chat_template").ValueKind == JsonValueKind.String
            ? c.Str("chat_template") : null;

        foreach (var t in new[] { EosToken, PadToken, BosToken })
            if (t != null && TryTokenToId(t) == null) throw new InvalidFileException($"{source}: special token '{t}' is not in the vocabulary or the added tokens");

        if (AddedTokens.Count > 0)
        {
            // Leftmost match; at one position the longest token wins (alternatives sorted by length).
            var alts = AddedTokens.OrderByDescending(a => a.Content.Length).ThenBy(a => a.Id)
                .Select(a => (a.LStrip ? @"\s*" : "") + "(?<c>" + Regex.Escape(a.Content) + ")" + (a.RStrip ? @"\s*" : ""));
            _addedSplit = new Regex(string.Join("|", alts), RegexOptions.CultureInvariant);
        }

        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            PreTokenizer = new CodePointRegexPreTokenizer(SplitRegex(splitPattern, source)),
            Normalizer = null, // NFC is applied here per piece, after added-token splitting, as HF does
            ByteLevel = true,
            UnknownToken = unkToken,
        };
        try { _bpe = BpeTokenizer.Create(options); }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            throw new InvalidFileException($"{source}: the vocabulary and merges do not form a BPE model ({e.Message})", e);
        }
    }

    /// <summary>How long one pre-tokenizer match may take: the pattern is the file's, and a catastrophic one must end in an error, not a hang.</summary>
    static readonly TimeSpan SplitTimeout = TimeSpan.FromSeconds(2);

    static Regex SplitRegex(string pattern, string source)
    {
        try { return new Regex(pattern, RegexOptions.CultureInvariant, SplitTimeout); }
        catch (ArgumentException e) { throw new InvalidFileException($"{source}: the pre_tokenizer Split regex is not a valid .NET regular expression ({e.Message})", e); }
    }

    static string TokenContent(JsonElement e, string source, string key) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString()!,
        JsonValueKind.Object when e.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString()!,
        _ => throw new InvalidFileException($"{source}: '{key}' must be a token string or an object with 'content', found {e.GetRawText()}"),
    };

    // ---------------------------------------------------------------- loading

    /// <summary>Loads the tokenizer of a checkpoint folder (tokenizer.json preferred, else vocab.json + merges.txt).</summary>
    public static QwenTokenizer FromDirectory(string dir)
    {
        if (!Directory.Exists(dir)) throw new InputNotFoundException($"tokenizer folder {dir} does not exist");
        string P(string f) => Path.Combine(dir, f);
        var config = ReadJsonIfExists(P("tokenizer_config.json"));
        var specialMap = ReadJsonIfExists(P("special_tokens_map.json"));
        bool json = File.Exists(P("tokenizer.json"));
        if (!json && !(File.Exists(P("vocab.json")) && File.Exists(P("merges.txt"))))
            throw new InputNotFoundException($"{dir}: no tokenizer.json and no vocab.json + merges.txt pair");
        try { return json ? FromTokenizerJson(P("tokenizer.json"), config, specialMap) : FromVocabAndMerges(dir, config, specialMap); }
        // JsonElement's accessors for a value of another kind, a missing key, a number out of range (found by fuzzing:
        // fuzz/regressions/tokenizer); the files' own checks name the key where they can
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or OverflowException or JsonException)
        {
            throw new InvalidFileException($"{(json ? P("tokenizer.json") : dir)}: the tokenizer files do not have the expected structure ({e.Message})", e);
        }
    }

    static JsonFields? ReadJsonIfExists(string path)
    {
        if (!File.Exists(path)) return null;
        try { return new JsonFields(JsonDocument.Parse(File.ReadAllText(path)).RootElement, path); }
        catch (JsonException e) { throw new InvalidFileException($"{path}: invalid JSON: {e.Message}", e); }
    }

    static QwenTokenizer FromTokenizerJson(string path, JsonFields? config, JsonFields? specialMap)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(File.ReadAllText(path)).RootElement; }
        catch (JsonException e) { throw new InvalidFileException($"{path}: invalid JSON: {e.Message}", e); }
        var j = new JsonFields(root, path);
        var model = j.Obj("model");
        string type = model.Str("type", "BPE");
        if (type != "BPE") throw new InvalidFileException($"{path}: model.type '{type}' is not supported (byte-level BPE only)");
        if (model.Bool("byte_fallback", false)) throw new InvalidFileException($"{path}: model.byte_fallback=true is not supported");
        if (model.Bool("ignore_merges", false)) throw new InvalidFileException($"{path}: model.ignore_merges=true is not supported");
        if (model.Has("dropout")) throw new InvalidFileException($"{path}: BPE dropout is not supported");
        foreach (var k in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.Str(k, "") != "") throw new InvalidFileException($"{path}: model.{k} must be empty for byte-level BPE");

        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in model.Obj("vocab").Element.EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
        var merges = new List<string>();
        foreach (var m in model.Element.GetProperty("merges").EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() != 2)
                throw new InvalidFileException($"{path}: model.merges entry {m.GetRawText()} must be a pair [left, right] or a \"left right\" string");
            merges.Add(m.ValueKind == JsonValueKind.Array ? $"{m[0].GetString()} {m[1].GetString()}" : m.GetString()!);
        }

        bool nfc = ParseNormalizer(root.TryGetProperty("normalizer", out var n) ? n : default, path);
        string split = ParsePreTokenizer(root.TryGetProperty("pre_tokenizer", out var pt) ? pt : default, path);
        if (root.TryGetProperty("decoder", out var dec) && dec.ValueKind == JsonValueKind.Object && dec.GetProperty("type").GetString() != "ByteLevel")
            throw new InvalidFileException($"{path}: decoder type '{dec.GetProperty("type").GetString()}' is not supported (ByteLevel only)");

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
            foreach (var a in at.EnumerateArray()) added.Add(ParseAddedToken(a, a.GetProperty("id").GetInt32(), path));
        // tokenizer_config.json may list added tokens too (same ids); tokenizer.json wins on conflicts
        if (config is { } c && c.Has("added_tokens_decoder"))
            foreach (var p in c.Element.GetProperty("added_tokens_decoder").EnumerateObject())
            {
                int id = int.Parse(p.Name, CultureInfo.InvariantCulture);
                if (added.All(x => x.Id != id)) added.Add(ParseAddedToken(p.Value, id, c.Source));
            }
        string? unk = model.Has("unk_token") ? model.Str("unk_token") : null;
        return new QwenTokenizer(path, vocab, merges, split, nfc, added, unk, config, specialMap);
    }

    static QwenTokenizer FromVocabAndMerges(string dir, JsonFields? config, JsonFields? specialMap)
    {
        string vocabPath = Path.Combine(dir, "vocab.json"), mergesPath = Path.Combine(dir, "merges.txt");
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)) ?? throw new InvalidFileException($"{vocabPath}: empty"); }
        catch (JsonException e) { throw new InvalidFileException($"{vocabPath}: must be a JSON object token -> id: {e.Message}", e); }
        vocab = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        // merges.txt: optional "#version" header, one "left right" pair per line
        var merges = File.ReadLines(mergesPath).Select(l => l.TrimEnd('\r'))
            .Where((l, i) => l.Length > 0 && !(i == 0 && l.StartsWith("#version", StringComparison.Ordinal))).ToList();

        var added = new Dictionary<int, AddedToken>();
        if (config is { } c && c.Has("added_tokens_decoder"))
            foreach (var p in c.Element.GetProperty("added_tokens_decoder").EnumerateObject())
            {
                int id = int.Parse(p.Name, CultureInfo.InvariantCulture);
                added[id] = ParseAddedToken(p.Value, id, c.Source);
            }
        var addedPath = Path.Combine(dir, "added_tokens.json");
        if (File.Exists(addedPath))
        {
            var extra = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(addedPath))
                ?? throw new InvalidFileException($"{addedPath}: empty");
            // tokens only listed here are plain (non-special) added tokens unless the special-token maps name them
            foreach (var (content, id) in extra) added.TryAdd(id, new AddedToken(id, content, Special: false));
        }
        return new QwenTokenizer(dir, vocab, merges, Qwen2SplitPattern, nfc: true, added.Values, null, config, specialMap);
    }

    static AddedToken ParseAddedToken(JsonElement e, int id, string source)
    {
        var f = new JsonFields(e, $"{source} -> added token {id}");
        if (f.Bool("single_word", false)) throw new InvalidFileException($"{f.Source}: single_word added tokens are not supported");
        return new AddedToken(id, f.Str("content"), f.Bool("special", false), f.Bool("lstrip", false), f.Bool("rstrip", false));
    }

    /// <summary>True for NFC, false for none; anything else is rejected rather than silently ignored.</summary>
    static bool ParseNormalizer(JsonElement n, string path)
    {
        if (n.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return false;
        string type = n.GetProperty("type").GetString()!;
        if (type == "NFC") return true;
        if (type == "Sequence")
        {
            var parts = n.GetProperty("normalizers").EnumerateArray().ToList();
            if (parts.Count == 0) return false;
            if (parts.Count == 1) return ParseNormalizer(parts[0], path);
        }
        throw new InvalidFileException($"{path}: normalizer {n.GetRawText()} is not supported (NFC or none)");
    }

    /// <summary>The split regex: Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)] (Qwen2) or ByteLevel(use_regex=true) (GPT-2).</summary>
    static string ParsePreTokenizer(JsonElement p, string path)
    {
        InvalidFileException Bad() => new($"{path}: pre_tokenizer {p.GetRawText()} is not supported (expected Split(regex, Isolated) + ByteLevel, or ByteLevel with use_regex)");
        if (p.ValueKind != JsonValueKind.Object) throw Bad();
        var list = p.GetProperty("type").GetString() == "Sequence" ? p.GetProperty("pretokenizers").EnumerateArray().ToList() : [p];
        string? pattern = null;
        bool byteLevel = false;
        foreach (var e in list)
        {
            switch (e.GetProperty("type").GetString())
            {
                case "Split" when pattern == null && !byteLevel:
                    if (!e.TryGetProperty("pattern", out var pat) || !pat.TryGetProperty("Regex", out var rx)) throw Bad();
                    if (e.GetProperty("behavior").GetString() != "Isolated" || (e.TryGetProperty("invert", out var inv) && inv.GetBoolean())) throw Bad();
                    pattern = rx.GetString();
                    break;
                case "ByteLevel" when !byteLevel:
                    if (e.TryGetProperty("add_prefix_space", out var aps) && aps.GetBoolean())
                        throw new InvalidFileException($"{path}: ByteLevel add_prefix_space=true is not supported");
                    bool useRegex = !e.TryGetProperty("use_regex", out var ur) || ur.GetBoolean();
                    if (useRegex) { if (pattern != null) throw Bad(); pattern = Gpt2SplitPattern; }
                    byteLevel = true;
                    break;
                default: throw Bad();
            }
        }
        if (!byteLevel || pattern == null) throw Bad();
        return pattern;
    }

    // ---------------------------------------------------------------- lookups

    /// <summary>Id of a vocabulary or added token; throws naming the token if it does not exist.</summary>
    public int TokenToId(string token) => TryTokenToId(token)
        ?? throw new KeyNotFoundException($"token '{token}' is not in the tokenizer vocabulary or added tokens of {Source}");

    public int? TryTokenToId(string token) =>
        _addedByContent.TryGetValue(token, out var a) ? a.Id : _vocab.TryGetValue(token, out var id) ? id : null;

    /// <summary>The token string of an id (byte-level characters for BPE tokens), or null if the id has no token.</summary>
    public string? IdToToken(int id) => _idToToken.GetValueOrDefault(id);

    public bool IsSpecial(int id) => _addedById.TryGetValue(id, out var a) && a.Special;

    // ---------------------------------------------------------------- encoding

    /// <summary>Token ids of <paramref name="text"/> (add_special_tokens adds nothing for Qwen2).</summary>
    public IReadOnlyList<int> Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ReplaceLoneSurrogates(text);
        var ids = new List<int>();
        int pos = 0;
        if (_addedSplit != null)
            for (var m = _addedSplit.Match(text); m.Success; m = m.NextMatch())
            {
                EncodePlain(text[pos..m.Index], ids);
                ids.Add(_addedByContent[m.Groups["c"].Value].Id); // lstrip/rstrip tokens absorb the whitespace around them
                pos = m.Index + m.Length;
            }
        EncodePlain(text[pos..], ids);
        return ids;
    }

    void EncodePlain(string piece, List<int> ids)
    {
        if (piece.Length == 0) return;
        if (_nfc) piece = piece.Normalize(NormalizationForm.FormC);
        try { ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: true, considerNormalization: false)); }
        catch (RegexMatchTimeoutException e) { throw new InvalidFileException($"{Source}: the pre_tokenizer regex took over {e.MatchTimeout.TotalSeconds:0} s on one piece of text (a pattern with catastrophic backtracking?)", e); }
    }

    /// <summary>Rust strings cannot hold lone surrogates; UTF-8 encoding turns them into U+FFFD, so do the same here.</summary>
    static string ReplaceLoneSurrogates(string s)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            bool pair = char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]);
            if (pair) { sb?.Append(c).Append(s[i + 1]); i++; continue; }
            if (char.IsSurrogate(c)) { sb ??= new StringBuilder(s, 0, i, s.Length); sb.Append('\uFFFD'); }
            else sb?.Append(c);
        }
        return sb?.ToString() ?? s;
    }

    // ---------------------------------------------------------------- decoding

    /// <summary>
    /// Text of <paramref name="ids"/>. With <paramref name="skipSpecialTokens"/> special added tokens are dropped (as
    /// HF decode(skip_special_tokens=True)). Ids without a token are dropped, as the Rust library does (the embedding
    /// matrix has more rows than the tokenizer has tokens). Invalid UTF-8 becomes U+FFFD.
    /// </summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens)
    {
        var bytes = new List<byte>();
        foreach (var id in ids) AppendTokenBytes(id, skipSpecialTokens, bytes);
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    /// <summary>A decoder that turns ids into text one at a time, holding back incomplete UTF-8 sequences.</summary>
    public StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens) => new(this, skipSpecialTokens);

    /// <summary>Raw bytes of one token (ByteLevel decoder); nothing for skipped or unknown ids.</summary>
    internal void AppendTokenBytes(int id, bool skipSpecialTokens, List<byte> bytes)
    {
        if (_addedById.TryGetValue(id, out var a))
        {
            if (!(skipSpecialTokens && a.Special)) bytes.AddRange(Encoding.UTF8.GetBytes(a.Content));
            return;
        }
        var tok = IdToToken(id);
        if (tok == null) return;
        // HF ByteLevel decoder: every char maps back to one byte; a token with a char outside the table is kept as UTF-8
        int start = bytes.Count;
        foreach (char c in tok)
        {
            int b = ByteLevel.CharToByte(c);
            if (b < 0) { bytes.RemoveRange(start, bytes.Count - start); bytes.AddRange(Encoding.UTF8.GetBytes(tok)); return; }
            bytes.Add((byte)b);
        }
    }
}

/// <summary>GPT-2 bytes_to_unicode: the reversible map between bytes and the printable characters byte-level BPE stores.</summary>
static class ByteLevel
{
    static readonly int[] _charToByte = Build();

    static int[] Build()
    {
        // printable Latin-1 bytes map to themselves; the other 68 bytes to U+0100.. in byte order
        var map = new int[0x100 + 68];
        Array.Fill(map, -1);
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool keep = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[keep ? b : 0x100 + next++] = b;
        }
        return map;
    }

    /// <summary>The byte a byte-level character stands for, or -1.</summary>
    public static int CharToByte(char c) => c < _charToByte.Length ? _charToByte[c] : -1;

    /// <summary>The byte-level character of a byte.</summary>
    public static char ByteToChar(byte b) => (char)Array.IndexOf(_charToByte, b);
}

/// <summary>
/// Split pre-tokenizer (behaviour Isolated: matches and the gaps between them are pieces) that runs the regex with Unicode
/// code-point semantics like the Rust library. .NET regexes see UTF-16 code units, so a character outside the BMP would be
/// two surrogates of category Cs and never match \p{L} or \p{N}; such characters are replaced by a BMP stand-in of the
/// same general category before matching and the offsets are mapped back.
/// </summary>
sealed class CodePointRegexPreTokenizer(Regex regex) : PreTokenizer
{
    static readonly char[] _standIn = BuildStandIns();

    static char[] BuildStandIns()
    {
        // first non-ASCII BMP character of each category (ASCII is avoided so case-insensitive literals cannot match)
        var s = new char[32];
        for (int c = 0xFFFF; c >= 0xA0; c--)
        {
            if (char.IsSurrogate((char)c)) continue;
            s[(int)char.GetUnicodeCategory((char)c)] = (char)c;
        }
        return s;
    }

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) => Split(text.AsSpan());
    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => Split(text);

    List<(int Offset, int Length)> Split(ReadOnlySpan<char> text)
    {
        var pieces = new List<(int, int)>();
        if (text.IsEmpty) return pieces;
        string mapped;
        int[]? origin = null; // mapped index -> original index (length mapped.Length + 1)
        if (text.IndexOfAnyInRange('\uD800', '\uDFFF') < 0) mapped = text.ToString();
        else
        {
            var sb = new StringBuilder(text.Length);
            var o = new List<int>(text.Length + 1);
            for (int i = 0; i < text.Length; i++)
            {
                o.Add(i);
                if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                {
                    var cat = CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]));
                    sb.Append(_standIn[(int)cat]);
                    i++;
                }
                else sb.Append(text[i]);
            }
            o.Add(text.Length);
            mapped = sb.ToString();
            origin = o.ToArray();
        }
        int Orig(int i) => origin == null ? i : origin[i];
        int pos = 0;
        foreach (Match m in regex.Matches(mapped))
        {
            if (m.Length == 0) continue;
            if (m.Index > pos) pieces.Add((Orig(pos), Orig(m.Index) - Orig(pos)));
            pieces.Add((Orig(m.Index), Orig(m.Index + m.Length) - Orig(m.Index)));
            pos = m.Index + m.Length;
        }
        if (pos < mapped.Length) pieces.Add((Orig(pos), Orig(mapped.Length) - Orig(pos)));
        return pieces;
    }
}
