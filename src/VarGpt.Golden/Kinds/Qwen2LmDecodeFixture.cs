using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "qwen2_lm_decode": greedy generate() with the KV cache (prefill + one-token steps, rope_deltas positions,
/// growing mask) on a left-padded batch; step logits within tolerance, ids and positions exact. Eager and SDPA.
/// </summary>
public sealed class Qwen2LmDecodeFixture : IFixtureKind
{
    public string Kind => "qwen2_lm_decode";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 1e-4), rtol = f.Atol("rtol", 1e-4);
        var config = VargptConfig.Parse(f.Config, f.Id + "/fixture.json config");
        var gen = GenerationFromParams(f.Params, config);
        using var model = new VargptForConditionalGeneration(config, parts: ModelParts.LanguageModel);
        f.LoadInto(model);
        var inputs = new GenerationInputs(f.In("input_ids"), f.In("attention_mask"), null,
            f.Has("in.image_grid_thw") ? f.In("image_grid_thw") : null);
        var options = new GenerationOptions { RecordStepLogits = true, RecordPositions = true };
        foreach (var impl in new[] { AttentionImplementation.Eager, AttentionImplementation.Sdpa })
        {
            model.AttentionImplementation = impl;
            string p = impl == AttentionImplementation.Eager ? "" : "sdpa.";
            using var r = TextGeneration.Generate(model, inputs, gen, options);
            cmp.Close(p + "step_logits", r.StepLogits!, f.Out("step_logits"), atol, rtol);
            cmp.Exact(p + "generated_ids", r.GeneratedIds, f.Out("generated_ids"));
            cmp.Exact(p + "sequences", r.Sequences, f.Out("sequences"));
            cmp.Exact(p + "prefill_position_ids", r.PrefillPositionIds!, f.Out("prefill_position_ids"));
            cmp.Exact(p + "rope_deltas", r.RopeDeltas, f.Out("rope_deltas"));
            cmp.Exact(p + "decode_position_ids", r.DecodePositionIds!, f.Out("decode_position_ids"));
        }
    }

    /// <summary>generate() arguments from the fixture params (defaults: the model config's EOS/pad).</summary>
    internal static GenerationConfig GenerationFromParams(JsonElement p, VargptConfig config)
    {
        var g = GenerationConfig.FromModelConfig(config);
        if (p.TryGetProperty("eos_token_id", out var eos))
            g = g with { EosTokenIds = eos.ValueKind == JsonValueKind.Array ? eos.EnumerateArray().Select(e => e.GetInt64()).ToArray() : [eos.GetInt64()] };
        if (p.TryGetProperty("pad_token_id", out var pad)) g = g with { PadTokenId = pad.GetInt64() };
        if (p.TryGetProperty("max_new_tokens", out var mnt)) g = g with { MaxNewTokens = mnt.GetInt32() };
        if (p.TryGetProperty("do_sample", out var ds)) g = g with { DoSample = ds.GetBoolean() };
        if (p.TryGetProperty("repetition_penalty", out var rp)) g = g with { RepetitionPenalty = rp.GetDouble() };
        return g;
    }
}
