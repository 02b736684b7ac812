namespace VarGpt.ShapesWorld;

/// <summary>
/// Byte-level BPE training (Sennrich et al. / GPT-2 style) over pre-tokens: start from the 256 byte symbols and
/// repeatedly merge the most frequent adjacent pair (ties: ordinally smallest left, then right symbol) until the
/// vocabulary reaches vocabSize or no pair occurs minFrequency times. Special tokens are cut out of the corpus first,
/// exactly as the tokenizer does when encoding, so chat scaffolding trains the merges it will actually meet.
/// </summary>
public static class BpeTrainer
{
    public static ByteLevelBpeTokenizer Train(IEnumerable<string> texts, int vocabSize = 1024, int minFrequency = 2, IReadOnlyList<string>? specialTokens = null)
    {
        if (vocabSize < 256) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "a byte-level BPE vocabulary has at least the 256 byte symbols");
        var vocab = ByteLevelBpeTokenizer.ByteSymbols().ToList();
        var splitter = new ByteLevelBpeTokenizer(vocab, [], specialTokens); // only used to cut out special tokens

        // Word frequencies over byte-symbol pre-tokens.
        var freq = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var (seg, special) in splitter.SplitSpecial(text))
            {
                if (special) continue;
                foreach (var piece in ByteLevelBpeTokenizer.PreTokenize(seg))
                {
                    var w = ByteLevelBpeTokenizer.ToByteSymbols(piece);
                    freq[w] = freq.GetValueOrDefault(w) + 1;
                }
            }
        var words = freq.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Symbols: kv.Key.Select(c => c.ToString()).ToList(), Count: kv.Value)).ToList();

        var merges = new List<(string, string)>();
        while (vocab.Count < vocabSize)
        {
            var pairs = new Dictionary<(string, string), long>();
            foreach (var (sym, n) in words)
                for (int i = 0; i + 1 < sym.Count; i++)
                    pairs[(sym[i], sym[i + 1])] = pairs.GetValueOrDefault((sym[i], sym[i + 1])) + n;
            if (pairs.Count == 0) break;
            var best = pairs.OrderByDescending(kv => kv.Value)
                .ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First();
            if (best.Value < minFrequency) break;
            var (l, r) = best.Key;
            var merged = l + r;
            if (vocab.Contains(merged)) { /* same string reachable by another split: keep one id, still record the rule */ }
            else vocab.Add(merged);
            merges.Add((l, r));
            foreach (var (sym, _) in words)
                for (int i = 0; i + 1 < sym.Count; i++)
                    if (sym[i] == l && sym[i + 1] == r) { sym[i] = merged; sym.RemoveAt(i + 1); }
        }
        return new ByteLevelBpeTokenizer(vocab, merges, specialTokens);
    }

    /// <summary>The corpus the ShapesWorld tokenizer is trained on: each training sample rendered through the chat
    /// template (default system prompt, user turn, assistant turn, placeholders as their special tokens).</summary>
    public static IEnumerable<string> ShapesCorpus(ShapesWorldGenerator generator, int samples)
    {
        foreach (var s in generator.Samples(ShapesSplit.Train, samples))
            yield return ChatText(s.User, s.Assistant);
    }

    /// <summary>A user/assistant exchange in the vargpt_qwen2_vl template with &lt;image&gt; / &lt;image_gen&gt; collapsed to one pad each.</summary>
    public static string ChatText(string user, string assistant)
    {
        static string Expand(string t) => t.Replace("<image_gen>", "<|image_gen_start|><|image_gen_pad|><|image_gen_end|>")
            .Replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>");
        return "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + Expand(user) +
               "<|im_end|>\n<|im_start|>assistant\n" + Expand(assistant) + "<|im_end|>\n";
    }

    /// <summary>The shipped ShapesWorld tokenizer: trained on `samples` training samples of the given world.</summary>
    /// <summary>Trains the ShapesWorld tokenizer and writes its files into <paramref name="dir"/> (the default tokenizer of `vargpt init --preset tiny`).</summary>
    public static void WriteShapesWorldTokenizer(string dir) => TrainShapesWorld().Save(dir);

    public static ByteLevelBpeTokenizer TrainShapesWorld(ShapesWorldGenerator? generator = null, int samples = 4000, int vocabSize = 1024) =>
        Train(ShapesCorpus(generator ?? new ShapesWorldGenerator(), samples), vocabSize);
}
