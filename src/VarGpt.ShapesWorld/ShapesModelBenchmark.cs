using System.Diagnostics;
using TorchSharp;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.ShapesWorld;

/// <summary>One measured workload: median wall and CPU milliseconds of a forward pass and of forward+backward.</summary>
public sealed record ComponentTiming(string Name, string Workload, int Samples, double ForwardMs, double TrainStepMs, double TrainStepCpuMs)
{
    public double TrainMsPerSample => TrainStepMs / Samples;
}

/// <summary>
/// Step times of every part of a ShapesWorld VARGPT built from <see cref="ShapesModelConfig"/> with random weights
/// (float32 on CPU, the training dtype): the VAE training step, the vision tower, the LM on understanding and
/// text-to-image sequences, Infinity alone, a whole text-to-image SFT step (projectors + LM + Infinity) and one
/// generated image (CFG 3, KV caches). Backward = sum of outputs / CE loss .backward(); no optimizer step.
/// </summary>
public static class ShapesModelBenchmark
{
    public static IReadOnlyList<ComponentTiming> Run(VargptForConditionalGeneration model, ShapesModelConfig sizes, int repeats = 3, TextWriter? log = null)
    {
        var cfg = model.Config;
        var results = new List<ComponentTiming>();
        void Add(ComponentTiming t)
        {
            results.Add(t);
            log?.WriteLine(FormattableString.Invariant($"{t.Name,-22} {t.Workload,-58} fwd {t.ForwardMs,8:F1} ms | fwd+bwd {t.TrainStepMs,8:F1} ms (CPU {t.TrainStepCpuMs,8:F1} ms) | {t.TrainMsPerSample,7:F1} ms/sample"));
        }
        var schedule = cfg.Schedules.Get(ShapesModelConfig.Template, sizes.Pn);
        int L = schedule.SequenceLength, lp = model.VargptGen.PaddedLength(L), d = cfg.Infinity.CodebookDim;
        int side = sizes.UnderstandingSide / 14, visTokens = side * side / 4;
        const int promptT2I = 40, promptUnd = 40, ctxEdit = 60;

        // VAE training step (batch 8, 128²): encoder → training-side BSQ ladder → decoder → reconstruction loss.
        {
            var opts = new VaeTrainingOptions { OutputDir = "" };
            var obj = new VaeReconstructionObjective(model.VaeLocal, sizes.Scales.Select(s => s with { T = 1 }).ToArray(), opts);
            const int B = 8;
            Add(Measure("vae", $"B={B} {sizes.ImageSize}² images, {sizes.Scales.Count} scales", B, repeats,
                () => obj.Compute(rand(B, 3, sizes.ImageSize, sizes.ImageSize) * 2 - 1).Loss));
        }
        // Vision tower: B images of side² patches.
        {
            const int B = 8;
            var rows = 3 * 2 * 14 * 14;
            Add(Measure("vision", $"B={B} images {sizes.UnderstandingSide}² ({side * side} patches → {visTokens} tokens each)", B, repeats, () =>
            {
                var px = randn(B * side * side, rows);
                var grid = tensor(Enumerable.Range(0, B).SelectMany(_ => new long[] { 1, side, side }).ToArray(), [B, 3]);
                return model.Visual.forward(px, grid).pow(2).mean();
            }));
        }
        // LM + lm_head + CE: understanding batch and text-to-image batch (prompt + padded image rows + end tokens).
        foreach (var (name, B, len) in new[] { ("lm understanding", 8, promptUnd + visTokens + 4), ("lm text-to-image", 4, promptT2I + lp + 3) })
            Add(Measure(name, $"B={B} L={len}", B, repeats, () => LmLoss(model, randn(B, len, cfg.HiddenSize) * 0.02, cfg.VocabSize)));
        // Infinity alone: prefix + decoder over the padded sequence with a 60-row context.
        {
            const int B = 4;
            Add(Measure("infinity", $"B={B} {L} tokens (pad {lp}), context {ctxEdit}, depth {cfg.Infinity.Depth}", B, repeats, () =>
            {
                var sos = model.SosEmbedding.weight!.narrow(0, cfg.ImageGen.StartId, 1).expand(B, -1);
                var prefix = model.VargptGen.Prefix(sos, randn(B, L - 1, d).sign() / Math.Sqrt(d), schedule);
                var kv = new CrossAttnKv(randn(B * ctxEdit, cfg.Infinity.EmbedDim), Enumerable.Range(0, B + 1).Select(b => b * ctxEdit).ToArray());
                return model.VargptGen.ForwardDecoder(prefix.XBLC, kv, prefix.Ada, prefix.Cond, schedule, prefix.AttnMask).pow(2).mean();
            }));
        }
        // Whole text-to-image SFT step: Infinity prefix → image_gen_projector → LM over prompt + image rows →
        // image_gen_projector_out → Infinity decoder (context = projected prompt states) → bit CE + text CE.
        {
            const int B = 4;
            int len = promptT2I + lp + 3;
            Add(Measure("sft text-to-image", $"B={B} LM L={len} + Infinity {lp}", B, repeats, () =>
            {
                using var scope = NewDisposeScope();
                var sos = model.SosEmbedding.weight!.narrow(0, cfg.ImageGen.StartId, 1).expand(B, -1);
                var x = randn(B, L - 1, d).sign() / Math.Sqrt(d);
                var prefix = model.VargptGen.Prefix(sos, x, schedule);
                var imageRows = model.ImageGenProjector.forward(prefix.XBLC);
                var text = model.model.embed_tokens.forward(randint(cfg.VocabSize, [B, promptT2I]));
                var tail = model.model.embed_tokens.forward(randint(cfg.VocabSize, [B, 3]));
                var h = model.model.forward(cat([text, imageRows, tail], 1));
                var textLoss = nn.functional.cross_entropy(model.lm_head.forward(h).reshape(-1, cfg.VocabSize), randint(cfg.VocabSize, [B * len]));
                var y = model.ImageGenProjectorOut.forward(h.narrow(1, promptT2I, lp));
                var ctx = model.ImageGenProjectorOut.forward(h.narrow(1, 0, promptT2I - 1)).reshape(-1, cfg.Infinity.EmbedDim);
                var kv = new CrossAttnKv(ctx, Enumerable.Range(0, B + 1).Select(b => b * (promptT2I - 1)).ToArray());
                var logits = model.VargptGen.ForwardDecoder(y, kv, prefix.Ada, prefix.Cond, schedule, prefix.AttnMask);
                var bitLoss = nn.functional.cross_entropy(logits.reshape(-1, 2), randint(2, [B * L * d]));
                return (textLoss + bitLoss * 3).MoveToOuterDisposeScope();
            }));
        }
        // One generated image at inference (CFG 3): prompt prefill + the official scale loop + VAE decode.
        {
            var sw = new List<double>();
            for (int r = 0; r < repeats + 1; r++)
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                var t0 = Stopwatch.GetTimestamp();
                using var cache = new KVCache(cfg.NumHiddenLayers);
                var ids = randint(cfg.VocabSize, [1, promptT2I]);
                var emb = model.EmbedInputs(ids);
                var outp = model.Forward(emb, cache: cache, lastPositionOnly: true);
                using var img = ImageGeneration.AutoregressiveInferCfg(model, cache, outp.LastHiddenState[0].narrow(0, 0, promptT2I - 1),
                    new ImageOptions { Pn = sizes.Pn }, seed: r);
                if (r > 0) sw.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            Add(new ComponentTiming("generate image", $"prompt {promptT2I}, CFG 3, {schedule.Scales.Count} scales, decode", 1, Median(sw), double.NaN, double.NaN));
        }
        return results;
    }

    static Tensor LmLoss(VargptForConditionalGeneration model, Tensor embeds, int vocab)
    {
        var h = model.model.forward(embeds);
        var logits = model.lm_head.forward(h);
        return nn.functional.cross_entropy(logits.reshape(-1, vocab), randint(vocab, [embeds.shape[0] * embeds.shape[1]]));
    }

    /// <summary>Median over <paramref name="repeats"/> runs (after one warm-up) of forward (no_grad) and forward+backward.</summary>
    static ComponentTiming Measure(string name, string workload, int samples, int repeats, Func<Tensor> loss)
    {
        var fwd = new List<double>();
        var step = new List<double>();
        var cpu = new List<double>();
        var proc = Process.GetCurrentProcess();
        for (int r = 0; r < repeats + 1; r++)
        {
            using (var scope = NewDisposeScope())
            using (no_grad())
            {
                var t0 = Stopwatch.GetTimestamp();
                loss();
                if (r > 0) fwd.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            using (var scope = NewDisposeScope())
            {
                proc.Refresh();
                var c0 = proc.TotalProcessorTime;
                var t0 = Stopwatch.GetTimestamp();
                loss().backward();
                if (r > 0)
                {
                    step.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                    proc.Refresh();
                    cpu.Add((proc.TotalProcessorTime - c0).TotalMilliseconds);
                }
            }
        }
        return new ComponentTiming(name, workload, samples, Median(fwd), Median(step), Median(cpu));
    }

    static double Median(List<double> xs)
    {
        var s = xs.Order().ToList();
        return s.Count == 0 ? double.NaN : s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
    }
}
