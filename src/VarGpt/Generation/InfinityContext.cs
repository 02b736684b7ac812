using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// A packed cross-attention context (official ca_kv = (kv_compact, cu_seqlens_k, max_seqlen_k)): the context rows of
/// all B samples concatenated, [N, C]; sample b owns rows [CuSeqlens[b], CuSeqlens[b+1]). The boundaries are kept on
/// the host so attention never syncs. In VARGPT the rows are image_gen_projector_out of the LLM states before
/// &lt;|image_gen_start|&gt; (the unconditional CFG row uses raw cfg_uncond rows instead).
/// </summary>
public sealed record CrossAttnKv(Tensor KvCompact, int[] CuSeqlens)
{
    public int Batch => CuSeqlens.Length - 1;
    public int MaxSeqlen => Enumerable.Range(0, Batch).Select(b => CuSeqlens[b + 1] - CuSeqlens[b]).DefaultIfEmpty(0).Max();
    public int Length(int b) => CuSeqlens[b + 1] - CuSeqlens[b];

    /// <summary>Packs per-sample context rows [n_b, C] (official process_hidden_states / get_ca_kv_cross).</summary>
    public static CrossAttnKv Pack(IReadOnlyList<Tensor> rows)
    {
        if (rows.Count == 0) throw new ArgumentException("cannot pack an empty list of contexts");
        var cu = new int[rows.Count + 1];
        for (int b = 0; b < rows.Count; b++)
        {
            if (rows[b].dim() != 2) throw new ArgumentException($"context {b} must be [n, C], got [{string.Join(",", rows[b].shape)}]");
            cu[b + 1] = cu[b] + (int)rows[b].shape[0];
        }
        return new CrossAttnKv(cat(rows.ToArray(), 0), cu);
    }

    /// <summary>From a packed tensor and an integer cu_seqlens tensor (read to the host once).</summary>
    public static CrossAttnKv FromCuSeqlens(Tensor kvCompact, Tensor cuSeqlens)
    {
        using var c = cuSeqlens.to(ScalarType.Int64).cpu();
        return new CrossAttnKv(kvCompact, c.data<long>().Select(x => checked((int)x)).ToArray());
    }

    /// <summary>One row per sample (VARGPT's sos embedding: lens = 1, cu_seqlens = arange(B+1)).</summary>
    public static CrossAttnKv OneRowEach(Tensor rows) =>
        new(rows, Enumerable.Range(0, (int)rows.shape[0] + 1).ToArray());
}

/// <summary>
/// State of one KV-cached, scale-by-scale Infinity pass over one batch (both CFG rows): the per-block self-attention
/// K/V over the scales done so far, and the cross-attention K/V of the constant context projected once per block
/// (reference §4.6; the official code re-projects it in every block at every scale, same values).
/// Create with <see cref="Infinity.NewCache"/>; dispose when the image is done.
/// </summary>
public sealed class InfinityKvCache : IDisposable
{
    public ScaleSchedule Schedule { get; }
    /// <summary>Tokens already in the self-attention cache (= rope offset of the next scale).</summary>
    public long Length => SelfAttn.Length == 0 ? 0 : SelfAttn[0].Length;
    /// <summary>Scales fed so far.</summary>
    public int ScalesDone { get; internal set; }
    internal SelfAttnKv[] SelfAttn { get; }
    internal ProjectedKv[] Cross { get; }

    internal InfinityKvCache(ScaleSchedule schedule, ProjectedKv[] cross)
    {
        Schedule = schedule;
        Cross = cross;
        SelfAttn = cross.Select(_ => new SelfAttnKv()).ToArray();
    }

    public void Dispose()
    {
        foreach (var s in SelfAttn) s.Dispose();
        foreach (var c in Cross) c.Dispose();
    }
}
