using VarGpt.Checkpoint;
using VarGpt.Golden;
using VarGpt.Golden.Kinds;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.LanguageModel;

[Collection(nameof(TorchDefaultsCollection))]
public class LanguageModelTests
{
    [Fact]
    public void Parameter_names_are_the_checkpoint_keys()
    {
        TorchTestSetup.Init();
        using var m = TinyLm.Load();
        var names = m.state_dict().Keys.ToHashSet();
        Assert.Contains("model.embed_tokens.weight", names);
        Assert.Contains("model.layers.1.self_attn.q_proj.bias", names);
        Assert.Contains("model.layers.0.mlp.down_proj.weight", names);
        Assert.Contains("model.norm.weight", names);
        Assert.Contains("lm_head.weight", names);
        Assert.DoesNotContain("model.layers.0.self_attn.o_proj.bias", names);
        Assert.DoesNotContain("lm_head.bias", names);
        Assert.Equal(2 + 2 * 12 + 1, names.Count);
        // buildable without memory (META) for key/shape enumeration, with the same keys
        using (TorchDefaults.Scope(META))
        {
            using var meta = new VargptForConditionalGeneration(TinyLm.Config(), parts: ModelParts.LanguageModel);
            var sd = meta.state_dict();
            Assert.Equal(names.Order(), sd.Keys.Order());
            Assert.All(sd.Values, t => Assert.Equal(TorchSharp.DeviceType.META, t.device_type));
        }
    }

    [Fact]
    public void Bf16_weights_run_in_a_bf16_model_close_to_the_float32_reference()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var f = new Fixture(Path.Combine(TestPaths.Golden, "qwen2_lm_forward"));
        var config = VargptConfig.Parse(f.Config, f.Id);
        using var m = new VargptForConditionalGeneration(config, CPU, ScalarType.BFloat16, ModelParts.LanguageModel);
        f.LoadInto(m, "weights.bf16.safetensors");
        var w = f.LoadWeights("weights.bf16.safetensors");
        Assert.True(TinyLm.Same(((TorchSharp.Modules.Linear)m.lm_head).weight, w["lm_head.weight"]));     // bf16 -> bf16 is lossless
        var mask = f.In("attention_mask");
        var valid = mask.to(ScalarType.Bool).unsqueeze(-1);
        foreach (var impl in new[] { AttentionImplementation.Eager, AttentionImplementation.Sdpa })
        {
            m.AttentionImplementation = impl;
            var output = m.Forward(m.EmbedInputs(f.In("input_ids")), f.In("position_ids"), mask);
            Assert.Equal(ScalarType.Float32, output.Logits.dtype);
            Assert.Equal(ScalarType.BFloat16, output.LastHiddenState.dtype);
            var expected = f.Out("bf16.logits");
            // bf16 activations: compare where attention_mask == 1, relative to the logit scale
            var err = ((output.Logits - expected).abs() * valid).max().item<float>();
            var scale = expected.abs().max().item<float>();
            Assert.True(err < 0.05 * scale, $"{impl}: max |bf16 - fp32 reference| = {err} (logit scale {scale})");
            var agree = (output.Logits.argmax(-1).eq(expected.argmax(-1)).logical_and(mask.to(ScalarType.Bool))).sum().item<long>();
            Assert.True(agree >= 0.9 * mask.sum().item<long>(), $"{impl}: top-1 agrees on {agree} of {mask.sum().item<long>()} valid positions");
        }
    }

    [Fact]
    public void Rope_index_image_branch_without_a_mask_equals_an_all_ones_mask_and_text_continues_after_the_image()
    {
        TorchTestSetup.Init();
        var s = new RopeIndexSettings(ImageTokenId: 12, VideoTokenId: 13, VisionStartTokenId: 9, SpatialMergeSize: 2);
        // t t <vs> img x6 (grid 1x4x6 -> 2x3 merged, offset 3) <ve> t: text resumes at max(image) + 1 = 6
        using var ids = tensor(new long[] { 1, 2, 9, 12, 12, 12, 12, 12, 12, 10, 3 }).unsqueeze(0);
        using var grid = tensor(new long[] { 1, 4, 6 }, [1, 3]);
        var (p, d) = RopeIndex.GetRopeIndex(ids, grid, null, s);
        var (p1, d1) = RopeIndex.GetRopeIndex(ids, grid, ones_like(ids), s);
        Assert.True(TinyLm.Same(p, p1) && TinyLm.Same(d, d1));
        long[] t = [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7], h = [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7], w = [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7];
        Assert.Equal(t, p[0, 0].data<long>().ToArray());
        Assert.Equal(h, p[1, 0].data<long>().ToArray());
        Assert.Equal(w, p[2, 0].data<long>().ToArray());
        Assert.Equal(7 + 1 - 11, d.item<long>());
    }

    [Fact]
    public void Growable_buffer_matches_cat_across_reallocations_and_rolls_back()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var buf = new GrowableBuffer(2, initialCapacity: 3);
        var parts = Enumerable.Range(0, 7).Select(i => randn(2, 3, i % 3 + 1, 4)).ToList();
        Tensor view = null!;
        foreach (var p in parts) view = buf.Append(p);
        Assert.True(TinyLm.Same(view, cat(parts, 2)));
        Assert.True(buf.Capacity >= buf.Length);
        long keep = parts[0].shape[2] + parts[1].shape[2];
        buf.Truncate(keep);
        var extra = randn(2, 3, 2, 4);
        view = buf.Append(extra);
        Assert.True(TinyLm.Same(view, cat([parts[0], parts[1], extra], 2)));
        Assert.Throws<ArgumentException>(() => buf.Append(randn(2, 4, 1, 4)));
    }

    [Fact]
    public void Padded_query_rows_attend_uniformly_like_the_finfo_min_mask()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var mask2d = tensor(new long[] { 0, 0, 1, 1 }, [1, 4]);
        var (mask, causal) = Qwen2VLModel.UpdateCausalMask(mask2d, 1, 4, 0, ScalarType.Float32, CPU, 32768, eager: false);
        Assert.False(causal);
        var min = finfo(ScalarType.Float32).min;
        var m = mask!.squeeze();
        Assert.All(m[0].data<float>().ToArray(), v => Assert.Equal((float)min, v));      // padded query: everything masked
        Assert.Equal(new[] { (float)min, (float)min, 0f, (float)min }, m[2].data<float>().ToArray());
        // scores + finfo.min collapse to one value, so softmax is uniform over all keys
        var scores = randn(1, 4) + m[0];
        Assert.True(scores.softmax(-1).allclose(full(1, 4, 0.25f)));
        // the sliding window masks keys more than sliding_window behind
        var (sw, _) = Qwen2VLModel.UpdateCausalMask(null, 1, 4, 0, ScalarType.Float32, CPU, 2, eager: true);
        Assert.Equal(new[] { (float)min, 0f, 0f, (float)min }, sw!.squeeze()[2].data<float>().ToArray());
    }
}
