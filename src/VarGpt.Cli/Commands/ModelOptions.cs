using System.CommandLine;
using System.Diagnostics;
using VarGpt.Model;
using VarGpt.Torch;

namespace VarGpt.Cli.Commands;

/// <summary>The options every model-running command shares (--model, --device, --dtype) and loading with progress lines.</summary>
public sealed class ModelOptions
{
    public Option<string?> Model { get; } = new("--model", "-m")
    {
        Description = "Model folder in the official layout (config.json, tokenizer files, safetensors).",
    };
    public Option<string> Device { get; } = new("--device")
    {
        Description = "cpu, cuda or cuda:N (CUDA needs the CUDA libtorch package; see README 'Platform notes').",
        DefaultValueFactory = _ => "cpu",
    };
    public Option<string> DType { get; } = new("--dtype")
    {
        Description = "Compute dtype: float32 (as the official inference scripts), bfloat16 or float16.",
        DefaultValueFactory = _ => "float32",
    };
    public Option<bool> NoMmap { get; } = new("--no-mmap")
    {
        Description = "Copy the weights into memory instead of memory-mapping the safetensors files (CPU default: weights stored in the compute dtype are mapped; see docs/notes/checkpoint-io.md).",
    };

    public void AddTo(Command cmd)
    {
        cmd.Options.Add(Model);
        cmd.Options.Add(Device);
        cmd.Options.Add(DType);
        cmd.Options.Add(NoMmap);
    }

    /// <summary>The model folder: --model, else the VARGPT_MODEL environment variable.</summary>
    public string ResolveModelDir(ParseResult parse)
    {
        var dir = parse.GetValue(Model) ?? Environment.GetEnvironmentVariable("VARGPT_MODEL");
        if (string.IsNullOrWhiteSpace(dir))
            throw new UserErrorException("no model folder given: pass --model DIR (or set VARGPT_MODEL)");
        return Path.GetFullPath(dir);
    }

    /// <summary>Loads the pipeline, printing plain progress lines to <paramref name="log"/> (stderr in the commands).</summary>
    public VargptPipeline Load(ParseResult parse, TextWriter log, ModelParts parts = ModelParts.All)
    {
        var dir = ResolveModelDir(parse);
        PipelineOptions options;
        try
        {
            options = new PipelineOptions
            {
                Device = TorchRuntime.ParseDevice(parse.GetValue(Device)!),
                DType = TorchRuntime.ParseDType(parse.GetValue(DType)!),
                Parts = parts,
                MemoryMap = parse.GetValue(NoMmap) ? false : null,
            };
        }
        catch (ArgumentException e) { throw new UserErrorException(e.Message); }
        var sw = Stopwatch.StartNew();
        log.WriteLine($"loading {dir} ({TorchRuntime.DTypeName(options.DType)} on {options.Device.type.ToString().ToLowerInvariant()})");
        int tenths = 0;
        double lastLine = 0;
        var p = VargptPipeline.Load(dir, options, (stage, fraction) =>
        {
            if (fraction == 0) { log.WriteLine($"  {stage}... ({sw.Elapsed.TotalSeconds:F1} s)"); lastLine = sw.Elapsed.TotalSeconds; }
            // weights: a line per 10% step, at most one per second (a full checkpoint takes minutes, a tiny one no time)
            else if (stage == "weights" && fraction < 1 && (int)(fraction * 10) > tenths && sw.Elapsed.TotalSeconds - lastLine >= 1)
            {
                tenths = (int)(fraction * 10);
                lastLine = sw.Elapsed.TotalSeconds;
                log.WriteLine($"  weights {tenths * 10}% ({lastLine:F1} s)");
            }
        });
        log.WriteLine($"loaded in {sw.Elapsed.TotalSeconds:F1} s");
        return p;
    }
}
