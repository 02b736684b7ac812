using VarGpt.Configuration;
using VarGpt.Training;
using static TorchSharp.torch;

namespace VarGpt.Tests.Training;

/// <summary>vargpt_bit_loss: the official bit mean against the per-scale weighting get_gen_loss_1_1 intends.</summary>
public class BitLossTests
{
    // 1×1, 2×2, 4×4: 21 tokens, 2 bits each; weights sqrt(16 / area) = 4, 2, 1 per token, normalised by their sum 4 + 8 + 16 = 28
    static readonly ScaleSchedule Schedule = new(1.0, "test", (64, 64), [new Scale(1, 1, 1), new Scale(1, 2, 2), new Scale(1, 4, 4)]);

    /// <summary>Logits [1, 21, 4] whose bit predictions are confident and right, except every bit of token <paramref name="wrong"/>.</summary>
    static (Tensor Logits, Tensor Labels) OneWrongToken(int wrong)
    {
        var labels = zeros([1, 21, 2], ScalarType.Int64);
        var logits = zeros([1, 21, 4]);
        logits.index_put_(10f, TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Tensor(tensor(new long[] { 0, 2 })));   // bit k favours 0
        logits.index_put_(-10f, TensorIndex.Single(0), TensorIndex.Single(wrong), TensorIndex.Tensor(tensor(new long[] { 0, 2 })));
        logits.index_put_(10f, TensorIndex.Single(0), TensorIndex.Single(wrong), TensorIndex.Tensor(tensor(new long[] { 1, 3 })));
        return (logits, labels);
    }

    [Fact]
    public void With_the_same_error_on_every_token_both_losses_agree()
    {
        using var logits = zeros([2, 21, 4]);
        using var labels = zeros([2, 21, 2], ScalarType.Int64);
        using var official = VargptTrainingLoss.ImageBitLoss(logits, labels, Schedule);
        using var weighted = VargptTrainingLoss.ScaleWeightedBitLoss(logits, labels, Schedule);
        Assert.Equal(Math.Log(2), official.item<float>(), 5);
        Assert.Equal(Math.Log(2), weighted.item<float>(), 5);
    }

    [Fact]
    public void A_wrong_first_scale_token_weighs_its_scale_weight_not_one_token_in_twenty_one()
    {
        var (logits, labels) = OneWrongToken(0);
        using var official = VargptTrainingLoss.ImageBitLoss(logits, labels, Schedule);
        using var weighted = VargptTrainingLoss.ScaleWeightedBitLoss(logits, labels, Schedule);
        double tokenCe = 20 + Math.Log(1 + Math.Exp(-20)); // CE of a bit whose logits are 10 for the wrong side, -10 for the right one
        Assert.Equal(tokenCe / 21, official.item<float>(), 3);
        Assert.Equal(tokenCe * 4 / 28, weighted.item<float>(), 3);
        // the same error on a last-scale token weighs 1/28 there, less than the plain mean's 1/21
        var (l2, lab2) = OneWrongToken(20);
        using var weightedLast = VargptTrainingLoss.ScaleWeightedBitLoss(l2, lab2, Schedule);
        Assert.Equal(tokenCe / 28, weightedLast.item<float>(), 3);
        logits.Dispose(); labels.Dispose(); l2.Dispose(); lab2.Dispose();
    }

    [Fact]
    public void The_sft_loss_uses_the_weighting_the_key_names()
    {
        var (logits, labels) = OneWrongToken(0);
        using var output = new VargptTrainingOutput { Logits = zeros([1, 3, 8]), GenLogits = logits, ImageGenLabels = labels, Schedule = Schedule };
        using var ids = zeros([1, 3], ScalarType.Int64);
        using var textLabels = zeros([1, 3], ScalarType.Int64);
        using var official = VargptTrainingLoss.Sft(output, ids, textLabels, imageGenPadId: 7);
        using var weighted = VargptTrainingLoss.Sft(output, ids, textLabels, imageGenPadId: 7, bitLoss: BitLoss.ScaleWeighted);
        using var expected = VargptTrainingLoss.ScaleWeightedBitLoss(logits, labels, Schedule);
        Assert.Equal(expected.item<float>(), weighted.ImageLoss!.item<float>());
        Assert.NotEqual(official.ImageLoss!.item<float>(), weighted.ImageLoss!.item<float>(), 3);
        Assert.Equal(weighted.TextLoss.item<float>() + VargptTrainingLoss.LambdaImage * expected.item<float>(), weighted.Loss.item<float>(), 4);
    }
}
