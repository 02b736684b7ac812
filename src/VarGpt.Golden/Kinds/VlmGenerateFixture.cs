using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Model;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "vlm_generate": the whole understanding path on a tiny model — vision tower on the processor's pixel_values,
/// image features scattered into the &lt;|image_pad|&gt; rows, M-RoPE prefill, greedy decoding with the KV cache.
/// </summary>
public sealed class VlmGenerateFixture : IFixtureKind
{
    public string Kind => "vlm_generate";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 1e-4), rtol = f.Atol("rtol", 1e-4);
        var config = VargptConfig.Parse(f.Config, f.Id + "/fixture.json config");
        using var model = new VargptForConditionalGeneration(config, parts: ModelParts.Understanding);
        StateDict.Load(model, f.LoadWeights());
        model.eval();
        var grid = f.In("image_grid_thw");
        var embeds = model.Visual.forward(f.In("pixel_values"), grid);
        cmp.Close("image_embeds", embeds, f.Out("image_embeds"), atol, rtol);
        var gen = Qwen2LmDecodeFixture.GenerationFromParams(f.Params, config);
        using var r = TextGeneration.Generate(model, new GenerationInputs(f.In("input_ids"), f.In("attention_mask"), embeds, grid), gen,
            new GenerationOptions { RecordStepLogits = true, RecordPositions = true });
        cmp.Close("step_logits", r.StepLogits!, f.Out("step_logits"), atol, rtol);
        cmp.Exact("generated_ids", r.GeneratedIds, f.Out("generated_ids"));
        cmp.Exact("sequences", r.Sequences, f.Out("sequences"));
        cmp.Exact("prefill_position_ids", r.PrefillPositionIds!, f.Out("prefill_position_ids"));
        cmp.Exact("rope_deltas", r.RopeDeltas, f.Out("rope_deltas"));
        cmp.Exact("decode_position_ids", r.DecodePositionIds!, f.Out("decode_position_ids"));
    }
}
