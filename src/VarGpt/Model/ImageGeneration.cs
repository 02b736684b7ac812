using System.Diagnostics;
using System.Globalization;
using TorchSharp;
using VarGpt.Configuration;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Vision;
using static TorchSharp.torch;

namespace VarGpt.Model;

/// <summary>
/// Settings of image generation: text-to-image, editing, and a chat turn in which the model starts an image.
/// Defaults are the official inference defaults (modeling_vargpt_qwen2_vl.py forward, inference_image_gen branch, and
/// inference_v1_1/generation_vargpt_v1_1.py): cfg 3, tau 0.5, top-k 900, top-p 0.97, square, the checkpoint's pixel
/// budget (vargpt_gen_args.pn), greedy text with max_new_tokens 4096.
/// </summary>
public sealed record ImageOptions
{
    /// <summary>The official generation script's text budget (generate(max_new_tokens=4096)).</summary>
    public const int DefaultMaxNewTokens = 4096;
    /// <summary>LLaMA-Factory's image_resolution on the official editing path (512·512).</summary>
    public const long DefaultEditMaxPixels = 512 * 512;

    /// <summary>Classifier-free guidance on logits (≥ 1; 1 disables the unconditional branch).</summary>
    public double Cfg { get; init; } = 3;
    /// <summary>Temperature divisor of the bit logits (&gt; 0).</summary>
    public double Tau { get; init; } = 0.5;
    /// <summary>Top-k of the bit sampler (0 disables it).</summary>
    public int TopK { get; init; } = 900;
    /// <summary>Top-p of the bit sampler, in [0, 1] (0 disables it).</summary>
    public double TopP { get; init; } = 0.97;
    /// <summary>Seed of the bit sampler. Null = a random one (<see cref="Seeds.Random"/>), returned with the result: the official code seeds from the clock and never tells.</summary>
    public long? Seed { get; init; }
    /// <summary>Height / width; must be one of the dynamic-resolution templates (<see cref="ScaleSchedules.Templates"/>). Official: 1.</summary>
    public double AspectRatio { get; init; } = 1.0;
    /// <summary>Pixel budget name ('0.06M', '0.25M', '0.60M', '1M', or one of the checkpoint's own); null = the checkpoint's vargpt_gen_args.pn.</summary>
    public string? Pn { get; init; }
    /// <summary>Images per prompt. Image i uses seed Seed + i, so any of them is reproduced by Count 1 with that seed.</summary>
    public int Count { get; init; } = 1;
    /// <summary>
    /// Begin the assistant turn with &lt;|image_gen_start|&gt; instead of waiting for the model to emit it. Not an official
    /// option: the official scripts rely on the model emitting the token (a model that answers with text only produces no
    /// image there). Forced, the context is the prompt alone (no generated text), exactly as if the model had chosen
    /// &lt;|image_gen_start|&gt; as its first token.
    /// </summary>
    public bool ForceImageStart { get; init; }
    /// <summary>Text-token budget before the image must start.</summary>
    public int MaxNewTokens { get; init; } = DefaultMaxNewTokens;
    /// <summary>
    /// Editing only: the source image is first shrunk (PIL NEAREST) to at most this many pixels, as LLaMA-Factory's
    /// image_resolution does on the official editing path; fewer pixels = fewer image tokens in the cross-attention
    /// context, which must fit the checkpoint's cfg_uncond rows (text_maxlen). Null = no pre-shrink (the processor's
    /// own max_pixels still applies).
    /// </summary>
    public long? EditMaxPixels { get; init; } = DefaultEditMaxPixels;

    /// <summary>Checks every setting and resolves the scale schedule in the model's table (errors list the valid aspect ratios / pixel budgets).</summary>
    public ScaleSchedule Validate(VargptConfig config)
    {
        ValidateSampling();
        if (Count < 1) throw new InvalidOptionException($"count must be ≥ 1, got {Count}", nameof(Count));
        if (MaxNewTokens < 1) throw new InvalidOptionException($"max new tokens must be ≥ 1, got {MaxNewTokens}", nameof(MaxNewTokens));
        if (EditMaxPixels is long px && px < 28 * 28) throw new InvalidOptionException($"the edit image's max pixels must be ≥ 784 (28×28), got {px}", nameof(EditMaxPixels));
        double template = ScaleSchedules.NearestTemplate(AspectRatio);
        if (Math.Abs(Math.Log(template / AspectRatio)) > 0.01)
            throw new InvalidOptionException(
                $"unknown aspect ratio h/w = {AspectRatio.ToString("0.###", CultureInfo.InvariantCulture)}; valid (h/w): " +
                string.Join(", ", ScaleSchedules.Templates.Select(t => t.ToString("0.###", CultureInfo.InvariantCulture))), nameof(AspectRatio));
        return config.Schedules.Get(template, Pn ?? config.Pn);
    }

    /// <summary>The sampler settings alone (what the image loop itself reads).</summary>
    public void ValidateSampling()
    {
        if (!(Cfg >= 1) || double.IsInfinity(Cfg)) throw new InvalidOptionException($"cfg must be a finite number ≥ 1 (1 disables guidance), got {Cfg}", nameof(Cfg));
        if (!(Tau > 0) || double.IsInfinity(Tau)) throw new InvalidOptionException($"tau must be a finite number > 0, got {Tau}", nameof(Tau));
        if (TopK < 0) throw new InvalidOptionException($"top-k must be ≥ 0 (0 disables it), got {TopK}", nameof(TopK));
        if (!(TopP >= 0 && TopP <= 1)) throw new InvalidOptionException($"top-p must be in [0, 1] (0 disables it), got {TopP}", nameof(TopP));
        if (!(AspectRatio > 0) || double.IsInfinity(AspectRatio)) throw new InvalidOptionException($"aspect ratio (h/w) must be > 0, got {AspectRatio}", nameof(AspectRatio));
    }
}

/// <summary>The seeds chosen when the caller gives none: one range for every sampler (token and bit), [0, 2^31), so a seed fits an int in any client.</summary>
public static class Seeds
{
    public static long Random() => System.Random.Shared.NextInt64(0, int.MaxValue);
}

/// <summary>
/// Progress of one image: scale <see cref="ScaleIndex"/> of <see cref="Scales"/> is done (image <see cref="Image"/>
/// of <see cref="Images"/>, 0-based; <see cref="Elapsed"/> counts from the start of this image's loop).
/// Next-scale generation has a whole coarse image after every scale: <see cref="DecodePreview"/> decodes it with the
/// VAE (one decode; it does not change the result) — only while the progress callback runs.
/// </summary>
public sealed record ImageProgress(int Image, int Images, int ScaleIndex, int Scales, Scale Scale, TimeSpan Elapsed)
{
    internal ScalePreview? Preview { get; init; }

    /// <summary>The image the scales so far give (the running code sum decoded at full size).</summary>
    public RgbImage DecodePreview() => Preview?.Decode() ?? throw new InvalidOperationException("a preview can only be decoded inside the progress callback, while the image loop waits");
}

/// <summary>The running code sum of one image loop, decodable while the loop waits in its progress callback.</summary>
internal sealed class ScalePreview(BsqVae vae, Tensor summed, ScalarType dtype)
{
    public bool Live { get; set; } = true;

    public RgbImage Decode()
    {
        if (!Live) throw new InvalidOperationException("a preview can only be decoded inside the progress callback, while the image loop waits");
        using var scope = NewDisposeScope();
        using var ng = no_grad();
        var decoded = vae.Decode(summed.squeeze(2).to(dtype)).to(ScalarType.Float32);
        return RgbImage.FromTensor(ImageOutput.ToUInt8Rgb(decoded)[0]);
    }
}

/// <summary>What <see cref="ImageGeneration.AutoregressiveInferCfg"/> drew: RGB uint8 [H, W, 3], the decoder output [1, 3, H, W] in [-1, 1], the summed codes and the bits of every scale.</summary>
public sealed class InferCfgResult(Tensor rgb, Tensor decoded, Tensor summedCodes, IReadOnlyList<Tensor> bits, ScaleSchedule schedule) : IDisposable
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
/// with no context at all (unconditional row, positions from 0) — both rows in one batched pass
/// (<see cref="Qwen2VLModel.ForwardCfgPair"/>) where the official code makes two calls; image_gen_projector_out; the Infinity
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
    /// <param name="options">the sampler settings (cfg, tau, top-k, top-p) and the schedule (aspect ratio, pn); Seed and Count are the caller's</param>
    /// <param name="seed">seed of the bit sampler (the official code seeds from the clock; callers choose one and report it)</param>
    /// <param name="progress">called after every scale (<see cref="ImageProgress.DecodePreview"/> works inside it)</param>
    public static InferCfgResult AutoregressiveInferCfg(VargptForConditionalGeneration model, KVCache cache, Tensor contextHidden,
        ImageOptions options, long seed, Action<ImageProgress>? progress = null, Tap? tap = null, CancellationToken cancellationToken = default)
    {
        options.ValidateSampling();
        var cfgM = model.Config;
        var inf = model.VargptGen;
        var schedule = ScheduleFor(model, options);
        bool useCfg = options.Cfg != 1;
        int bs = useCfg ? 2 : 1;
        var device = model.Device;
        var dtype = model.DType;
        CheckContextLength(model, (int)contextHidden.shape[0], options.Cfg);
        var clock = Stopwatch.StartNew();

        using var ng = no_grad();
        using var outer = NewDisposeScope();
        using var gen = new Generator((ulong)seed, device);

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
            Tensor h;                                                                  // [bs, n, H]
            if (useCfg)
            {
                tap?.Invoke($"lm_in_uncond.s{si}", stage.narrow(0, 1, 1));
                h = model.model.ForwardCfgPair(stage, cache);
                tap?.Invoke($"lm_out_cond.s{si}", h.narrow(0, 0, 1));
                tap?.Invoke($"lm_out_uncond.s{si}", h.narrow(0, 1, 1));
            }
            else
            {
                h = model.model.forward(xc, null, null, cache);
                tap?.Invoke($"lm_out_cond.s{si}", h);
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
            if (progress is not null)
            {
                var preview = new ScalePreview(model.VaeLocal, summed, dtype);
                try { progress(new ImageProgress(0, 1, si, scales.Count, sc, clock.Elapsed) { Preview = preview }); }
                finally { preview.Live = false; }
            }
        }

        var summedOut = summed!.squeeze(2); // [1, d, h, w]
        tap?.Invoke("summed_codes", summedOut);
        var decoded = model.VaeLocal.Decode(summedOut.to(dtype)).to(ScalarType.Float32);
        tap?.Invoke("decoded", decoded);
        var rgb = ImageOutput.ToUInt8Rgb(decoded)[0];
        var result = new InferCfgResult(rgb.MoveToOuterDisposeScope(), decoded.MoveToOuterDisposeScope(), summedOut.MoveToOuterDisposeScope(),
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

    /// <summary>The scale schedule for the options in the model's table: nearest template of the aspect ratio, pn from the options or the checkpoint, t = 1.</summary>
    public static ScaleSchedule ScheduleFor(VargptForConditionalGeneration model, ImageOptions options) =>
        model.Config.Schedules.Get(ScaleSchedules.NearestTemplate(options.AspectRatio), options.Pn ?? model.Config.Pn);

    /// <summary>
    /// With CFG the unconditional branch reads cfg_uncond[:Lc]: the context before &lt;|image_gen_start|&gt; cannot have
    /// more rows than the checkpoint's text_maxlen (the official code fails with an index error there). The one check
    /// of that limit: the image loop runs it, and callers run it early to fail before generating text.
    /// </summary>
    /// <param name="generatedText">tokens of the context that the model generated (named in the message)</param>
    /// <param name="fix">how to shorten the context (default: shorten the prompt)</param>
    public static void CheckContextLength(VargptForConditionalGeneration model, int contextTokens, double cfg, int generatedText = 0, string? fix = null)
    {
        int max = model.VargptGen.Config.TextMaxLen;
        if (cfg == 1 || contextTokens <= max) return;
        var why = generatedText > 0 ? $" ({generatedText} of them generated text)" : "";
        throw new VargptInputException(
            $"the context before <|image_gen_start|> has {contextTokens} tokens{why} but this checkpoint's unconditional CFG branch supports at most {max} " +
            $"(rows of vargpt_gen.cfg_uncond = text_maxlen; the official code fails here). {fix ?? "Shorten the prompt."} Cfg 1 (no guidance) has no such limit.");
    }
}
