using VarGpt.Checkpoint;
using VarGpt.Golden;
using VarGpt.Golden.Kinds;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.TestModels;

/// <summary>The tiny language model of the qwen2_lm_decode fixture (2 layers, hidden 64, GQA 4/2, vocab 320).</summary>
internal static class TinyLm
{
    public static string Dir => Path.Combine(TestPaths.Golden, "qwen2_lm_decode");

    public static VargptConfig Config()
    {
        using var f = new Fixture(Dir);
        return VargptConfig.Parse(f.Config, f.Id);
    }

    public static VargptForConditionalGeneration Load(ScalarType dtype = ScalarType.Float32, VargptConfig? config = null, string? weightsDir = null)
    {
        using var f = new Fixture(weightsDir ?? Dir);
        var model = new VargptForConditionalGeneration(config ?? VargptConfig.Parse(f.Config, f.Id), CPU, dtype, ModelParts.LanguageModel);
        f.LoadInto(model);
        return model;
    }

    /// <summary>Left-pads rows of ids with <paramref name="pad"/>; returns (input_ids, attention_mask) [B, maxLen].</summary>
    public static (Tensor Ids, Tensor Mask) LeftPad(IReadOnlyList<long[]> rows, long pad)
    {
        int L = rows.Max(r => r.Length), B = rows.Count;
        var ids = new long[B * L];
        var mask = new long[B * L];
        for (int b = 0; b < B; b++)
        {
            int off = L - rows[b].Length;
            for (int j = 0; j < L; j++)
            {
                ids[b * L + j] = j < off ? pad : rows[b][j - off];
                mask[b * L + j] = j < off ? 0 : 1;
            }
        }
        return (tensor(ids, [B, L]), tensor(mask, [B, L]));
    }

    /// <summary>Same shape and equal elements.</summary>
    public static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>Deterministic pseudo-random ordinary token ids (below the special-token range).</summary>
    public static long[] RandomIds(int seed, int length, int maxExclusive)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => (long)r.Next(0, maxExclusive)).ToArray();
    }
}
