using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Training;
using static TorchSharp.torch;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "dpo_loss": image DPO of VARGPT's LLaMA-Factory fork on the tiny full model: the policy (train mode) and the
/// frozen reference (eval mode) run the v1.1 training forward on [chosen; rejected]; log-probs = Σ of the label's
/// bit log-softmax over all VAR tokens and bits; trl 0.9.6 sigmoid loss (beta 0.1).
/// </summary>
public sealed class DpoLossFixture : IFixtureKind
{
    public string Kind => "dpo_loss";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 3e-3), rtol = f.Atol("rtol", 1e-3), lossAtol = f.Atol("loss_atol", 5e-3), logpsAtol = f.Atol("logps_atol", 0.2);
        var prm = f.Params;
        var o = new DpoOptions
        {
            Beta = prm.GetProperty("beta").GetDouble(), LossType = Enum.Parse<PrefLoss>(prm.GetProperty("loss_type").GetString()!, ignoreCase: true),
            LabelSmoothing = prm.GetProperty("label_smoothing").GetDouble(), Ftx = prm.GetProperty("pref_ftx").GetDouble(),
        };
        var cfg = SftLossFixture.TinyModelConfig(f);
        using var policy = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        using var reference = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        StateDict.Load(policy, f.LoadWeights());
        StateDict.Load(reference, f.LoadWeights(prm.GetProperty("reference_weights").GetString()));
        policy.train();
        reference.eval();

        var inputs = new VargptTrainingInputs(f.In("input_ids"), f.In("attention_mask"), PixelGenValues: f.In("pixel_gen_values"));
        var fwd = new VargptTrainingOptions { NoiseApplyStrength = 0 };
        using var ng = no_grad();
        using var po = VargptTraining.Forward(policy, inputs, fwd);
        using var ro = VargptTraining.Forward(reference, inputs, fwd);
        cmp.Exact("image_gen_labels", po.ImageGenLabels!, f.Out("image_gen_labels"));
        cmp.Exact("image_gen_labels(reference)", ro.ImageGenLabels!, f.Out("image_gen_labels"));
        cmp.Close("policy_gen_logits", po.GenLogits!, f.Out("policy_gen_logits"), atol, rtol);
        cmp.Close("reference_gen_logits", ro.GenLogits!, f.Out("reference_gen_logits"), atol, rtol);

        var pl = VargptTrainingLoss.ImageLogProbs(po.GenLogits!, po.ImageGenLabels!);
        var rl = VargptTrainingLoss.ImageLogProbs(ro.GenLogits!, ro.ImageGenLabels!);
        int P = (int)pl.shape[0] / 2;
        Tensor C(Tensor t) => t.narrow(0, 0, P);
        Tensor R(Tensor t) => t.narrow(0, P, P);
        cmp.Close("policy_chosen_logps", C(pl), f.Out("policy_chosen_logps"), logpsAtol, 0);
        cmp.Close("policy_rejected_logps", R(pl), f.Out("policy_rejected_logps"), logpsAtol, 0);
        cmp.Close("reference_chosen_logps", C(rl), f.Out("reference_chosen_logps"), logpsAtol, 0);
        cmp.Close("reference_rejected_logps", R(rl), f.Out("reference_rejected_logps"), logpsAtol, 0);

        var terms = DpoLoss.Compute(C(pl), R(pl), C(rl), R(rl), o);
        cmp.Close("dpo_logits", terms.Logits, f.Out("dpo_logits"), logpsAtol, 0);
        cmp.Close("losses", terms.Losses, f.Out("losses"), lossAtol, 0);
        cmp.Close("loss", terms.Losses.mean(), f.Out("loss"), lossAtol, 0);
        cmp.Close("chosen_rewards", terms.ChosenRewards, f.Out("chosen_rewards"), lossAtol, 0);
        cmp.Close("rejected_rewards", terms.RejectedRewards, f.Out("rejected_rewards"), lossAtol, 0);
    }
}
