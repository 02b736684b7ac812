namespace VarGpt.Inference;

/// <summary>
/// Streams text through while watching for stop sequences: text that could still be the start of a stop sequence is
/// held back until it is decided, so nothing past a stop sequence is ever emitted.
/// </summary>
internal sealed class StopSequenceFilter(IReadOnlyList<string> stops)
{
    readonly System.Text.StringBuilder _text = new();
    readonly int _longest = stops.Count == 0 ? 0 : stops.Max(s => s.Length);
    int _emitted;

    /// <summary>Everything accepted so far (cut before the stop sequence once one was found).</summary>
    public string Text => _text.ToString();

    /// <summary>Adds text; returns what may be shown now. <paramref name="stopped"/>: a stop sequence was completed (the text is cut before it).</summary>
    public string Push(string piece, out bool stopped)
    {
        stopped = false;
        if (stops.Count == 0) { _text.Append(piece); _emitted = _text.Length; return piece; }
        int searchFrom = Math.Max(0, _text.Length - _longest + 1);
        _text.Append(piece);
        var s = _text.ToString();
        int cut = -1;
        foreach (var stop in stops)
        {
            int at = s.IndexOf(stop, searchFrom, StringComparison.Ordinal);
            if (at >= 0 && (cut < 0 || at < cut)) cut = at;
        }
        if (cut >= 0)
        {
            stopped = true;
            _text.Length = cut;
            return Take(cut);
        }
        // hold back the longest suffix that is a proper prefix of some stop sequence
        int hold = 0;
        foreach (var stop in stops)
            for (int n = Math.Min(stop.Length - 1, s.Length); n > hold; n--)
                if (string.CompareOrdinal(s, s.Length - n, stop, 0, n) == 0) { hold = n; break; }
        return Take(s.Length - hold);
    }

    public string Flush() => Take(_text.Length);

    string Take(int upTo)
    {
        if (upTo <= _emitted) return "";
        var r = _text.ToString(_emitted, upTo - _emitted);
        _emitted = upTo;
        return r;
    }
}
