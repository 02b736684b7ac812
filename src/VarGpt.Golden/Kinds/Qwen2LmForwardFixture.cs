using VarGpt.Checkpoint;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "qwen2_lm_forward": one cached-free forward of the language model with left padding (padded query rows
/// included: the finfo.min mask is reproduced), eager and SDPA attention, and the bf16 weights widened to float32.
/// </summary>
public sealed class Qwen2LmForwardFixture : IFixtureKind
{
    public string Kind => "qwen2_lm_forward";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol", 1e-4), rtol = f.Atol("rtol", 1e-4);
        var config = VargptConfig.Parse(f.Config, f.Id + "/fixture.json config");
        var ids = f.In("input_ids");
        var mask = f.In("attention_mask");
        var positions = f.In("position_ids");

        if (f.Has("in.image_grid_thw"))
        {
            var (pos, deltas) = RopeIndex.GetRopeIndex(ids, f.In("image_grid_thw"), mask, config);
            cmp.Exact("position_ids(get_rope_index)", pos, positions);
            if (f.Has("out.rope_deltas")) cmp.Exact("rope_deltas", deltas, f.Out("rope_deltas"));
        }

        using var model = new VargptForConditionalGeneration(config, parts: ModelParts.LanguageModel);
        f.LoadInto(model);
        foreach (var impl in new[] { AttentionImplementation.Eager, AttentionImplementation.Sdpa })
        {
            using var scope = NewDisposeScope();
            model.AttentionImplementation = impl;
            string p = impl == AttentionImplementation.Eager ? "" : "sdpa.";
            var hidden = new List<Tensor>();
            var output = model.Forward(model.EmbedInputs(ids), positions, mask, null, allHiddenStates: hidden);
            cmp.Close(p + "logits", output.Logits, f.Out("logits"), atol, rtol);
            cmp.Close(p + "last_hidden_state", output.LastHiddenState, f.Out("last_hidden_state"), atol, rtol);
            cmp.Close(p + "hidden_states", stack(hidden), f.Out("hidden_states"), atol, rtol);
        }

        string bf16File = f.Params.TryGetProperty("bf16_weights", out var b) ? b.GetString()! : "weights.bf16.safetensors";
        if (f.Has("out.bf16.logits"))
        {
            f.LoadInto(model, bf16File);       // widened to float32 on copy, as torch_dtype=float32 loading does
            foreach (var impl in new[] { AttentionImplementation.Eager, AttentionImplementation.Sdpa })
            {
                using var scope = NewDisposeScope();
                model.AttentionImplementation = impl;
                string p = impl == AttentionImplementation.Eager ? "bf16." : "sdpa.bf16.";
                var output = model.Forward(model.EmbedInputs(ids), positions, mask, null);
                cmp.Close(p + "logits", output.Logits, f.Out("bf16.logits"), atol, rtol);
                cmp.Close(p + "last_hidden_state", output.LastHiddenState, f.Out("bf16.last_hidden_state"), atol, rtol);
            }
        }
        else cmp.Check("bf16.logits", false, "out.bf16.logits missing from io.safetensors");
    }
}
