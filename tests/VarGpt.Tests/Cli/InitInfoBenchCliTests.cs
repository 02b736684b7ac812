using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Cli;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.Cli;

/// <summary>vargpt init / info (architecture audit) / bench machine, run in-process.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class InitInfoBenchCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => VarGpt.Tests.Cli.CliHarness.Run(args);

    [Fact]
    public void Init_tiny_then_info_shows_a_complete_checkpoint()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        var (code, o, e) = Run("init", "--preset", "tiny", "--out", d["tiny"], "--seed", "5");
        Assert.True(code == 0, e);
        Assert.Contains("wrote " + d["tiny"], o);
        Assert.Contains("pn tiny5", o);
        (code, o, e) = Run("info", "--strict", d["tiny"]);
        Assert.True(code == 0, e + o);
        Assert.Contains("keys vs architecture: ", o);
        Assert.Contains(" 0 missing, 0 unexpected, 0 shape mismatches", o);
        Assert.Contains("Infinity decoder", o);
        Assert.Contains("default generation resolution tiny5", o);
        Assert.DoesNotContain("not stored as torch_dtype", o);

        // A config-only folder shows the architecture the config describes.
        Directory.CreateDirectory(d["cfg"]);
        File.Copy(Path.Combine(d["tiny"], "config.json"), Path.Combine(d["cfg"], "config.json"));
        (code, o, _) = Run("info", d["cfg"]);
        Assert.Equal(0, code);
        Assert.Contains("weights: absent", o);
        Assert.Contains("architecture from config.json", o);
    }

    [Fact]
    public void Info_lists_missing_unexpected_and_mismatched_keys_and_strict_exits_1()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        Assert.Equal(0, Run("init", "--preset", "tiny", "--out", d["m"]).Code);
        var file = Path.Combine(d["m"], CheckpointReader.SingleFileName);
        using (var scope = NewDisposeScope())
        {
            Dictionary<string, Tensor> ts;
            using (var f = SafeTensorsFile.Open(file)) ts = f.Tensors.Keys.ToDictionary(k => k, k => f.Load(k));
            ts.Remove("lm_head.weight");
            ts["extra.weight"] = zeros(3);
            ts["model.norm.weight"] = ones(7);
            ts["visual.merger.ln_q.bias"] = ts["visual.merger.ln_q.bias"].to(ScalarType.BFloat16);
            SafeTensorsWriter.Save(file, ts);
        }
        var (code, o, _) = Run("info", "--strict", d["m"]);
        Assert.Equal(1, code);
        Assert.Equal(0, Run("info", d["m"]).Code);
        Assert.Contains("1 missing, 1 unexpected, 1 shape mismatches", o);
        Assert.Contains("    lm_head.weight", o);
        Assert.Contains("    extra.weight", o);
        Assert.Contains("model.norm.weight: module expects [64], checkpoint has [7]", o);
        Assert.Contains("visual.merger.ln_q.bias BF16", o);
    }

    [Fact]
    public void Init_bad_input_is_a_user_error_with_a_clear_message()
    {
        using var d = TestPaths.Temp();
        var (code, o, e) = Run("init", "--preset", "huge", "--out", d["x"]);
        Assert.Equal(2, code);
        Assert.Equal("", o);
        Assert.Contains("unknown preset 'huge'; expected one of: tiny, small, full", e);

        Directory.CreateDirectory(d["busy"]);
        File.WriteAllText(Path.Combine(d["busy"], "notes.txt"), "x");
        (code, _, e) = Run("init", "--preset", "tiny", "--out", d["busy"]);
        Assert.Equal(2, code);
        Assert.Contains("exists and is not empty", e);
        Assert.Contains("--force", e);

        (code, _, e) = Run("init", "--preset", "tiny", "--out", d["t"], "--tokenizer", d["nowhere"]);
        Assert.Equal(2, code);
        Assert.Contains(d["nowhere"], e);

        (code, _, e) = Run("init", "--preset", "small", "--out", d["s"]);
        Assert.Equal(2, code);
        Assert.Contains("needs --tokenizer", e);

        (code, _, e) = Run("init", "--preset", "tiny", "--out", d["t"], "--dtype", "int8");
        Assert.Equal(2, code);
        Assert.Contains("unknown dtype 'int8'", e);

        (code, _, e) = Run("init", "--preset", "tiny");
        Assert.Equal(2, code);
        Assert.Contains("--out", e);
        Assert.DoesNotContain("   at ", e);
    }

    [Fact]
    public void Init_force_writes_into_a_non_empty_folder()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        Directory.CreateDirectory(d["f"]);
        File.WriteAllText(Path.Combine(d["f"], "notes.txt"), "x");
        var (code, _, e) = Run("init", "--preset", "tiny", "--out", d["f"], "--force", "--dtype", "bf16");
        Assert.True(code == 0, e);
        Assert.True(File.Exists(Path.Combine(d["f"], "notes.txt")));
        Assert.Equal("bfloat16", VargptConfig.Load(d["f"]).TorchDtype);
        Assert.Equal(0, Run("info", d["f"]).Code);
    }

    [Fact]
    public void Bench_machine_prints_text_and_json()
    {
        TorchTestSetup.Init();
        var (code, o, e) = Run("bench", "machine", "--json", "--bandwidth-mb", "8", "--matmul-n", "64", "--repeats", "2");
        Assert.True(code == 0, e);
        using var doc = JsonDocument.Parse(o);
        var m = doc.RootElement.GetProperty("metrics");
        foreach (var name in new[] { "memory_read_bandwidth", "matmul_fp32", "matmul_bf16", "peak_rss" })
            Assert.True(m.GetProperty(name).GetProperty("value").GetDouble() > 0, name);
        Assert.Equal("GB/s", m.GetProperty("memory_read_bandwidth").GetProperty("unit").GetString());
        Assert.Equal(64, doc.RootElement.GetProperty("settings").GetProperty("matmul_n").GetInt32());
        Assert.True(doc.RootElement.GetProperty("machine").GetProperty("logical_cores").GetInt32() >= 1);

        (code, o, _) = Run("bench", "machine", "--bandwidth-mb", "8", "--matmul-n", "64", "--repeats", "1");
        Assert.Equal(0, code);
        Assert.Contains("memory_read_bandwidth", o);
        Assert.Contains("GFLOP/s", o);

        (code, _, e) = Run("bench", "machine", "--repeats", "0");
        Assert.Equal(2, code);
        Assert.Contains("--repeats must be at least 1", e);
    }
}
