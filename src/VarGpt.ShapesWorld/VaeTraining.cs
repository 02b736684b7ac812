using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.ShapesWorld;

/// <summary>Settings of the ShapesWorld BSQ-VAE run (defaults: the recipe's; docs/shapesworld.md).</summary>
public sealed record VaeTrainingOptions
{
    /// <summary>
    /// Steps of the recipe. The 64² VAE is sample-limited: its gate figure rose 14 → 21 → 31 → 35% at 300/600/900/1200
    /// steps of 8, to 59.5% at 1800 and 77% at 2400, and one cosine run of 3600 steps reached 91% (bf16). With
    /// jitter-free renders and a quarter of the objects redrawn as small stars, 4800 steps reached 100% of the gate's
    /// 200 held-out scenes (bf16 and fp32) in 4,326 CPU-seconds on one thread (docs/shapesworld-notes.md, "Issue 16").
    /// </summary>
    public const int RecipeSteps = 4800;

    public required string OutputDir { get; init; }
    public int Seed { get; init; }
    public int Steps { get; init; } = RecipeSteps;
    /// <summary>Images per full-size step. 8 at 64²: per rendered image, batch 8 lowers the loss faster than 16
    /// (measured: 0.36 after 1,000 renders vs 1,600; docs/shapesworld-notes.md).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>The first CropFraction of the steps train on random 16-aligned CropSize² crops of the renders (a conv
    /// VAE is translation-equivariant, so crops teach the same local coding at a quarter of the cost per crop); the rest
    /// on whole images with the real scale schedule. 0 disables cropping.</summary>
    public double CropFraction { get; init; } = 0.85;
    public int CropSize { get; init; } = 64;
    public int CropBatchSize { get; init; } = 8;
    /// <summary>1e-3: at 3e-3 the hues collapse (red/yellow → orange, purple → blue: 121 colour errors in 200 scenes at
    /// 250 steps of 16 at 64², 9 at 1e-3; docs/shapesworld-notes.md).</summary>
    public double LearningRate { get; init; } = 1e-3;
    public double MaxGradNorm { get; init; } = 2.0;
    public double WarmupRatio { get; init; } = 0.05;
    public LrScheduler LrScheduler { get; init; } = LrScheduler.Cosine;
    /// <summary>Reconstruction terms on the decoder output (official recon_loss_type 'l1'; the L2 term lifts PSNR, the
    /// edge term — L1 between finite differences, a cheap perceptual proxy — keeps the small shapes' corners sharp).</summary>
    public double L1Weight { get; init; } = 1.0;
    public double L2Weight { get; init; } = 1.0;
    public double EdgeWeight { get; init; } = 0.5;
    /// <summary>BSQ commitment: mean over scales of ||u − û||² (u = l2-normalised residual, û its ±1/√d corner),
    /// pulling features away from the bit boundaries so bit labels are stable.</summary>
    public double CommitmentWeight { get; init; } = 0.1;
    /// <summary>Keeps the encoder output's per-position norm near NormTarget: weight · mean (‖h‖ − target)². Without it
    /// ‖h‖ drifts large (measured absmax 19), which shrinks the gradient through the l2-normalisation (∝ 1/‖h‖) and makes
    /// every scale's residual ≈ h, so all scales repeat the same signs.</summary>
    public double NormWeight { get; init; } = 0.1;
    public double NormTarget { get; init; } = 2.0;

    /// <summary>Box-centre jitter of the training renders (fraction of the side). 0, as the dataset and the gate render:
    /// jitter-free renders lifted the gate from 38% to 49% at 1,200 steps (the decoder no longer spends samples on
    /// sub-pixel offsets nothing asks for).</summary>
    public float PositionJitter { get; init; } = 0;
    /// <summary>Objects per training render, uniform in [MinObjects, MaxObjects] (the dataset shows 1–2; the VAE sees
    /// denser scenes so that most crops hold an object: with 1–2 small shapes on white, the decoder settles on the white
    /// image first and the pixel losses hardly move it — measured: an all-white reconstruction after 300 steps).</summary>
    public int MinObjects { get; init; } = 2;
    public int MaxObjects { get; init; } = 4;
    /// <summary>Share of training objects redrawn as small stars (same colour and place; never into a held-out triple).
    /// The small star is the shape whose points are 1–2 px features at 64², and the one the round trip misses: 12 of
    /// the 16 failed objects of the 3,600-step VAE (docs/shapesworld-notes.md). 0 keeps the uniform mix.</summary>
    public double SmallStarShare { get; init; } = 0.25;
    /// <summary>Extra weight of foreground pixels (any channel of the render below 250) in the pixel losses. 12 rather than
    /// 4: red, orange and yellow then decode as three hues instead of one orange (measured at 800 steps; docs/shapesworld.md).</summary>
    public double ForegroundWeight { get; init; } = 12;
    /// <summary>Weight of the code probe: a linear read-out of the quantized codes (<see cref="VaeCodeProbe"/>) trained to
    /// name each latent cell's colour and shape (or background). Pixel losses are averages over mostly-white pixels, so
    /// within a short run the codes only learn the largest colour contrasts (warm/cool/grey, measured); the probe's
    /// per-cell cross-entropy reaches the encoder through the straight-through estimator and makes the bits carry
    /// every hue. The probe is training-only: it is not part of the VAE or of the checkpoint. 0 disables it.</summary>
    public double ProbeWeight { get; init; } = 0;
    /// <summary>Wall-clock cap: the run stops after this many minutes (final weights are still written; resume continues).</summary>
    public double? Minutes { get; init; }
    public int LoggingSteps { get; init; } = 10;
    public int SaveSteps { get; init; } = 100;
    /// <summary>Held-out renders for the final evaluation.</summary>
    public int EvalImages { get; init; } = 200;
    public TextWriter? Output { get; init; }
    /// <summary>Stops the run at the next step boundary with a checkpoint saved (Ctrl-C / SIGTERM).</summary>
    public CancellationToken Cancel { get; init; }
}

/// <summary>Held-out quality of a trained VAE (all images go through encode → multi-scale BSQ bits → decode, the path
/// generated images take).</summary>
/// <param name="Psnr">mean PSNR (dB) of the uint8 reconstruction against the render</param>
/// <param name="ScorerAccuracy">fraction of reconstructions the ShapesScorer reads completely right (count, shape, colour, size, position)</param>
/// <param name="BitStability">fraction of bit labels (all scales) unchanged when Gaussian noise σ = NoiseSigma is added to the input</param>
/// <param name="ScorerAccuracyWithFlips">scorer accuracy when a fraction FlipRate of all bits is flipped at random (decoder robustness to generation errors)</param>
/// <param name="ColorsReadRight">colours (of 7) that every one of their round trips in the colour check reads right: one
/// large object of each shape in the centre, so 7 means every colour comes back distinct from the others</param>
/// <param name="Errors">what the scorer read wrong in the failed round trips, most frequent first: "small star: shape read
/// as circle" → count (<see cref="VaeTraining.ErrorKinds"/>); null in evaluations written before it was recorded</param>
public sealed record VaeEvaluation(int Images, double Psnr, double ScorerAccuracy, double BitStability, double NoiseSigma,
    double ScorerAccuracyWithFlips, double FlipRate, double[] BitStabilityPerScale, string DType, int DistinctFinestCodes, int ColorsReadRight,
    IReadOnlyDictionary<string, int>? Errors = null)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Images} held-out renders ({DType}): PSNR {Psnr:F2} dB | scorer {ScorerAccuracy:P1} | colours read right {ColorsReadRight}/{ShapesPalette.Colors.Length} | bits stable under noise σ={NoiseSigma:G3}: {BitStability:P2} (per scale {string.Join(" ", BitStabilityPerScale.Select(x => x.ToString("P1", CultureInfo.InvariantCulture)))}) | scorer with {FlipRate:P0} bits flipped: {ScorerAccuracyWithFlips:P1} | {DistinctFinestCodes} distinct codes at the last scale")
        + (Errors is { Count: > 0 } e ? " | errors: " + string.Join(", ", e.Take(8).Select(kv => $"{kv.Key} ×{kv.Value}")) + (e.Count > 8 ? $", {e.Count - 8} more kinds" : "") : "");
}

/// <param name="Shipped">the evaluation with the weights rounded to bf16 (how the model folder stores them) and float32
/// compute (the default inference dtype): what the VAE gate reads</param>
public sealed record VaeTrainingResult(TrainingResult Training, string WeightsPath, VaeEvaluation Fp32, VaeEvaluation Shipped, double WallSeconds, double CpuSeconds);

/// <summary>
/// Trains the ShapesWorld BSQ-VAE (<see cref="BsqVae"/>: conv encoder/decoder + multi-scale BSQ) from scratch on
/// freshly rendered scenes with the generic <see cref="Trainer{TBatch}"/> (AdamW, warmup + cosine, clipping,
/// resumable checkpoints, progress lines). The released VAE was trained by Infinity with a recipe we do not have
/// (its published args: l1 reconstruction ×4, perceptual/GAN terms, commitment and entropy weights zeroed by
/// lfq_weight 0); for 2-colour-class synthetic images a pixel + edge loss and a commitment term are enough.
/// Output: OUT/vae.safetensors (official names, prefix vae_local., fp32), OUT/vae_eval.json, trainer checkpoints.
/// </summary>
public static class VaeTraining
{
    public const string WeightsFile = "vae.safetensors", EvalFile = "vae_eval.json";

    public static VaeTrainingResult Train(ShapesModelConfig sizes, VaeTrainingOptions o, bool resume = false)
    {
        sizes.Validate();
        var vaeCfg = VaeConfigOf(sizes);
        var schedule = sizes.Scales.Select(s => s with { T = 1 }).ToArray();
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var wall = Stopwatch.StartNew();
        Directory.CreateDirectory(o.OutputDir);
        var log = o.Output ?? TextWriter.Null;

        torch.manual_seed(o.Seed); // the initial weights are a function of the seed
        using var vae = new BsqVae(vaeCfg);
        long nParams = vae.parameters().Sum(p => p.numel());
        log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"BSQ-VAE base_ch {vaeCfg.BaseCh} ch_mult [{string.Join(",", vaeCfg.EncoderChMult)}] res_blocks {vaeCfg.NumResBlocks} codebook_dim {vaeCfg.CodebookDim}: {nParams:N0} parameters; {sizes.ImageSize}² images, scales {string.Join(",", schedule.Select(s => s.H))}; {o.Steps} steps: {ShapesVaeData.CropSteps(o)} × {o.CropBatchSize} crops of {o.CropSize}², then batch {o.BatchSize}; {torch.get_num_threads()} threads"));

        var world = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = o.Seed, ImageSize = sizes.ImageSize, PositionJitter = o.PositionJitter });
        var data = new ShapesVaeData(world, o, sizes.VaePatchSize);
        using var probe = o.ProbeWeight != 0 ? new VaeCodeProbe(vaeCfg.CodebookDim) : null;
        using var trained = probe is null ? null : new VaeWithProbe(vae, probe);
        var objective = new VaeReconstructionObjective(vae, schedule, o, probe);
        var options = new TrainerOptions
        {
            OutputDir = o.OutputDir, LearningRate = o.LearningRate, LrSchedulerType = o.LrScheduler, WarmupRatio = o.WarmupRatio,
            MaxSteps = o.Steps, NumTrainEpochs = 1, MaxGradNorm = o.MaxGradNorm, AdamBeta1 = 0.9, AdamBeta2 = 0.95, WeightDecay = 0,
            LoggingSteps = o.LoggingSteps, SaveSteps = o.SaveSteps, SaveTotalLimit = 2, Seed = o.Seed, Output = o.Output,
            ExportWeights = () => Prefixed(vae),
        };
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(o.Cancel);
        if (o.Minutes is { } m) cts.CancelAfter(TimeSpan.FromMinutes(m));
        TrainingResult result;
        using (var trainer = new Trainer<Tensor>(trained is null ? vae : trained, objective, data, options))
            result = trainer.Train(resume ? "latest" : null, cts.Token);
        vae.eval();

        var weights = Path.Combine(o.OutputDir, WeightsFile);
        var meta = new Dictionary<string, string> { ["vae_config"] = vaeCfg.ToJson().ToJsonString(), ["steps"] = result.GlobalStep.ToString(CultureInfo.InvariantCulture) };
        SafeTensorsWriter.Save(weights, Prefixed(vae), meta);

        var evalWorld = new ShapesWorldGenerator(new ShapesWorldOptions { Seed = o.Seed, ImageSize = sizes.ImageSize });
        var fp32 = Evaluate(vae, schedule, evalWorld, o.EvalImages, o.Seed, label: "float32 weights");
        log.WriteLine("eval " + fp32);
        VaeEvaluation shipped;
        using (var rounded = new BsqVae(vaeCfg))
        {
            var source = vae.state_dict();
            using (no_grad())
                foreach (var (name, t) in rounded.state_dict())
                    if (t.is_floating_point()) t.copy_(source[name].to(ScalarType.BFloat16).to(ScalarType.Float32));
            rounded.eval();
            shipped = Evaluate(rounded, schedule, evalWorld, o.EvalImages, o.Seed, label: "bf16-rounded weights, float32 compute");
        }
        log.WriteLine("eval " + shipped);
        double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        var res = new VaeTrainingResult(result, weights, fp32, shipped, wall.Elapsed.TotalSeconds, cpu);
        AtomicFile.WriteAllText(Path.Combine(o.OutputDir, EvalFile), JsonSerializer.Serialize(new
        {
            steps = result.GlobalStep, completed = result.Completed, wall_seconds = res.WallSeconds, cpu_seconds = cpu,
            threads = torch.get_num_threads(), parameters = nParams, vae_config = JsonNode.Parse(vaeCfg.ToJson().ToJsonString()),
            final_loss = result.Steps.Count > 0 ? result.Steps[^1].Loss : double.NaN, fp32, shipped,
        }, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"VAE done in {res.WallSeconds:F0} s wall, {cpu:F0} s CPU; weights {weights}"));
        return res;
    }

    /// <summary>The "shipped" evaluation (bf16-rounded weights, float32 compute) from DIR/vae_eval.json.</summary>
    public static VaeEvaluation ReadEvaluation(string dir)
    {
        var path = Path.Combine(dir, EvalFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} not found: the VAE stage writes it at its end (delete {dir}.done to redo the stage)", path);
        var node = JsonNode.Parse(File.ReadAllText(path))?["shipped"]
            ?? throw new InvalidDataException($"{path}: no 'shipped' evaluation (written by an older recipe; delete {dir}.done to redo the VAE stage)");
        return node.Deserialize<VaeEvaluation>(new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower })
            ?? throw new InvalidDataException($"{path}: empty 'shipped' evaluation");
    }

    public static VaeConfig VaeConfigOf(ShapesModelConfig s) => new()
    {
        BaseCh = s.VaeBaseCh, CodebookDim = s.CodebookDim, EncoderChMult = s.VaeChMult, DecoderChMult = s.VaeChMult,
        NumResBlocks = s.VaeNumResBlocks, PatchSize = s.VaePatchSize,
    };

    /// <summary>The VAE's state dict under the official top-level prefix (vae_local.*).</summary>
    public static IEnumerable<KeyValuePair<string, Tensor>> Prefixed(BsqVae vae) =>
        vae.state_dict().Select(kv => new KeyValuePair<string, Tensor>(ModelComponents.Vae.Prefix + kv.Key, kv.Value));

    /// <summary>
    /// The training-side multi-scale BSQ (official MultiScaleBSQ.forward in train mode, new_quant, no projections):
    /// per scale, area-resize the residual, l2-normalise and binarise with the straight-through estimator
    /// (BSQ.forward: u + (û − u).detach()), trilinear back to the full size, residual −= quantized.detach()
    /// (remove_residual_detach False) and sum. Gradients reach the encoder through every scale's normalisation.
    /// Returns the summed codes [B,d,h,w] (with grad) and the commitment term mean_s ||u_s − û_s||² (per element).
    /// </summary>
    public static (Tensor Z, Tensor Commitment) QuantizeForTraining(BSQ lfq, Tensor h, IReadOnlyList<Scale> schedule)
    {
        using var scope = NewDisposeScope();
        var residual = h.to(ScalarType.Float32).unsqueeze(2); // [B,d,1,H,W]
        var full = new Scale(1, (int)residual.shape[3], (int)residual.shape[4]);
        Tensor? sum = null, commit = null;
        foreach (var s in schedule)
        {
            var r = s == full ? residual : MultiScaleResidual.Resize(residual, s, MultiScaleResidual.Down);
            var (quantized, _) = lfq.forward(r);
            // commitment (BSQ paper / LFQ): ||u − sign(u)/√d||², u = the normalised input; the code side is detached.
            var u = nn.functional.normalize(r, p: 2, dim: 1, eps: 1e-12);
            var c = (u - quantized.detach()).pow(2).mean();
            commit = commit is null ? c : commit + c;
            if (s != full) quantized = MultiScaleResidual.Resize(quantized, full, MultiScaleResidual.Up);
            residual = residual - quantized.detach();
            sum = sum is null ? quantized : sum + quantized;
        }
        return (sum!.squeeze(2).MoveToOuterDisposeScope(), (commit! / schedule.Count).MoveToOuterDisposeScope());
    }

    /// <summary>Rendered scenes as a [B,3,H,W] float32 batch in [-1,1] (pixel/127.5 − 1, the official normalisation);
    /// with <paramref name="channels"/> 5, channels 3–4 are the code probe's cell labels, kept as integers.</summary>
    public static Tensor ToPixels(IReadOnlyList<byte[]> rgb, int side, int channels = 3)
    {
        var buf = new byte[rgb.Count * side * side * channels];
        for (int i = 0; i < rgb.Count; i++) rgb[i].CopyTo(buf, i * side * side * channels);
        using var u8 = tensor(buf, [rgb.Count, side, side, channels], ScalarType.Byte);
        using var f = u8.permute(0, 3, 1, 2).to(ScalarType.Float32);
        if (channels == 3) return f.div(127.5).sub_(1);
        return cat([f.narrow(1, 0, 3).div(127.5).sub_(1), f.narrow(1, 3, channels - 3)], 1);
    }

    /// <summary>
    /// Held-out evaluation: Eval-split scenes of <paramref name="world"/> (jitter-free renders as in the dataset) through
    /// encode → multi-scale BSQ → bits → decode (BsqVae.DecodeFromBits, the generation path).
    /// </summary>
    public static VaeEvaluation Evaluate(BsqVae vae, IReadOnlyList<Scale> schedule, ShapesWorldGenerator world, int count, int seed,
        double noiseSigma = 0.02, double flipRate = 0.02, int batch = 16, string? label = null)
    {
        using var noGrad = no_grad();
        int side = world.Options.ImageSize;
        // held-out scenes: those of the Eval split's descriptions, each showing a shape×colour×position the VAE never saw
        var scenes = world.Samples(ShapesSplit.Eval, count, ShapesTaskKind.Description).Select(s => s.Images[0]).ToList();
        var gen = new Generator((ulong)seed + 17);
        double psnrSum = 0; int correct = 0, correctFlip = 0;
        var stableBits = new double[schedule.Count]; var totalBits = new double[schedule.Count];
        var codes = new HashSet<long>(); // code usage at the last scale: a collapsed encoder uses a handful
        var errors = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int start = 0; start < count; start += batch)
        {
            using var scope = NewDisposeScope();
            var part = scenes.Skip(start).Take(batch).ToList();
            var rgb = part.Select(s => ShapesRenderer.RenderRgb(s, side)).ToList();
            var x = ToPixels(rgb, side);
            var (_, q) = vae.EncodeMultiScale(x, schedule);
            var (_, img) = vae.DecodeFromBits(q.Bits, schedule);
            var u8 = ImageOutput.ToUInt8Rgb(img).cpu().contiguous();
            var flipped = q.Bits.Select(b => b.logical_xor(rand(b.shape, generator: gen).lt(flipRate)).to(ScalarType.Int64)).ToList();
            var (_, imgF) = vae.DecodeFromBits(flipped, schedule);
            var u8F = ImageOutput.ToUInt8Rgb(imgF).cpu().contiguous();
            var noisy = (x + randn(x.shape, generator: gen) * noiseSigma);
            var (_, qn) = vae.EncodeMultiScale(noisy, schedule);
            using (var last = q.Bits[^1].reshape(-1, q.Bits[^1].shape[^1]).to(ScalarType.Int64))
            using (var weights = pow(tensor(2L), arange(last.shape[1] - 1, -1, -1, ScalarType.Int64)))
            using (var packed = (last * weights).sum(1))
                foreach (var c in packed.data<long>()) codes.Add(c);
            for (int k = 0; k < schedule.Count; k++)
            {
                stableBits[k] += q.Bits[k].eq(qn.Bits[k]).sum().item<long>();
                totalBits[k] += q.Bits[k].numel();
            }
            for (int i = 0; i < part.Count; i++)
            {
                var rec = u8[i].data<byte>().ToArray();
                double mse = 0;
                for (int j = 0; j < rec.Length; j++) { double d = rec[j] - rgb[i][j]; mse += d * d; }
                mse /= rec.Length;
                psnrSum += mse == 0 ? 100 : 10 * Math.Log10(255.0 * 255.0 / mse);
                var spec = part[i].ToSpec();
                var score = ShapesScorer.Score(spec, rec, side, side);
                if (score.Correct) correct++;
                else foreach (var kind in ErrorKinds(score)) errors[kind] = errors.GetValueOrDefault(kind) + 1;
                if (ShapesScorer.Score(spec, u8F[i].data<byte>().ToArray(), side, side).Correct) correctFlip++;
            }
        }
        var perScale = stableBits.Zip(totalBits, (a, b) => a / b).ToArray();
        return new VaeEvaluation(count, psnrSum / count, (double)correct / count, stableBits.Sum() / totalBits.Sum(), noiseSigma,
            (double)correctFlip / count, flipRate, perScale, label ?? vae.DType.ToString(), codes.Count, ColorsReadRight(vae, schedule, side),
            errors.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToDictionary(kv => kv.Key, kv => kv.Value));
    }

    /// <summary>The attributes a failed round trip got wrong, one entry per wrong attribute of each requested object
    /// ("small star: shape read as circle", "large red square: not found") and "object count 2 read as 3".</summary>
    public static IEnumerable<string> ErrorKinds(SceneScore score)
    {
        if (!score.Count) yield return $"object count {score.Requested.Objects.Count} read as {score.Analysis.Objects.Count}";
        foreach (var o in score.Objects.Where(o => !o.Correct))
        {
            var r = o.Requested;
            string what = $"{r.Size?.ToString().ToLowerInvariant()} {r.Shape.ToString().ToLowerInvariant()}".Trim();
            if (o.Matched is not { } m) { yield return $"{what}: not found"; continue; }
            if (!o.Shape) yield return $"{what}: shape read as {m.Shape.ToString().ToLowerInvariant()}";
            if (!o.Color) yield return $"{what}: colour read as {m.Color.ToString().ToLowerInvariant()}";
            if (o.Size == false) yield return $"{what}: size read as {m.Size.ToString().ToLowerInvariant()}";
            if (o.Position == false) yield return $"{what}: position read as {m.Position.ToString().ToLowerInvariant()}";
        }
    }

    /// <summary>The colour check: one large object of every shape in the centre, in every colour, through the round trip;
    /// a colour counts when all its objects come back read in that colour (so a VAE that renders two colours alike fails both).</summary>
    public static int ColorsReadRight(BsqVae vae, IReadOnlyList<Scale> schedule, int side)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var scenes = ShapesPalette.Colors.SelectMany(c => ShapesPalette.Shapes.Select(sh =>
            new Scene([new ShapeObject(sh, c, ObjectSize.Large, Position.Center)]))).ToList();
        var rgb = scenes.Select(sc => ShapesRenderer.RenderRgb(sc, side)).ToList();
        var (_, q) = vae.EncodeMultiScale(ToPixels(rgb, side), schedule);
        var (_, img) = vae.DecodeFromBits(q.Bits, schedule);
        var u8 = ImageOutput.ToUInt8Rgb(img).cpu().contiguous();
        var right = new HashSet<ShapeColor>(ShapesPalette.Colors);
        for (int i = 0; i < scenes.Count; i++)
        {
            var a = ShapesScorer.Analyze(u8[i].data<byte>().ToArray(), side, side);
            var o = scenes[i].Objects[0];
            if (a.Objects.Count != 1 || a.Objects[0].Color != o.Color) right.Remove(o.Color);
        }
        return right.Count;
    }
}

/// <summary>Random ShapesWorld scenes rendered on the fly: batch (epoch, index) depends only on the seed, so a resumed
/// run sees the same images. One "epoch" is the whole run. The first <see cref="CropSteps"/> batches are random crops
/// (aligned to the VAE patch so latent cells keep their pixel grid), the rest whole renders.</summary>
public sealed class ShapesVaeData(ShapesWorldGenerator world, VaeTrainingOptions o, int patch) : ITrainingData<Tensor>
{
    public int BatchesPerEpoch => o.Steps;

    public static int CropSteps(VaeTrainingOptions o) => o.CropSize > 0 ? (int)Math.Round(o.Steps * Math.Clamp(o.CropFraction, 0, 1)) : 0;

    public Tensor GetBatch(int epoch, int index)
    {
        var rng = new ShapesRng(ShapesRng.Mix(ShapesRng.Mix((ulong)o.Seed ^ 0x564145UL) ^ ShapesRng.Mix((ulong)epoch + 1) * 31 ^ (ulong)index));
        int side = world.Options.ImageSize;
        bool crop = index < CropSteps(o) && o.CropSize < side;
        int n = crop ? o.CropBatchSize : o.BatchSize;
        var scenes = DrawScenes(rng, n);
        var rgb = scenes.Select(s => ShapesRenderer.RenderRgb(s, side)).ToList();
        bool labelled = o.ProbeWeight != 0;
        if (labelled) rgb = rgb.Select((img, i) => WithCellLabels(img, scenes[i], side, patch)).ToList();
        int ch = labelled ? 5 : 3;
        if (!crop) return VaeTraining.ToPixels(rgb, side, ch);
        int c = o.CropSize, positions = (side - c) / patch + 1;
        var crops = rgb.Select(img =>
        {
            int x0 = rng.Next(positions) * patch, y0 = rng.Next(positions) * patch;
            var dst = new byte[c * c * ch];
            for (int y = 0; y < c; y++) Array.Copy(img, ((y0 + y) * side + x0) * ch, dst, y * c * ch, c * ch);
            return dst;
        }).ToList();
        return VaeTraining.ToPixels(crops, c, ch);
    }

    /// <summary>The <paramref name="n"/> scenes of one batch, drawn from <paramref name="rng"/>.</summary>
    public List<Scene> DrawScenes(ShapesRng rng, int n)
    {
        var scenes = Enumerable.Range(0, n).Select(_ => world.RandomTrainingScene(rng, o.MinObjects + rng.Next(o.MaxObjects - o.MinObjects + 1))).ToList();
        return o.SmallStarShare > 0 ? scenes.Select(s => new Scene(s.Objects.Select(ob => SmallStar(ob, rng)).ToList())).ToList() : scenes;
    }

    /// <summary>With probability SmallStarShare the object as a small star (a smaller box at the same centre cannot
    /// touch a neighbour), unless that is a held-out triple.</summary>
    ShapeObject SmallStar(ShapeObject ob, ShapesRng rng)
    {
        if (rng.NextDouble() >= o.SmallStarShare) return ob;
        var star = ob with { Shape = Shape.Star, Size = ObjectSize.Small };
        return world.IsHeldOut(star) ? ob : star;
    }

    /// <summary>The render with two extra byte channels per pixel: the colour and shape labels of the pixel's latent
    /// cell (<see cref="ShapesRenderer.CellLabels"/>), for the code probe.</summary>
    static byte[] WithCellLabels(byte[] rgb, Scene scene, int side, int patch)
    {
        int g = side / patch;
        var label = ShapesRenderer.CellLabels(scene, side, g);
        var dst = new byte[side * side * 5];
        for (int y = 0; y < side; y++)
            for (int x = 0; x < side; x++)
            {
                int i = y * side + x;
                dst[5 * i] = rgb[3 * i]; dst[5 * i + 1] = rgb[3 * i + 1]; dst[5 * i + 2] = rgb[3 * i + 2];
                var l = label[y / patch * g + x / patch];
                dst[5 * i + 3] = l.Color; dst[5 * i + 4] = l.Shape;
            }
        return dst;
    }
}

/// <summary>Reconstruction objective of the VAE run: encoder → training-side multi-scale BSQ → decoder, loss =
/// w1·L1 + w2·L2 + we·edge-L1 + wc·commitment. Tokens = images (the progress line's "tok/s" is images/s).
/// A crop with a smaller latent uses the schedule's scales that fit it, ending at its own latent size.</summary>
public sealed class VaeReconstructionObjective(BsqVae vae, IReadOnlyList<Scale> schedule, VaeTrainingOptions o, VaeCodeProbe? probe = null) : ITrainingObjective<Tensor>
{
    public ObjectiveOutput Compute(Tensor batch)
    {
        var x = batch.shape[1] == 3 ? batch : batch.narrow(1, 0, 3);
        var h = vae.encoder.forward(x.to(vae.DType));
        var (z, commit) = VaeTraining.QuantizeForTraining(vae.quantizer.lfq, h, ScalesFor((int)h.shape[2], (int)h.shape[3]));
        var rec = vae.decoder.forward(z.to(vae.DType)).to(ScalarType.Float32); // official training: no clamp
        var loss = commit * o.CommitmentWeight;
        if (o.NormWeight != 0) loss = loss + (h.to(ScalarType.Float32).norm(1) - o.NormTarget).pow(2).mean() * o.NormWeight;
        // per-pixel weight 1 + fg·[pixel is not background white] (x in [-1,1]; 250/255 → 0.96)
        var w = x.amin([1], keepdim: true).lt(0.96).to(ScalarType.Float32).mul(o.ForegroundWeight).add(1);
        var wsum = w.sum() * x.shape[1];
        if (o.L1Weight != 0) loss = loss + ((rec - x).abs() * w).sum() / wsum * o.L1Weight;
        if (o.L2Weight != 0) loss = loss + ((rec - x).pow(2) * w).sum() / wsum * o.L2Weight;
        if (o.EdgeWeight != 0) loss = loss + EdgeLoss(rec, x) * o.EdgeWeight;
        if (probe is not null) // then the data carries the labels (ShapesVaeData with ProbeWeight ≠ 0)
        {
            int p = vae.Config.PatchSize;
            // one label per latent cell (constant inside the cell): [B,2,h,w] → colour, shape
            var labels = batch.narrow(1, 3, 2).slice(2, 0, batch.shape[2], p).slice(3, 0, batch.shape[3], p).to(ScalarType.Int64);
            loss = loss + probe.Loss(z.to(ScalarType.Float32), labels) * o.ProbeWeight;
        }
        return new ObjectiveOutput(loss, x.shape[0]);
    }

    IReadOnlyList<Scale> ScalesFor(int lh, int lw)
    {
        if (lh == schedule[^1].H && lw == schedule[^1].W) return schedule;
        var fit = schedule.Where(s => s.H < lh && s.W < lw).ToList();
        fit.Add(new Scale(1, lh, lw));
        return fit;
    }

    /// <summary>L1 between horizontal and vertical finite differences of the two images.</summary>
    public static Tensor EdgeLoss(Tensor a, Tensor b)
    {
        long h = a.shape[2], w = a.shape[3];
        var dxa = a.narrow(3, 1, w - 1) - a.narrow(3, 0, w - 1);
        var dxb = b.narrow(3, 1, w - 1) - b.narrow(3, 0, w - 1);
        var dya = a.narrow(2, 1, h - 1) - a.narrow(2, 0, h - 1);
        var dyb = b.narrow(2, 1, h - 1) - b.narrow(2, 0, h - 1);
        return nn.functional.l1_loss(dxa, dxb) + nn.functional.l1_loss(dya, dyb);
    }
}

/// <summary>Training-only linear read-out of the quantized VAE codes per latent cell: colour (8 classes: background +
/// 7) and shape (6). See <see cref="VaeTrainingOptions.ProbeWeight"/>.</summary>
public sealed class VaeCodeProbe : nn.Module
{
    public readonly TorchSharp.Modules.Linear color, shape;

    public VaeCodeProbe(int codebookDim) : base(nameof(VaeCodeProbe))
    {
        color = nn.Linear(codebookDim, CellLabel.ColorClasses);
        shape = nn.Linear(codebookDim, CellLabel.ShapeClasses);
        RegisterComponents();
    }

    /// <summary>Mean cross-entropy of both read-outs; z [B,d,h,w], labels [B,2,h,w] int64.</summary>
    public Tensor Loss(Tensor z, Tensor labels)
    {
        var cells = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]);
        return nn.functional.cross_entropy(color.forward(cells), labels.select(1, 0).reshape(-1))
            + nn.functional.cross_entropy(shape.forward(cells), labels.select(1, 1).reshape(-1));
    }
}

/// <summary>The VAE and its training-only probe as one module, so the trainer optimises and checkpoints both.</summary>
public sealed class VaeWithProbe : nn.Module
{
    public readonly BsqVae vae;
    public readonly VaeCodeProbe probe;

    public VaeWithProbe(BsqVae vae, VaeCodeProbe probe) : base(nameof(VaeWithProbe))
    {
        this.vae = vae; this.probe = probe;
        RegisterComponents();
    }
}
