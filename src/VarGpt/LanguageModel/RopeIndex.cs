using VarGpt.Checkpoint;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.LanguageModel;

/// <summary>The config values get_rope_index reads (token ids and the vision merge size).</summary>
public sealed record RopeIndexSettings(long ImageTokenId, long VideoTokenId, long VisionStartTokenId, int SpatialMergeSize)
{
    public static RopeIndexSettings From(VargptConfig c) =>
        new(c.ImageTokenId, c.VideoTokenId, c.VisionStartTokenId, c.Vision.SpatialMergeSize);
}

/// <summary>
/// 3D (temporal, height, width) position ids of M-RoPE (official VARGPTQwen2VLForConditionalGeneration.get_rope_index).
/// Runs on the host: it is called once per prompt, before the prefill.
/// </summary>
public static class RopeIndex
{
    public static (Tensor PositionIds, Tensor RopeDeltas) GetRopeIndex(Tensor inputIds, Tensor? imageGridThw, Tensor? attentionMask, VargptConfig config) =>
        GetRopeIndex(inputIds, imageGridThw, attentionMask, RopeIndexSettings.From(config));

    /// <summary>
    /// inputIds [B, L]; imageGridThw [n, 3] (one row per image in order of appearance across the batch) or null;
    /// attentionMask [B, L] (1 = keep) or null. Returns position ids [3, B, L] (int64) and rope deltas [B, 1] (int64)
    /// on the device of <paramref name="inputIds"/>.
    /// Branches: with images, per row over the mask==1 tokens: text advances all rows together, an image of grid
    /// (t, h, w) gets (frame, row, column) of the merged grid offset by the next text position, and text after it
    /// resumes at max + 1; padded slots hold 1 and delta = max + 1 - padded length. Without images: cumsum(mask) - 1
    /// with padded slots = 1 (delta = max + 1 - L), or without a mask a plain arange with zero deltas.
    /// (The official image branch dereferences the mask; a missing mask is treated here as all ones.)
    /// </summary>
    public static (Tensor PositionIds, Tensor RopeDeltas) GetRopeIndex(Tensor inputIds, Tensor? imageGridThw, Tensor? attentionMask, RopeIndexSettings s)
    {
        if (inputIds.dim() != 2) throw new ArgumentException($"input_ids must be [B, L], got [{string.Join(",", inputIds.shape)}]");
        int B = (int)inputIds.shape[0], L = (int)inputIds.shape[1];
        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"attention_mask [{string.Join(",", attentionMask.shape)}] must match input_ids [{B},{L}]");
        var device = inputIds.device;
        var ids = HostLongs(inputIds);
        var mask = attentionMask is null ? null : HostLongs(attentionMask);
        var pos = new long[3 * B * L];
        var deltas = new long[B];

        if (imageGridThw is not null)
        {
            if (imageGridThw.dim() != 2 || imageGridThw.shape[1] != 3)
                throw new ArgumentException($"image_grid_thw must be [n, 3], got [{string.Join(",", imageGridThw.shape)}]");
            var grid = HostLongs(imageGridThw);
            int nImages = (int)imageGridThw.shape[0];
            Array.Fill(pos, 1L);
            int imageIndex = 0;
            for (int b = 0; b < B; b++)
            {
                var keep = new List<int>(L);
                for (int j = 0; j < L; j++) if (mask is null || mask[b * L + j] == 1) keep.Add(j);
                var tokens = keep.Select(j => ids[b * L + j]).ToArray();
                int imageNums = 0;
                for (int j = 0; j < tokens.Length; j++)
                    if (tokens[j] == s.VisionStartTokenId && j + 1 < tokens.Length)
                    {
                        if (tokens[j + 1] == s.ImageTokenId) imageNums++;
                        else if (tokens[j + 1] == s.VideoTokenId)
                            throw new NotSupportedException($"get_rope_index: row {b} contains a video (<|vision_start|><|video_pad|>); videos are not supported");
                    }
                // per token: three position rows of the valid tokens
                var t3 = new long[3][];
                for (int r = 0; r < 3; r++) t3[r] = new long[tokens.Length];
                int st = 0, written = 0;
                long maxPos = -1;                        // llm_pos_ids_list[-1].max() of the official loop
                for (int img = 0; img < imageNums; img++)
                {
                    int ed = Array.IndexOf(tokens, s.ImageTokenId, st);
                    if (ed < 0) throw new InvalidFileException($"get_rope_index: row {b} has fewer <|image_pad|> runs than <|vision_start|><|image_pad|> pairs");
                    if (imageIndex >= nImages)
                        throw new ArgumentException($"get_rope_index: the prompts contain more images than image_grid_thw rows ({nImages})");
                    long t = grid[imageIndex * 3], gh = grid[imageIndex * 3 + 1] / s.SpatialMergeSize, gw = grid[imageIndex * 3 + 2] / s.SpatialMergeSize;
                    imageIndex++;
                    int textLen = ed - st;
                    long stIdx = maxPos + 1;
                    for (int k = 0; k < textLen; k++, written++)
                        for (int r = 0; r < 3; r++) t3[r][written] = stIdx + k;
                    if (textLen > 0) maxPos = stIdx + textLen - 1;
                    long n = t * gh * gw;
                    if (written + n > tokens.Length)
                        throw new ArgumentException($"get_rope_index: row {b}: image {imageIndex - 1} with grid ({t},{gh * s.SpatialMergeSize},{gw * s.SpatialMergeSize}) needs {n} tokens but the row ends after {tokens.Length - written}");
                    long imgMax = long.MinValue;
                    for (long ti = 0; ti < t; ti++)
                        for (long hi = 0; hi < gh; hi++)
                            for (long wi = 0; wi < gw; wi++, written++)
                            {
                                t3[0][written] = ti + textLen + stIdx;
                                t3[1][written] = hi + textLen + stIdx;
                                t3[2][written] = wi + textLen + stIdx;
                                imgMax = Math.Max(imgMax, Math.Max(t3[0][written], Math.Max(t3[1][written], t3[2][written])));
                            }
                    if (n > 0) maxPos = imgMax;
                    st = ed + (int)n;
                }
                if (st < tokens.Length)
                {
                    long stIdx = maxPos + 1;
                    int textLen = tokens.Length - st;
                    for (int k = 0; k < textLen; k++, written++)
                        for (int r = 0; r < 3; r++) t3[r][written] = stIdx + k;
                    maxPos = stIdx + textLen - 1;
                }
                if (written != tokens.Length) throw new InvalidOperationException($"get_rope_index: row {b} produced {written} positions for {tokens.Length} tokens");
                if (tokens.Length == 0) throw new ArgumentException($"get_rope_index: row {b} has no unmasked token");
                for (int r = 0; r < 3; r++)
                    for (int k = 0; k < keep.Count; k++) pos[(r * B + b) * L + keep[k]] = t3[r][k];
                long rowMax = long.MinValue;
                for (int r = 0; r < 3; r++) rowMax = Math.Max(rowMax, t3[r].Max());
                deltas[b] = rowMax + 1 - L;
            }
        }
        else if (mask is not null)
        {
            for (int b = 0; b < B; b++)
            {
                long c = 0, rowMax = long.MinValue;
                for (int j = 0; j < L; j++)
                {
                    c += mask[b * L + j];
                    long p = mask[b * L + j] == 0 ? 1 : c - 1;
                    for (int r = 0; r < 3; r++) pos[(r * B + b) * L + j] = p;
                    rowMax = Math.Max(rowMax, p);
                }
                deltas[b] = rowMax + 1 - L;
            }
        }
        else
        {
            for (int r = 0; r < 3; r++)
                for (int b = 0; b < B; b++)
                    for (int j = 0; j < L; j++) pos[(r * B + b) * L + j] = j;
        }
        return (tensor(pos, [3, B, L], ScalarType.Int64, device), tensor(deltas, [B, 1], ScalarType.Int64, device));
    }

    static long[] HostLongs(Tensor t)
    {
        using var c = t.detach().to(ScalarType.Int64).cpu().contiguous();
        return c.data<long>().ToArray();
    }
}
