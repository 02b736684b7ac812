using System.CommandLine;
using VarGpt;
using VarGpt.Benchmarks;
using VarGpt.Cli.Runner;
using VarGpt.Server.Backend;
using VarGpt.Server.Bench;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt bench serve: the server's load and fault test on loopback (<see cref="ServeBenchmark"/>).</summary>
public static class BenchServeCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var json = BenchCommand.JsonOption();
        var threads = BenchCommand.ThreadsOption();
        var quick = new Option<bool>("--quick") { Description = "The short version CI runs: concurrency 1 and 4, fewer requests and faults." };
        var concurrency = new Option<string?>("--concurrency") { Description = "Comma-separated concurrency levels (default 1,4,8,16)." };
        var tokens = new Option<int?>("--tokens") { Description = "Tokens each stream decodes in the throughput phase (default 64)." };
        var cmd = new Command("serve", "Load and fault test of `vargpt serve` on loopback: decode throughput, mixed load, faults, RSS, first preview.");
        model.AddTo(cmd);
        foreach (var o in new Option[] { json, threads, quick, concurrency, tokens }) cmd.Options.Add(o);
        cmd.WithDetails(
            """
            Starts the server on a free 127.0.0.1 port in this process and sends it (1) N concurrent streams that each
            decode --tokens tokens (ignore_eos), for the aggregate decode tokens/s of continuous batching; (2) a mixed load
            (chat, streamed chat with an image, image generation, edits) at each concurrency: requests/s, p50/p95 latency,
            time to first event, failures; (3) faults during a background load: 50 clients that hang up mid-stream, 20
            oversized bodies, 20 malformed requests, 20 corrupt images — each must get its status (413, 400, 400), later
            requests must succeed and RSS must stay within 10%; (4) the first image preview of an idle server.
            Exit code 1 when a check fails. Bounded: at most 15 minutes. Figures depend on the CPU and the load: label them.
            """);
        cmd.WithExamples("vargpt bench serve --json", "vargpt bench serve --quick", "vargpt bench serve --concurrency 1,8 --tokens 128");
        cmd.SetAction(parse =>
        {
            BenchCommand.ApplyThreads(parse.GetValue(threads));
            var options = parse.GetValue(quick) ? ServeBenchOptions.Quick : new ServeBenchOptions();
            if (parse.GetValue(concurrency) is { } c)
            {
                try { options = options with { Concurrency = c.Split(',').Select(s => int.Parse(s.Trim(), System.Globalization.CultureInfo.InvariantCulture)).ToList() }; }
                catch (FormatException) { throw new InvalidOptionException($"--concurrency {c}: give comma-separated integers such as 1,4,8,16"); }
                if (options.Concurrency.Count == 0 || options.Concurrency.Any(n => n < 1)) throw new InvalidOptionException($"--concurrency {c}: every level must be ≥ 1");
            }
            if (parse.GetValue(tokens) is int t) options = options with { DecodeTokens = t >= 2 ? t : throw new InvalidOptionException("--tokens must be ≥ 2") };
            model.ResolveModelDir(parse);
            var log = parse.InvocationConfiguration.Error;
            var scene = VarGpt.ShapesWorld.ShapesRenderer.Render(new VarGpt.ShapesWorld.Scene([new VarGpt.ShapesWorld.ShapeObject(
                VarGpt.ShapesWorld.Shape.Circle, VarGpt.ShapesWorld.ShapeColor.Red, VarGpt.ShapesWorld.ObjectSize.Large, VarGpt.ShapesWorld.Position.Left)]));
            byte[] png;
            using (scene)
            using (var data = scene.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100)) png = data.ToArray();
            double load1 = LoadAverage();
            var result = ServeBenchmark.RunAsync(() => new ModelBackend(model.Load(parse, log)), options, png, log).GetAwaiter().GetResult();
            var record = new BenchRecord("serve");
            record.Set("model", model.ResolveModelDir(parse)).Set("concurrency", string.Join(",", options.Concurrency)).Set("decode_tokens", options.DecodeTokens)
                .Set("requests_per_client", options.RequestsPerClient).Set("load_average_1min_before", load1).Set("load_average_1min_after", LoadAverage())
                .Set("checks", result.Passed ? "passed" : "FAILED: " + string.Join("; ", result.Failures.Take(10)));
            foreach (var m in result.Metrics) record.Add(m.Name, m.Value, m.Unit, m.Note);
            BenchCommand.Print(record, parse.GetValue(json), parse.InvocationConfiguration.Output);
            foreach (var f in result.Failures) log.WriteLine($"check failed: {f}");
            return result.Passed ? ExitCodes.Ok : ExitCodes.Failed;
        });
        return cmd;
    }

    static double LoadAverage() =>
        File.Exists("/proc/loadavg") && double.TryParse(File.ReadAllText("/proc/loadavg").Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture, out var l) ? l : double.NaN;
}
