using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using SkiaSharp;
using VarGpt.Server;

namespace VarGpt.Tests.Server;

/// <summary>A served model with small limits, so each limit can be hit cheaply.</summary>
public sealed class SmallLimitsServer : ServedModel
{
    protected override ServerOptions Options => new()
    {
        Port = 0, ApiKey = Key, MaxBodyBytes = 2 << 20, MaxImageBytes = 1 << 20, MaxImagePixels = 1024 * 1024, MaxMessages = 8, MaxQueue = 0,
    };
}

/// <summary>
/// Bad input answered as the OpenAI API does: the status code, and an error object whose message and param name the
/// problem. Each case is a plain HTTP request (what a hand-written client sends).
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class BadInputTests(SmallLimitsServer served) : IClassFixture<SmallLimitsServer>
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static string Image(byte[] png) => "data:image/png;base64," + Convert.ToBase64String(png);

    static object Chat(object content, int maxTokens = 4) => new { model = "shapesworld", max_tokens = maxTokens, messages = new[] { new { role = "user", content } } };

    async Task<(HttpStatusCode Status, JsonElement Error, HttpResponseMessage Response)> Post(string path, HttpContent content, HttpClient? client = null)
    {
        var r = await (client ?? served.Http).PostAsync("v1/" + path, content, Ct);
        var body = await r.Content.ReadAsStringAsync(Ct);
        using var doc = JsonDocument.Parse(body);
        Assert.True(doc.RootElement.TryGetProperty("error", out var e), $"an OpenAI error object, got: {body}");
        foreach (var field in new[] { "message", "type", "param", "code" }) Assert.True(e.TryGetProperty(field, out _), $"error.{field} missing: {body}");
        return (r.StatusCode, e.Clone(), r);
    }

    static StringContent Json(object o) => new(JsonSerializer.Serialize(o), Encoding.UTF8, "application/json");
    static StringContent Raw(string s) => new(s, Encoding.UTF8, "application/json");

    [Fact]
    public async Task Malformed_json_is_400_invalid_json()
    {
        var (status, e, _) = await Post("chat/completions", Raw("{\"model\": \"shapesworld\", \"messages\": ["));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_json", e.GetProperty("code").GetString());
        Assert.Contains("could not parse the JSON body", e.GetProperty("message").GetString());
    }

    [Theory]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":\"ten\"}", "max_tokens", "expected an integer")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":true}", "temperature", "expected a number")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":\"hi\"}", "messages", "expected an array")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":42}]}", "messages[0].content", "a string or an array")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages[0].role", "Supported roles")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[]}", "messages", "empty array")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "model", "Missing required parameter")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100000}", "max_tokens", "out of range")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":2}", "n", "one choice")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"frobnicate\":1}", "frobnicate", "Unrecognized request argument")]
    [InlineData("{\"model\":\"shapesworld\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"x\"}]}", "messages", "must end with")]
    public async Task Wrong_types_and_values_name_the_parameter(string body, string param, string says)
    {
        var (status, e, _) = await Post("chat/completions", Raw(body));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(param, e.GetProperty("param").GetString());
        Assert.Contains(says, e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Too_many_messages_is_400()
    {
        var messages = Enumerable.Range(0, 9).Select(i => new { role = i % 2 == 0 ? "user" : "assistant", content = "hi" }).ToArray();
        var (status, e, _) = await Post("chat/completions", Json(new { model = "shapesworld", messages }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("at most 8", e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Unknown_model_is_404_model_not_found()
    {
        var (status, e, _) = await Post("chat/completions", Json(new { model = "gpt-4o", messages = new[] { new { role = "user", content = "hi" } } }));
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Equal("model_not_found", e.GetProperty("code").GetString());
        Assert.Contains("gpt-4o", e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task An_oversized_body_is_413()
    {
        // Expect: 100-continue, as curl sends for large bodies: the server answers before the body is sent (otherwise the
        // client may still be writing when the server closes the connection after its 413)
        var big = new string('a', 3 << 20);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = Json(Chat(big)) };
        request.Headers.ExpectContinue = true;
        var response = await served.Http.SendAsync(request, Ct);
        var status = response.StatusCode;
        var e = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement.GetProperty("error");
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        Assert.Contains("limit", e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Corrupt_images_are_400_naming_the_content_part()
    {
        var png = ServedModel.ScenePng();
        var truncated = png[..(png.Length / 2)];
        var garbage = Encoding.ASCII.GetBytes("this is not an image at all");
        foreach (var bytes in new[] { truncated, garbage })
        {
            var (status, e, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = Image(bytes) } }, new { type = "text", text = "hi" } })));
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal("messages[0].content[0].image_url.url", e.GetProperty("param").GetString());
            Assert.Equal("invalid_image", e.GetProperty("code").GetString());
        }
        var (s2, e2, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = "data:image/png;base64,!!!notbase64" } } })));
        Assert.Equal(HttpStatusCode.BadRequest, s2);
        Assert.Contains("base64", e2.GetProperty("message").GetString());
    }

    [Fact]
    public async Task A_huge_image_is_refused_from_its_header_before_decoding()
    {
        // 2000×2000 = 4 Mpx of one colour: a few KB of PNG, over the 1 Mpx limit
        using var bmp = new SKBitmap(2000, 2000);
        bmp.Erase(SKColors.White);
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        var (status, e, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = Image(data.ToArray()) } } })));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("image_too_large", e.GetProperty("code").GetString());
        Assert.Contains("2000x2000", e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Image_bytes_over_the_limit_are_400()
    {
        var noise = new byte[(1 << 20) + 10];
        new Random(1).NextBytes(noise);
        var (status, e, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = Image(noise) } } })));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("image_too_large", e.GetProperty("code").GetString());
    }

    [Fact]
    public async Task A_remote_image_url_is_never_fetched()
    {
        var (status, e, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = "http://127.0.0.1:1/cat.png" } } })));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("remote_image_url_not_supported", e.GetProperty("code").GetString());
        Assert.Contains("data URI", e.GetProperty("message").GetString());
        var (s2, e2, _) = await Post("chat/completions", Json(Chat(new object[] { new { type = "image_url", image_url = new { url = "file:///etc/passwd" } } })));
        Assert.Equal(HttpStatusCode.BadRequest, s2);
        Assert.Contains("scheme 'file'", e2.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Missing_or_wrong_api_key_is_401()
    {
        using var none = served.NewClient(null);
        var (s1, e1, _) = await Post("chat/completions", Json(Chat("hi")), none);
        Assert.Equal(HttpStatusCode.Unauthorized, s1);
        Assert.Contains("didn't provide an API key", e1.GetProperty("message").GetString());
        using var wrong = served.NewClient("wrong-key-000000000");
        var (s2, e2, _) = await Post("chat/completions", Json(Chat("hi")), wrong);
        Assert.Equal(HttpStatusCode.Unauthorized, s2);
        Assert.Equal("invalid_api_key", e2.GetProperty("code").GetString());
        // the page and the probes stay open; metrics need the key
        Assert.Equal(HttpStatusCode.OK, (await none.GetAsync("/", Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await none.GetAsync("/health", Ct)).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await none.GetAsync("/metrics", Ct)).StatusCode);
    }

    [Fact]
    public async Task A_prompt_over_the_context_is_400_context_length_exceeded()
    {
        var words = string.Join(' ', Enumerable.Repeat("red circle left", 3000));
        var (status, e, _) = await Post("chat/completions", Json(Chat(words)));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("context_length_exceeded", e.GetProperty("code").GetString());
        Assert.Contains("max_position_embeddings", e.GetProperty("message").GetString());
    }

    [Fact]
    public async Task Image_requests_check_size_format_and_the_edit_form()
    {
        var (s1, e1, _) = await Post("images/generations", Json(new { prompt = "a red circle", size = "1024x1024" }));
        Assert.Equal(HttpStatusCode.BadRequest, s1);
        Assert.Equal("size", e1.GetProperty("param").GetString());
        Assert.Contains("128x128", e1.GetProperty("message").GetString());
        var (s2, e2, _) = await Post("images/generations", Json(new { prompt = "a red circle", response_format = "url" }));
        Assert.Equal(HttpStatusCode.BadRequest, s2);
        Assert.Equal("response_format", e2.GetProperty("param").GetString());
        var (s3, e3, _) = await Post("images/edits", Json(new { prompt = "make it blue" }));
        Assert.Equal(HttpStatusCode.BadRequest, s3);
        Assert.Contains("multipart/form-data", e3.GetProperty("message").GetString());
        using var form = new MultipartFormDataContent { { new StringContent("make it blue"), "prompt" } };
        var (s4, e4, _) = await Post("images/edits", form);
        Assert.Equal(HttpStatusCode.BadRequest, s4);
        Assert.Equal("image", e4.GetProperty("param").GetString());
        using var corrupt = new MultipartFormDataContent { { new StringContent("make it blue"), "prompt" }, { new ByteArrayContent(Encoding.ASCII.GetBytes("GIF89a broken")), "image", "x.gif" } };
        var (s5, e5, _) = await Post("images/edits", corrupt);
        Assert.Equal(HttpStatusCode.BadRequest, s5);
        Assert.Equal("invalid_image", e5.GetProperty("code").GetString());
    }

    [Fact]
    public async Task A_full_image_queue_answers_429_with_retry_after()
    {
        // max queue 0, one image at a time: while one image streams, a second request is refused at once
        var first = new HttpRequestMessage(HttpMethod.Post, "v1/images/generations")
        {
            Content = Json(new { prompt = "Draw a red circle on the left.", stream = true, force_image_start = true, n = 4 }),
        };
        using var running = await served.Http.SendAsync(first, HttpCompletionOption.ResponseHeadersRead, Ct);
        Assert.Equal(HttpStatusCode.OK, running.StatusCode);
        var (status, e, response) = await Post("images/generations", Json(new { prompt = "a blue square" }));
        Assert.Equal((HttpStatusCode)429, status);
        Assert.Equal("rate_limit_exceeded", e.GetProperty("code").GetString());
        Assert.NotNull(response.Headers.RetryAfter);
        await running.Content.ReadAsStringAsync(Ct);   // let it finish
    }
}
