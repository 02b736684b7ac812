using System.Diagnostics;
using VarGpt.Inference;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Torch;

namespace VarGpt.Benchmarks;

/// <summary>Settings of <see cref="VargptImagesBenchmark.Run"/>.</summary>
public sealed record GenerationBenchOptions
{
    /// <summary>Timed images (each a full GenerateImage call: prompt prefill, image loop, VAE decode).</summary>
    public int Images { get; init; } = 1;
    /// <summary>Untimed images first (allocator and kernel warm-up).</summary>
    public int Warmup { get; init; }
    public string Prompt { get; init; } = "Please design a drawing of a butterfly on a flower.";
    /// <summary>Sampling settings; the image start is forced (random weights never emit it) and the seed fixed.</summary>
    public ImageOptions Image { get; init; } = new() { ForceImageStart = true, Seed = 0 };
}

/// <summary>
/// Time per image and per scale of <see cref="VargptModel.GenerateImage"/>, peak RSS, and the time as a multiple of the
/// matmul FLOP bound: 2 × active parameters per image token × image tokens × branches (2 with CFG) ÷ measured matmul
/// FLOP/s. Active parameters = LLM decoder layers + final norm (no embedding, no lm_head: image tokens use neither),
/// both projectors, the Infinity decoder; attention score FLOPs, the prompt prefill and the VAE decode are not counted,
/// so the multiple is an upper bound on how far the run is from the machine's matmul speed.
/// </summary>
public static class VargptImagesBenchmark
{
    public static BenchRecord Run(VargptModel images, GenerationBenchOptions options, TextWriter? log = null)
    {
        var model = images.Module;
        var schedule = options.Image.Validate(images.Config);
        int branches = options.Image.Cfg == 1 ? 1 : 2;
        long llm = model.model.named_parameters().Where(p => !p.name.StartsWith("embed_tokens.", StringComparison.Ordinal)).Sum(p => p.parameter.numel());
        long proj = model.ImageGenProjector.parameters().Sum(p => p.numel()) + model.ImageGenProjectorOut.parameters().Sum(p => p.numel());
        long inf = model.VargptGen.parameters().Sum(p => p.numel());
        long active = llm + proj + inf;
        long tokens = schedule.SequenceLength;
        double flop = 2.0 * active * tokens * branches;

        // the bounds first, on quiet cores (recorded after the timings, with the run's other figures)
        var bounds = MachineBenchmarks.MeasureBounds(images.Config, model.DType, model.Device, log: log);
        double flops = bounds.Gemm[model.DType];

        for (int i = 0; i < options.Warmup; i++)
        {
            log?.WriteLine($"warm-up image {i + 1}/{options.Warmup}...");
            images.GenerateImage(options.Prompt, options.Image);
        }
        var totals = new List<double>();
        var perScale = new double[schedule.Scales.Count];
        var loops = new List<double>();
        ImageResult? last = null;
        using (var mem = MemoryPhase.Start())
        {
            var proc = System.Diagnostics.Process.GetCurrentProcess();
            var (user0, sys0) = (proc.UserProcessorTime, proc.PrivilegedProcessorTime);
            for (int i = 0; i < options.Images; i++)
            {
                double prev = 0;
                var sw = Stopwatch.StartNew();
                last = images.GenerateImage(options.Prompt, options.Image, p =>
                {
                    double t = p.Elapsed.TotalSeconds;
                    perScale[p.ScaleIndex] += t - prev;
                    prev = t;
                    log?.WriteLine($"  image {i + 1}/{options.Images} scale {p.ScaleIndex + 1}/{p.Scales} ({p.Scale.H}x{p.Scale.W}) {t:F1} s");
                });
                totals.Add(sw.Elapsed.TotalSeconds);
                loops.Add(prev);
            }
            mem.Stop();
            proc.Refresh();
            double userPerImage = (proc.UserProcessorTime - user0).TotalSeconds / options.Images;
            double sysPerImage = (proc.PrivilegedProcessorTime - sys0).TotalSeconds / options.Images;
            var r = new BenchRecord("generate")
                .Set("dtype", model.DType.ToString()).Set("device", model.Device.type.ToString().ToLowerInvariant())
                .Set("threads", get_num_threads()).Set("pn", schedule.Pn).Set("pixels", $"{schedule.Pixels.W}x{schedule.Pixels.H}")
                .Set("scales", schedule.Scales.Count).Set("image_tokens", tokens).Set("cfg", options.Image.Cfg)
                .Set("images", options.Images).Set("warmup", options.Warmup).Set("prompt_tokens", last!.PromptTokens)
                .Set("active_parameters", active);
            double perImage = totals.Average();
            double bound = flop / flops;
            r.Add("seconds_per_image", perImage, "s", "GenerateImage wall time: prompt prefill + image loop + VAE decode");
            // CPU time moves far less than wall time when other processes share the cores; kernel time is mostly
            // page faults on fresh memory (MallocTuning)
            r.Add("cpu_seconds_per_image", userPerImage + sysPerImage, "s", "process CPU time (all threads, user + kernel) per image");
            r.Add("kernel_seconds_per_image", sysPerImage, "s", "of which in the kernel (page faults on fresh memory, ...)");
            r.Add("image_loop", loops.Average(), "s", "all scales (LLM + Infinity + sampling), without prefill and VAE decode");
            r.Add("prefill_and_decode", perImage - loops.Average(), "s", "prompt prefill + VAE decode + uint8 conversion");
            for (int s = 0; s < perScale.Length; s++)
                r.Add($"scale_{s}_{schedule.Scales[s].H}x{schedule.Scales[s].W}", perScale[s] / options.Images, "s");
            r.Add("peak_rss", mem.PeakBytes, "bytes", mem.PeakIsPhaseOnly ? "during the timed images" : "process peak (VmHWM reset unavailable)");
            r.Metrics.AddRange(bounds.Metrics);
            r.Add("flop_per_image", flop / 1e12, "TFLOP", $"2 x {active:N0} active params x {tokens} tokens x {branches} branches");
            r.Add("flop_bound", bound, "s", $"flop_per_image / gemm_{TorchRuntime.DTypeName(model.DType)}");
            r.Add("multiple_of_flop_bound", perImage / bound, "x", "seconds_per_image / flop_bound");
            return r;
        }
    }
}
