using System.Text;
using VarGpt.Text;

namespace VarGpt.Tests.Text;

/// <summary>The real VARGPT-v1.1 tokenizer from ../shared (loaded once) and a generator of varied random strings.</summary>
static class TextTestData
{
    static readonly Lazy<QwenTokenizer> _qwen = new(() => QwenTokenizer.FromDirectory(TestPaths.QwenTokenizer));

    /// <summary>The shared Qwen2-VL tokenizer; skips (with the reason) when ../shared/tokenizers/qwen2-vl is not present.</summary>
    public static QwenTokenizer Qwen()
    {
        if (!File.Exists(Path.Combine(TestPaths.QwenTokenizer, "tokenizer.json")))
            Assert.Skip($"real Qwen2-VL tokenizer files not found at {TestPaths.QwenTokenizer}");
        return _qwen.Value;
    }

    // (first, last) code point ranges drawn from: scripts, marks, joiners, emoji, astral letters/digits, odd whitespace
    static readonly (int, int)[] _ranges =
    [
        (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x30, 0x39), (0x61, 0x7A), (0x41, 0x5A),
        (0x09, 0x0A), (0x0D, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x3000, 0x3000), (0x2028, 0x2029), (0x85, 0x85),
        (0xC0, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x660, 0x669),
        (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x1112), (0x1161, 0x1175), (0xAC00, 0xD7A3), (0x3040, 0x30FF),
        (0x4E00, 0x9FFF), (0x4E00, 0x9FFF), (0xFF01, 0xFF5E), (0xFB00, 0xFB06), (0x2160, 0x2188), (0x2460, 0x24FF),
        (0x2000, 0x206F), (0x200D, 0x200D), (0xFE0F, 0xFE0F), (0x1F300, 0x1F64F), (0x1F3FB, 0x1F3FF), (0x1F900, 0x1F9FF),
        (0x1D400, 0x1D6A5), (0x1D7CE, 0x1D7FF), (0x20000, 0x2A6DF), (0x10400, 0x1044F), (0x17F, 0x17F), (0x212A, 0x212A),
        (0x130, 0x131), (0x27, 0x27),
    ];

    static readonly string[] _snippets =
    [
        "'s", "'S", "'re", "'LL", "'ve", "'d", "'m", "'t", "  ", "\r\n", "\n\n", "\t", "...", "1234567", "3.14", "<|im_start|>",
        "<|im_end|>", "<|image_pad|>", "<|image_gen_start|>", "<|image_gen_pad|>", "<|image_gen_end|>", "<|endoftext|>", "<|im_start",
        "<|unknown|>", "|>", "<|", "Café", "e\u0301", "👨‍👩‍👧", "🇩🇪", "👍🏽", "你好", "こんにちは", "한국어", "Привет", "hello", " world",
    ];

    /// <summary>A random string of code points and snippets (no lone surrogates).</summary>
    public static string RandomText(Random rng, int maxParts = 24)
    {
        var sb = new StringBuilder();
        int parts = rng.Next(0, maxParts + 1);
        for (int i = 0; i < parts; i++)
        {
            if (rng.Next(4) == 0) { sb.Append(_snippets[rng.Next(_snippets.Length)]); continue; }
            var (lo, hi) = _ranges[rng.Next(_ranges.Length)];
            int n = rng.Next(1, 6);
            for (int k = 0; k < n; k++) sb.Append(char.ConvertFromUtf32(rng.Next(lo, hi + 1)));
        }
        return sb.ToString();
    }
}
