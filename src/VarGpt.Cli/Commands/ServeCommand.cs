using System.CommandLine;
using VarGpt;
using VarGpt.Cli.Runner;
using VarGpt.Server;
using VarGpt.Server.Backend;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt serve: the OpenAI-compatible server and the web page over one loaded model.</summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var defaults = new ServerOptions();
        var model = new ModelOptions();
        var host = new Option<string>("--host") { Description = "Address to bind. Loopback by default; any other address needs an API key.", DefaultValueFactory = _ => defaults.Host };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free port).", DefaultValueFactory = _ => defaults.Port };
        var apiKey = new Option<string?>("--api-key") { Description = $"Require 'Authorization: Bearer KEY' on /v1 and /metrics (default: ${ServerOptions.ApiKeyVariable} if set)." };
        var cors = new Option<string[]>("--cors-origin") { Description = "Allow browser pages from this origin (repeatable, e.g. http://localhost:3000). Default: no CORS.", AllowMultipleArgumentsPerToken = false };
        var maxBatch = new Option<int>("--max-batch") { Description = "Chat requests decoded together (continuous batching).", DefaultValueFactory = _ => defaults.MaxBatch };
        var maxImages = new Option<int>("--max-concurrent-images") { Description = "Image requests drawn at the same time.", DefaultValueFactory = _ => defaults.MaxConcurrentImages };
        var maxQueue = new Option<int>("--max-queue") { Description = "Requests that may wait per kind (chat, image); more get 429 with Retry-After.", DefaultValueFactory = _ => defaults.MaxQueue };
        var timeout = new Option<double>("--timeout") { Description = "Per-request time limit in seconds.", DefaultValueFactory = _ => defaults.RequestTimeout.TotalSeconds };
        var maxBody = new Option<double>("--max-body-mb") { Description = "Request body limit in MiB.", DefaultValueFactory = _ => defaults.MaxBodyBytes / (double)(1 << 20) };
        var maxPixels = new Option<long>("--max-image-pixels") { Description = "Pixels of one input image (checked before decoding).", DefaultValueFactory = _ => defaults.MaxImagePixels };
        var cmd = new Command("serve", "OpenAI-compatible HTTP server (chat, images, edits with streamed per-scale previews) and a web page at /.");
        model.AddTo(cmd);
        foreach (var o in new Option[] { host, port, apiKey, cors, maxBatch, maxImages, maxQueue, timeout, maxBody, maxPixels }) cmd.Options.Add(o);
        cmd.WithDetails(
            """
            Endpoints: GET /v1/models; POST /v1/chat/completions (stream, images as data: URIs); POST /v1/images/generations
            and /v1/images/edits (multipart) with stream=true sending a preview after every scale; GET /health, /ready,
            /metrics (Prometheus); the web page at /. The model loads after the server listens: /v1 answers 503 until
            /ready says ready. Concurrent chat requests decode in one batch. Ctrl-C or SIGTERM finishes the requests in
            flight (up to 30 s) and exits. One JSON log line per request goes to stdout. See the README, "Serving".
            """);
        cmd.WithExamples(
            "vargpt serve                                   # the shipped model on http://127.0.0.1:8000",
            "vargpt serve --model ~/models/VARGPT-v1.1 --dtype bfloat16 --port 8080",
            "VARGPT_API_KEY=secret-key vargpt serve --host 0.0.0.0   # beyond loopback: a key is required");
        cmd.SetAction(parse =>
        {
            var log = parse.InvocationConfiguration.Error;
            var options = new ServerOptions
            {
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                ApiKey = parse.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable(ServerOptions.ApiKeyVariable) is { Length: > 0 } k ? k : null),
                CorsOrigins = parse.GetValue(cors) ?? [],
                MaxBatch = parse.GetValue(maxBatch),
                MaxConcurrentImages = parse.GetValue(maxImages),
                MaxQueue = parse.GetValue(maxQueue),
                RequestTimeout = TimeSpan.FromSeconds(parse.GetValue(timeout)),
                MaxBodyBytes = (long)(parse.GetValue(maxBody) * (1 << 20)),
                MaxImagePixels = parse.GetValue(maxPixels),
            };
            try { options.Validate(); }
            catch (ArgumentException e) { throw new InvalidOptionException(e.Message); }
            model.ResolveModelDir(parse);     // a missing model folder fails before the server starts
            model.LoadOptions(parse);         // so do bad --device / --dtype / adapter options
            var server = new VargptServer(options, () => new ModelBackend(model.Load(parse, log)));
            try
            {
                server.StartAsync().GetAwaiter().GetResult();
                log.WriteLine($"serving on {server.Url} (web page: {server.Url}, API: {new Uri(server.Url, "v1")}); Ctrl-C to stop");
                try { server.Ready.GetAwaiter().GetResult(); log.WriteLine($"ready: {server.Backend!.Model.Id}"); }
                catch (Exception e) { log.WriteLine($"error: the model failed to load: {e.Message}"); return ExitCodes.UserError; }
                server.WaitForShutdownAsync().GetAwaiter().GetResult();
                log.WriteLine("stopped");
                return ExitCodes.Ok;
            }
            finally { server.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        });
        return cmd;
    }
}
