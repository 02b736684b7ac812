using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.Vision;

[Collection(nameof(TorchDefaultsCollection))]
public class VisionTransformerTests
{
    static readonly VisionConfig Tiny = new() { Depth = 2, EmbedDim = 32, NumHeads = 4, HiddenSize = 48, MlpRatio = 4 };

    static Qwen2VisionTransformerPretrainedModel Model(int seed = 1)
    {
        TorchTestSetup.Init();
        manual_seed(seed);
        var m = new Qwen2VisionTransformerPretrainedModel(Tiny);
        m.eval();
        return m;
    }

    static Tensor Grid(params long[] thw) => tensor(thw, [thw.Length / 3, 3], ScalarType.Int64);

    [Fact]
    public void State_dict_uses_the_official_names_and_shapes()
    {
        using var m = Model();
        var sd = m.state_dict();
        var expected = new List<string> { "patch_embed.proj.weight", "merger.ln_q.weight", "merger.ln_q.bias",
            "merger.mlp.0.weight", "merger.mlp.0.bias", "merger.mlp.2.weight", "merger.mlp.2.bias" };
        for (int i = 0; i < Tiny.Depth; i++)
            foreach (var p in new[] { "norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2" })
                expected.AddRange([$"blocks.{i}.{p}.weight", $"blocks.{i}.{p}.bias"]);
        Assert.Equal(expected.Order(StringComparer.Ordinal), sd.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(new long[] { 32, 3, 2, 14, 14 }, sd["patch_embed.proj.weight"].shape);
        Assert.Equal(new long[] { 96, 32 }, sd["blocks.0.attn.qkv.weight"].shape);
        Assert.Equal(new long[] { 128, 128 }, sd["merger.mlp.0.weight"].shape);
        Assert.Equal(new long[] { 48, 128 }, sd["merger.mlp.2.weight"].shape);
        // buildable without memory (META) and directly in bfloat16 under the default-device/dtype scope
        using (TorchDefaults.Scope(META, ScalarType.BFloat16))
        {
            using var meta = new Qwen2VisionTransformerPretrainedModel(Tiny);
            var msd = meta.state_dict();
            Assert.Equal(sd.Keys.Order(StringComparer.Ordinal), msd.Keys.Order(StringComparer.Ordinal));
            Assert.All(msd.Values, t => Assert.Equal(DeviceType.META, t.device_type));
            Assert.All(msd.Values, t => Assert.Equal(ScalarType.BFloat16, t.dtype));
        }
    }

    [Fact]
    public void Attention_is_blocked_per_image_and_per_frame()
    {
        using var m = Model();
        using var _ = no_grad();
        manual_seed(7);
        using var a = randn(4 * 6, 1176);
        using var b = randn(2 * 8, 1176);
        using var ab = cat([a, b], 0);
        using var ea = m.forward(a, Grid(1, 4, 6));
        using var eb = m.forward(b, Grid(1, 2, 8));
        using var eab = m.forward(ab, Grid(1, 4, 6, 1, 2, 8));
        Assert.Equal(new long[] { 10, 48 }, eab.shape);
        Assert.True(eab.narrow(0, 0, 6).allclose(ea, 1e-5, 1e-5), "image a changes when batched with b");
        Assert.True(eab.narrow(0, 6, 4).allclose(eb, 1e-5, 1e-5), "image b changes when batched with a");
        // a clip of two frames = two images with the same grid (frames attend separately, same positions)
        using var clip = m.forward(cat([a, a.flip(0)], 0), Grid(2, 4, 6));
        using var f1 = m.forward(a.flip(0), Grid(1, 4, 6));
        Assert.True(clip.narrow(0, 0, 6).allclose(ea, 1e-5, 1e-5));
        Assert.True(clip.narrow(0, 6, 6).allclose(f1, 1e-5, 1e-5));
        // and attention does mix patches inside one image
        using var a2 = a.clone();
        a2[0].add_(1.0);
        using var ea2 = m.forward(a2, Grid(1, 4, 6));
        Assert.False(ea2.narrow(0, 5, 1).allclose(ea.narrow(0, 5, 1), 1e-6, 1e-6), "patch 0 did not influence the last window");
    }

    [Fact]
    public void Bfloat16_runs_close_to_float32()
    {
        using var m = Model();
        using var _ = no_grad();
        manual_seed(3);
        using var x = randn(4 * 4, 1176);
        using var e32 = m.forward(x, Grid(1, 4, 4));
        m.to(ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, m.DType);
        using var e16 = m.forward(x, Grid(1, 4, 4)); // float32 input is cast to the weight dtype
        Assert.Equal(ScalarType.BFloat16, e16.dtype);
        double err = (e16.to(ScalarType.Float32) - e32).abs().max().item<float>();
        double scale = e32.abs().max().item<float>();
        Assert.True(err <= 0.05 * scale + 0.02, $"bf16 max error {err} vs scale {scale}");
    }

    [Fact]
    public void Bad_inputs_are_reported()
    {
        using var m = Model();
        using var _ = no_grad();
        using var x = zeros(16, 1176);
        Assert.Contains("describes 24 patches but pixel_values has 16 rows",
            Assert.Throws<ArgumentException>(() => m.forward(x, Grid(1, 4, 6))).Message);
        Assert.Contains("divisible by spatial_merge_size",
            Assert.Throws<ArgumentException>(() => m.forward(x, Grid(1, 2, 8, 1, 0, 0))).Message);
        using var narrow = zeros(16, 100);
        Assert.Contains("[N, 1176]", Assert.Throws<ArgumentException>(() => m.forward(narrow, Grid(1, 4, 4))).Message);
    }
}
