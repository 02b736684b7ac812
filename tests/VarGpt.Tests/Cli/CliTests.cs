using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Cli;
using static TorchSharp.torch;

namespace VarGpt.Tests.Cli;

/// <summary>Runs the vargpt commands in-process and checks output and exit codes.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class CliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => VarGpt.Tests.Cli.CliHarness.Run(args);

    [Fact]
    public void Help_teaches_with_examples()
    {
        var (code, o, _) = Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("vargpt [command]", o);
        Assert.DoesNotContain("VarGpt.Cli", o);
        Assert.Contains("Examples:", o);
        Assert.Contains("info", o);
        Assert.Contains("fixtures", o);
        (code, o, _) = Run("fixtures", "check", "--help");
        Assert.Equal(0, code);
        Assert.Contains("vargpt fixtures check <DIR>...", o);
        Assert.Contains("vargpt fixtures check ../shared/golden", o);
        Assert.Contains("PASS|FAIL|SKIP", o);
    }

    [Fact]
    public void Usage_errors_exit_2_on_stderr_without_stack_traces()
    {
        foreach (var args in new[] { new[] { "bogus" }, new[] { "fixtures" }, new[] { "info", "a", "b" } })
        {
            var (code, o, e) = Run(args);
            Assert.Equal(2, code);
            Assert.Equal("", o);
            Assert.StartsWith("error: ", e);
            Assert.DoesNotContain("   at ", e);
        }
    }

    [Fact]
    public void Missing_folders_are_user_errors()
    {
        var (code, _, e) = Run("info", "/nonexistent/vargpt-model");
        Assert.Equal(2, code);
        Assert.Contains("/nonexistent/vargpt-model", e);
        (code, _, e) = Run("fixtures", "check", "/nonexistent/golden");
        Assert.Equal(2, code);
        Assert.Contains("/nonexistent/golden", e);
        using var empty = TestPaths.Temp();
        (code, _, e) = Run("fixtures", "check", empty.Path);
        Assert.Equal(2, code);
        Assert.Contains("no fixture.json", e);
        (code, _, e) = Run("info", empty.Path);
        Assert.Equal(2, code);
        Assert.Contains("not a checkpoint folder", e);
    }

    [Fact]
    public void Fixtures_check_reports_pass_skip_and_fail()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        // scale_schedule has a runner; a copy with a wrong expected output must FAIL; an unknown kind must SKIP.
        var src = Path.Combine(TestPaths.Golden, "scale_schedule");
        if (!Directory.Exists(src)) Assert.Skip($"golden fixture folder missing: {src}");
        CopyDir(src, d["good"]);
        CopyDir(src, d["bad"]);
        using (var io = SafeTensorsFile.Open(Path.Combine(src, "io.safetensors")))
        {
            var tensors = io.Tensors.Keys.ToDictionary(k => k, k => io.Load(k));
            foreach (var k in tensors.Keys.Where(k => k.StartsWith("out.", StringComparison.Ordinal)).ToList())
                tensors[k] = tensors[k].add(1);
            SafeTensorsWriter.Save(Path.Combine(d["bad"], "io.safetensors"), tensors);
        }
        Directory.CreateDirectory(d["unknown"]);
        File.WriteAllText(Path.Combine(d["unknown"], "fixture.json"), """{"kind": "no_such_kind_yet", "weights": null, "io": null}""");

        var (code, o, _) = Run("fixtures", "check", d["good"], d["bad"], d["unknown"]);
        var lines = o.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(1, code);
        Assert.Matches(@"^PASS scale_schedule/good max_abs=\S+ max_rel=\S+$", lines[0]);
        Assert.Matches(@"^FAIL scale_schedule/bad max_abs=\S+ max_rel=\S+", lines[1]);
        Assert.Matches(@"^SKIP no_such_kind_yet/unknown \(.*not implemented\)$", lines[2]);
        Assert.Equal("3 fixtures: 1 passed, 1 failed, 1 skipped", lines[3].Trim());

        (code, _, _) = Run("fixtures", "check", d["good"]);
        Assert.Equal(0, code);
    }

    static void CopyDir(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }

    [Fact]
    public void Info_summarises_configs_and_components()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        File.WriteAllText(d["config.json"], new JsonObject
        {
            ["vocab_size"] = 300, ["hidden_size"] = 64, ["intermediate_size"] = 128, ["num_hidden_layers"] = 2,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2,
            ["rope_scaling"] = new JsonObject { ["mrope_section"] = new JsonArray(2, 3, 3) },
            ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["vision_start_token_id"] = 10, ["vision_end_token_id"] = 11,
            ["vision_token_id"] = 12, ["image_token_id"] = 13, ["video_token_id"] = 14,
            ["special_tokens"] = new JsonObject { ["image_gen_start_token_id"] = 297, ["image_gen_end_token_id"] = 298, ["image_gen_pad_token_id"] = 299 },
            ["vision_config"] = new JsonObject { ["depth"] = 2, ["embed_dim"] = 32, ["num_heads"] = 2, ["hidden_size"] = 64 },
        }.ToJsonString());
        File.WriteAllText(d["generation_config.json"], """{"eos_token_id": [2, 3], "repetition_penalty": 1.05}""");
        var ts = new Dictionary<string, Tensor>
        {
            ["model.embed_tokens.weight"] = zeros(new long[] { 300, 64 }, ScalarType.BFloat16),
            ["lm_head.weight"] = zeros(new long[] { 300, 64 }, ScalarType.BFloat16),
            ["visual.patch_embed.proj.weight"] = zeros(32, 3),
            ["vargpt_gen.head.weight"] = zeros(new long[] { 8, 4 }, ScalarType.BFloat16),
            ["vae_local.quantizer.lfq.mask"] = zeros(new long[] { 32 }, ScalarType.Int64),
            ["image_gen_projector.mlp.0.weight"] = zeros(new long[] { 4, 4 }, ScalarType.BFloat16),
            ["image_gen_projector_out.mlp.0.weight"] = zeros(new long[] { 4, 4 }, ScalarType.BFloat16),
            ["sos_embedding.weight"] = zeros(new long[] { 298, 4 }, ScalarType.BFloat16),
            ["stray.tensor"] = zeros(1),
        };
        SafeTensorsWriter.SaveSharded(d.Path, ts, maxShardBytes: 40_000);

        var (code, o, e) = Run("info", d.Path);
        Assert.True(code == 0, e);
        Assert.Contains("2 layers, hidden 64", o);
        Assert.Contains("image_gen start/end/pad 297/298/299", o);
        Assert.Contains("eos [2,3]", o);
        Assert.Contains("repetition_penalty 1.05", o);
        Assert.Contains("(sharded, model.safetensors.index.json)", o);
        Assert.Contains($"{ts.Count} tensors", o);
        var weightLines = o[o.IndexOf("weights:", StringComparison.Ordinal)..].Split('\n');
        string Row(string component) => weightLines.Single(l => l.TrimStart().StartsWith(component + "  ", StringComparison.Ordinal));
        Assert.Matches(@"language model\s+2\s+38,400\s+75\.0 KiB\s+BF16 x2", Row("language model"));
        Assert.Matches(@"vision tower\s+1\s+96\s+384 B\s+F32 x1", Row("vision tower"));
        Assert.Matches(@"VAE\s+1\s+32\s+256 B\s+I64 x1", Row("VAE"));
        Assert.Matches(@"projectors\s+2\s+32\s", Row("projectors"));
        Assert.Matches(@"sos embedding\s+1\s+1,192\s", Row("sos embedding"));
        Assert.Matches(@"other\s+1\s+1\s", Row("other"));
        Assert.Contains("stray.tensor", o);
        foreach (var t in ts.Values) t.Dispose();
    }

    [Fact]
    public void Info_reports_a_broken_checkpoint_as_a_user_error()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["model.safetensors.index.json"], """{"weight_map": {"w": "model-00001-of-00002.safetensors"}}""");
        var (code, _, e) = Run("info", d.Path);
        Assert.Equal(2, code);
        Assert.Contains("model-00001-of-00002.safetensors", e);
        Assert.DoesNotContain("   at ", e);
    }
}
