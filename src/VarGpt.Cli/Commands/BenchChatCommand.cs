using System.CommandLine;
using System.Diagnostics;
using VarGpt.Benchmarks;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Torch;
using VarGpt.Inference;
using VarGpt.Presets;
using VarGpt.ShapesWorld;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>
/// vargpt bench chat: chat speed on a random checkpoint of a preset (written by the `vargpt init` code into a
/// temporary folder and deleted afterwards) or on an existing folder (--model).
/// </summary>
public static class BenchChatCommand
{
    public static Command Create()
    {
        var preset = new Option<string?>("--preset") { Description = "tiny, small or full: benchmark a random checkpoint of that size (written, measured, deleted)." };
        var modelDir = new Option<string?>("--model", "-m") { Description = $"Benchmark this checkpoint folder instead of a fresh random one. With neither --model nor --preset: ${ShippedModel.EnvironmentVariable} if set, else the shipped ShapesWorld model." };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer folder for the random checkpoint (required for small/full, e.g. ../shared/tokenizers/qwen2-vl)." };
        var dtype = new Option<string>("--dtype") { Description = "Compute dtype: float32 or bfloat16 (the random checkpoint is stored in the preset's dtype, bf16 for small/full).", DefaultValueFactory = _ => "float32" };
        var quantize = new Option<string>("--quantize") { Description = "Quantize the language model's linears at load: none or int8 (as `vargpt chat --quantize`).", DefaultValueFactory = _ => "none" };
        var device = BenchCommand.DeviceOption();
        var workDir = new Option<string?>("--work-dir") { Description = "Where to write the random checkpoint (default: a new folder under the temp directory)." };
        var keep = new Option<bool>("--keep") { Description = "Keep the random checkpoint folder afterwards." };
        var understandingOnly = new Option<bool>("--understanding-only") { Description = "Load without the image-generation half (VAE, Infinity, projectors), as the official lmms-eval wrapper does." };
        var promptTokens = new Option<int>("--prompt-tokens") { Description = "Prompt length in tokens (text).", DefaultValueFactory = _ => new ChatBenchOptions().PromptTokens };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens generated per run (EOS ignored).", DefaultValueFactory = _ => new ChatBenchOptions().NewTokens };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs after a warm-up (the median is reported).", DefaultValueFactory = _ => new ChatBenchOptions().Repeats };
        var threads = BenchCommand.ThreadsOption();
        var json = BenchCommand.JsonOption();
        var cmd = new Command("chat", "Chat speed: prefill and decode tokens/s, time to first token, peak RSS, decode vs the memory-bandwidth bound.")
        { preset, modelDir, tokenizer, dtype, quantize, device, workDir, keep, understandingOnly, promptTokens, newTokens, repeats, threads, json };
        cmd.WithDetails(
            """
            Runs the generate loop of `vargpt chat` (greedy, batch 1, text prompt) on a checkpoint: one warm-up, then
            --repeats timed runs; the median run is reported. A decode step reads every language-model weight once, so
            decode tokens/s <= memory read bandwidth / weight bytes; decode_fraction_of_bound says how close it gets.
            peak_rss is the process peak (VmHWM) from the start of loading to the end (checkpoint writing excluded).
            With --preset a random checkpoint of that size is written first (the full preset needs ~18 GB of disk in
            bf16 and --tokenizer); it is deleted afterwards unless --keep. With neither --preset nor --model the shipped
            model is measured.
            """);
        cmd.WithExamples(
            "vargpt bench chat --preset tiny",
            "vargpt bench chat --preset small --tokenizer ../shared/tokenizers/qwen2-vl --json",
            "vargpt bench chat --preset full --tokenizer ../shared/tokenizers/qwen2-vl --dtype bfloat16 --work-dir /tmp/vargpt-full",
            "vargpt bench chat --model ~/models/VARGPT-v1.1 --dtype bfloat16",
            "vargpt bench chat --model ~/models/VARGPT-v1.1 --dtype bfloat16 --quantize int8");
        cmd.SetAction(parse =>
        {
            var o = parse.InvocationConfiguration.Output;
            var log = parse.InvocationConfiguration.Error;
            BenchCommand.ApplyThreads(parse.GetValue(threads));
            string? presetName = parse.GetValue(preset), model = parse.GetValue(modelDir);
            if (presetName is not null && model is not null) throw new VargptInputException("give either --preset tiny|small|full or --model DIR, not both");
            if (presetName is null) model = ModelOptions.ResolveModelDir(model); // neither: the shipped model
            VargptModelOptions pipelineOptions;
            var p = presetName is null ? null : ModelPresets.Get(presetName);
            pipelineOptions = new VargptModelOptions
            {
                Device = TorchRuntime.ParseDevice(parse.GetValue(device)!),
                DType = TorchRuntime.ParseDType(parse.GetValue(dtype)!),
                Parts = parse.GetValue(understandingOnly) ? ModelParts.Understanding : ModelParts.All,
                Quantize = LanguageModelQuantization.Parse(parse.GetValue(quantize), "--quantize"),
            };
            pipelineOptions.CheckQuantize();
            var options = new ChatBenchOptions { PromptTokens = parse.GetValue(promptTokens), NewTokens = parse.GetValue(newTokens), Repeats = parse.GetValue(repeats) };
            if (options.PromptTokens < 1 || options.NewTokens < 2 || options.Repeats < 1)
                throw new VargptInputException("--prompt-tokens must be >= 1, --new-tokens >= 2 and --repeats >= 1");

            string dir = model is null ? "" : Path.GetFullPath(model);
            bool delete = false;
            var record = new BenchRecord("chat");
            if (p is not null)
            {
                dir = Path.GetFullPath(parse.GetValue(workDir) ?? Path.Combine(Path.GetTempPath(), $"vargpt-bench-{p.Name}-{Environment.ProcessId}"));
                delete = !parse.GetValue(keep);
                log.WriteLine($"writing a random '{p.Name}' checkpoint to {dir}");
                var sw = Stopwatch.StartNew();
                try { RandomCheckpoint.Create(p, dir, new RandomCheckpointOptions { TokenizerDir = parse.GetValue(tokenizer), DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer }, log); }
                catch { TryDelete(dir, delete); throw; }
                record.Set("preset", p.Name).Add("checkpoint_write", sw.Elapsed.TotalSeconds, "s");
            }
            else record.Set("model", dir);
            try
            {
                using var mem = MemoryPhase.Start();
                var sw = Stopwatch.StartNew();
                log.WriteLine($"loading {dir} ({TorchRuntime.DTypeName(pipelineOptions.DType)})");
                using var pipeline = VargptModel.Load(dir, pipelineOptions);
                double load = sw.Elapsed.TotalSeconds;
                long rssLoaded = ProcessMemory.CurrentRssBytes();
                record.Set("parts", pipelineOptions.Parts.ToString()).Set("quantize", pipelineOptions.Quantize.ToString().ToLowerInvariant());
                record.Add("load", load, "s", "config, tokenizer, build in the compute dtype, map or copy weights, quantize");
                VargptChatBenchmark.Run(pipeline, options, record, log);
                record.Add("rss_after_load", rssLoaded / 1e9, "GB")
                    .Add("peak_rss", mem.PeakBytes / 1e9, "GB", mem.PeakIsPhaseOnly ? "VmHWM from loading to the end" : "process VmHWM (no per-phase reset here)");
            }
            finally { TryDelete(dir, delete); }
            BenchCommand.Print(record, parse.GetValue(json), o);
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static void TryDelete(string dir, bool delete)
    {
        if (!delete || !Directory.Exists(dir)) return;
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
    }
}
