using System.Text;

namespace VarGpt.Text;

/// <summary>
/// Incremental detokenizer for generation: <see cref="Push"/> one id at a time and get the text that became complete.
/// Byte-level tokens can end in the middle of a multi-byte UTF-8 character (CJK, emoji); those bytes are held back until
/// the character is complete, so the concatenation of every Push and the final <see cref="Flush"/> equals
/// <see cref="QwenTokenizer.Decode"/> of all ids (invalid sequences become U+FFFD at the same places).
/// </summary>
public sealed class StreamingDecoder
{
    readonly QwenTokenizer _tokenizer;
    readonly bool _skipSpecialTokens;
    // stateful UTF-8 decoder with replacement fallback: keeps a partial sequence between calls
    readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    readonly List<byte> _bytes = [];
    char[] _chars = new char[64];

    internal StreamingDecoder(QwenTokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>Adds one token; returns the newly completed text (possibly empty).</summary>
    public string Push(int id)
    {
        _bytes.Clear();
        _tokenizer.AppendTokenBytes(id, _skipSpecialTokens, _bytes);
        return Run(flush: false);
    }

    /// <summary>Ends the stream: returns what is left (U+FFFD for a dangling incomplete character) and resets the decoder.</summary>
    public string Flush()
    {
        _bytes.Clear();
        return Run(flush: true);
    }

    string Run(bool flush)
    {
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_bytes);
        int need = _utf8.GetCharCount(span, flush: false) + 4; // + room for a replacement emitted on flush
        if (_chars.Length < need) _chars = new char[Math.Max(need, _chars.Length * 2)];
        int n = _utf8.GetChars(span, _chars, flush);
        return new string(_chars, 0, n);
    }
}
