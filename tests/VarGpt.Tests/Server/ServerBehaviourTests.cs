using System.Net;
using System.Text;
using System.Text.Json;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Server;
using VarGpt.Server.Backend;

namespace VarGpt.Tests.Server;

/// <summary>How the server behaves as a server: streaming, previews, cancellation, readiness, logs and metrics.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ServerBehaviourTests(ServedModel served) : IClassFixture<ServedModel>
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;
    static StringContent Json(object o) => new(JsonSerializer.Serialize(o), Encoding.UTF8, "application/json");

    static async Task<List<(string Event, JsonElement Data)>> ReadEvents(HttpResponseMessage r)
    {
        var events = new List<(string, JsonElement)>();
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(Ct));
        string ev = "message";
        while (await reader.ReadLineAsync(Ct) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) ev = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                var data = line[6..];
                events.Add((ev, data == "[DONE]" ? JsonDocument.Parse("\"[DONE]\"").RootElement.Clone() : JsonDocument.Parse(data).RootElement.Clone()));
                ev = "message";
            }
        }
        return events;
    }

    [Fact]
    public async Task Streamed_image_generation_sends_a_preview_per_scale_then_the_final_image()
    {
        var r = await served.Http.PostAsync("v1/images/generations", Json(new { prompt = "Draw a red circle on the left.", stream = true, seed = 7 }), Ct);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.StartsWith("text/event-stream", r.Content.Headers.ContentType!.ToString());
        var events = await ReadEvents(r);
        var partial = events.Where(e => e.Event == "image_generation.partial_image").ToList();
        var scales = served.Server.Backend!.Model.DefaultImageSize.Scales;
        Assert.Equal(scales - 1, partial.Count);
        Assert.Equal(Enumerable.Range(0, scales - 1), partial.Select(p => p.Data.GetProperty("partial_image_index").GetInt32()));
        Assert.Equal(Enumerable.Range(0, scales - 1), partial.Select(p => p.Data.GetProperty("scale_index").GetInt32()));
        var done = Assert.Single(events, e => e.Event == "image_generation.completed").Data;
        Assert.Equal(7, done.GetProperty("seed").GetInt64());
        Assert.Equal("128x128", done.GetProperty("size").GetString());
        // previews are whole images at the output size that sharpen towards the final one
        var final = VarGpt.Vision.RgbImage.Decode(Convert.FromBase64String(done.GetProperty("b64_json").GetString()!));
        var previews = partial.Select(p => VarGpt.Vision.RgbImage.Decode(Convert.FromBase64String(p.Data.GetProperty("b64_json").GetString()!))).ToList();
        Assert.All(previews, p => Assert.Equal((final.Width, final.Height), (p.Width, p.Height)));
        static double Distance(VarGpt.Vision.RgbImage a, VarGpt.Vision.RgbImage b) => a.Data.Zip(b.Data, (x, y) => Math.Abs(x - y)).Average();
        Assert.True(Distance(previews[^1], final) < Distance(previews[0], final), "the last preview is closer to the final image than the first");

        // the same seed without streaming gives the same final image
        var plain = await served.Http.PostAsync("v1/images/generations", Json(new { prompt = "Draw a red circle on the left.", seed = 7 }), Ct);
        using var doc = JsonDocument.Parse(await plain.Content.ReadAsStringAsync(Ct));
        var data = doc.RootElement.GetProperty("data")[0];
        Assert.Equal(done.GetProperty("b64_json").GetString(), data.GetProperty("b64_json").GetString());
        Assert.Equal(7, data.GetProperty("seed").GetInt64());
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_stream_frees_its_row_within_a_step()
    {
        var metrics = served.Server.Metrics;
        double cancelledBefore = metrics.Cancelled.WithLabels("chat").Value;
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = Json(new
            {
                model = "shapesworld", stream = true, max_tokens = 3000, generate_images = false,
                messages = new[] { new { role = "user", content = "Describe the image." } },
            }),
        };
        using (var cts = CancellationTokenSource.CreateLinkedTokenSource(Ct))
        {
            var r = await served.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            var stream = await r.Content.ReadAsStreamAsync(cts.Token);
            await stream.ReadExactlyAsync(new byte[64], cts.Token);
            r.Dispose();   // hang up
        }
        var until = DateTime.UtcNow.AddSeconds(10);
        while (served.Server.Metrics.RunningChats.Value > 0 && DateTime.UtcNow < until) await Task.Delay(20, Ct);
        Assert.Equal(0, served.Server.Metrics.RunningChats.Value);
        // the row may also have ended by itself before the hang-up was seen (EOS); then nothing was cancelled
        Assert.True(metrics.Cancelled.WithLabels("chat").Value >= cancelledBefore);
        // the server goes on
        var ok = await served.Http.PostAsync("v1/chat/completions", Json(new { model = "shapesworld", max_tokens = 4, messages = new[] { new { role = "user", content = "hi" } } }), Ct);
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task Every_request_gets_an_id_and_one_structured_log_line()
    {
        var r = await served.Http.GetAsync("v1/models", Ct);
        var id = Assert.Single(r.Headers.GetValues("x-request-id"));
        Assert.StartsWith("req_", id);
        await Task.Delay(50, Ct);
        var line = Assert.Single(served.Log, l => l.Contains(id, StringComparison.Ordinal));
        Assert.Contains("GET /v1/models status=200", line);
    }

    [Fact]
    public async Task Metrics_are_prometheus_text_with_requests_queue_tokens_and_image_time()
    {
        await served.Http.PostAsync("v1/chat/completions", Json(new { model = "shapesworld", max_tokens = 4, messages = new[] { new { role = "user", content = "hi" } } }), Ct);
        var text = await served.Http.GetStringAsync("metrics", Ct);
        foreach (var name in new[] { "vargpt_requests_total", "vargpt_queue_depth", "vargpt_completion_tokens_total", "vargpt_decode_tokens_per_second",
                     "vargpt_image_seconds", "vargpt_errors_total", "vargpt_time_to_first_token_seconds" })
            Assert.Contains(name, text);
        Assert.Contains("vargpt_requests_total{route=\"/v1/chat/completions\",status=\"200\"}", text);
    }

    [Fact]
    public async Task Health_and_ready_answer_without_a_key()
    {
        using var open = served.NewClient(null);
        Assert.Contains("ready", await open.GetStringAsync("ready", Ct));
        Assert.Contains("ok", await open.GetStringAsync("health", Ct));
        var page = await open.GetStringAsync("/", Ct);
        Assert.Contains("<title>VarGpt.NET</title>", page);
        var unknown = await open.GetAsync("nope", Ct);
        Assert.Equal(HttpStatusCode.NotFound, unknown.StatusCode);
    }
}

/// <summary>Readiness and draining, on servers of their own.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ServerLifecycleTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task While_the_model_loads_the_api_answers_503_with_retry_after_and_ready_says_loading()
    {
        var gate = new ManualResetEventSlim();
        await using var server = new VargptServer(new ServerOptions { Port = 0 }, () => { gate.Wait(TimeSpan.FromSeconds(30)); return ModelBackend.Load(ShippedModel.Resolve()); },
            logging => { });
        await server.StartAsync(Ct);
        using var http = new HttpClient { BaseAddress = server.Url };
        var r = await http.GetAsync("v1/models", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
        Assert.NotNull(r.Headers.RetryAfter);
        Assert.Contains("loading", await r.Content.ReadAsStringAsync(Ct));
        var ready = await http.GetAsync("ready", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        gate.Set();
        await server.Ready;
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("v1/models", Ct)).StatusCode);
    }

    [Fact]
    public async Task Stopping_lets_a_running_request_finish_and_refuses_new_ones()
    {
        await using var server = new VargptServer(new ServerOptions { Port = 0 }, () => ModelBackend.Load(ShippedModel.Resolve()), logging => { });
        await server.StartAsync(Ct);
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.Url };
        var running = http.PostAsync("v1/images/generations", new StringContent(
            JsonSerializer.Serialize(new { prompt = "Draw a red circle on the left.", n = 2, force_image_start = true }), Encoding.UTF8, "application/json"), Ct);
        // stop once the request is inside the image gate (a fixed delay lost the race on a loaded machine)
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (server.Metrics.RunningImages.Value < 1 && !running.IsCompleted && DateTime.UtcNow < deadline)
            await Task.Delay(5, Ct);
        Assert.True(server.Metrics.RunningImages.Value >= 1 || running.IsCompleted, "the image request never started");
        var stopping = server.StopAsync(Ct);
        var r = await running;
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        await stopping;
        Assert.Equal(ServerState.Draining, server.State);
    }

    [Fact]
    public void A_non_loopback_host_without_an_api_key_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => new ServerOptions { Host = "0.0.0.0" }.Validate());
        Assert.Contains("API key", e.Message);
        new ServerOptions { Host = "0.0.0.0", ApiKey = "long-enough-key" }.Validate();
        new ServerOptions { Host = "::1" }.Validate();
    }
}
