using System.Security.Cryptography;
using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Tests.ShapesWorld;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Inference;

using VarGpt;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Training;

/// <summary>LoraAdapter.Merge and VargptModelOptions.Adapter on a tiny random ShapesWorld model folder.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class LoraAdapterTests
{
    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.equal(b).all().item<bool>();

    static Tensor Logits(VargptModel p)
    {
        using var ids = tensor(new long[] { 5, 17, 42, 99, 3, 250, 7 }).unsqueeze(0);
        using (no_grad())
        using (var emb = p.Module.EmbedInputs(ids))
        {
            var o = p.Module.Forward(emb);
            o.LastHiddenState.Dispose();
            return o.Logits;
        }
    }

    [Fact]
    public void Merged_adapter_gives_the_outputs_of_the_live_lora_model()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var adapterDir = tmp["adapter"];
        using var live = TinyShapesModel.WriteAdapter(adapterDir, bScale: 1);
        Assert.True(File.Exists(Path.Combine(adapterDir, LoraAdapter.ConfigFile)));
        using var liveLogits = Logits(live);

        using var merged = VargptModel.Load(TinyShapesModel.Dir, new VargptModelOptions { Adapter = adapterDir });
        Assert.NotNull(merged.Adapter);
        Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"], merged.Adapter!.Merged);
        Assert.Equal(2.0, merged.Adapter.Config.Scaling);
        // merged weights keep the official names (no base_layer / lora_* keys)
        Assert.DoesNotContain(merged.Module.state_dict().Keys, k => k.Contains("lora_") || k.Contains("base_layer"));
        using var mergedLogits = Logits(merged);

        using var plain = VargptModel.Load(TinyShapesModel.Dir, new VargptModelOptions { MergeAdapter = false });
        Assert.Null(plain.Adapter);
        using var plainLogits = Logits(plain);

        double diff = mergedLogits.sub(liveLogits).abs().max().item<float>();
        double effect = plainLogits.sub(liveLogits).abs().max().item<float>();
        Assert.True(effect > 1e-3, $"the adapter should change the logits (max change {effect})");
        Assert.True(diff < 1e-4, $"merged vs live LoRA logits differ by {diff} (adapter effect {effect})");
    }

    [Fact]
    public void Memory_mapped_weights_are_replaced_never_written_through()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var adapterDir = tmp["adapter"];
        TinyShapesModel.WriteAdapter(adapterDir, bScale: 1).Dispose();
        var weights = Path.Combine(TinyShapesModel.Dir, CheckpointReader.SingleFileName);
        var before = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(weights)));
        const string q = "model.layers.0.self_attn.q_proj.weight";

        // bf16 compute = the stored dtype: every weight is a view of the file mapping, then q/v_proj are merged
        using var p = VargptModel.Load(TinyShapesModel.Dir, new VargptModelOptions { DType = ScalarType.BFloat16, Adapter = adapterDir });
        Assert.True(p.Options.MemoryMap is null && p.Options.Device.type == DeviceType.CPU);
        using var f = SafeTensorsFile.Open(weights);
        using var a = SafeTensorsFile.Open(Path.Combine(adapterDir, LoraAdapter.WeightsFile));
        using var w0 = f.Load(q);
        using var la = a.Load("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        using var lb = a.Load("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        using var expected = LoraAdapter.MergedWeight(w0, la, lb, 2.0);
        var actual = p.Module.state_dict()[q];
        Assert.Equal(ScalarType.BFloat16, actual.dtype);
        Assert.True(Same(actual, expected), "merged weight != W + B·A·alpha/r (fp32, rounded to bf16)");
        Assert.False(Same(actual, w0));

        Assert.Equal(before, Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(weights))));
        using var again = VargptModel.Load(TinyShapesModel.Dir, new VargptModelOptions { DType = ScalarType.BFloat16, MergeAdapter = false });
        Assert.True(Same(again.Module.state_dict()[q], w0), "a load without the adapter must see the original weight");
    }

    [Fact]
    public void Model_folder_adapter_is_merged_by_default_and_can_be_disabled()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var dir = TinyShapesModel.Copy(tmp["model"]);
        TinyShapesModel.WriteAdapter(Path.Combine(dir, VargptModelOptions.DefaultAdapterFolder), bScale: 1).Dispose();
        using (var p = VargptModel.Load(dir))
            Assert.Equal(Path.Combine(dir, "adapter"), p.Adapter?.Directory);
        using (var p = VargptModel.Load(dir, new VargptModelOptions { MergeAdapter = false }))
            Assert.Null(p.Adapter);
        using (var p = VargptModel.Load(dir, new VargptModelOptions { Parts = ModelParts.Understanding }))
            Assert.Empty(p.Adapter!.Skipped);
        // layers of parts that are not loaded are skipped (listed), not errors; loaded, they are checked
        var gen = Adapter(tmp, "with-gen", c => c["target_modules"] = new JsonArray("q_proj", "word_embed"), new()
        {
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = zeros(4, 64),
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = zeros(64, 4),
            ["base_model.model.vargpt_gen.word_embed.lora_A.weight"] = zeros(4, 3),
            ["base_model.model.vargpt_gen.word_embed.lora_B.weight"] = zeros(5, 4),
        });
        using (var p = VargptModel.Load(dir, new VargptModelOptions { Parts = ModelParts.Understanding, Adapter = gen }))
        {
            Assert.Equal(["model.layers.0.self_attn.q_proj"], p.Adapter!.Merged);
            Assert.Equal(["vargpt_gen.word_embed"], p.Adapter.Skipped);
        }
        Assert.Contains("vargpt_gen.word_embed.lora_A.weight", Assert.Throws<InvalidFileException>(() => VargptModel.Load(dir, new VargptModelOptions { Adapter = gen })).Message);
        Assert.Throws<InvalidOptionException>(() => new VargptModelOptions { Adapter = dir, MergeAdapter = false }.ResolveAdapter(dir));
        var missing = Assert.Throws<InputNotFoundException>(() => VargptModel.Load(dir, new VargptModelOptions { Adapter = tmp["nope"] }));
        Assert.Contains(tmp["nope"], missing.Message);
    }

    /// <summary>A hand-written adapter: config fields and tensors as given.</summary>
    static string Adapter(TempDir tmp, string name, Action<JsonObject>? config = null, Dictionary<string, Tensor>? tensors = null, bool writeWeights = true)
    {
        var dir = tmp[name];
        Directory.CreateDirectory(dir);
        var c = new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = 4, ["lora_alpha"] = 8, ["target_modules"] = new JsonArray("q_proj", "v_proj"),
            ["use_rslora"] = false, ["use_dora"] = false, ["bias"] = "none", ["fan_in_fan_out"] = false,
        };
        config?.Invoke(c);
        File.WriteAllText(Path.Combine(dir, LoraAdapter.ConfigFile), c.ToJsonString());
        tensors ??= new()
        {
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = zeros(4, 64),
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = zeros(64, 4),
        };
        if (writeWeights) SafeTensorsWriter.Save(Path.Combine(dir, LoraAdapter.WeightsFile), tensors);
        return dir;
    }

    [Fact]
    public void Bad_adapters_fail_naming_the_file_key_or_field()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        using var p = VargptModel.Load(TinyShapesModel.Dir, new VargptModelOptions { MergeAdapter = false });
        var model = p.Module;
        string Fails<T>(string dir) where T : Exception => Assert.Throws<T>(() => LoraAdapter.Merge(model, dir)).Message;

        // the well-formed zero adapter merges (and changes nothing)
        using var w0 = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].clone();
        var ok = LoraAdapter.Merge(model, Adapter(tmp, "ok"));
        Assert.Equal(["model.layers.0.self_attn.q_proj"], ok.Merged);
        Assert.True(Same(model.state_dict()["model.layers.0.self_attn.q_proj.weight"], w0));

        var noConfig = tmp["no-config"];
        Directory.CreateDirectory(noConfig);
        Assert.Contains(LoraAdapter.ConfigFile, Fails<InputNotFoundException>(noConfig));
        Assert.Contains(LoraAdapter.WeightsFile, Fails<InputNotFoundException>(Adapter(tmp, "no-weights", writeWeights: false)));
        Assert.Contains("not found", Fails<InputNotFoundException>(tmp["missing"]));

        var unknown = Fails<InvalidFileException>(Adapter(tmp, "unknown", tensors: new()
        {
            ["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = zeros(4, 64),
            ["base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"] = zeros(64, 4),
        }));
        Assert.Contains("model.layers.7.self_attn.q_proj", unknown);
        Assert.Contains("has no module", unknown);

        var shape = Fails<InvalidFileException>(Adapter(tmp, "shape", tensors: new()
        {
            ["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"] = zeros(4, 64),
            ["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"] = zeros(64, 4),   // v_proj has 32 outputs
        }));
        Assert.Contains("v_proj.lora_B.weight", shape);
        Assert.Contains("expected [32, 4]", shape);

        var rank = Fails<InvalidFileException>(Adapter(tmp, "rank", c => c["r"] = 8));
        Assert.Contains("expected [8, 64]", rank);

        var noB = Fails<InvalidFileException>(Adapter(tmp, "no-b", tensors: new() { ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = zeros(4, 64) }));
        Assert.Contains("lora_B.weight", noB);

        var other = Fails<InvalidFileException>(Adapter(tmp, "other", tensors: new() { ["base_model.model.model.layers.0.self_attn.q_proj.weight"] = zeros(64, 64) }));
        Assert.Contains("not a LoRA weight", other);

        var notLinear = Fails<InvalidFileException>(Adapter(tmp, "not-linear", c => c["target_modules"] = new JsonArray("embed_tokens"), tensors: new()
        {
            ["base_model.model.model.embed_tokens.lora_A.weight"] = zeros(4, 64),
            ["base_model.model.model.embed_tokens.lora_B.weight"] = zeros(64, 4),
        }));
        Assert.Contains("not a Linear", notLinear);

        Assert.Contains("target_modules", Fails<InvalidFileException>(Adapter(tmp, "untargeted", c => c["target_modules"] = new JsonArray("k_proj"))));
        Assert.Contains("use_rslora", Fails<InvalidFileException>(Adapter(tmp, "rslora", c => c["use_rslora"] = true)));
        Assert.Contains("use_dora", Fails<InvalidFileException>(Adapter(tmp, "dora", c => c["use_dora"] = true)));
        Assert.Contains("bias", Fails<InvalidFileException>(Adapter(tmp, "bias", c => c["bias"] = "all")));
        Assert.Contains("'r'", Fails<InvalidFileException>(Adapter(tmp, "no-r", c => c.Remove("r"))));
        Assert.Contains("rank_pattern", Fails<InvalidFileException>(Adapter(tmp, "pattern", c => c["rank_pattern"] = new JsonObject { ["q_proj"] = 2 })));
        Assert.Contains("modules_to_save", Fails<InvalidFileException>(Adapter(tmp, "mts", c => c["modules_to_save"] = new JsonArray("lm_head"))));
        // nothing was changed by the failed merges
        Assert.True(Same(model.state_dict()["model.layers.0.self_attn.q_proj.weight"], w0));
    }
}
