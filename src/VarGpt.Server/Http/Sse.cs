using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace VarGpt.Server.Http;

/// <summary>Server-sent events as the OpenAI API streams them: <c>event: NAME</c> (images only) and one <c>data: JSON</c> line per event.</summary>
public static class Sse
{
    public static readonly JsonSerializerOptions Json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    public static async Task StartAsync(HttpContext context)
    {
        var r = context.Response;
        r.StatusCode = 200;
        r.ContentType = "text/event-stream; charset=utf-8";
        r.Headers.CacheControl = "no-cache";
        r.Headers["X-Accel-Buffering"] = "no";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await r.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }

    public static Task WriteAsync(HttpContext context, object payload, string? eventName = null) =>
        WriteRawAsync(context, JsonSerializer.Serialize(payload, Json), eventName);

    public static async Task WriteRawAsync(HttpContext context, string data, string? eventName = null)
    {
        var sb = new StringBuilder();
        if (eventName is not null) sb.Append("event: ").Append(eventName).Append('\n');
        sb.Append("data: ").Append(data).Append("\n\n");
        await context.Response.WriteAsync(sb.ToString(), context.RequestAborted).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }
}
