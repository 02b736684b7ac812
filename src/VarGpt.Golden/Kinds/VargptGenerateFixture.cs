using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "vargpt_generate": the official patched sampler on a tiny full model — prefill of the prompt, the first
/// generated token forced to &lt;|image_gen_start|&gt; (the tiny LM is random), one more LM step on it, the argmax token
/// after it appended but never forwarded, then autoregressive_infer_cfg with top-k 1 (argmax bits) for cfg 3 and cfg 1.
/// Every per-scale LM input/output, raw and mixed logits, bits (exact), summed codes, decoded image and uint8 image.
/// </summary>
public sealed class VargptGenerateFixture : IFixtureKind
{
    public string Kind => "vargpt_generate";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 3e-3), rtol = f.Atol("rtol", 1e-3);
        var config = FixtureModels.FullConfig(f);
        using var model = new VargptForConditionalGeneration(config);
        StateDict.Load(model, f.LoadWeights());
        model.eval();
        var p = f.Params;
        foreach (var variant in p.GetProperty("cfg_variants").EnumerateObject())
        {
            using var scope = NewDisposeScope();
            string v = variant.Name;
            var options = new ImageOptions
            {
                Cfg = variant.Value.GetProperty("cfg").GetDouble(),
                Tau = p.GetProperty("tau").GetDouble(),
                TopK = p.GetProperty("top_k").GetInt32(),
                TopP = p.GetProperty("top_p").GetDouble(),
                AspectRatio = p.GetProperty("h_div_w").GetDouble(),
                Pn = p.GetProperty("pn").GetString(),
            };
            long seed = p.GetProperty("seed").GetInt64();
            using var cache = new KVCache(config.NumHiddenLayers);
            var (sequences, hidden) = ForcedImageStart(model, f.In("prompt_ids"), cache);
            cmp.Exact($"{v}.sequences", sequences, f.Out($"{v}.sequences"));
            cmp.Close($"{v}.past_hidden_states_at_image_start", hidden, f.Out($"{v}.past_hidden_states_at_image_start"), atol, rtol);
            var context = hidden[0].narrow(0, 0, hidden.shape[1] - 1); // every state but <|image_gen_start|>'s
            using var image = ImageGeneration.AutoregressiveInferCfg(model, cache, context, options, seed, tap: (name, t) =>
            {
                string key = $"out.{v}.{name}";
                if (!f.Has(key)) return;
                using var exp = f.Out($"{v}.{name}");
                if (name.StartsWith("bits.", StringComparison.Ordinal)) cmp.Exact($"{v}.{name}", t, exp);
                else if (name.StartsWith("logits_mixed.", StringComparison.Ordinal))
                {
                    // The mixing itself, exactly: our MixCfg applied to the official raw logits.
                    using var expRaw = f.Out($"{v}.{name.Replace("mixed", "raw")}");
                    using var mixedFromRaw = ImageGeneration.MixCfg(expRaw, options.Cfg, options.Tau);
                    cmp.Close($"{v}.{name}(official raw)", mixedFromRaw, exp, 1e-5, 1e-6);
                    // End to end: mixed = (cfg·c − (cfg−1)·u)/tau amplifies an error e of the raw logits (checked at atol
                    // above) to e·(|cfg| + |cfg−1|)/tau, so the raw tolerance is propagated through that linear map.
                    double gain = (Math.Abs(options.Cfg) + Math.Abs(options.Cfg - 1)) / options.Tau;
                    cmp.Close($"{v}.{name}", t, exp, atol * gain, rtol);
                }
                else if (name == "ca_kv_compact" || name == "cond_BD" || name.StartsWith("lm_", StringComparison.Ordinal) ||
                         name.StartsWith("logits_raw.", StringComparison.Ordinal) || name == "summed_codes" || name == "decoded")
                    cmp.Close($"{v}.{name}", t, exp, atol, rtol);
            });
            using var expRgb = f.Out($"{v}.image_rgb_hwc_u8");
            using var diff = (image.Rgb.to(ScalarType.Int32) - expRgb.to(ScalarType.Int32)).abs();
            long maxDiff = diff.max().item<int>();
            cmp.Check($"{v}.image_rgb_hwc_u8", maxDiff <= 1 && image.Rgb.shape.SequenceEqual(expRgb.shape),
                $"max grey-level difference {maxDiff} (allowed 1, truncation boundary)");
            using var expBgr = f.Out($"{v}.image_bgr_hwc_u8");
            using var bgr = expRgb.flip(2);
            cmp.Exact($"{v}.image_bgr_is_flipped_rgb", bgr, expBgr);
        }
    }

    /// <summary>
    /// Prefill of the prompt, then &lt;|image_gen_start|&gt; forced as the first generated token and forwarded (the
    /// official sampler then appends the argmax after it without forwarding). Returns the sequence and the post-norm
    /// hidden states of every forwarded token [1, L+1, H] (official past_hidden_states).
    /// </summary>
    static (Tensor Sequences, Tensor Hidden) ForcedImageStart(VargptForConditionalGeneration model, Tensor promptIds, KVCache cache)
    {
        using var scope = NewDisposeScope();
        using var ng = no_grad();
        var start = tensor(new long[,] { { model.Config.ImageGen.StartId } });
        var pre = model.Forward(model.EmbedInputs(promptIds), cache: cache, lastPositionOnly: true);
        var step = model.Forward(model.EmbedInputs(start), cache: cache, lastPositionOnly: true);
        var next = step.Logits[TensorIndex.Colon, -1].argmax(-1, keepdim: true);
        var seq = cat([promptIds, start, next], 1);
        var hidden = cat([pre.LastHiddenState, step.LastHiddenState], 1);
        return (seq.MoveToOuterDisposeScope(), hidden.MoveToOuterDisposeScope());
    }
}
