using System.Collections.Concurrent;
using System.Net.Http.Headers;
using Microsoft.Extensions.Logging;
using SkiaSharp;
using VarGpt.Inference;
using VarGpt.Model;
using VarGpt.Server;
using VarGpt.Server.Backend;
using VarGpt.ShapesWorld;

namespace VarGpt.Tests.Server;

/// <summary>
/// A real server (Kestrel on a free loopback port) over the shipped model, with an API key, the log lines it writes
/// collected in memory. One per test class (a class fixture); the classes run in the non-parallel collection because
/// loading a model sets libtorch's process-wide default dtype.
/// </summary>
public class ServedModel : IAsyncLifetime
{
    public const string Key = "test-key-0123456789";

    public VargptServer Server { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;
    public ConcurrentQueue<string> Log { get; } = new();
    public Uri Url => Server.Url;
    public Uri V1 => new(Server.Url, "v1/");

    protected virtual ServerOptions Options => new() { Port = 0, ApiKey = Key };

    public async ValueTask InitializeAsync()
    {
        Server = new VargptServer(Options, () => ModelBackend.Load(ShippedModel.Resolve()), logging => logging.AddProvider(new ListLoggerProvider(Log)));
        await Server.StartAsync();
        await Server.Ready;
        Http = NewClient(Key);
    }

    public HttpClient NewClient(string? key)
    {
        var http = new HttpClient { BaseAddress = Server.Url, Timeout = TimeSpan.FromMinutes(2) };
        if (key is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }

    public async ValueTask DisposeAsync()
    {
        Http?.Dispose();
        if (Server is not null) await Server.DisposeAsync();
        GC.SuppressFinalize(this);
    }

    /// <summary>A ShapesWorld scene as PNG bytes: a large red circle on the left.</summary>
    public static byte[] ScenePng(Shape shape = Shape.Circle, ShapeColor color = ShapeColor.Red, Position position = Position.Left)
    {
        using var bmp = ShapesRenderer.Render(new Scene([new ShapeObject(shape, color, ObjectSize.Large, position)]));
        using var data = bmp.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    sealed class ListLoggerProvider(ConcurrentQueue<string> lines) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new ListLogger(categoryName, lines);
        public void Dispose() { }
    }

    sealed class ListLogger(string category, ConcurrentQueue<string> lines) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information && (category.StartsWith("VarGpt", StringComparison.Ordinal) || logLevel >= LogLevel.Warning);
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) lines.Enqueue($"{category} {logLevel}: {formatter(state, exception)}");
        }
    }
}
