using System.CommandLine;
using System.Diagnostics;
using VarGpt.Configuration;
using VarGpt.Model;
using VarGpt.Torch;
using VarGpt.Inference;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>The options every model-running command shares (--model, --device, --dtype, --no-mmap, --quantize, --adapter, --no-adapter) and loading with progress lines.</summary>
public sealed class ModelOptions
{
    public Option<string?> Model { get; } = new("--model", "-m")
    {
        Description = $"Model folder in the official layout (config.json, tokenizer files, safetensors). Default: ${ShippedModel.EnvironmentVariable} if set, else the shipped ShapesWorld model ({ShippedModel.RelativePath}).",
    };
    public Option<string?> Adapter { get; } = new("--adapter")
    {
        Description = $"PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to merge into the weights at load. Default: the model folder's {VargptModelOptions.DefaultAdapterFolder}/ subfolder when it exists.",
    };
    public Option<bool> NoAdapter { get; } = new("--no-adapter")
    {
        Description = $"Load the base weights only: do not merge the model folder's {VargptModelOptions.DefaultAdapterFolder}/ adapter.",
    };
    public Option<string> Device { get; } = new("--device")
    {
        Description = "cpu, cuda or cuda:N (CUDA needs the CUDA libtorch package; see README 'Platform notes').",
        DefaultValueFactory = _ => "cpu",
    };
    public Option<string> DType { get; }

    /// <param name="defaultDType">
    /// --dtype's default: "auto" for the commands that serve a user (chat, generate, edit, serve, bench serve); "float32"
    /// where figures must not depend on the CPU they were measured on (shapes eval and mine-dpo, whose figures CI gates).
    /// </param>
    public ModelOptions(string defaultDType = TorchRuntime.AutoDTypeName)
    {
        var auto = TorchRuntime.AutoDTypeReason(TorchSharp.torch.CPU, CpuInfo.Detect());
        DType = new("--dtype")
        {
            Description = $"Compute dtype: {TorchRuntime.AutoDTypeName} (bfloat16 on CUDA and on CPUs with native bf16 — avx512_bf16 or AMX —, else float32; on this CPU: {auto}), float32 (as the official inference scripts), bfloat16 or float16.",
            DefaultValueFactory = _ => defaultDType,
        };
    }
    public Option<string> Quantize { get; } = new("--quantize")
    {
        Description = "Quantize the language model's linear layers at load: none, or int8 (one fp32 scale per output row; about half the memory and bytes per decode step of bf16; CPU, --dtype float32 or bfloat16; results differ from the checkpoint's by the weight rounding, see docs/performance.md).",
        DefaultValueFactory = _ => "none",
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
        cmd.Options.Add(Quantize);
        cmd.Options.Add(Adapter);
        cmd.Options.Add(NoAdapter);
    }

    /// <summary>
    /// What the help says about the model used without --model (its pixel size, pn and cfg_uncond rows), read from its
    /// config.json, so the help is true for the default model (the shipped ShapesWorld model draws 128x128).
    /// </summary>
    public static string DefaultModelFacts()
    {
        try
        {
            if (ShippedModel.TryResolve(out _) is not { } dir || !File.Exists(Path.Combine(dir, "config.json"))) return "no default model found";
            var c = VargptConfig.Load(dir);
            var s = c.Schedules.Get(1.0, c.Pn);
            return $"the default model ({Path.GetFileName(dir)}): {c.Pn} = {s.Pixels.W}x{s.Pixels.H}, cfg_uncond rows {c.Infinity.TextMaxLen}";
        }
        catch (VargptInputException e) { return $"the default model's config cannot be read: {e.Message}"; }
    }

    /// <summary>The model folder: --model, else <see cref="ShippedModel.Resolve"/> (VARGPT_MODEL, then the shipped model).</summary>
    public string ResolveModelDir(ParseResult parse) => ResolveModelDir(parse.GetValue(Model));

    /// <summary>An explicit folder, else the shipped/default model (a user error naming where it was looked for).</summary>
    public static string ResolveModelDir(string? explicitDir)
    {
        if (!string.IsNullOrWhiteSpace(explicitDir)) return Path.GetFullPath(explicitDir);
        try { return ShippedModel.Resolve(); }
        catch (ShippedModelNotFoundException e) { throw new VargptInputException(e.Message); }
    }

    /// <summary>The load options of --device, --dtype, --no-mmap, --quantize, --adapter and --no-adapter.</summary>
    public VargptModelOptions LoadOptions(ParseResult parse, ModelParts parts = ModelParts.All)
    {
        if (parse.GetValue(NoAdapter) && parse.GetValue(Adapter) is not null)
            throw new VargptInputException("--adapter and --no-adapter cannot be combined");
        var device = TorchRuntime.ParseDevice(parse.GetValue(Device)!);
        var options = new VargptModelOptions
        {
            Device = device,
            DType = TorchRuntime.ParseDType(parse.GetValue(DType)!, device),
            Parts = parts,
            MemoryMap = parse.GetValue(NoMmap) ? false : null,
            Adapter = parse.GetValue(Adapter) is { } a ? Path.GetFullPath(a) : null,
            MergeAdapter = !parse.GetValue(NoAdapter),
            Quantize = LanguageModelQuantization.Parse(parse.GetValue(Quantize), "--quantize"),
        };
        options.CheckQuantize();
        return options;
    }

    /// <summary>Loads the model, printing plain progress lines to <paramref name="log"/> (stderr in the commands).</summary>
    public VargptModel Load(ParseResult parse, TextWriter log, ModelParts parts = ModelParts.All)
    {
        var dir = ResolveModelDir(parse);
        var options = LoadOptions(parse, parts);
        var sw = Stopwatch.StartNew();
        bool auto = TorchRuntime.IsAutoDType(parse.GetValue(DType)!);
        var quantized = options.Quantize == WeightQuantization.None ? "" : $", language model {options.Quantize.ToString().ToLowerInvariant()}";
        log.WriteLine($"loading {dir} ({(auto ? $"--dtype auto: {TorchRuntime.AutoDTypeReason(options.Device, CpuInfo.Detect())}" : TorchRuntime.DTypeName(options.DType))} on {options.Device.type.ToString().ToLowerInvariant()}{quantized})");
        int tenths = 0;
        double lastLine = 0;
        var p = VargptModel.Load(dir, options, (stage, fraction) =>
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
        if (p.Adapter is { } a) log.WriteLine($"merged LoRA adapter {a.Directory} (r {a.Config.Rank}, alpha {a.Config.Alpha}, {a.Merged.Count} layers)");
        log.WriteLine($"loaded in {sw.Elapsed.TotalSeconds:F1} s");
        return p;
    }
}
