using TorchSharp;
using VarGpt.Checkpoint;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace VarGpt.Tests.Checkpoint;

public class StateDictTests
{
    /// <summary>Field names become key names: proj.weight, proj.bias, norm.weight, norm.bias, mask (buffer).</summary>
    sealed class Tiny : Module
    {
#pragma warning disable IDE1006
        public readonly TorchSharp.Modules.Linear proj = Linear(4, 3);
        public readonly TorchSharp.Modules.LayerNorm norm = LayerNorm(3);
#pragma warning restore IDE1006
        public Tiny() : base("Tiny")
        {
            register_buffer("mask", arange(3, ScalarType.Int64));
            RegisterComponents();
        }
    }

    static Dictionary<string, Tensor> Source() => new(StringComparer.Ordinal)
    {
        ["proj.weight"] = randn(3, 4, dtype: ScalarType.BFloat16),
        ["proj.bias"] = randn(3, dtype: ScalarType.Float64),
        ["norm.weight"] = randn(3),
        ["norm.bias"] = randn(3),
        ["mask"] = tensor(new long[] { 7, 8, 9 }),
    };

    [Fact]
    public void Loads_by_name_converting_dtype_in_place()
    {
        TorchTestSetup.Init();
        using var m = new Tiny();
        var src = Source();
        var weightBefore = m.proj.weight!;
        var report = StateDict.Load(m, src);
        Assert.Equal(5, report.Loaded.Count);
        Assert.Empty(report.Missing);
        Assert.Same(weightBefore, m.proj.weight); // copied in place: optimizers/hooks holding the parameter see it
        Assert.Equal(ScalarType.Float32, m.proj.weight!.dtype);
        Assert.True(TestTensors.Same(m.proj.weight, src["proj.weight"].to(ScalarType.Float32)));
        Assert.True(m.proj.bias!.allclose(src["proj.bias"].to(ScalarType.Float32)));
        Assert.Equal(new long[] { 7, 8, 9 }, m.get_buffer("mask")!.data<long>().ToArray());
        Assert.True(m.proj.weight.requires_grad);
    }

    [Fact]
    public void All_problems_are_listed_at_once_and_nothing_is_copied()
    {
        TorchTestSetup.Init();
        using var m = new Tiny();
        using var before = m.norm.weight!.clone();
        var src = Source();
        src.Remove("proj.bias");
        src.Remove("mask");
        src["proj.weight"] = randn(5, 4);
        src["extra.thing"] = randn(2);
        var e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(m, src));
        Assert.Equal(["mask", "proj.bias"], e.Missing);
        Assert.Equal(["extra.thing"], e.Unexpected);
        var sm = Assert.Single(e.ShapeMismatches);
        Assert.Equal("proj.weight", sm.Name);
        foreach (var frag in new[] { "mask", "proj.bias", "extra.thing", "proj.weight", "[3, 4]", "[5, 4]", "2 missing, 1 unexpected, 1 shape mismatches" })
            Assert.Contains(frag, e.Message);
        Assert.True(TestTensors.Same(m.norm.weight!, before));
    }

    [Fact]
    public void Allow_patterns_accept_listed_keys_only()
    {
        TorchTestSetup.Init();
        using var m = new Tiny();
        var src = Source();
        src.Remove("mask");
        src.Remove("norm.bias");
        src["visual.blocks.0.attn.qkv.weight"] = randn(2);
        src["text_proj_for_ca.0.weight"] = randn(2);
        var opts = new StateDictOptions { AllowMissing = ["mask", "norm.*"], AllowUnexpected = ["visual.*", "re:text_proj_for_ca\\.\\d+\\..*"] };
        var report = StateDict.Load(m, src, opts);
        Assert.Equal(["mask", "norm.bias"], report.Missing);
        Assert.Equal(["text_proj_for_ca.0.weight", "visual.blocks.0.attn.qkv.weight"], report.Unexpected);
        Assert.Equal(3, report.Loaded.Count);
        // A pattern that does not cover a key leaves it an error.
        var e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(m, src, opts with { AllowMissing = ["norm.w*"] }));
        Assert.Equal(["mask", "norm.bias"], e.Missing);
        Assert.Empty(e.Unexpected);
    }

    [Fact]
    public void Prefix_selects_a_component_of_a_full_checkpoint()
    {
        TorchTestSetup.Init();
        using var m = new Tiny();
        var src = Source().ToDictionary(kv => "vargpt_gen." + kv.Key, kv => kv.Value);
        src["model.embed_tokens.weight"] = randn(2);
        var report = StateDict.Load(m, src, new StateDictOptions { Prefix = "vargpt_gen." });
        Assert.Equal(5, report.Loaded.Count);
        Assert.True(TestTensors.Same(m.norm.bias!, src["vargpt_gen.norm.bias"]));
    }

    [Fact]
    public void Save_then_load_through_a_checkpoint_reader()
    {
        TorchTestSetup.Init();
        using var d = TestPaths.Temp();
        using var a = new Tiny();
        StateDict.Save(a, d.Path, floatDType: ScalarType.BFloat16, maxShardBytes: 40);
        Assert.True(File.Exists(d["model.safetensors.index.json"]));
        using (var r = CheckpointReader.Open(d.Path))
        {
            Assert.Equal("BF16", r.Tensors["proj.weight"].DType);
            Assert.Equal("I64", r.Tensors["mask"].DType); // integers are never converted
        }
        using var b = new Tiny();
        var report = StateDict.Load(b, d.Path);
        Assert.Equal(5, report.Loaded.Count);
        Assert.True(TestTensors.Same(b.proj.weight!, a.proj.weight!.to(ScalarType.BFloat16).to(ScalarType.Float32)));
        // Mismatches through the reader name the index file.
        using var reader = CheckpointReader.Open(d.Path);
        using var c = new Tiny();
        var e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(c, reader, new StateDictOptions { Prefix = "nothing." }));
        Assert.Contains("model.safetensors.index.json", e.Message);
        Assert.Equal(5, e.Missing.Count);
    }
}
