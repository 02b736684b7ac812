using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace VarGpt.ShapesWorld;

/// <summary>
/// A byte-level BPE tokenizer in the Qwen2 layout: special tokens are cut out first, the rest is NFC-normalised, split
/// by the Qwen2 pre-tokenizer regex, mapped to GPT-2 byte symbols and merged by rank. Ids: the 256 byte symbols
/// (GPT-2 byte order), then one id per merge, then the special tokens in <see cref="SpecialTokens"/> order — so a saved
/// folder is read exactly like the Qwen2-VL tokenizer files (ids come from the files, never from constants).
/// </summary>
public sealed class ByteLevelBpeTokenizer
{
    /// <summary>The Qwen2-VL special tokens in their official relative order, then VARGPT's three image-generation tokens.</summary>
    public static readonly string[] SpecialTokens =
    [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
        "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|image_gen_start|>", "<|image_gen_end|>", "<|image_gen_pad|>",
    ];

    /// <summary>Qwen2's Split pre-tokenizer pattern (behavior Isolated).</summary>
    public const string PreTokenizerPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    static readonly Regex PreTokenizer = new(PreTokenizerPattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>GPT-2 byte→symbol table: printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.</summary>
    public static readonly char[] ByteToChar = BuildByteTable();
    static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    static char[] BuildByteTable()
    {
        var table = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + extra++);
        }
        return table;
    }

    /// <summary>The 256 byte symbols in GPT-2 id order (printable bytes first, then the remapped ones).</summary>
    public static IEnumerable<string> ByteSymbols()
    {
        var printable = Enumerable.Range(0, 256).Where(b => ByteToChar[b] == (char)b);
        var rest = Enumerable.Range(0, 256).Where(b => ByteToChar[b] != (char)b);
        return printable.Concat(rest).Select(b => ByteToChar[b].ToString());
    }

    readonly string[] _idToToken;
    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<(int, int), (int Rank, int Id)> _merges;
    readonly Dictionary<string, int[]> _cache = new();
    readonly Regex _specialSplit;

    /// <summary>Byte symbols and merge results, by id (excluding special tokens).</summary>
    public IReadOnlyDictionary<string, int> Vocab => _vocab;
    public IReadOnlyList<(string Left, string Right)> Merges { get; }
    /// <summary>Id of each special token (appended after the BPE vocabulary).</summary>
    public IReadOnlyDictionary<string, int> SpecialTokenIds { get; }
    /// <summary>BPE vocabulary plus special tokens.</summary>
    public int VocabSize => _idToToken.Length;

    /// <summary>Builds a tokenizer from an ordered vocabulary (id = position) and merges in rank order.</summary>
    public ByteLevelBpeTokenizer(IReadOnlyList<string> vocab, IReadOnlyList<(string Left, string Right)> merges, IReadOnlyList<string>? specialTokens = null)
    {
        var specials = specialTokens ?? SpecialTokens;
        _idToToken = vocab.Concat(specials).ToArray();
        _vocab = new Dictionary<string, int>();
        for (int i = 0; i < vocab.Count; i++)
            if (!_vocab.TryAdd(vocab[i], i)) throw new ArgumentException($"duplicate vocabulary entry '{vocab[i]}' at ids {_vocab[vocab[i]]} and {i}");
        foreach (var s in ByteSymbols())
            if (!_vocab.ContainsKey(s)) throw new ArgumentException($"vocabulary lacks byte symbol '{s}': a byte-level BPE needs all 256");
        Merges = merges.ToArray();
        _merges = new Dictionary<(int, int), (int, int)>();
        for (int r = 0; r < merges.Count; r++)
        {
            var (l, rt) = merges[r];
            if (!_vocab.TryGetValue(l, out int li) || !_vocab.TryGetValue(rt, out int ri) || !_vocab.TryGetValue(l + rt, out int mi))
                throw new ArgumentException($"merge #{r} '{l} {rt}': left, right or merged token missing from the vocabulary");
            _merges.TryAdd((li, ri), (r, mi));
        }
        SpecialTokenIds = specials.Select((s, k) => (s, k)).ToDictionary(t => t.s, t => vocab.Count + t.k);
        _specialSplit = new Regex("(" + string.Join("|", specials.OrderByDescending(s => s.Length).Select(Regex.Escape)) + ")", RegexOptions.CultureInvariant);
    }

    /// <summary>Pre-tokens of a text without special tokens: NFC, then the Qwen2 regex (unmatched gaps kept as pieces).</summary>
    public static IEnumerable<string> PreTokenize(string text)
    {
        text = text.Normalize(NormalizationForm.FormC);
        int pos = 0;
        for (var m = PreTokenizer.Match(text); m.Success; m = m.NextMatch())
        {
            if (m.Index > pos) yield return text[pos..m.Index];
            if (m.Length > 0) yield return m.Value;
            pos = m.Index + m.Length;
        }
        if (pos < text.Length) yield return text[pos..];
    }

    /// <summary>Byte symbols of a pre-token ("Ġred" for " red").</summary>
    public static string ToByteSymbols(string piece) => new(Encoding.UTF8.GetBytes(piece).Select(b => ByteToChar[b]).ToArray());

    /// <summary>Splits text into (segment, isSpecial) around special tokens, as HF does before normalisation.</summary>
    public IEnumerable<(string Text, bool Special)> SplitSpecial(string text)
    {
        foreach (var part in _specialSplit.Split(text))
            if (part.Length > 0) yield return (part, SpecialTokenIds.ContainsKey(part));
    }

    public int[] Encode(string text)
    {
        var ids = new List<int>();
        foreach (var (seg, special) in SplitSpecial(text))
        {
            if (special) { ids.Add(SpecialTokenIds[seg]); continue; }
            foreach (var piece in PreTokenize(seg)) ids.AddRange(EncodeWord(ToByteSymbols(piece)));
        }
        return ids.ToArray();
    }

    /// <summary>BPE on one pre-token: repeatedly merge the adjacent pair with the lowest rank (leftmost first).</summary>
    int[] EncodeWord(string symbols)
    {
        if (_cache.TryGetValue(symbols, out var cached)) return cached;
        var w = symbols.Select(c => _vocab[c.ToString()]).ToList();
        while (w.Count > 1)
        {
            int bestRank = int.MaxValue, bestId = -1, l = -1, r = -1;
            for (int i = 0; i + 1 < w.Count; i++)
                if (_merges.TryGetValue((w[i], w[i + 1]), out var m) && m.Rank < bestRank) (bestRank, bestId, l, r) = (m.Rank, m.Id, w[i], w[i + 1]);
            if (bestId < 0) break;
            var next = new List<int>(w.Count);
            for (int i = 0; i < w.Count; i++)
            {
                if (i + 1 < w.Count && w[i] == l && w[i + 1] == r) { next.Add(bestId); i++; }
                else next.Add(w[i]);
            }
            w = next;
        }
        var result = w.ToArray();
        if (_cache.Count < 100_000) _cache[symbols] = result;
        return result;
    }

    public string IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {_idToToken.Length}");

    /// <summary>HF ByteLevel decoding: token symbols back to bytes (a token with a non-byte symbol, e.g. a special
    /// token, contributes its UTF-8 text), then lossy UTF-8.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            var tok = IdToToken(id);
            if (SpecialTokenIds.ContainsKey(tok)) { if (skipSpecialTokens) continue; }
            if (tok.All(CharToByte.ContainsKey)) bytes.AddRange(tok.Select(c => CharToByte[c]));
            else bytes.AddRange(Encoding.UTF8.GetBytes(tok));
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    // ---- files (Hugging Face layout, as the Qwen2-VL checkpoint ships them) ----

    /// <summary>Writes tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, added_tokens.json, special_tokens_map.json.</summary>
    public void Save(string folder, int modelMaxLength = 4096)
    {
        Directory.CreateDirectory(folder);
        var indented = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        int nBpe = _vocab.Count;
        var specials = _idToToken[nBpe..];

        JsonObject AddedToken(string s, bool withId)
        {
            var o = new JsonObject();
            if (withId) o["id"] = SpecialTokenIds[s];
            o["content"] = s; o["single_word"] = false; o["lstrip"] = false; o["rstrip"] = false; o["normalized"] = false; o["special"] = true;
            return o;
        }
        static JsonObject ByteLevel() => new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false };

        var vocabObj = new JsonObject();
        foreach (var t in _idToToken[..nBpe]) vocabObj[t] = _vocab[t];
        var tok = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(specials.Select(s => (JsonNode)AddedToken(s, true)).ToArray()),
            ["normalizer"] = new JsonObject { ["type"] = "NFC" },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = PreTokenizerPattern }, ["behavior"] = "Isolated", ["invert"] = false },
                    ByteLevel()),
            },
            ["post_processor"] = ByteLevel(),
            ["decoder"] = ByteLevel(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "", ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = vocabObj,
                ["merges"] = new JsonArray(Merges.Select(m => (JsonNode)(m.Left + " " + m.Right)).ToArray()),
            },
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tok.ToJsonString(indented));

        var decoder = new JsonObject();
        foreach (var s in specials) { var o = AddedToken(s, false); decoder[SpecialTokenIds[s].ToString()] = o; }
        var additional = specials.Where(s => s != "<|endoftext|>").ToArray();
        var config = new JsonObject
        {
            ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = decoder,
            ["additional_special_tokens"] = new JsonArray(additional.Select(s => (JsonNode)s).ToArray()),
            ["bos_token"] = null,
            ["chat_template"] = ChatTemplate,
            ["clean_up_tokenization_spaces"] = false,
            ["eos_token"] = "<|im_end|>",
            ["errors"] = "replace",
            ["model_max_length"] = modelMaxLength,
            ["pad_token"] = "<|endoftext|>",
            ["padding_side"] = "left",
            ["split_special_tokens"] = false,
            ["tokenizer_class"] = "Qwen2Tokenizer",
            ["unk_token"] = null,
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(indented));
        File.WriteAllText(Path.Combine(folder, "vocab.json"), vocabObj.ToJsonString());
        File.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\n" + string.Concat(Merges.Select(m => m.Left + " " + m.Right + "\n")));
        var added = new JsonObject();
        foreach (var s in specials.OrderBy(s => s, StringComparer.Ordinal)) added[s] = SpecialTokenIds[s];
        File.WriteAllText(Path.Combine(folder, "added_tokens.json"), added.ToJsonString(indented));
        JsonObject Plain(string s) => new() { ["content"] = s, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false };
        var map = new JsonObject
        {
            ["additional_special_tokens"] = new JsonArray(additional.Select(s => (JsonNode)Plain(s)).ToArray()),
            ["eos_token"] = Plain("<|im_end|>"),
            ["pad_token"] = Plain("<|endoftext|>"),
        };
        File.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), map.ToJsonString(indented));
    }

    /// <summary>ChatML with the default system prompt; images as &lt;|vision_start|&gt;&lt;|image_pad|&gt;&lt;|vision_end|&gt;.</summary>
    public const string ChatTemplate =
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}" +
        "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}" +
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}" +
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    /// <summary>Loads a tokenizer.json written by <see cref="Save"/> (or any byte-level BPE tokenizer.json with string
    /// or pair merges); special tokens are its added_tokens, which must follow the BPE ids contiguously.</summary>
    public static ByteLevelBpeTokenizer Load(string tokenizerJson)
    {
        var root = JsonNode.Parse(File.ReadAllText(tokenizerJson))?.AsObject() ?? throw new InvalidFileException($"{tokenizerJson}: not a JSON object");
        var model = root["model"]?.AsObject() ?? throw new InvalidFileException($"{tokenizerJson}: missing 'model'");
        if ((string?)model["type"] != "BPE") throw new InvalidFileException($"{tokenizerJson}: model.type is '{model["type"]}', expected BPE");
        var vocabObj = model["vocab"]?.AsObject() ?? throw new InvalidFileException($"{tokenizerJson}: missing model.vocab");
        var vocab = new string[vocabObj.Count];
        foreach (var (k, v) in vocabObj)
        {
            int id = (int)v!;
            if (id < 0 || id >= vocab.Length || vocab[id] != null) throw new InvalidFileException($"{tokenizerJson}: vocab ids must be 0..{vocab.Length - 1} without gaps; '{k}' has {id}");
            vocab[id] = k;
        }
        var merges = (model["merges"]?.AsArray() ?? throw new InvalidFileException($"{tokenizerJson}: missing model.merges")).Select(m =>
        {
            if (m is JsonArray a) return ((string)a[0]!, (string)a[1]!);
            var s = (string)m!; int sp = s.IndexOf(' ');
            return sp > 0 ? (s[..sp], s[(sp + 1)..]) : throw new InvalidFileException($"{tokenizerJson}: malformed merge '{s}'");
        }).ToArray();
        var added = (root["added_tokens"]?.AsArray() ?? []).Select(t => ((int)t!["id"]!, (string)t["content"]!)).OrderBy(t => t.Item1).ToArray();
        for (int k = 0; k < added.Length; k++)
            if (added[k].Item1 != vocab.Length + k) throw new InvalidFileException($"{tokenizerJson}: added token '{added[k].Item2}' has id {added[k].Item1}, expected {vocab.Length + k}");
        return new ByteLevelBpeTokenizer(vocab, merges, added.Select(t => t.Item2).ToArray());
    }
}
