using VarGpt.Checkpoint;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "vision_encoder": the Qwen2-VL vision tower (weights under "visual.") on two images of different grids;
/// compares image_embeds and the debug intermediates patch_embeds, rotary_pos_emb, cu_seqlens, block_outputs.
/// </summary>
public sealed class VisionEncoderFixture : IFixtureKind
{
    public string Kind => "vision_encoder";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol"), rtol = f.Atol("rtol");
        var cfg = ConfigJson.Parse<VisionConfig>(f.Config.GetProperty("vision_config"), $"{f.Id} config -> vision_config");
        using var model = new Qwen2VisionTransformerPretrainedModel(cfg);
        f.LoadInto(model, prefix: ModelComponents.VisionTower.Prefix);
        model.eval();

        using var noGrad = no_grad();
        var pixels = f.In("pixel_values");
        var gridThw = f.In("grid_thw");
        var blockOutputs = new List<Tensor>();
        var embeds = model.Forward(pixels, gridThw, blockOutputs);
        cmp.Close("image_embeds", embeds, f.Out("image_embeds"), atol, rtol);

        cmp.Close("patch_embeds", model.patch_embed.forward(pixels), f.Out("patch_embeds"), atol, rtol);
        var g = gridThw.data<long>().ToArray();
        var grid = Enumerable.Range(0, g.Length / 3).Select(i => (g[3 * i], g[3 * i + 1], g[3 * i + 2])).ToArray();
        cmp.Close("rotary_pos_emb", model.RotPosEmb(grid), f.Out("rotary_pos_emb"), atol, rtol);
        cmp.ExactList("cu_seqlens", Qwen2VisionTransformerPretrainedModel.CuSeqlens(grid), f.Out("cu_seqlens").data<long>().ToArray());
        cmp.Close("block_outputs", stack(blockOutputs), f.Out("block_outputs"), atol, rtol);
    }
}
