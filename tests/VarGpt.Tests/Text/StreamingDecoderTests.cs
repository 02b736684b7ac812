using System.Text;
using VarGpt.Text;

namespace VarGpt.Tests.Text;

public class StreamingDecoderTests
{
    static int ByteToken(QwenTokenizer tok, byte b) => tok.TokenToId(ByteLevel.ByteToChar(b).ToString());

    [Fact]
    public void Multi_byte_character_split_over_byte_tokens_comes_out_once_complete()
    {
        var tok = TextTestData.Qwen();
        var d = tok.CreateStreamingDecoder(skipSpecialTokens: false);
        var bytes = Encoding.UTF8.GetBytes("你😀"); // 3 + 4 bytes, one token each
        var outs = bytes.Select(b => d.Push(ByteToken(tok, b))).ToList();
        Assert.Equal(["", "", "你", "", "", "", "😀"], outs);
        Assert.Equal("", d.Flush());
    }

    [Fact]
    public void Token_ending_inside_a_character_is_held_back()
    {
        using var tmp = TestPaths.Temp();
        TokenizerLoadingTests.WriteTinyTokenizer(tmp.Path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
        var tok = QwenTokenizer.FromDirectory(tmp.Path);
        var ids = tok.Encode("a你b");
        Assert.Equal(4, ids.Count); // a, E4BD, A0, b
        var d = tok.CreateStreamingDecoder(false);
        Assert.Equal(["a", "", "你", "b"], ids.Select(d.Push).ToList());
    }

    [Fact]
    public void Dangling_bytes_flush_as_replacement_and_specials_follow_the_flag()
    {
        var tok = TextTestData.Qwen();
        var d = tok.CreateStreamingDecoder(skipSpecialTokens: true);
        Assert.Equal("", d.Push(ByteToken(tok, 0xE4)));
        Assert.Equal("", d.Push(tok.TokenToId("<|im_end|>")));
        Assert.Equal("\uFFFD", d.Flush());
        var keep = tok.CreateStreamingDecoder(skipSpecialTokens: false);
        Assert.Equal("", keep.Push(ByteToken(tok, 0xE4)));
        Assert.Equal("\uFFFD<|im_end|>", keep.Push(tok.TokenToId("<|im_end|>")));
    }

    /// <summary>Streaming equals one-shot decode, for real text and for random ids (random bytes, invalid UTF-8, specials).</summary>
    [Fact]
    public void Concatenated_stream_equals_full_decode()
    {
        var tok = TextTestData.Qwen();
        var rng = new Random(5);
        for (int i = 0; i < 300; i++)
        {
            IReadOnlyList<int> ids = i % 2 == 0
                ? tok.Encode(TextTestData.RandomText(rng))
                : Enumerable.Range(0, rng.Next(0, 30)).Select(_ => rng.Next(4) switch
                {
                    0 => ByteToken(tok, (byte)rng.Next(256)),
                    1 => 151643 + rng.Next(17),
                    _ => rng.Next(151643),
                }).ToList();
            foreach (bool skip in new[] { false, true })
            {
                var d = tok.CreateStreamingDecoder(skip);
                var streamed = string.Concat(ids.Select(d.Push)) + d.Flush();
                Assert.Equal(tok.Decode(ids, skip), streamed);
            }
        }
    }
}
