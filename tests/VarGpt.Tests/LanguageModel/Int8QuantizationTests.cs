using VarGpt.Configuration;
using VarGpt.Golden;
using VarGpt.Golden.Kinds;
using VarGpt.Inference;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Tests.TestModels;
using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Tests.LanguageModel;

/// <summary>
/// The int8 language model (<see cref="LanguageModelQuantization"/>) against the unquantized one on the golden fixtures'
/// tiny random models and prompts, and the load option. The fixtures' weights are random (logits spread, min top-1/top-2
/// margin 0.127 in qwen2_lm_decode), so the bounds are what per-row int8 gives on them, measured; docs/performance.md
/// ("Int8") has the figures.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class Int8QuantizationTests(ITestOutputHelper output)
{
    /// <summary>
    /// Largest |Δ logit| allowed between the int8 model and its source model on the fixture prompts: measured 0.11-0.19
    /// (mean 0.024-0.038) in fp32 and bf16, with logits spanning -10.6..8.2 (width-64 rows: few weights per sum to
    /// average the rounding out). A wrong scale or a dropped tail moves them by whole units.
    /// </summary>
    const double MaxLogitDifference = 0.3;

    static VargptForConditionalGeneration Build(Fixture f, ModelParts parts, ScalarType dtype)
    {
        var config = VargptConfig.Parse(f.Config, f.Id + "/fixture.json config");
        var model = new VargptForConditionalGeneration(config, CPU, dtype, parts);
        f.LoadInto(model);
        model.eval();
        return model;
    }

    static GenerationResult Decode(Fixture f, VargptForConditionalGeneration model, Tensor? embeds)
    {
        var gen = Qwen2LmDecodeFixture.GenerationFromParams(f.Params, model.Config);
        return TextGeneration.Generate(model, new GenerationInputs(f.In("input_ids"), f.In("attention_mask"), embeds,
            f.Has("in.image_grid_thw") ? f.In("image_grid_thw") : null), gen, new GenerationOptions { RecordStepLogits = true });
    }

    [Theory]
    [InlineData("qwen2_lm_decode", ScalarType.Float32)]
    [InlineData("qwen2_lm_decode", ScalarType.BFloat16)]
    [InlineData("vlm_generate", ScalarType.Float32)]
    [InlineData("vlm_generate", ScalarType.BFloat16)]
    public void Int8_model_keeps_the_greedy_tokens_and_logits_of_a_golden_fixture_prompt(string kind, ScalarType dtype)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var f = new Fixture(Path.Combine(TestPaths.Golden, kind));
        var parts = kind == "vlm_generate" ? ModelParts.Understanding : ModelParts.LanguageModel;
        using var model = Build(f, parts, dtype);
        using var _ = no_grad();
        var embeds = parts.HasFlag(ModelParts.Vision) ? model.Visual.forward(f.In("pixel_values").to(dtype), f.In("image_grid_thw")) : null;
        using var reference = Decode(f, model, embeds);
        int replaced = LanguageModelQuantization.QuantizeInt8(model);
        Assert.Equal(7 * model.Config.NumHiddenLayers + 1, replaced);
        Assert.Empty(LanguageModelQuantization.Targets(model));
        using var quantized = Decode(f, model, embeds);

        var diff = (quantized.StepLogits! - reference.StepLogits!).abs();
        double max = diff.max().item<float>(), mean = diff.mean().item<float>();
        long agree = quantized.GeneratedIds.eq(reference.GeneratedIds).sum().item<long>();
        output.WriteLine($"{kind} {dtype}: greedy tokens agree {agree}/{reference.GeneratedIds.numel()}, |Δ logit| max {max:G3} mean {mean:G3} " +
                         $"(logits span {reference.StepLogits!.min().item<float>():F2}..{reference.StepLogits!.max().item<float>():F2})");
        Assert.True(quantized.GeneratedIds.equal(reference.GeneratedIds).all().item<bool>(), $"{kind} {dtype}: greedy tokens differ: {agree}/{reference.GeneratedIds.numel()} agree");
        Assert.True(max <= MaxLogitDifference, $"{kind} {dtype}: max |Δ logit| {max:G3} > {MaxLogitDifference}");
    }

    [Fact]
    public void Int8_model_picks_the_same_next_token_at_every_position_of_the_forward_fixture()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var f = new Fixture(Path.Combine(TestPaths.Golden, "qwen2_lm_forward"));
        using var model = Build(f, ModelParts.LanguageModel, ScalarType.Float32);
        using var _ = no_grad();
        var ids = f.In("input_ids");
        var mask = f.In("attention_mask");
        var positions = f.In("position_ids");
        var before = model.Forward(model.EmbedInputs(ids), positions, mask, null).Logits;
        LanguageModelQuantization.QuantizeInt8(model);
        var after = model.Forward(model.EmbedInputs(ids), positions, mask, null).Logits;   // 28 rows: the dequantized GEMM path
        var real = mask.to(ScalarType.Bool);
        var agree = before.argmax(-1).eq(after.argmax(-1)).masked_select(real);
        var diff = (after - before).abs().masked_select(real.unsqueeze(-1).expand_as(after));
        output.WriteLine($"qwen2_lm_forward fp32, teacher-forced: argmax agrees at {agree.sum().item<long>()}/{agree.numel()} positions, |Δ logit| max {diff.max().item<float>():G3} mean {diff.mean().item<float>():G3}");
        Assert.True(agree.all().item<bool>(), $"argmax differs at {agree.numel() - agree.sum().item<long>()} of {agree.numel()} positions");
        Assert.True(diff.max().item<float>() <= MaxLogitDifference);
    }

    [Fact]
    public void Quantize_int8_at_load_gives_the_same_model_mapped_or_copied_and_only_on_cpu_fp32_or_bf16()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var dir = TinyCheckpoint.Dir;
        using var mapped = VargptModel.Load(dir, new VargptModelOptions { Quantize = WeightQuantization.Int8, Parts = ModelParts.Understanding });
        using var copied = VargptModel.Load(dir, new VargptModelOptions { Quantize = WeightQuantization.Int8, Parts = ModelParts.Understanding, MemoryMap = false });
        Assert.IsType<Int8Linear>(mapped.Module.lm_head);
        Assert.Empty(LanguageModelQuantization.Targets(mapped.Module));
        Assert.Equal(ScalarType.Float32, mapped.Module.DType);
        var prompt = "Describe a red circle.";
        var a = mapped.Chat(prompt, options: new VargptChatOptions { MaxNewTokens = 8 }, cancellationToken: TestContext.Current.CancellationToken);
        var b = copied.Chat(prompt, options: new VargptChatOptions { MaxNewTokens = 8 }, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(b.Text, a.Text);   // released pages of the mapped file read back the same values
        using (no_grad())
        {
            var ids = tensor(new long[] { 1, 2, 3, 4, 5 }).unsqueeze(0);
            var la = mapped.Module.Forward(mapped.Module.EmbedInputs(ids)).Logits;
            var lb = copied.Module.Forward(copied.Module.EmbedInputs(ids)).Logits;
            Assert.True(la.equal(lb).all().item<bool>());
        }

        var e = Assert.Throws<InvalidOptionException>(() => VargptModel.Load(dir, new VargptModelOptions { Quantize = WeightQuantization.Int8, DType = ScalarType.Float16 }));
        Assert.Equal(nameof(VargptModelOptions.Quantize), e.Option);
        Assert.Contains("float32 or bfloat16", e.Message);
        var parse = Assert.Throws<InvalidOptionException>(() => LanguageModelQuantization.Parse("int4", "--quantize"));
        Assert.Equal("--quantize", parse.Option);
        Assert.Contains("expected none or int8", parse.Message);
    }
}
