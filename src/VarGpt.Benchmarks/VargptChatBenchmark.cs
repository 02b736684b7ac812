using System.Diagnostics;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Benchmarks;

/// <summary>Settings of <see cref="VargptChatBenchmark.Run"/>.</summary>
public sealed record ChatBenchOptions
{
    /// <summary>Prompt length in tokens (template included; text only), approximately.</summary>
    public int PromptTokens { get; init; } = 128;
    /// <summary>Generated tokens per run (EOS is ignored so every run decodes this many).</summary>
    public int NewTokens { get; init; } = 64;
    /// <summary>Timed runs after one short warm-up; the median run is reported.</summary>
    public int Repeats { get; init; } = 3;
    /// <summary>Size of the fp32 tensor summed to measure memory read bandwidth.</summary>
    public long BandwidthBytes { get; init; } = 256L << 20;
}

/// <summary>
/// Chat (understanding) speed of a loaded model through the turn loop `vargpt chat` runs: prefill tokens/s,
/// time to first token (tokenize + prefill + first choice), decode tokens/s, and decode time against the memory
/// bandwidth bound: a decode step reads every language-model weight once (decoder layers, final norm, lm_head, one
/// embedding row), so it cannot be faster than weight bytes / measured read bandwidth.
/// </summary>
public static class VargptChatBenchmark
{
    /// <summary>Bytes of weights one decode step reads: all decoder layers, the final norm, lm_head and one embedding row.</summary>
    public static long DecodeWeightBytes(VargptForConditionalGeneration m)
    {
        long Bytes(Tensor t) => t.numel() * t.element_size();
        // buffers too: an Int8Linear keeps its int8 weight and scales as buffers
        long Weights(nn.Module p) => p.parameters().Sum(Bytes) + p.buffers().Sum(Bytes);
        long total = Weights(m.model.layers) + Weights(m.model.norm) + Weights(m.lm_head);
        var emb = m.model.embed_tokens.weight!;
        return total + emb.shape[1] * emb.element_size();
    }

    /// <summary>A plain user prompt of about <paramref name="tokens"/> tokens after the chat template.</summary>
    public static string PromptText(QwenTokenizer tokenizer, int tokens)
    {
        const string sentence = "The quick brown fox jumps over the lazy dog near the river bank, and then it rests in the shade. ";
        int overhead = tokenizer.Encode(ChatTemplate.Render([ChatMessage.User("")], addGenerationPrompt: true)).Count;
        var text = new System.Text.StringBuilder();
        while (tokenizer.Encode(text.ToString()).Count < tokens - overhead) text.Append(sentence);
        // trim word by word to the target
        var s = text.ToString();
        while (s.Length > 0 && tokenizer.Encode(s).Count > Math.Max(1, tokens - overhead))
        {
            int cut = s.TrimEnd().LastIndexOf(' ');
            s = cut <= 0 ? s[..^1] : s[..cut];
        }
        return s.Length == 0 ? "Hello" : s;
    }

    /// <param name="DecodeCpu">process CPU seconds (all threads) during the decode steps: on a shared machine wall time ≫ CPU time means other processes had the cores.</param>
    public sealed record RunTimes(double Prepare, double Prefill, double Decode, int PromptTokens, int DecodeSteps, double DecodeCpu)
    {
        public double TimeToFirstToken => Prepare + Prefill;
    }

    /// <summary>One timed run through the turn loop: tokenize, prefill, <paramref name="newTokens"/> - 1 decode steps (EOS and image starts ignored).</summary>
    public static RunTimes TimeOneRun(VargptModel p, string prompt, int newTokens)
    {
        var generation = p.DefaultTextGeneration(newTokens) with { EosTokenIds = [] };
        var clock = Stopwatch.StartNew();
        using var prepared = p.Prepare([ChatMessage.User(prompt)], []);
        double prepare = clock.Elapsed.TotalSeconds;
        using var turn = p.StartTurn([prepared], new TurnOptions { Generation = generation, ImageStart = ImageStartMode.Ignore });
        double first = 0;
        var cpuFirst = TimeSpan.Zero;
        int steps = 0;
        foreach (var _ in turn.Run())
            if (steps++ == 0) { first = clock.Elapsed.TotalSeconds; cpuFirst = CpuTime(); }
        Sync(p.Module.Device);
        double end = clock.Elapsed.TotalSeconds;
        return new RunTimes(prepare, first - prepare, end - first, prepared.Length, turn.DecodeSteps, (CpuTime() - cpuFirst).TotalSeconds);
    }

    static TimeSpan CpuTime()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>The 1-minute load average (Linux), recorded with the figures: the machine is shared.</summary>
    public static double? LoadAverage() =>
        File.Exists("/proc/loadavg") && double.TryParse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture, out var l) ? l : null;

    static void Sync(Device d)
    {
        if (d.type == TorchSharp.DeviceType.CUDA) cuda.synchronize(d);
    }

    /// <summary>Measures the loaded pipeline; <paramref name="record"/> receives settings and metrics.</summary>
    public static BenchRecord Run(VargptModel p, ChatBenchOptions o, BenchRecord record, TextWriter? log = null)
    {
        if (o.NewTokens < 2) throw new ArgumentOutOfRangeException(nameof(o.NewTokens), o.NewTokens, "need at least 2 new tokens (one prefill, one decode step)");
        if (o.Repeats < 1) throw new ArgumentOutOfRangeException(nameof(o.Repeats), o.Repeats, "need at least 1 repeat");
        var m = p.Module;
        var load = LoadAverage();
        var prompt = PromptText(p.Tokenizer, o.PromptTokens);
        log?.WriteLine("warm-up run");
        TimeOneRun(p, prompt, Math.Min(4, o.NewTokens));
        var runs = new List<RunTimes>();
        for (int i = 0; i < o.Repeats; i++)
        {
            var r = TimeOneRun(p, prompt, o.NewTokens);
            log?.WriteLine($"run {i + 1}/{o.Repeats}: ttft {r.TimeToFirstToken * 1e3:F0} ms, decode {r.DecodeSteps / r.Decode:F2} tok/s");
            runs.Add(r);
        }
        var bounds = MachineBenchmarks.MeasureBounds(p.Config, m.DType, m.Device, o.BandwidthBytes, log);
        var median = runs.OrderBy(r => r.Decode / r.DecodeSteps).ElementAt(runs.Count / 2);
        double perToken = median.Decode / median.DecodeSteps;
        long weightBytes = DecodeWeightBytes(m);
        double boundPerToken = weightBytes / bounds.Bandwidth;
        record.Set("dtype", TorchRuntime.DTypeName(m.DType)).Set("device", m.Device.ToString())
            .Set("prompt_tokens", median.PromptTokens).Set("new_tokens", o.NewTokens).Set("repeats", o.Repeats)
            .Set("omp_wait_policy", Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "unset");
        if (load is double before) record.Set("load_average_1min_before", before);
        if (LoadAverage() is double after) record.Set("load_average_1min_after", after);
        record.Add("prefill", median.PromptTokens / median.Prefill, "tokens/s", $"{median.PromptTokens} prompt tokens in {median.Prefill * 1e3:F0} ms (median run)")
            .Add("time_to_first_token", median.TimeToFirstToken * 1e3, "ms", "tokenize + prefill + first token choice")
            .Add("decode", 1 / perToken, "tokens/s", $"{median.DecodeSteps} steps, {perToken * 1e3:F1} ms/token (median run), greedy, batch 1")
            .Add("decode_cpu_time", median.DecodeCpu / median.DecodeSteps * 1e3, "ms/token", "process CPU time, all threads (wall ≫ CPU / threads: other processes had the cores)")
            .Add("decode_weight_bytes", weightBytes / 1e6, "MB", "LM weights read per decode step (layers + norm + lm_head + one embedding row)")
            .Add("bandwidth_bound_decode", 1 / boundPerToken, "tokens/s", $"{boundPerToken * 1e3:F1} ms/token = weight bytes / bandwidth")
            .Add("decode_fraction_of_bound", boundPerToken / perToken * 100, "%", "bound time per token / measured time per token");
        record.Metrics.AddRange(bounds.Metrics);
        return record;
    }
}
