using System.Net;

namespace VarGpt.Server;

/// <summary>
/// Settings of <c>vargpt serve</c>. Each default is stated here once; the CLI maps its options onto these.
/// </summary>
public sealed record ServerOptions
{
    public const string ApiKeyVariable = "VARGPT_API_KEY";

    /// <summary>Address to bind. Loopback by default; anything else needs <see cref="ApiKey"/>.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 = any free port (tests; the bound URL is reported).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>When set, every /v1 request needs "Authorization: Bearer KEY" (compared in constant time).</summary>
    public string? ApiKey { get; init; }
    /// <summary>Origins allowed to call the API from a browser page on another origin; empty = no CORS headers at all.</summary>
    public IReadOnlyList<string> CorsOrigins { get; init; } = [];

    /// <summary>Chat rows decoded together in one batch (continuous batching).</summary>
    public int MaxBatch { get; init; } = 16;
    /// <summary>Image requests drawn at the same time (each one runs the next-scale loop at batch size 1, as the official code).</summary>
    public int MaxConcurrentImages { get; init; } = 1;
    /// <summary>Requests waiting for a slot, per kind (chat, images); one more gets 429 with Retry-After.</summary>
    public int MaxQueue { get; init; } = 64;
    /// <summary>A request still running after this long is cancelled (its stream ends with an error).</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>How long Ctrl-C / SIGTERM waits for in-flight requests before stopping.</summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Request body limit (JSON and multipart; base64 images count here).</summary>
    public long MaxBodyBytes { get; init; } = 20L << 20;
    /// <summary>Encoded bytes of one input image.</summary>
    public long MaxImageBytes { get; init; } = 10L << 20;
    /// <summary>Pixels (width × height) of one input image, checked from its header before decoding.</summary>
    public long MaxImagePixels { get; init; } = 4096L * 4096;
    /// <summary>Images in one chat request.</summary>
    public int MaxImagesPerRequest { get; init; } = 8;
    /// <summary>Messages in one chat request.</summary>
    public int MaxMessages { get; init; } = 128;
    /// <summary>max_tokens / max_completion_tokens at most (null = the model's context length).</summary>
    public int? MaxTokens { get; init; }
    /// <summary>Images per image request ("n").</summary>
    public int MaxImagesPerCall { get; init; } = 4;

    public bool IsLoopback => Host is "localhost" || (IPAddress.TryParse(Host, out var ip) && IPAddress.IsLoopback(ip));

    /// <summary>Checks the combination; the message names the option.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Host)) throw new ArgumentException("--host is empty");
        if (Host != "localhost" && !IPAddress.TryParse(Host, out _))
            throw new ArgumentException($"--host {Host}: give an IP address (127.0.0.1, ::1, 0.0.0.0, ...) or localhost");
        if (!IsLoopback && string.IsNullOrEmpty(ApiKey))
            throw new ArgumentException($"--host {Host} is not a loopback address: serving beyond this machine needs an API key (--api-key KEY or ${ApiKeyVariable})");
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port {Port} is not a TCP port (0-65535)");
        if (ApiKey is { Length: > 0 and < 8 }) throw new ArgumentException("the API key is shorter than 8 characters");
        if (MaxBatch < 1) throw new ArgumentException($"--max-batch {MaxBatch} must be ≥ 1");
        if (MaxConcurrentImages < 1) throw new ArgumentException($"--max-concurrent-images {MaxConcurrentImages} must be ≥ 1");
        if (MaxQueue < 0) throw new ArgumentException($"--max-queue {MaxQueue} must be ≥ 0");
        if (RequestTimeout <= TimeSpan.Zero) throw new ArgumentException("--timeout must be > 0");
        if (MaxBodyBytes < 1024) throw new ArgumentException("--max-body-mb is too small");
        foreach (var o in CorsOrigins)
            if (!Uri.TryCreate(o, UriKind.Absolute, out var u) || (u.Scheme != "http" && u.Scheme != "https") || u.AbsolutePath != "/")
                throw new ArgumentException($"--cors-origin {o}: give an origin such as http://localhost:3000 (scheme, host, port; no path)");
    }
}
