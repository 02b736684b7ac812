using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Prometheus;
using VarGpt.Server.Backend;
using VarGpt.Server.Http;
using VarGpt.Server.Scheduling;

namespace VarGpt.Server;

public enum ServerState { Loading, Ready, Draining, Failed }

/// <summary>
/// <c>vargpt serve</c>: an OpenAI-compatible HTTP server (Kestrel, minimal APIs) over one loaded model, with the web page
/// at <c>/</c>. The model loads after the server listens (requests get 503 until it is ready); Ctrl-C / SIGTERM stops
/// accepting, lets in-flight requests finish (up to <see cref="ServerOptions.DrainTimeout"/>) and exits.
/// </summary>
public sealed class VargptServer : IAsyncDisposable
{
    readonly ServerOptions _options;
    readonly Func<IServingBackend> _load;
    readonly WebApplication _app;
    readonly ILogger _requestLog;
    IServingBackend? _backend;
    ChatScheduler? _chat;
    readonly ImageGate _images;
    volatile ServerState _state = ServerState.Loading;
    string? _loadError;
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ServerMetrics Metrics { get; } = new();
    public ServerOptions Options => _options;
    public ServerState State => _state;
    /// <summary>Completes when the model is loaded (faults with the load error).</summary>
    public Task Ready => _ready.Task;
    public IServingBackend? Backend => _backend;
    /// <summary>The bound address (after <see cref="StartAsync"/>), e.g. http://127.0.0.1:8000.</summary>
    public Uri Url { get; private set; } = new("http://127.0.0.1/");

    /// <param name="load">loads the model (runs on a background thread after the server listens)</param>
    /// <param name="configureLogging">replaces the default logging (one JSON line per request on stdout)</param>
    public VargptServer(ServerOptions options, Func<IServingBackend> load, Action<ILoggingBuilder>? configureLogging = null)
    {
        options.Validate();
        _options = options;
        _load = load;
        _images = new ImageGate(options.MaxConcurrentImages, options.MaxQueue, Metrics);
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        if (configureLogging is not null) configureLogging(builder.Logging);
        else
        {
            builder.Logging.AddJsonConsole(o => { o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ"; o.UseUtcTimestamp = true; });
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        }
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.DrainTimeout);
        builder.WebHost.UseKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            if (options.Host == "localhost") k.ListenLocalhost(options.Port);
            else k.Listen(IPAddress.Parse(options.Host), options.Port);
        });
        if (options.CorsOrigins.Count > 0)
            builder.Services.AddCors(c => c.AddDefaultPolicy(p => p.WithOrigins([.. options.CorsOrigins]).AllowAnyHeader().WithMethods("GET", "POST")));
        _app = builder.Build();
        _requestLog = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("VarGpt.Server.Requests");
        _app.Lifetime.ApplicationStopping.Register(() => { if (_state == ServerState.Ready) _state = ServerState.Draining; });
        Configure(_app);
    }

    /// <summary>Starts listening, then loads the model in the background.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _app.StartAsync(cancellationToken).ConfigureAwait(false);
        var address = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Url = new Uri(address.Replace("[::]", "localhost", StringComparison.Ordinal));
        _ = Task.Factory.StartNew(LoadModel, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    void LoadModel()
    {
        try
        {
            var backend = _load();
            _backend = backend;
            _chat = new ChatScheduler(backend.Chat, _options.MaxBatch, _options.MaxQueue, Metrics);
            _state = ServerState.Ready;
            _ready.TrySetResult();
        }
        catch (Exception e)
        {
            _loadError = e.Message;
            _state = ServerState.Failed;
            _ready.TrySetException(e);
        }
    }

    /// <summary>Stops accepting, drains in-flight requests, then stops.</summary>
    public Task StopAsync(CancellationToken cancellationToken = default) => _app.StopAsync(cancellationToken);

    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.DisposeAsync().ConfigureAwait(false);
        _chat?.Dispose();
        _backend?.Dispose();
        _images.Dispose();
    }

    // ------------------------------------------------------------------------------------------------ pipeline

    void Configure(WebApplication app)
    {
        app.Use(RequestLogAsync);
        if (_options.CorsOrigins.Count > 0) app.UseCors();
        app.Use(GuardAsync);

        app.MapGet("/", () => Page("index.html"));
        app.MapGet("/app.js", () => Page("app.js"));
        app.MapGet("/style.css", () => Page("style.css"));
        app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        app.MapGet("/ready", () => _state == ServerState.Ready
            ? Results.Json(new { status = "ready", model = _backend!.Model.Id })
            : Results.Json(new { status = _state.ToString().ToLowerInvariant(), error = _loadError }, statusCode: 503));
        app.MapMetrics("/metrics", Metrics.Registry);
        app.MapGet("/v1/models", () => Results.Json(new { @object = "list", data = new[] { ModelObject(_backend!.Model) } }));
        app.MapGet("/v1/models/{id}", (string id) => id == _backend!.Model.Id ? Results.Json(ModelObject(_backend.Model)) : throw ApiException.ModelNotFound(id));
        app.MapPost("/v1/chat/completions", ChatCompletionsAsync);
        app.MapPost("/v1/images/generations", ImageGenerationsAsync);
        app.MapPost("/v1/images/edits", ImageEditsAsync);
        app.MapFallback(context => throw new ApiException(404, $"Unknown request URL: {context.Request.Method} {context.Request.Path}. See the README for the endpoints this server offers.", "invalid_request_error", null, "unknown_url"));
    }

    static object ModelObject(ServedModel m) => new
    {
        id = m.Id, @object = "model", created = m.Created, owned_by = "vargpt",
        // VARGPT extensions: what the page and clients need to know
        context_length = m.ContextLength,
        image_sizes = m.ImageSizes.Select(s => new { size = s.Name, scales = s.Scales, pn = s.Pn, aspect_ratio = s.AspectRatio }),
        vision = m.CanSee, image_generation = m.CanDraw,
    };

    static IResult Page(string name)
    {
        using var stream = typeof(VargptServer).Assembly.GetManifestResourceStream("wwwroot/" + name)
            ?? throw new InvalidOperationException($"the web page resource wwwroot/{name} is missing from the build");
        using var ms = new MemoryStream();
        stream.CopyTo(ms);
        var type = name.EndsWith(".js", StringComparison.Ordinal) ? "text/javascript; charset=utf-8"
            : name.EndsWith(".css", StringComparison.Ordinal) ? "text/css; charset=utf-8" : "text/html; charset=utf-8";
        return Results.Bytes(ms.ToArray(), type);
    }

    /// <summary>One structured log line per request (id, route, status, time, tokens, error code) and the request metrics.</summary>
    async Task RequestLogAsync(HttpContext context, RequestDelegate next)
    {
        var id = "req_" + Guid.NewGuid().ToString("N")[..24];
        context.Items["request_id"] = id;
        context.Response.Headers["x-request-id"] = id;
        var clock = Stopwatch.StartNew();
        try { await next(context).ConfigureAwait(false); }
        catch (Exception e) when (!context.Response.HasStarted)
        {
            await WriteErrorAsync(context, e).ConfigureAwait(false);
        }
        finally
        {
            var route = (context.GetEndpoint() as RouteEndpoint)?.RoutePattern.RawText ?? "other";
            if (context.Items.TryGetValue("route", out var r) && r is string rs) route = rs;
            int status = context.Response.StatusCode;
            bool aborted = context.RequestAborted.IsCancellationRequested;
            Metrics.Requests.WithLabels(route, status.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
            Metrics.RequestSeconds.WithLabels(route).Observe(clock.Elapsed.TotalSeconds);
            context.Items.TryGetValue("error_code", out var code);
            if (status >= 400 || code is not null)
                Metrics.Errors.WithLabels(status.ToString(System.Globalization.CultureInfo.InvariantCulture), code as string ?? "").Inc();
            context.Items.TryGetValue("prompt_tokens", out var pt);
            context.Items.TryGetValue("completion_tokens", out var ct);
            _requestLog.LogInformation(
                "request {RequestId} {Method} {Path} status={Status} ms={DurationMs} client={Client} model={Model} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} aborted={Aborted} error={ErrorCode}",
                id, context.Request.Method, context.Request.Path.Value, status, Math.Round(clock.Elapsed.TotalMilliseconds, 1),
                context.Connection.RemoteIpAddress?.ToString(), context.Items.TryGetValue("model", out var m) ? m : null, pt, ct, aborted, code);
        }
    }

    /// <summary>API key and readiness for /v1 and /metrics; the page, /health and /ready stay open.</summary>
    async Task GuardAsync(HttpContext context, RequestDelegate next)
    {
        var path = context.Request.Path;
        bool api = path.StartsWithSegments("/v1");
        if ((api || path.StartsWithSegments("/metrics")) && _options.ApiKey is { Length: > 0 } key)
        {
            var header = context.Request.Headers.Authorization.ToString();
            if (header.Length == 0)
                throw ApiException.Unauthorized("You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).");
            if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) || !KeyMatches(header[7..].Trim(), key))
                throw ApiException.Unauthorized("Incorrect API key provided.");
        }
        if (api)
        {
            switch (_state)
            {
                case ServerState.Loading: throw ApiException.Unavailable("The model is still loading; retry in a moment (GET /ready says when it is ready).", 2);
                case ServerState.Draining: throw ApiException.Unavailable("The server is shutting down and takes no new requests.", 5);
                case ServerState.Failed: throw new ApiException(503, $"The model failed to load: {_loadError}", "service_unavailable", null, "model_load_failed");
            }
        }
        await next(context).ConfigureAwait(false);
    }

    /// <summary>Constant-time comparison (of SHA-256 digests, so the time does not depend on the key's length either).</summary>
    static bool KeyMatches(string given, string expected) =>
        CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), SHA256.HashData(Encoding.UTF8.GetBytes(expected)));

    async Task WriteErrorAsync(HttpContext context, Exception e)
    {
        var api = ToApiError(e, context);
        context.Items["error_code"] = api.Code ?? api.Type;
        if (api.Status >= 500) _requestLog.LogError(e, "request {RequestId} failed", context.Items["request_id"]);
        context.Response.Clear();
        await api.WriteAsync(context).ConfigureAwait(false);
    }

    /// <summary>Maps library and framework exceptions to OpenAI-style errors (the library's messages name the problem); a 5xx means a bug (the fuzz targets check this).</summary>
    public static ApiException ToApiError(Exception e, HttpContext? context) => e switch
    {
        ApiException a => a,
        BadHttpRequestException { StatusCode: 413 } => ApiException.TooLarge($"The request body is larger than this server's limit of {context?.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize} bytes."),
        BadHttpRequestException b => ApiException.BadRequest($"Bad request: {b.Message}"),
        JsonException j => ApiException.BadRequest($"We could not parse the JSON body of your request. ({j.Message})", null, "invalid_json"),
        VarGpt.Inference.InvalidPromptException p when p.Message.Contains("max_position_embeddings", StringComparison.Ordinal) => ApiException.BadRequest(p.Message, "messages", "context_length_exceeded"),
        VarGpt.Inference.InvalidPromptException p => ApiException.BadRequest(p.Message, "messages", "invalid_prompt"),
        VarGpt.Inference.NoImageGeneratedException n => ApiException.BadRequest(n.Message + " (request field: force_image_start = true)", "prompt", "no_image_generated"),
        VarGpt.InvalidOptionException o => ApiException.BadRequest(o.Message, o.Option, "invalid_value"),
        VarGpt.VargptInputException i => ApiException.BadRequest(i.Message, null, "invalid_input"),   // the library's "what the user gave" errors
        ArgumentException a => ApiException.BadRequest(a.Message, null, "invalid_value"),
        OperationCanceledException => new ApiException(408, "The request timed out or was cancelled.", "timeout", null, "request_timeout"),
        _ => new ApiException(500, $"The server had an error while processing your request: {e.GetType().Name}: {e.Message}", "server_error", null, "server_error"),
    };

    async Task<JsonDocument> ReadJsonAsync(HttpContext context)
    {
        if (context.Request.ContentLength > _options.MaxBodyBytes)
            throw ApiException.TooLarge($"The request body has {context.Request.ContentLength} bytes; this server's limit is {_options.MaxBodyBytes} bytes.");
        var type = context.Request.ContentType ?? "";
        if (!type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
            throw ApiException.BadRequest($"Invalid Content-Type header ({(type.Length == 0 ? "none" : type)}); expected application/json.", null, "invalid_content_type");
        return await Requests.ParseJsonBodyAsync(context.Request.Body, context.RequestAborted).ConfigureAwait(false);
    }

    CancellationTokenSource RequestCancellation(HttpContext context)
    {
        var cts = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        cts.CancelAfter(_options.RequestTimeout);
        return cts;
    }

    // ------------------------------------------------------------------------------------------------ chat

    async Task ChatCompletionsAsync(HttpContext context)
    {
        ChatCall call;
        using (var doc = await ReadJsonAsync(context).ConfigureAwait(false))
            call = Requests.ParseChat(doc, _backend!.Model, _options);
        context.Items["model"] = call.Model;
        using var cts = RequestCancellation(context);
        var ticket = _chat!.TryEnqueue(call.Job, cts.Token) ?? throw ApiException.QueueFull(1, "chat");
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N")[..24];
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var text = new StringBuilder();
        bool started = false;
        try
        {
            await foreach (var ev in ticket.Events.ReadAllAsync(cts.Token).ConfigureAwait(false))
            {
                if (ev.Error is { } error)
                {
                    if (error is OperationCanceledException && context.RequestAborted.IsCancellationRequested) return;   // client gone
                    if (!started || !call.Stream) throw error;
                    await StreamErrorAsync(context, error).ConfigureAwait(false);
                    return;
                }
                if (call.Stream && !started)
                {
                    await Sse.StartAsync(context).ConfigureAwait(false);
                    await Sse.WriteAsync(context, Chunk(id, created, call.Model, new { role = "assistant", content = "" }, null)).ConfigureAwait(false);
                    started = true;
                }
                text.Append(ev.Text);
                if (call.Stream && ev.Text.Length > 0)
                    await Sse.WriteAsync(context, Chunk(id, created, call.Model, new { content = ev.Text }, null)).ConfigureAwait(false);
                if (ev.Ended is not { } row) continue;

                context.Items["prompt_tokens"] = row.PromptTokens;
                context.Items["completion_tokens"] = row.CompletionTokens;
                object? image = null;
                if (row.Finish == VarGpt.Inference.VargptChatFinish.Image && call.Job.DrawImages && _backend!.Model.CanDraw)
                {
                    try { image = await DrawChatImageAsync(context, call, row, id, created, cts.Token).ConfigureAwait(false); }
                    catch (Exception e) when (call.Stream && !context.RequestAborted.IsCancellationRequested)
                    {
                        await StreamErrorAsync(context, e).ConfigureAwait(false);   // the text went out already: the error ends the stream
                        return;
                    }
                }
                string finish = row.Finish == VarGpt.Inference.VargptChatFinish.MaxNewTokens ? "length" : "stop";
                var usage = new { prompt_tokens = row.PromptTokens, completion_tokens = row.CompletionTokens, total_tokens = row.PromptTokens + row.CompletionTokens };
                if (call.Stream)
                {
                    if (image is not null) await Sse.WriteAsync(context, Chunk(id, created, call.Model, new { images = new[] { image } }, null)).ConfigureAwait(false);
                    await Sse.WriteAsync(context, Chunk(id, created, call.Model, new { }, finish)).ConfigureAwait(false);
                    if (call.IncludeUsage)
                        await Sse.WriteAsync(context, new { id, @object = "chat.completion.chunk", created, model = call.Model, system_fingerprint = (string?)null, choices = Array.Empty<object>(), usage }).ConfigureAwait(false);
                    await Sse.WriteRawAsync(context, "[DONE]").ConfigureAwait(false);
                }
                else
                {
                    object message = image is null
                        ? new { role = "assistant", content = text.ToString(), refusal = (string?)null }
                        : new { role = "assistant", content = text.ToString(), refusal = (string?)null, images = new[] { image } };
                    await context.Response.WriteAsJsonAsync(new
                    {
                        id, @object = "chat.completion", created, model = call.Model, system_fingerprint = (string?)null,
                        choices = new[] { new { index = 0, message, logprobs = (object?)null, finish_reason = finish } },
                        usage,
                    }, cts.Token).ConfigureAwait(false);
                }
                return;
            }
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested) { return; }   // client gone: the row was dropped
        catch (OperationCanceledException e) when (started)
        {
            await StreamErrorAsync(context, e).ConfigureAwait(false);
        }
    }

    static object Chunk(string id, long created, string model, object delta, string? finish) => new
    {
        id, @object = "chat.completion.chunk", created, model, system_fingerprint = (string?)null,
        choices = new[] { new { index = 0, delta, logprobs = (object?)null, finish_reason = finish } },
    };

    async Task StreamErrorAsync(HttpContext context, Exception e)
    {
        var api = ToApiError(e, context);
        context.Items["error_code"] = api.Code ?? api.Type;
        try { await Sse.WriteRawAsync(context, ApiException.Json(api.Message, api.Type, api.Param, api.Code)).ConfigureAwait(false); }
        catch (Exception) when (context.RequestAborted.IsCancellationRequested) { }
    }

    /// <summary>The image a chat row started: drawn at batch size 1 through the image gate; previews go out as chunks when streaming.</summary>
    async Task<object> DrawChatImageAsync(HttpContext context, ChatCall call, VarGpt.Inference.ChatRow row, string id, long created, CancellationToken ct)
    {
        using var slot = await _images.EnterAsync(ct).ConfigureAwait(false) ?? throw ApiException.QueueFull(_images.RetryAfterSeconds, "image");
        long seed = call.Job.Image?.Seed ?? call.Job.Options.Seed ?? VarGpt.Model.Seeds.Random();
        var options = (call.Job.Image ?? new VarGpt.Model.ImageOptions()) with { Seed = seed };
        var previews = System.Threading.Channels.Channel.CreateUnbounded<ImagePreview>();
        var clock = Stopwatch.StartNew();
        var draw = Task.Factory.StartNew(() =>
        {
            try { return _backend!.DrawChatImage(call.Job, row.TokenIds, options, seed, call.Stream ? p => previews.Writer.TryWrite(p) : null, ct); }
            finally { previews.Writer.TryComplete(); }
        }, ct, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        await foreach (var p in previews.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            await Sse.WriteAsync(context, new
            {
                id, @object = "chat.completion.chunk", created, model = call.Model, system_fingerprint = (string?)null,
                choices = new[] { new { index = 0, delta = new { }, logprobs = (object?)null, finish_reason = (string?)null } },
                image_preview = new { scale_index = p.ScaleIndex, scales = p.Scales, seed, url = DataUri(p.Image) },
            }).ConfigureAwait(false);
        var drawn = await draw.ConfigureAwait(false);
        Metrics.ImageSeconds.Observe(clock.Elapsed.TotalSeconds);
        _images.Observe(clock.Elapsed);
        return new { type = "image_url", image_url = new { url = DataUri(drawn.Image) }, seed = drawn.Seed };
    }

    static string DataUri(VarGpt.Vision.RgbImage image) => "data:image/png;base64," + Convert.ToBase64String(image.EncodePng());

    // ------------------------------------------------------------------------------------------------ images

    async Task ImageGenerationsAsync(HttpContext context)
    {
        ImageCall call;
        using (var doc = await ReadJsonAsync(context).ConfigureAwait(false))
            call = Requests.ParseImage(RequestFields.Root(doc), _backend!.Model, _options, null);
        await DrawAsync(context, call).ConfigureAwait(false);
    }

    async Task ImageEditsAsync(HttpContext context)
    {
        if (!context.Request.HasFormContentType)
            throw ApiException.BadRequest($"Invalid Content-Type header ({context.Request.ContentType ?? "none"}); /v1/images/edits takes multipart/form-data with an 'image' file and a 'prompt'.", null, "invalid_content_type");
        var form = await Requests.ReadFormAsync(context.Request, context.RequestAborted).ConfigureAwait(false);
        var call = await Requests.ParseEditFormAsync(form, _backend!.Model, _options, context.RequestAborted).ConfigureAwait(false);
        await DrawAsync(context, call).ConfigureAwait(false);
    }

    async Task DrawAsync(HttpContext context, ImageCall call)
    {
        context.Items["model"] = call.Model;
        using var cts = RequestCancellation(context);
        var clock = Stopwatch.StartNew();
        using var slot = await _images.EnterAsync(cts.Token).ConfigureAwait(false) ?? throw ApiException.QueueFull(_images.RetryAfterSeconds, "image");
        var previews = System.Threading.Channels.Channel.CreateUnbounded<ImagePreview>();
        bool firstPreview = true;
        var draw = Task.Factory.StartNew(() =>
        {
            try
            {
                return _backend!.DrawImages(call.Job, call.Stream && call.PartialImages > 0 ? p =>
                {
                    if (firstPreview) { firstPreview = false; Metrics.FirstPreviewSeconds.Observe(clock.Elapsed.TotalSeconds); }
                    previews.Writer.TryWrite(p);
                } : null, cts.Token);
            }
            finally { previews.Writer.TryComplete(); }
        }, cts.Token, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        string prefix = call.Edit ? "image_edit" : "image_generation";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        bool started = false;
        int partialIndex = 0;
        try
        {
            if (call.Stream)
            {
                await foreach (var p in previews.Reader.ReadAllAsync(cts.Token).ConfigureAwait(false))
                {
                    if (!started) { await Sse.StartAsync(context).ConfigureAwait(false); started = true; }
                    await Sse.WriteAsync(context, new
                    {
                        type = prefix + ".partial_image", b64_json = Convert.ToBase64String(p.Image.EncodePng()), created_at = created,
                        size = call.Size.Name, quality = "auto", background = "opaque", output_format = "png", partial_image_index = partialIndex++,
                        // VARGPT extensions
                        image_index = p.ImageIndex, scale_index = p.ScaleIndex, scales = p.Scales, seed = call.Job.Options.Seed + p.ImageIndex,
                        elapsed_seconds = Math.Round(p.Elapsed.TotalSeconds, 3),
                    }, prefix + ".partial_image").ConfigureAwait(false);
                }
            }
            ImageOutcome outcome;
            try { outcome = await draw.ConfigureAwait(false); }
            catch (Exception e) when (started && !context.RequestAborted.IsCancellationRequested)
            {
                var api = ToApiError(e, context);
                context.Items["error_code"] = api.Code ?? api.Type;
                await Sse.WriteRawAsync(context, ApiException.Json(api.Message, api.Type, api.Param, api.Code), "error").ConfigureAwait(false);
                return;
            }
            Metrics.ImageSeconds.Observe(clock.Elapsed.TotalSeconds / Math.Max(1, outcome.Images.Count));
            _images.Observe(clock.Elapsed);
            context.Items["prompt_tokens"] = outcome.PromptTokens;
            var usage = new
            {
                input_tokens = outcome.PromptTokens, output_tokens = outcome.Images.Count * call.Size.Tokens, total_tokens = outcome.PromptTokens + outcome.Images.Count * call.Size.Tokens,
                input_tokens_details = new { text_tokens = outcome.PromptTokens, image_tokens = 0 },
            };
            if (call.Stream)
            {
                if (!started) { await Sse.StartAsync(context).ConfigureAwait(false); started = true; }
                for (int i = 0; i < outcome.Images.Count; i++)
                    await Sse.WriteAsync(context, new
                    {
                        type = prefix + ".completed", b64_json = Convert.ToBase64String(outcome.Images[i].Image.EncodePng()), created_at = created,
                        size = call.Size.Name, quality = "auto", background = "opaque", output_format = "png", usage,
                        image_index = i, seed = outcome.Images[i].Seed, revised_prompt = outcome.Text.Length > 0 ? outcome.Text : null,
                    }, prefix + ".completed").ConfigureAwait(false);
                return;
            }
            await context.Response.WriteAsJsonAsync(new
            {
                created,
                data = outcome.Images.Select(p => new { b64_json = Convert.ToBase64String(p.Image.EncodePng()), revised_prompt = outcome.Text.Length > 0 ? outcome.Text : null, seed = p.Seed }),
                background = "opaque", output_format = "png", quality = "auto", size = call.Size.Name, usage,
            }, cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            Metrics.Cancelled.WithLabels("image").Inc();
            await draw.ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);   // let the loop stop at its next scale before the slot is freed
        }
    }
}
