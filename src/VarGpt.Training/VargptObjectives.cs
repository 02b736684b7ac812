using TorchSharp;
using VarGpt.Model;
using static TorchSharp.torch;

namespace VarGpt.Training;

/// <summary>
/// SFT: the v1.1 training forward + get_gen_loss_1_1 (text CE + 3.0 × bit CE; text-only batches use the labels).
/// The forward's randomness (bit-flip noise, cond dropout) is seeded by the batch, so a resumed run replays it.
/// </summary>
/// <param name="genTextOnLabels">vargpt_gen_text_loss: labels (see <see cref="VargptTrainingLoss.Sft"/>).</param>
/// <param name="bitLoss">vargpt_bit_loss (see <see cref="VargptTrainingLoss.Sft"/>).</param>
public sealed class VargptSftObjective(VargptForConditionalGeneration model, VargptTrainingOptions? forwardOptions = null, bool genTextOnLabels = false,
    BitLoss bitLoss = BitLoss.Official) : ITrainingObjective<VargptBatch>
{
    readonly VargptTrainingOptions _o = forwardOptions ?? new VargptTrainingOptions();

    /// <summary>Parts of the last micro-batch's loss (text, image; image NaN without targets).</summary>
    public (double Text, double Image) LastParts { get; private set; }

    public ObjectiveOutput Compute(VargptBatch batch)
    {
        var output = VargptTraining.Forward(model, batch.Inputs, _o with { Seed = batch.Seed ^ _o.Seed });
        var loss = VargptTrainingLoss.Sft(output, batch.InputIds, batch.Labels, model.Config.ImageGen.PadId, genTextOnLabels, bitLoss);
        if (!loss.Loss.requires_grad && is_grad_enabled())
            throw new InvalidOperationException($"the loss of this batch ({string.Join(", ", batch.Records.Select(r => r.Where))}) depends on no trainable parameter: " +
                (output.GenLogits is null ? "it has no generation target and the language model, lm_head and vision tower are frozen" : "everything it depends on is frozen"));
        using (var t = loss.TextLoss.detach().cpu()) using (var i = loss.ImageLoss?.detach().cpu())
            LastParts = (t.item<float>(), i is null ? double.NaN : i.item<float>());
        return new ObjectiveOutput(loss.Loss, batch.Tokens);
    }
}

/// <summary>Preference-loss settings (LLaMA-Factory finetuning_args: pref_beta, pref_loss, dpo_label_smoothing, pref_ftx).</summary>
public sealed record DpoOptions
{
    public double Beta { get; init; } = 0.1;
    /// <summary>sigmoid (default), hinge or ipo (trl 0.9.6 dpo_loss); the reference-free losses are not implemented.</summary>
    public PrefLoss LossType { get; init; } = TrainingConfig.Defaults.PrefLoss;
    public double LabelSmoothing { get; init; }
    /// <summary>pref_ftx: weight of the SFT term −log p(chosen)/L added to each pair's loss.</summary>
    public double Ftx { get; init; }

    public static DpoOptions FromConfig(TrainingConfig c) => new() { Beta = c.PrefBeta, LossType = c.PrefLoss, LabelSmoothing = c.DpoLabelSmoothing, Ftx = c.PrefFtx };

    public void Validate()
    {
        if (!Enum.IsDefined(LossType)) throw new InvalidOptionException($"pref_loss {LossType} is not implemented", nameof(LossType));
        if (Beta <= 0) throw new InvalidOptionException("pref_beta must be > 0", nameof(Beta));
        if (LabelSmoothing != 0 && LossType != PrefLoss.Sigmoid) throw new InvalidOptionException("dpo_label_smoothing is only valid for pref_loss: sigmoid", nameof(LabelSmoothing));
    }
}

/// <summary>Per-pair DPO terms (float32 [P]) and the logits of the sigmoid (π log-ratio − reference log-ratio).</summary>
public sealed record DpoTerms(Tensor Losses, Tensor ChosenRewards, Tensor RejectedRewards, Tensor Logits);

/// <summary>trl 0.9.6 DPOTrainer.dpo_loss (reference_free = False, f_divergence reverse KL).</summary>
public static class DpoLoss
{
    public static DpoTerms Compute(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected, DpoOptions o)
    {
        using var scope = NewDisposeScope();
        var logits = (policyChosen - policyRejected) - (referenceChosen - referenceRejected);
        Tensor losses = o.LossType switch
        {
            PrefLoss.Sigmoid => -nn.functional.logsigmoid(o.Beta * logits) * (1 - o.LabelSmoothing) - nn.functional.logsigmoid(-o.Beta * logits) * o.LabelSmoothing,
            PrefLoss.Hinge => nn.functional.relu(1 - o.Beta * logits),
            PrefLoss.Ipo => (logits - 1 / (2 * o.Beta)).pow(2),
            _ => throw new NotSupportedException($"pref_loss '{o.LossType}' is not implemented"),
        };
        var cr = (o.Beta * (policyChosen - referenceChosen)).detach();
        var rr = (o.Beta * (policyRejected - referenceRejected)).detach();
        return new DpoTerms(losses.MoveToOuterDisposeScope(), cr.MoveToOuterDisposeScope(), rr.MoveToOuterDisposeScope(), logits.detach().MoveToOuterDisposeScope());
    }
}

/// <summary>
/// Image DPO as VARGPT's LLaMA-Factory fork does it (CustomDPOTrainer.get_batch_loss_metrics): rows = [chosen; rejected],
/// log p(sample) = Σ over VAR tokens and bits of log_softmax(bit pair)[label] (text tokens are not part of it;
/// ipo divides by the token count), reference log-probs from a frozen copy in eval mode under no_grad, trl's loss,
/// + pref_ftx · (−log p(chosen)/L). The policy and the reference each draw their own bit-flip noise and cond dropout
/// (official quirk: they see different noisy inputs and labels). With <see cref="PrecomputeReference"/> the reference
/// is run once per item before training (on the epoch-0 crop and noise draw) and can then be disposed.
/// </summary>
public sealed class VargptDpoObjective : ITrainingObjective<VargptBatch>
{
    readonly VargptForConditionalGeneration _policy;
    VargptForConditionalGeneration? _reference;
    readonly DpoOptions _o;
    readonly VargptTrainingOptions _fwd;
    readonly Dictionary<(string File, int Index, string Dataset), (float Chosen, float Rejected)> _cache = [];

    public VargptDpoObjective(VargptForConditionalGeneration policy, VargptForConditionalGeneration? reference, DpoOptions options, VargptTrainingOptions? forwardOptions = null)
    {
        options.Validate();
        _policy = policy; _reference = reference; _o = options;
        _fwd = forwardOptions ?? new VargptTrainingOptions();
        if (reference != null)
        {
            reference.eval();
            foreach (var p in reference.parameters()) p.requires_grad_(false);
        }
    }

    /// <summary>trainer metrics of the last micro-batch (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*, logits/*).</summary>
    public IReadOnlyDictionary<string, double> LastMetrics { get; private set; } = new Dictionary<string, double>();

    /// <summary>Reference log-probs (chosen, rejected) of every item, computed once (one item per forward); afterwards the reference model is not used.</summary>
    public void PrecomputeReference(VargptCollator collator, IReadOnlyList<EncodedItem> items)
    {
        var reference = _reference ?? throw new InvalidOperationException("no reference model to precompute with");
        for (int i = 0; i < items.Count; i++)
        {
            using var scope = NewDisposeScope();
            var batch = collator.Collate([items[i]], 0, i);
            var (c, r) = ReferenceLogps(reference, batch);
            using var cc = c.cpu(); using var rc = r.cpu();
            _cache[Key(items[i].Record)] = (cc.item<float>(), rc.item<float>());
        }
        _reference = null;
    }

    static (string, int, string) Key(Data.TrainingRecord r) => (r.File, r.Index, r.Dataset);

    /// <summary>Summed image log-probs [2P] of one model on a batch (get_batch_image_logps, ipo: / L).</summary>
    (Tensor Logps, long Length) Logps(VargptForConditionalGeneration m, VargptBatch batch, long seed)
    {
        if (batch.Pairs <= 0 || batch.PixelGenValues is null) throw new ArgumentException("a DPO batch needs chosen/rejected rows with generation targets");
        var output = VargptTraining.Forward(m, batch.Inputs, _fwd with { Seed = seed });
        var logps = VargptTrainingLoss.ImageLogProbs(output.GenLogits!, output.ImageGenLabels!);
        long L = output.GenLogits!.shape[1]; // valid_length = number of VAR tokens
        if (_o.LossType == PrefLoss.Ipo) logps = logps / L;
        return (logps, L);
    }

    (Tensor Chosen, Tensor Rejected) ReferenceLogps(VargptForConditionalGeneration reference, VargptBatch batch)
    {
        using var ng = no_grad();
        var (lp, _) = Logps(reference, batch, batch.Seed ^ 0x7265_6600L ^ _fwd.Seed);
        return (lp.narrow(0, 0, batch.Pairs), lp.narrow(0, batch.Pairs, batch.Pairs));
    }

    public ObjectiveOutput Compute(VargptBatch batch)
    {
        int P = batch.Pairs;
        var (lp, L) = Logps(_policy, batch, batch.Seed ^ _fwd.Seed);
        var pc = lp.narrow(0, 0, P);
        var pr = lp.narrow(0, P, P);
        Tensor rc, rr;
        if (_reference != null) (rc, rr) = ReferenceLogps(_reference, batch);
        else
        {
            var vals = batch.Records.Select(r => _cache.TryGetValue(Key(r), out var v) ? v
                : throw new InvalidOperationException($"{r.Where}: no precomputed reference log-probs")).ToList();
            rc = tensor(vals.Select(v => v.Chosen).ToArray(), device: pc.device);
            rr = tensor(vals.Select(v => v.Rejected).ToArray(), device: pc.device);
        }
        var terms = DpoLoss.Compute(pc, pr, rc, rr, _o);
        var losses = terms.Losses;
        if (_o.Ftx > 1e-6) losses = losses + _o.Ftx * (-(pc / L));
        var loss = losses.mean();

        using (var h = stack([terms.ChosenRewards, terms.RejectedRewards, pc.detach(), pr.detach()]).cpu())
        {
            var a = h.data<float>().ToArray();
            double Mean(int row) => Enumerable.Range(0, P).Average(j => (double)a[row * P + j]);
            LastMetrics = new Dictionary<string, double>
            {
                ["rewards/chosen"] = Mean(0), ["rewards/rejected"] = Mean(1),
                ["rewards/accuracies"] = Enumerable.Range(0, P).Average(j => a[j] > a[P + j] ? 1.0 : 0.0),
                ["rewards/margins"] = Enumerable.Range(0, P).Average(j => (double)a[j] - a[P + j]),
                ["logps/chosen"] = Mean(2), ["logps/rejected"] = Mean(3),
            };
        }
        return new ObjectiveOutput(loss, batch.Tokens);
    }
}
