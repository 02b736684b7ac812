using TorchSharp;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>
/// Sampling settings of one generated image. Defaults are the values the official forward() hard-codes
/// (modeling_vargpt_qwen2_vl.py, inference_image_gen branch): cfg 3, tau 0.5, top-k 900, top-p 0.97, square.
/// </summary>
public sealed record ImageGenerationOptions
{
    /// <summary>Classifier-free guidance on logits; 1 disables the unconditional branch.</summary>
    public double Cfg { get; init; } = 3;
    /// <summary>Logits are divided by tau before mixing.</summary>
    public double Tau { get; init; } = 0.5;
    public int TopK { get; init; } = 900;
    public double TopP { get; init; } = 0.97;
    /// <summary>Seed of the bit sampler. The official code seeds from the clock; callers must choose one (and print it).</summary>
    public long Seed { get; init; }
    /// <summary>Height / width; the nearest template of the dynamic-resolution table is used (official: fixed 1.0).</summary>
    public double AspectRatio { get; init; } = 1.0;
    /// <summary>Pixel budget name ('0.25M' = 512x512); null = the checkpoint's vargpt_gen_args.pn.</summary>
    public string? Pn { get; init; }

    public void Validate()
    {
        if (!(Cfg >= 1) || double.IsInfinity(Cfg)) throw new ArgumentOutOfRangeException(nameof(Cfg), Cfg, "cfg must be a finite number ≥ 1 (1 disables guidance)");
        if (!(Tau > 0) || double.IsInfinity(Tau)) throw new ArgumentOutOfRangeException(nameof(Tau), Tau, "tau must be a finite number > 0");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be ≥ 0 (0 disables it)");
        if (!(TopP >= 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in [0, 1] (0 disables it)");
        if (!(AspectRatio > 0) || double.IsInfinity(AspectRatio)) throw new ArgumentOutOfRangeException(nameof(AspectRatio), AspectRatio, "aspect ratio (h/w) must be > 0");
    }
}

/// <summary>A generated image: RGB uint8 [H, W, 3], the decoder output [1, 3, H, W] in [-1, 1], the summed codes and the bits of every scale.</summary>
public sealed class GeneratedImage(Tensor rgb, Tensor decoded, Tensor summedCodes, IReadOnlyList<Tensor> bits, ScaleSchedule schedule) : IDisposable
{
    public Tensor Rgb { get; } = rgb;
    public Tensor Decoded { get; } = decoded;
    public Tensor SummedCodes { get; } = summedCodes;
    public IReadOnlyList<Tensor> Bits { get; } = bits;
    public ScaleSchedule Schedule { get; } = schedule;
    public int Height => (int)Rgb.shape[0];
    public int Width => (int)Rgb.shape[1];

    public void Dispose()
    {
        Rgb.Dispose(); Decoded.Dispose(); SummedCodes.Dispose();
        foreach (var b in Bits) b.Dispose();
    }
}

/// <summary>
/// The next-scale image loop of VARGPT-v1.1 (official VARGPTQwen2VLForConditionalGeneration.autoregressive_infer_cfg),
/// run after the language model emitted and forwarded &lt;|image_gen_start|&gt;. Per scale: the scale's tokens go through
/// the LLM with the generation KV cache (conditional row; positions = raw cache index, token-causal) and, with CFG,
/// through the LLM with no context at all (unconditional row, positions from 0); image_gen_projector_out; the Infinity
/// blocks (own KV cache, cross-attention to the projected prompt states or, for the unconditional row, to raw
/// cfg_uncond rows); the bitwise head / tau; CFG on logits; per-bit sampling; codes accumulate at the final latent
/// size; the next scale's input is the trilinear resize of the running sum. The VAE decodes the sum at the end.
/// </summary>
public static class ImageGeneration
{
    /// <summary>Debug taps, named as the golden fixture names its tensors (lm_in_cond.s{k}, logits_raw.s{k}, ...).</summary>
    public delegate void Tap(string name, Tensor value);

    /// <param name="model">the whole model</param>
    /// <param name="cache">the generation KV cache, holding the prompt, any generated text and &lt;|image_gen_start|&gt;; image tokens are appended to it</param>
    /// <param name="contextHidden">[Lc, H] post-final-norm LLM states of every token before &lt;|image_gen_start|&gt; (the cross-attention context)</param>
    public static GeneratedImage AutoregressiveInferCfg(VargptForConditionalGeneration model, KVCache cache, Tensor contextHidden,
        ImageGenerationOptions options, Action<int, ScaleSchedule>? onScale = null, Tap? tap = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        var cfgM = model.Config;
        var inf = model.VargptGen;
        var schedule = ScheduleFor(model, options);
        bool useCfg = options.Cfg != 1;
        int bs = useCfg ? 2 : 1;
        var device = model.Device;
        var dtype = model.DType;
        int lc = (int)contextHidden.shape[0];
        if (useCfg && lc > inf.Config.TextMaxLen)
            throw new ArgumentException(
                $"the prompt context has {lc} tokens but the unconditional CFG branch of this checkpoint supports at most {inf.Config.TextMaxLen} " +
                "(rows of vargpt_gen.cfg_uncond; the official code crashes here). Shorten the prompt, or for editing lower the input image's max pixels so it yields fewer image tokens.");

        using var ng = no_grad();
        using var outer = NewDisposeScope();
        using var gen = new Generator((ulong)options.Seed, device);

        // Conditioning: sos_embedding[image_gen_start] (+ cfg_uncond[0] for the unconditional row) → cond_BD [bs, C].
        var sos = model.SosEmbedding.weight![cfgM.ImageGen.StartId].unsqueeze(0);
        var text = CrossAttnKv.OneRowEach(sos);
        if (useCfg) text = inf.AppendUncond(text);
        var cond = inf.Condition(text);
        tap?.Invoke("cond_BD", cond);
        var ada = inf.AdaLn(cond);

        // Cross-attention context: image_gen_projector_out(prompt states) and, for CFG, raw cfg_uncond[:Lc].
        var ctxRows = model.ImageGenProjectorOut.forward(contextHidden.to(dtype, device));
        var ctx = CrossAttnKv.Pack([ctxRows]);
        if (useCfg) ctx = inf.AppendUncond(ctx);
        tap?.Invoke("ca_kv_compact", ctx.KvCompact);
        using var infCache = inf.NewCache(ctx, schedule);

        // Scale-0 input: image_gen_projector(cond_BD + pos_start) [bs, 1, H] (differs between the two rows).
        var stage = model.ImageGenProjector.forward(inf.FirstTokens(cond));
        cache.Reserve(cache.Length + schedule.SequenceLength);

        Tensor? summed = null;
        var bits = new List<Tensor>();
        var scales = schedule.Scales;
        var final = scales[^1];
        for (int si = 0; si < scales.Count; si++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            using var step = NewDisposeScope();
            var sc = scales[si];
            var xc = stage.narrow(0, 0, 1);
            tap?.Invoke($"lm_in_cond.s{si}", xc);
            var hc = model.model.forward(xc, null, null, cache);
            tap?.Invoke($"lm_out_cond.s{si}", hc);
            var h = hc;
            if (useCfg)
            {
                var xu = stage.narrow(0, 1, 1);
                tap?.Invoke($"lm_in_uncond.s{si}", xu);
                var hu = model.model.forward(xu);
                tap?.Invoke($"lm_out_uncond.s{si}", hu);
                h = cat([hc, hu], 0);
            }
            var y = model.ImageGenProjectorOut.forward(h);
            y = inf.ForwardScale(y, ada, infCache, si);
            var raw = inf.Logits(y, cond);
            tap?.Invoke($"logits_raw.s{si}", raw);
            var mixed = MixCfg(raw, options.Cfg, options.Tau);
            tap?.Invoke($"logits_mixed.s{si}", mixed);
            var idx = BitSampling.SampleWithTopKTopP(mixed.to(ScalarType.Float32), options.TopK, options.TopP, gen);
            var b = idx.reshape(1, sc.H, sc.W, -1).unsqueeze(1); // [1, 1, h, w, d]
            tap?.Invoke($"bits.s{si}", b);
            bits.Add(b.MoveToOuterDisposeScope());

            var codes = MultiScaleResidual.CodesFromBits(b);
            var next = MultiScaleResidual.Accumulate(summed, codes, final);
            summed?.Dispose();
            summed = next.MoveToOuterDisposeScope();
            if (si != scales.Count - 1)
            {
                var tokens = MultiScaleResidual.ToTokens(MultiScaleResidual.NextScaleInput(summed, scales[si + 1])).to(dtype);
                var s = model.ImageGenProjector.forward(inf.WordEmbed(tokens));
                stage = (useCfg ? s.repeat(2, 1, 1) : s).MoveToOuterDisposeScope();
            }
            onScale?.Invoke(si, schedule);
        }

        var summedOut = summed!.squeeze(2); // [1, d, h, w]
        tap?.Invoke("summed_codes", summedOut);
        var decoded = model.VaeLocal.Decode(summedOut.to(dtype)).to(ScalarType.Float32);
        tap?.Invoke("decoded", decoded);
        var rgb = ImageOutput.ToUInt8Rgb(decoded)[0];
        var result = new GeneratedImage(rgb.MoveToOuterDisposeScope(), decoded.MoveToOuterDisposeScope(), summedOut.MoveToOuterDisposeScope(),
            bits.Select(t => t.MoveToOuterDisposeScope()).ToList(), schedule);
        return result;
    }

    /// <summary>
    /// Official CFG on logits (cfg_insertion_layer [0]): each row divided by tau first, then cfg·cond + (1 − cfg)·uncond;
    /// raw [2, n, 2d] (cond row first) or [1, n, 2d] without CFG → per-bit pairs [1, n·d, 2].
    /// </summary>
    public static Tensor MixCfg(Tensor raw, double cfg, double tau)
    {
        using var scope = NewDisposeScope();
        var logits = raw.mul(1.0 / tau);
        if (cfg != 1) logits = logits.narrow(0, 0, 1).mul(cfg) + logits.narrow(0, 1, 1).mul(1 - cfg);
        return logits.reshape(1, -1, 2).MoveToOuterDisposeScope();
    }

    /// <summary>The scale schedule for the options: nearest template of the aspect ratio, pn from the options or the checkpoint, t = 1.</summary>
    public static ScaleSchedule ScheduleFor(VargptForConditionalGeneration model, ImageGenerationOptions options) =>
        ScaleSchedules.Get(ScaleSchedules.NearestTemplate(options.AspectRatio), options.Pn ?? model.Config.Pn);
}
