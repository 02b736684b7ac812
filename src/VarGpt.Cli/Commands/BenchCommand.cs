using System.CommandLine;
using VarGpt.Benchmarks;
using VarGpt.Torch;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>
/// vargpt bench ...: measurements. `machine` gives the hardware figures the model benchmarks are read against;
/// the chat/generate benchmarks add their subcommands to <see cref="Create"/> using VarGpt.Benchmarks
/// (BenchTimer, MemoryPhase, BenchRecord) and the shared <see cref="JsonOption"/> / <see cref="Print"/>.
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var bench = new Command("bench", "Benchmarks: machine figures (memory bandwidth, matmul FLOP/s, peak RSS); model benchmarks build on them.")
        {
            Machine(),
            BenchChatCommand.Create(),
            BenchGenerateCommand.Create(),
            BenchServeCommand.Create(),
        };
        bench.WithExamples("vargpt bench machine", "vargpt bench machine --json");
        return bench;
    }

    /// <summary>--json: print the result as one JSON object (BenchRecord.ToJson) instead of text.</summary>
    public static Option<bool> JsonOption() => new("--json") { Description = "Print the result as a JSON object (benchmark, timestamp, machine, settings, metrics{name:{value,unit,note}})." };

    /// <summary>--threads N: libtorch intra-op threads for the run (default: libtorch's choice, one per core).</summary>
    public static Option<int?> ThreadsOption() => new("--threads") { Description = "libtorch intra-op threads (default: libtorch's choice)." };

    public static Option<string> DeviceOption() => new("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };

    public static void ApplyThreads(int? threads)
    {
        if (threads is { } t)
        {
            if (t < 1) throw new VargptInputException($"--threads must be at least 1, got {t}");
            TorchSharp.torch.set_num_threads(t);
        }
    }

    public static void Print(BenchRecord r, bool json, TextWriter o)
    {
        if (json) o.WriteLine(r.ToJson());
        else r.WriteText(o);
    }

    static Command Machine()
    {
        var json = JsonOption();
        var threads = ThreadsOption();
        var device = DeviceOption();
        var sizeMb = new Option<int>("--bandwidth-mb") { Description = "Size in MiB of the fp32 tensor summed for the read bandwidth.", DefaultValueFactory = _ => (int)(new MachineBenchOptions().BandwidthBytes >> 20) };
        var n = new Option<int>("--matmul-n") { Description = "n of the [n,n] x [n,n]^T matmuls (2n^3 FLOP each).", DefaultValueFactory = _ => new MachineBenchOptions().MatmulN };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per figure (best is reported, after one warm-up).", DefaultValueFactory = _ => new MachineBenchOptions().Repeats };
        var cmd = new Command("machine", "Measure memory read bandwidth (GB/s), fp32/bf16 matmul throughput (GFLOP/s via linear) and peak RSS.")
        { json, threads, device, sizeMb, n, repeats };
        cmd.WithDetails(
            """
            Bandwidth: sum() over a large fp32 tensor (bytes read / best time). Matmul: functional.linear of two
            [n, n] matrices in fp32 and bf16 (2n^3 FLOP / best time); linear is the path the model's layers take.
            Decoding a bf16 language model is bandwidth-bound: tokens/s <= bandwidth / bytes of weights read per token.
            Takes a few seconds with the defaults; other processes on the machine lower the figures.
            """);
        cmd.WithExamples("vargpt bench machine", "vargpt bench machine --json --threads 1");
        cmd.SetAction(parse =>
        {
            ApplyThreads(parse.GetValue(threads));
            int mb = parse.GetValue(sizeMb), nn = parse.GetValue(n), rep = parse.GetValue(repeats);
            if (mb < 1) throw new VargptInputException($"--bandwidth-mb must be at least 1, got {mb}");
            if (nn < 1) throw new VargptInputException($"--matmul-n must be at least 1, got {nn}");
            if (rep < 1) throw new VargptInputException($"--repeats must be at least 1, got {rep}");
            var dev = TorchRuntime.ParseDevice(parse.GetValue(device)!);
            var r = MachineBenchmarks.Run(new MachineBenchOptions { BandwidthBytes = (long)mb << 20, MatmulN = nn, Repeats = rep, Device = dev });
            Print(r, parse.GetValue(json), parse.InvocationConfiguration.Output);
            return ExitCodes.Ok;
        });
        return cmd;
    }
}
