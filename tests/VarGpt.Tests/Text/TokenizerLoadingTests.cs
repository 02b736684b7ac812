using System.Text;
using System.Text.Json;
using VarGpt.Text;

using VarGpt;

namespace VarGpt.Tests.Text;

/// <summary>The loader on other layouts: vocab.json + merges.txt without tokenizer.json, and a tiny Qwen2-style tokenizer.json.</summary>
public class TokenizerLoadingTests
{
    const string Qwen2Split = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    [Fact]
    public void Vocab_and_merges_fallback_matches_tokenizer_json()
    {
        var full = TextTestData.Qwen();
        using var tmp = TestPaths.Temp();
        foreach (var f in new[] { "vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json" })
            File.CreateSymbolicLink(tmp[f], Path.Combine(TestPaths.QwenTokenizer, f));
        var slow = QwenTokenizer.FromDirectory(tmp.Path);
        Assert.Equal(full.VocabularySize, slow.VocabularySize);
        Assert.Equal(full.EosTokenId, slow.EosTokenId);
        Assert.Equal(full.PadTokenId, slow.PadTokenId);
        Assert.Equal(full.AddedTokens, slow.AddedTokens);
        var rng = new Random(7);
        for (int i = 0; i < 200; i++)
        {
            string s = TextTestData.RandomText(rng);
            Assert.Equal(full.Encode(s), slow.Encode(s));
        }
    }

    [Fact]
    public void Missing_files_are_named()
    {
        using var tmp = TestPaths.Temp();
        var e = Assert.Throws<InputNotFoundException>(() => QwenTokenizer.FromDirectory(tmp.Path));
        Assert.Contains("tokenizer.json", e.Message);
        File.WriteAllText(tmp["tokenizer.json"], """{"model": {"type": "Unigram", "vocab": []}}""");
        var u = Assert.Throws<InvalidFileException>(() => QwenTokenizer.FromDirectory(tmp.Path));
        Assert.Contains("Unigram", u.Message);
    }

    /// <summary>
    /// A tiny byte-level BPE tokenizer.json with the Qwen2 layout and the VARGPT special tokens (as the shipped small
    /// model will have) gives the same ids as the Rust library, and the ids of its special tokens are its own.
    /// </summary>
    [Fact]
    public void Tiny_qwen2_style_tokenizer_matches_the_Rust_library()
    {
        using var tmp = TestPaths.Temp();
        string[] specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            SpecialTokens.ImageGenStart, SpecialTokens.ImageGenEnd, SpecialTokens.ImageGenPad];
        int firstSpecial = WriteTinyTokenizer(tmp.Path, specials);
        var tok = QwenTokenizer.FromDirectory(tmp.Path);
        Assert.Equal(firstSpecial + specials.Length, tok.VocabularySize);
        for (int i = 0; i < specials.Length; i++) Assert.Equal(firstSpecial + i, tok.TokenToId(specials[i]));
        Assert.Equal(firstSpecial + 2, tok.EosTokenId);
        Assert.Equal(firstSpecial, tok.PadTokenId);

        // merges are used: "hello" is one token
        Assert.Single(tok.Encode("hello"));

        using var rust = new Tokenizers.DotNet.Tokenizer(vocabPath: tmp["tokenizer.json"]);
        var rng = new Random(99);
        foreach (var s in new[] { "hello world", "<|im_start|>user\nhello<|im_end|>\n", "你好 hello\r\n  x" }
                     .Concat(Enumerable.Range(0, 200).Select(_ => TextTestData.RandomText(rng))))
        {
            var exp = rust.Encode(s).Select(x => (int)x).ToArray();
            Assert.Equal(exp, tok.Encode(s));
            Assert.Equal(rust.Decode(exp.Select(x => (uint)x).ToArray()), tok.Decode(exp, skipSpecialTokens: true));
            Assert.Equal(s.Normalize(NormalizationForm.FormC), tok.Decode(exp, skipSpecialTokens: false));
        }
    }

    /// <summary>Writes tokenizer.json + tokenizer_config.json; returns the id of the first special token.</summary>
    internal static int WriteTinyTokenizer(string dir, string[] specials)
    {
        // vocabulary: the 256 byte-level characters in byte order, then a few merges
        var vocab = new List<string>();
        for (int b = 0; b < 256; b++) vocab.Add(ByteLevel.ByteToChar((byte)b).ToString());
        string Chars(string s) => string.Concat(Encoding.UTF8.GetBytes(s).Select(ByteLevel.ByteToChar));
        var merges = new List<(string, string)>();
        void Merge(string a, string b) { merges.Add((Chars(a), Chars(b))); vocab.Add(Chars(a) + Chars(b)); }
        Merge("h", "e"); Merge("l", "l"); Merge("he", "ll"); Merge("hell", "o"); Merge(" ", "w"); Merge("o", "r"); Merge(" w", "or");
        Merge(" ", " ");
        // first two bytes of 你 (E4 BD A0): a token that ends inside a multi-byte character
        merges.Add((ByteLevel.ByteToChar(0xE4).ToString(), ByteLevel.ByteToChar(0xBD).ToString()));
        vocab.Add(ByteLevel.ByteToChar(0xE4).ToString() + ByteLevel.ByteToChar(0xBD));
        int first = vocab.Count;

        using (var fs = File.Create(Path.Combine(dir, "tokenizer.json")))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation"); w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            for (int i = 0; i < specials.Length; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("id", first + i); w.WriteString("content", specials[i]);
                w.WriteBoolean("single_word", false); w.WriteBoolean("lstrip", false); w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false); w.WriteBoolean("special", true);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("normalizer"); w.WriteString("type", "NFC"); w.WriteEndObject();
            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("pretokenizers");
            w.WriteStartObject(); w.WriteString("type", "Split");
            w.WriteStartObject("pattern"); w.WriteString("Regex", Qwen2Split); w.WriteEndObject();
            w.WriteString("behavior", "Isolated"); w.WriteBoolean("invert", false); w.WriteEndObject();
            w.WriteStartObject(); w.WriteString("type", "ByteLevel"); w.WriteBoolean("add_prefix_space", false);
            w.WriteBoolean("trim_offsets", false); w.WriteBoolean("use_regex", false); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteEndObject();
            foreach (var k in new[] { "post_processor", "decoder" })
            {
                w.WriteStartObject(k); w.WriteString("type", "ByteLevel"); w.WriteBoolean("add_prefix_space", false);
                w.WriteBoolean("trim_offsets", false); w.WriteBoolean("use_regex", false); w.WriteEndObject();
            }
            w.WriteStartObject("model");
            w.WriteString("type", "BPE"); w.WriteNull("dropout"); w.WriteNull("unk_token");
            w.WriteString("continuing_subword_prefix", ""); w.WriteString("end_of_word_suffix", "");
            w.WriteBoolean("fuse_unk", false); w.WriteBoolean("byte_fallback", false); w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            for (int i = 0; i < vocab.Count; i++) w.WriteNumber(vocab[i], i);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (a, b) in merges) w.WriteStringValue($"{a} {b}");
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            JsonSerializer.Serialize(new { eos_token = specials[2], pad_token = specials[0], bos_token = (string?)null }));
        return first;
    }
}
