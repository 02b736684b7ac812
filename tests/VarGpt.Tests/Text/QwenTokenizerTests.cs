using System.Text;
using VarGpt.Text;

namespace VarGpt.Tests.Text;

public class QwenTokenizerTests
{
    [Fact]
    public void Special_token_ids_come_from_the_files()
    {
        var tok = TextTestData.Qwen();
        Assert.Equal(151660, tok.VocabularySize);
        Assert.Equal(151657, tok.TokenToId(SpecialTokens.ImageGenStart));
        Assert.Equal(151659, tok.TokenToId(SpecialTokens.ImageGenPad));
        Assert.Equal("<|im_end|>", tok.EosToken);
        Assert.Equal(151645, tok.EosTokenId);
        Assert.Equal(151643, tok.PadTokenId);
        Assert.Null(tok.BosToken);
        Assert.True(tok.IsSpecial(151655));
        Assert.False(tok.IsSpecial(872));
        Assert.Null(tok.TryTokenToId("<|no_such_token|>"));
        var e = Assert.Throws<KeyNotFoundException>(() => tok.TokenToId("<|no_such_token|>"));
        Assert.Contains("<|no_such_token|>", e.Message);
    }

    [Fact]
    public void Special_tokens_are_atomic_anywhere_in_the_text()
    {
        var tok = TextTestData.Qwen();
        int pad = tok.TokenToId(SpecialTokens.ImagePad);
        var ids = tok.Encode("x<|image_pad|><|image_pad|>y<|image_pad|>");
        Assert.Equal(3, ids.Count(i => i == pad));
        Assert.Equal(ids.Count, tok.Encode("x").Count + 3 + tok.Encode("y").Count);
        // a near miss is ordinary text
        Assert.DoesNotContain(pad, tok.Encode("<|image_pad|"));
    }

    [Fact]
    public void Decode_skips_only_special_tokens_and_drops_ids_without_a_token()
    {
        var tok = TextTestData.Qwen();
        var ids = tok.Encode("<|im_start|>user\nHi<|im_end|>").ToList();
        Assert.Equal("<|im_start|>user\nHi<|im_end|>", tok.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("user\nHi", tok.Decode(ids, skipSpecialTokens: true));
        ids.Add(152000); // embedding rows beyond the tokenizer (152064 rows, 151660 tokens)
        Assert.Equal("user\nHi", tok.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void Round_trip_of_random_text_equals_its_NFC_form()
    {
        var tok = TextTestData.Qwen();
        var rng = new Random(1234);
        for (int i = 0; i < 600; i++)
        {
            string s = TextTestData.RandomText(rng);
            var ids = tok.Encode(s);
            Assert.Equal(s.Normalize(NormalizationForm.FormC), tok.Decode(ids, skipSpecialTokens: false));
        }
    }

    [Fact]
    public void NFC_changes_decomposed_accents()
    {
        var tok = TextTestData.Qwen();
        Assert.Equal(tok.Encode("Caf\u00E9"), tok.Encode("Cafe\u0301"));
        Assert.Equal("Caf\u00E9", tok.Decode(tok.Encode("Cafe\u0301"), false));
    }

    [Fact]
    public void Lone_surrogates_encode_as_replacement_character()
    {
        var tok = TextTestData.Qwen();
        Assert.Equal(tok.Encode("a\uFFFDb"), tok.Encode("a\uD800b"));
    }

    [Fact]
    public void Numbers_split_into_single_digits()
    {
        var tok = TextTestData.Qwen();
        var ids = tok.Encode("12345");
        Assert.Equal(5, ids.Count);
        Assert.Equal("12345", string.Concat(ids.Select(i => tok.Decode([i], false))));
    }

    /// <summary>The Rust Hugging Face library (Tokenizers.DotNet) as oracle on hundreds of varied strings.</summary>
    [Fact]
    public void Matches_the_Rust_tokenizers_library_on_random_strings()
    {
        var tok = TextTestData.Qwen();
        using var rust = new Tokenizers.DotNet.Tokenizer(vocabPath: Path.Combine(TestPaths.QwenTokenizer, "tokenizer.json"));
        var rng = new Random(42);
        var failures = new List<string>();
        int n = 0;
        foreach (var s in FixedOracleStrings().Concat(Enumerable.Range(0, 400).Select(_ => TextTestData.RandomText(rng))))
        {
            n++;
            var exp = rust.Encode(s).Select(x => (int)x).ToArray();
            var got = tok.Encode(s).ToArray();
            if (!exp.SequenceEqual(got)) failures.Add($"{Show(s)}: rust [{string.Join(",", exp)}] ours [{string.Join(",", got)}]");
            else if (rust.Decode(exp.Select(x => (uint)x).ToArray()) is var rd && rd != tok.Decode(got, skipSpecialTokens: true))
                failures.Add($"{Show(s)}: rust decode {Show(rd)} ours {Show(tok.Decode(got, true))}");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {n} strings differ:\n{string.Join("\n", failures.Take(10))}");
    }

    static IEnumerable<string> FixedOracleStrings() =>
    [
        "", " ", "  ", "\n", " \n ", "a  b", "a \n\n b", "x\t\ty", "end   ", "\r\n\r\n", "1,000,000.50", "v1.1-beta+3",
        "don't I'M we'LL they'Re", "'s's's", "ſ'ſ 'ſ", "K\u212A", "İstanbul ıi", "𝐀𝐁𝐂 𝐚𝐛𝐜", "𠀀𠀁 𠀂", "𝟎𝟏𝟐 x𝟑", "𐐀𐐨 abc",
        "e\u0301\u0302 a\u0308", "\u1100\u1161\u11A8", "한국어!", "ﬁﬂ ①②", "Ⅻ", "👩🏽‍💻 👨‍👩‍👧‍👦 🏳️‍🌈", "a\u200Db", "\u00A0x\u3000y",
        "line\u2028sep\u2029para", "<|im_start|><|im_start|>", "<|im_start|>x<|im_end|>\n", " <|im_end|> ", "<<|im_end|>>",
        "<|image_gen_start|><|image_gen_pad|><|image_gen_end|>", "<|image_gen_pad", "Price: $5.99 (€5,49) ¥500",
        "def f(x):\n\treturn x**2  # sq\n", "SELECT * FROM t WHERE a<>b;", "C:\\path\\to\\file.txt", "https://a.b/c?d=e&f=g#h",
    ];

    static string Show(string s) => "\"" + string.Concat(s.Select(c => c < 0x20 || char.IsSurrogate(c) || c > 0x7E ? $"\\u{(int)c:X4}" : c.ToString())) + "\"";
}
