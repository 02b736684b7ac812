using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using VarGpt.Server.Backend;

namespace VarGpt.Server.Bench;

/// <summary>Settings of <c>vargpt bench serve</c>; every loop is bounded in count and time.</summary>
public sealed record ServeBenchOptions
{
    public IReadOnlyList<int> Concurrency { get; init; } = [1, 4, 8, 16];
    /// <summary>Tokens each stream decodes in the throughput phase (ignore_eos).</summary>
    public int DecodeTokens { get; init; } = 256;
    /// <summary>Interleaved repeats of the throughput phase (c1, c4, …, c1, c4, …); the median per level is reported (noise between runs is 10–20% here).</summary>
    public int DecodeRepeats { get; init; } = 3;
    /// <summary>Mixed-load requests per client at each concurrency.</summary>
    public int RequestsPerClient { get; init; } = 2;
    public int Disconnects { get; init; } = 50;
    public int Oversized { get; init; } = 20;
    public int Malformed { get; init; } = 20;
    public int CorruptImages { get; init; } = 20;
    /// <summary>Idle first-preview timings (median reported).</summary>
    public int PreviewRuns { get; init; } = 5;
    /// <summary>Hard stop for the whole run.</summary>
    public TimeSpan Limit { get; init; } = TimeSpan.FromMinutes(15);

    /// <summary>The short version CI runs.</summary>
    public static ServeBenchOptions Quick => new() { Concurrency = [1, 4], DecodeTokens = 24, DecodeRepeats = 1, RequestsPerClient = 1, Disconnects = 8, Oversized = 4, Malformed = 4, CorruptImages = 4, PreviewRuns = 2 };
}

public sealed record ServeBenchMetric(string Name, double Value, string Unit, string? Note = null);

/// <summary>What the run measured, and whether every check held (zero 5xx, the right status for every fault, the server up, RSS within 10%).</summary>
public sealed record ServeBenchResult(IReadOnlyList<ServeBenchMetric> Metrics, IReadOnlyList<string> Failures)
{
    public bool Passed => Failures.Count == 0;
}

/// <summary>
/// Load and fault test of the server on loopback (issue 15): a server on a free 127.0.0.1 port over the given backend;
/// (1) decode throughput of N concurrent streams, each decoding a fixed token count (ignore_eos); (2) a mixed load
/// (chat, streamed chat with an image, image generation, edits) at each concurrency: requests/s, p50/p95 latency, time to
/// first token, 5xx; (3) faults during a background load: clients that hang up mid-stream, oversized bodies,
/// malformed JSON, corrupt images — each must get its status, later requests must succeed, RSS must stay within 10%;
/// (4) the first image preview of an idle server. The load generator runs in the same process (its memory is in RSS).
/// </summary>
public static class ServeBenchmark
{
    static readonly string[] Questions = ["What colour is the circle?", "How many shapes are there?", "What shape is on the left?", "Is there a square?"];

    public static async Task<ServeBenchResult> RunAsync(Func<IServingBackend> load, ServeBenchOptions o, byte[] scenePng, TextWriter log)
    {
        var metrics = new List<ServeBenchMetric>();
        var failures = new List<string>();
        using var limit = new CancellationTokenSource(o.Limit);
        var ct = limit.Token;
        int maxC = o.Concurrency.Max();
        await using var server = new VargptServer(new ServerOptions { Port = 0, MaxBatch = Math.Max(16, maxC), MaxQueue = 4 * maxC + 64, MaxBodyBytes = 4 << 20 }, load, _ => { });
        await server.StartAsync(ct);
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.Url, Timeout = TimeSpan.FromMinutes(5) };
        var model = server.Backend!.Model;
        string image = "data:image/png;base64," + Convert.ToBase64String(scenePng);

        // warm-up (first calls allocate), then the RSS baseline
        await Chat(http, model.Id, "hi", null, 8, stream: false, ignoreEos: true, ct);
        await Image(http, model.Id, null, stream: false, seed: 1, ct);
        Settle();
        long rssBefore = Rss();
        metrics.Add(new("rss_after_warmup", rssBefore / 1e9, "GB", "server and load generator in one process"));

        // (1) aggregate decode throughput: c streams that each decode DecodeTokens tokens (ignore_eos); tokens after each
        // stream's first, over the span from the first stream's first token to the last stream's end (admission ramp included)
        var runsByLevel = o.Concurrency.ToDictionary(c => c, _ => new List<double>());
        for (int rep = 0; rep < o.DecodeRepeats; rep++)
            foreach (int c in o.Concurrency)
            {
                log.WriteLine($"decode throughput: {c} concurrent stream(s) × {o.DecodeTokens} tokens (round {rep + 1}/{o.DecodeRepeats})");
                var runs = await Task.WhenAll(Enumerable.Range(0, c).Select(i => Chat(http, model.Id, Questions[i % Questions.Length], i % 2 == 0 ? image : null, o.DecodeTokens, true, true, ct)));
                foreach (var r in runs) if (r.Status != 200) failures.Add($"decode phase c={c}: status {r.Status}");
                long tokens = runs.Sum(r => (long)Math.Max(0, r.CompletionTokens - 1));
                runsByLevel[c].Add(tokens / Math.Max(1e-6, runs.Max(r => r.EndAt) - runs.Min(r => r.FirstTokenAt)));
            }
        double single = Median(runsByLevel[o.Concurrency[0]]);
        foreach (int c in o.Concurrency)
        {
            double tps = Median(runsByLevel[c]);
            metrics.Add(new($"decode_tokens_per_second_c{c}", tps, "tokens/s",
                $"{c} streams × {o.DecodeTokens} tokens, median of {o.DecodeRepeats} interleaved rounds ({string.Join(", ", runsByLevel[c].Select(v => v.ToString("F0", System.Globalization.CultureInfo.InvariantCulture)))})"));
            if (c != o.Concurrency[0] && single > 0) metrics.Add(new($"decode_speedup_c{c}", tps / single, "x", $"vs {o.Concurrency[0]} stream(s)"));
        }

        // (2) mixed load
        foreach (int c in o.Concurrency)
        {
            log.WriteLine($"mixed load: {c} client(s) × {o.RequestsPerClient} request(s) (chat, streamed chat with an image, image, edit)");
            var clock = Stopwatch.StartNew();
            var results = (await Task.WhenAll(Enumerable.Range(0, c).Select(async client =>
            {
                var mine = new List<Outcome>();
                for (int k = 0; k < o.RequestsPerClient; k++)
                {
                    int kind = (client + k) % 4;
                    mine.Add(kind switch
                    {
                        0 => await Chat(http, model.Id, Questions[k % Questions.Length], null, 32, false, false, ct),
                        1 => await Chat(http, model.Id, Questions[(k + 1) % Questions.Length], image, 32, true, false, ct),
                        2 => await Image(http, model.Id, null, stream: true, seed: client * 100 + k, ct),
                        _ => await Image(http, model.Id, scenePng, stream: false, seed: client * 100 + k, ct),
                    });
                }
                return mine;
            }))).SelectMany(x => x).ToList();
            double wall = clock.Elapsed.TotalSeconds;
            var lat = results.Select(r => r.Seconds).Order().ToList();
            var ttft = results.Where(r => r.Streamed && r.FirstTokenAt > 0).Select(r => r.FirstTokenAt - r.StartAt).Order().ToList();
            int fiveXx = results.Count(r => r.Status >= 500), failed = results.Count(r => r.Status != 200);
            metrics.Add(new($"mixed_requests_per_second_c{c}", results.Count / wall, "req/s", $"{results.Count} requests in {wall:F2} s"));
            metrics.Add(new($"mixed_latency_p50_c{c}", Percentile(lat, 0.5), "s"));
            metrics.Add(new($"mixed_latency_p95_c{c}", Percentile(lat, 0.95), "s"));
            if (ttft.Count > 0) metrics.Add(new($"mixed_time_to_first_event_p50_c{c}", Percentile(ttft, 0.5), "s", "streamed chat: first token; streamed image: first preview"));
            metrics.Add(new($"mixed_failed_c{c}", failed, "requests", $"{fiveXx} of them 5xx"));
            foreach (var r in results.Where(r => r.Status != 200)) failures.Add($"mixed c={c}: {r.Kind} answered {r.Status}");
        }

        // (3) faults during a background load. A short warm-up round of the same faults first: RSS before the measured round
        // is then a steady state (Kestrel's buffer pools, the allocator's arenas and the largest KV batch already grown), so
        // a growth across the measured round is what the faults left behind.
        await Faults(http, model.Id, scenePng, o.Disconnects / 5 + 1, 1, 1, 1, new List<string>(), new List<(string, int, int)>(), ct);
        Settle();
        rssBefore = Rss();
        metrics.Add(new("rss_before_faults", rssBefore / 1e9, "GB", "after the load phases and a warm-up round of the faults"));
        log.WriteLine($"faults under load: {o.Disconnects} disconnects, {o.Oversized} oversized bodies, {o.Malformed} malformed requests, {o.CorruptImages} corrupt images");
        var faultStatus = new List<(string Kind, int Expected, int Got)>();
        var (hungUp, backgroundOutcomes) = await Faults(http, model.Id, scenePng, o.Disconnects, o.Oversized, o.Malformed, o.CorruptImages, failures, faultStatus, ct);
        metrics.Add(new("faults_disconnected", hungUp, "clients", "hung up after the first bytes of a 400-token stream"));
        metrics.Add(new("faults_answered_right", faultStatus.Count(f => f.Expected == f.Got), "requests", $"of {faultStatus.Count} (413 oversized, 400 malformed, 400 corrupt image)"));
        metrics.Add(new("faults_background_requests", backgroundOutcomes.Count, "requests", $"{backgroundOutcomes.Count(r => r.Status == 200)} succeeded"));
        // every hung-up row must leave the batch
        var until = DateTime.UtcNow.AddSeconds(30);
        while (server.Metrics.RunningChats.Value > 0 && DateTime.UtcNow < until) await Task.Delay(20, ct);
        if (server.Metrics.RunningChats.Value > 0) failures.Add($"{server.Metrics.RunningChats.Value} chat rows still running 30 s after their clients left");
        metrics.Add(new("faults_cancelled_rows", server.Metrics.Cancelled.WithLabels("chat").Value, "rows", "chat rows cancelled by a disconnect (the rest had ended)"));
        var after1 = await Chat(http, model.Id, "How many shapes are there?", image, 8, false, false, ct);
        var after2 = await Image(http, model.Id, null, stream: false, seed: 5, ct);
        if (after1.Status != 200 || after2.Status != 200) failures.Add($"requests after the faults failed: chat {after1.Status}, image {after2.Status}");
        Settle();
        long rssAfter = Rss();
        double growth = (rssAfter - rssBefore) / (double)rssBefore;
        metrics.Add(new("rss_after_faults", rssAfter / 1e9, "GB", $"{growth * 100:+0.0;-0.0}% vs before the faults"));
        if (growth > 0.10) failures.Add($"RSS grew {growth * 100:F1}% (limit 10%)");

        // (4) first preview, idle
        var previews = new List<double>();
        for (int i = 0; i < o.PreviewRuns; i++)
        {
            var r = await Image(http, model.Id, null, stream: true, seed: 10 + i, ct);
            if (r.FirstTokenAt > 0) previews.Add(r.FirstTokenAt - r.StartAt);
        }
        if (previews.Count > 0) metrics.Add(new("first_preview_idle_p50", Percentile(previews.Order().ToList(), 0.5), "s", $"streamed generation on an idle server, request sent → first partial_image event ({previews.Count} runs)"));
        return new ServeBenchResult(metrics, failures);
    }

    /// <summary>Faults during a background load of streamed chats: hang-ups, oversized bodies, malformed JSON, corrupt images.</summary>
    static async Task<(int HungUp, List<Outcome> Background)> Faults(HttpClient http, string modelId, byte[] scenePng, int disconnects, int oversizedCount, int malformed, int corrupt,
        List<string> failures, List<(string Kind, int Expected, int Got)> faultStatus, CancellationToken ct)
    {
        using var stopBackground = new CancellationTokenSource();
        var background = Task.Run(async () =>
        {
            var outcomes = new List<Outcome>();
            int i = 0;
            while (!stopBackground.IsCancellationRequested && !ct.IsCancellationRequested)
                outcomes.Add(await Chat(http, modelId, Questions[i++ % Questions.Length], null, 16, true, false, ct));
            return outcomes;
        }, ct);
        int hungUp = 0;
        await Task.WhenAll(Enumerable.Range(0, disconnects).Select(async i =>
        {
            using var request = ChatRequest(modelId, Questions[i % Questions.Length], null, 400, stream: true, ignoreEos: true);
            using var r = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            if (r.StatusCode != HttpStatusCode.OK) { lock (failures) failures.Add($"disconnect client {i}: status {(int)r.StatusCode}"); return; }
            using var s = await r.Content.ReadAsStreamAsync(ct);
            await s.ReadExactlyAsync(new byte[32], ct);
            Interlocked.Increment(ref hungUp);
        }));
        var oversized = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(new { model = modelId, messages = new[] { new { role = "user", content = new string('x', 5 << 20) } } }));
        for (int i = 0; i < oversizedCount; i++)
        {
            var content = new ByteArrayContent(oversized);   // one buffer for all: the load generator's memory stays out of the RSS check
            content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = content };
            request.Headers.ExpectContinue = true;
            using var r = await http.SendAsync(request, ct);
            faultStatus.Add(("oversized body", 413, (int)r.StatusCode));
        }
        for (int i = 0; i < malformed; i++)
        {
            var body = (i % 3) switch { 0 => "{\"model\": ", 1 => "{\"model\":\"" + modelId + "\",\"messages\":7}", _ => "[1,2,3]" };
            using var r = await http.PostAsync("v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"), ct);
            faultStatus.Add(("malformed request", 400, (int)r.StatusCode));
        }
        for (int i = 0; i < corrupt; i++)
        {
            var bytes = i % 2 == 0 ? scenePng[..(scenePng.Length / 3)] : Encoding.ASCII.GetBytes("\x89PNG not really");
            using var r = await http.SendAsync(ChatRequest(modelId, "What is this?", "data:image/png;base64," + Convert.ToBase64String(bytes), 8, false, false), ct);
            faultStatus.Add(("corrupt image", 400, (int)r.StatusCode));
        }
        stopBackground.Cancel();
        var backgroundOutcomes = await background;
        foreach (var (kind, expected, got) in faultStatus.Where(f => f.Expected != f.Got)) failures.Add($"{kind}: expected {expected}, got {got}");
        foreach (var r in backgroundOutcomes.Where(r => r.Status != 200)) failures.Add($"background load during faults: status {r.Status}");
        return (hungUp, backgroundOutcomes);
    }

    static double Median(List<double> v) => Percentile(v.Order().ToList(), 0.5);

    static double Percentile(IReadOnlyList<double> sorted, double p) =>
        sorted.Count == 0 ? double.NaN : sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];

    /// <summary>Before an RSS reading: a compacting full GC, and free native memory handed back to the OS (glibc keeps freed tensor memory in its arenas).</summary>
    static void Settle()
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        if (OperatingSystem.IsLinux()) { try { MallocTrim(0); } catch (EntryPointNotFoundException) { } catch (DllNotFoundException) { } }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    static long Rss()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        return Environment.WorkingSet;
    }

    sealed record Outcome(string Kind, int Status, bool Streamed, double StartAt, double FirstTokenAt, double EndAt, int CompletionTokens)
    {
        public double Seconds => EndAt - StartAt;
    }

    static readonly Stopwatch Clock = Stopwatch.StartNew();

    static HttpRequestMessage ChatRequest(string model, string text, string? image, int maxTokens, bool stream, bool ignoreEos)
    {
        object content = image is null ? text : new object[] { new { type = "image_url", image_url = new { url = image } }, new { type = "text", text } };
        var body = new Dictionary<string, object>
        {
            ["model"] = model, ["max_tokens"] = maxTokens, ["stream"] = stream, ["generate_images"] = false, ["ignore_eos"] = ignoreEos,
            ["messages"] = new[] { new { role = "user", content } },
        };
        if (stream) body["stream_options"] = new { include_usage = true };
        return new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json") };
    }

    static async Task<Outcome> Chat(HttpClient http, string model, string text, string? image, int maxTokens, bool stream, bool ignoreEos, CancellationToken ct)
    {
        double start = Clock.Elapsed.TotalSeconds, first = 0;
        int tokens = 0;
        using var r = await http.SendAsync(ChatRequest(model, text, image, maxTokens, stream, ignoreEos), HttpCompletionOption.ResponseHeadersRead, ct);
        if (r.StatusCode != HttpStatusCode.OK)
            return new Outcome(stream ? "streamed chat" : "chat", (int)r.StatusCode, stream, start, 0, Clock.Elapsed.TotalSeconds, 0);
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(ct));
        if (!stream)
        {
            using var doc = JsonDocument.Parse(await reader.ReadToEndAsync(ct));
            tokens = doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
            double end = Clock.Elapsed.TotalSeconds;
            return new Outcome("chat", 200, false, start, end, end, tokens);
        }
        int status = 200;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]") continue;
            using var doc = JsonDocument.Parse(line[6..]);
            var root = doc.RootElement;
            if (root.TryGetProperty("error", out _)) status = 500;
            if (first == 0 && root.TryGetProperty("choices", out var ch) && ch.GetArrayLength() > 0 && ch[0].GetProperty("delta").TryGetProperty("content", out var c) && c.GetString()!.Length > 0)
                first = Clock.Elapsed.TotalSeconds;
            if (root.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) tokens = u.GetProperty("completion_tokens").GetInt32();
        }
        return new Outcome("streamed chat", status, true, start, first == 0 ? Clock.Elapsed.TotalSeconds : first, Clock.Elapsed.TotalSeconds, tokens);
    }

    static async Task<Outcome> Image(HttpClient http, string model, byte[]? source, bool stream, long seed, CancellationToken ct)
    {
        double start = Clock.Elapsed.TotalSeconds, first = 0;
        HttpRequestMessage request;
        if (source is null)
            request = new HttpRequestMessage(HttpMethod.Post, "v1/images/generations")
            {
                Content = new StringContent(JsonSerializer.Serialize(new { model, prompt = "Draw a red circle on the left.", seed, stream, force_image_start = true }), Encoding.UTF8, "application/json"),
            };
        else
        {
            var form = new MultipartFormDataContent
            {
                { new StringContent("Edit this image <image> as follows: Make the red circle blue."), "prompt" },
                { new StringContent(seed.ToString(System.Globalization.CultureInfo.InvariantCulture)), "seed" },
                { new StringContent("true"), "force_image_start" },
            };
            var file = new ByteArrayContent(source);
            file.Headers.ContentType = new MediaTypeHeaderValue("image/png");
            form.Add(file, "image", "scene.png");
            request = new HttpRequestMessage(HttpMethod.Post, "v1/images/edits") { Content = form };
        }
        using (request)
        {
            using var r = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            string kind = source is null ? (stream ? "streamed image" : "image") : "edit";
            if (r.StatusCode != HttpStatusCode.OK) return new Outcome(kind, (int)r.StatusCode, stream, start, 0, Clock.Elapsed.TotalSeconds, 0);
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(ct));
            int status = 200;
            while (await reader.ReadLineAsync(ct) is { } line)
            {
                if (stream && first == 0 && line.StartsWith("event: image_generation.partial_image", StringComparison.Ordinal)) first = Clock.Elapsed.TotalSeconds;
                if (stream && line.StartsWith("event: error", StringComparison.Ordinal)) status = 500;
            }
            return new Outcome(kind, status, stream, start, first, Clock.Elapsed.TotalSeconds, 0);
        }
    }
}
