using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace VarGpt.Server.Http;

/// <summary>
/// An error answered in the OpenAI API's format: <c>{"error": {"message", "type", "param", "code"}}</c> with the HTTP
/// status. Types follow the OpenAI API: invalid_request_error (400, 401, 404, 413), rate_limit_exceeded... (429 has
/// type "requests"), server_error (500), service_unavailable (503).
/// </summary>
public sealed class ApiException(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    /// <summary>Seconds for a Retry-After header (429, 503), or null.</summary>
    public int? RetryAfter { get; init; }

    public static ApiException BadRequest(string message, string? param = null, string? code = null) => new(400, message, "invalid_request_error", param, code);

    public static ApiException Unauthorized(string message) => new(401, message, "invalid_request_error", null, "invalid_api_key");

    public static ApiException ModelNotFound(string model) =>
        new(404, $"The model `{model}` does not exist or you do not have access to it.", "invalid_request_error", "model", "model_not_found");

    public static ApiException TooLarge(string message, string? param = null) => new(413, message, "invalid_request_error", param, "request_too_large");

    public static ApiException QueueFull(int retryAfter, string what) =>
        new(429, $"The server is busy: the {what} queue is full. Retry after {retryAfter} s.", "requests", null, "rate_limit_exceeded") { RetryAfter = retryAfter };

    public static ApiException Unavailable(string message, int retryAfter = 1) =>
        new(503, message, "service_unavailable", null, "service_unavailable") { RetryAfter = retryAfter };

    public object Body => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    /// <summary>Messages quote parameter names: keep quotes readable (the body is JSON, never embedded in HTML).</summary>
    static readonly JsonSerializerOptions Options = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static string Json(string message, string type, string? param, string? code) =>
        JsonSerializer.Serialize(new { error = new { message, type, param, code } }, Options);

    /// <summary>Writes the error (headers not yet sent).</summary>
    public async Task WriteAsync(HttpContext context)
    {
        context.Response.StatusCode = Status;
        if (RetryAfter is int s) context.Response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(Json(Message, Type, Param, Code), context.RequestAborted).ConfigureAwait(false);
    }
}
