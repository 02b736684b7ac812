using System.Text.Json;
using VarGpt.LanguageModel;

namespace VarGpt.Golden.Kinds;

/// <summary>Fixture "rope_index": get_rope_index with images, text-only with a mask, and without a mask; exact.</summary>
public sealed class RopeIndexFixture : IFixtureKind
{
    public string Kind => "rope_index";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        var c = f.Config;
        var s = new RopeIndexSettings(
            c.GetProperty("image_token_id").GetInt64(), c.GetProperty("video_token_id").GetInt64(),
            c.GetProperty("vision_start_token_id").GetInt64(),
            c.TryGetProperty("vision_config", out var v) && v.TryGetProperty("spatial_merge_size", out var m) ? m.GetInt32()
                : f.Params.GetProperty("spatial_merge_size").GetInt32());

        var (pos, deltas) = RopeIndex.GetRopeIndex(f.In("input_ids"), f.In("image_grid_thw"), f.In("attention_mask"), s);
        cmp.Exact("position_ids", pos, f.Out("position_ids"));
        cmp.Exact("rope_deltas", deltas, f.Out("rope_deltas"));

        var (tpos, tdeltas) = RopeIndex.GetRopeIndex(f.In("text_input_ids"), null, f.In("text_attention_mask"), s);
        cmp.Exact("text_position_ids", tpos, f.Out("text_position_ids"));
        cmp.Exact("text_rope_deltas", tdeltas, f.Out("text_rope_deltas"));

        var (npos, ndeltas) = RopeIndex.GetRopeIndex(f.In("text_input_ids"), null, null, s);
        cmp.Exact("nomask_position_ids", npos, f.Out("nomask_position_ids"));
        cmp.Exact("nomask_rope_deltas", ndeltas, f.Out("nomask_rope_deltas"));
    }
}
