using static TorchSharp.torch;

namespace VarGpt.Generation;

/// <summary>
/// Per-bit sampling of the Infinity bitwise head (official infinity.py sample_with_top_k_top_p_also_inplace_modifying_logits_).
/// With 2 classes per bit, top-k = min(k, 2) is a no-op for k ≥ 2 (top-k 1 makes it argmax); top-p drops the minority
/// bit when its probability is at most 1 - top_p, so such bits are deterministic.
/// </summary>
public static class BitSampling
{
    /// <summary>logits [B, l, V] → sampled indices [B, l] (int64). The logits are not modified.</summary>
    public static Tensor SampleWithTopKTopP(Tensor logits, int topK, double topP, Generator? generator)
    {
        using var scope = NewDisposeScope();
        long b = logits.shape[0], l = logits.shape[1], v = logits.shape[2];
        var lg = logits.clone();
        if (topK > 0)
        {
            int k = (int)Math.Min(topK, v);
            var kth = lg.topk(k, dim: -1, largest: true, sorted: false).values.amin([-1L], keepdim: true);
            lg.masked_fill_(lg.lt(kth), double.NegativeInfinity);
        }
        if (topP > 0)
        {
            var (sorted, idx) = lg.sort(dim: -1, descending: false);
            var remove = sorted.softmax(-1).cumsum(-1).le(1 - topP);
            remove[TensorIndex.Ellipsis, TensorIndex.Slice(-1, null)] = false;
            lg.masked_fill_(remove.scatter(-1, idx, remove), double.NegativeInfinity);
        }
        var probs = lg.softmax(-1).view(-1, v);
        return multinomial(probs, 1, replacement: true, generator: generator).view(b, l).MoveToOuterDisposeScope();
    }
}
