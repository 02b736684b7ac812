using Prometheus;

namespace VarGpt.Server;

/// <summary>
/// The server's Prometheus metrics (prometheus-net), in a registry of its own (no process-global state: two servers in
/// one process, as in the tests, keep separate counts). GET /metrics exports them in the text format.
/// </summary>
public sealed class ServerMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();

    public Counter Requests { get; }
    public Counter Errors { get; }
    public Histogram RequestSeconds { get; }
    public Gauge QueueDepth { get; }
    public Gauge RunningChats { get; }
    public Gauge RunningImages { get; }
    public Counter PromptTokens { get; }
    public Counter CompletionTokens { get; }
    public Counter DecodeSteps { get; }
    public Gauge DecodeTokensPerSecond { get; }
    public Histogram TimeToFirstToken { get; }
    public Histogram ImageSeconds { get; }
    public Histogram FirstPreviewSeconds { get; }
    public Counter Cancelled { get; }

    public ServerMetrics()
    {
        var f = Metrics.WithCustomRegistry(Registry);
        Requests = f.CreateCounter("vargpt_requests_total", "HTTP requests answered, by route and status code.", "route", "status");
        Errors = f.CreateCounter("vargpt_errors_total", "Error answers, by status code and error code.", "status", "code");
        RequestSeconds = f.CreateHistogram("vargpt_request_duration_seconds", "Time from request to the end of the response, by route.",
            new HistogramConfiguration { LabelNames = ["route"], Buckets = Histogram.ExponentialBuckets(0.005, 2, 14) });
        QueueDepth = f.CreateGauge("vargpt_queue_depth", "Requests waiting for a slot, by kind (chat, image).", "kind");
        RunningChats = f.CreateGauge("vargpt_chat_rows_running", "Chat rows in the running decode batch.");
        RunningImages = f.CreateGauge("vargpt_images_running", "Image requests being drawn.");
        PromptTokens = f.CreateCounter("vargpt_prompt_tokens_total", "Prompt tokens prefilled (chat).");
        CompletionTokens = f.CreateCounter("vargpt_completion_tokens_total", "Tokens generated (chat).");
        DecodeSteps = f.CreateCounter("vargpt_decode_steps_total", "Batched decode steps (forward passes of the running batch).");
        DecodeTokensPerSecond = f.CreateGauge("vargpt_decode_tokens_per_second", "Aggregate chat decode throughput over the last second of decoding.");
        TimeToFirstToken = f.CreateHistogram("vargpt_time_to_first_token_seconds", "Chat: request accepted to first token chosen (queue + prefill).",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.005, 2, 12) });
        ImageSeconds = f.CreateHistogram("vargpt_image_seconds", "Seconds per drawn image (text phase + next-scale loop + VAE).",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.05, 2, 12) });
        FirstPreviewSeconds = f.CreateHistogram("vargpt_first_preview_seconds", "Image request accepted to its first preview decoded.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.01, 2, 12) });
        Cancelled = f.CreateCounter("vargpt_cancelled_total", "Generations cancelled (client gone or timeout), by kind.", "kind");
    }
}
