using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Golden;
using VarGpt.Golden.Kinds;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.Generation;

/// <summary>
/// Checks the Infinity pieces and both GenPatchMerger projectors against the tiny full-model generation fixture
/// (vargpt_generate), feeding the recorded LLM outputs: cond_BD, the scale-0 LLM input, the cross-attention context
/// and the raw Infinity logits of every scale. The fixture's own runner (LLM + sampling + VAE) belongs to the lead.
/// </summary>
public class InfinityVargptGenerateTests
{
    static string Dir => Path.Combine(TestPaths.Golden, "vargpt_generate");

    [Theory]
    [InlineData("cfg3")]
    [InlineData("cfg1")]
    public void Infinity_and_projectors_reproduce_the_recorded_generation(string variant)
    {
        TorchTestSetup.Init();
        Assert.True(Directory.Exists(Dir), $"fixture folder missing: {Dir}");
        using var scope = NewDisposeScope();
        using var f = new Fixture(Dir);
        var cfgJson = f.Config;
        var inf = ConfigJson.Parse<InfinityConfig>(cfgJson.GetProperty("infinity"), "vargpt_generate config.infinity");
        int hidden = cfgJson.GetProperty("config").GetProperty("hidden_size").GetInt32();
        int startId = cfgJson.GetProperty("config").GetProperty("special_tokens").GetProperty("image_gen_start_token_id").GetInt32();
        var entry = cfgJson.GetProperty("custom_pn_entries").GetProperty("1.0/fx5");
        var sched = new ScaleSchedule(1.0, "fx5",
            (entry.GetProperty("pixel")[0].GetInt32(), entry.GetProperty("pixel")[1].GetInt32()),
            entry.GetProperty("scales").EnumerateArray().Select(s => new Scale(s[0].GetInt32(), s[1].GetInt32(), s[2].GetInt32())).ToArray());

        var w = f.LoadWeights();
        using var model = new Infinity(inf);
        using var projIn = new GenPatchMerger(hidden, inf.EmbedDim);
        using var projOut = new GenPatchMerger(inf.EmbedDim, hidden);
        StateDict.Load(model, w, new StateDictOptions { Prefix = "vargpt_gen." });
        StateDict.Load(projIn, w, new StateDictOptions { Prefix = "image_gen_projector." });
        StateDict.Load(projOut, w, new StateDictOptions { Prefix = "image_gen_projector_out." });
        model.eval();
        using var ng = no_grad();

        var cmp = new FixtureComparer();
        const double atol = 3e-3, rtol = 1e-3;
        bool cfg = variant == "cfg3";
        string o = $"{variant}.";

        var sos = CrossAttnKv.OneRowEach(w["sos_embedding.weight"].narrow(0, startId, 1));
        var cond = model.Condition(cfg ? model.AppendUncond(sos) : sos);
        cmp.Close("cond_BD", cond, f.Out(o + "cond_BD"), atol, rtol);

        var x0 = projIn.forward(model.FirstTokens(cond)); // [bs, 1, H]
        cmp.Close("lm_in_cond.s0", x0.narrow(0, 0, 1), f.Out(o + "lm_in_cond.s0"), atol, rtol);
        if (cfg) cmp.Close("lm_in_uncond.s0", x0.narrow(0, 1, 1), f.Out(o + "lm_in_uncond.s0"), atol, rtol);

        var past = f.Out(o + "past_hidden_states_at_image_start")[0];
        var ctx = CrossAttnKv.Pack([projOut.forward(past.narrow(0, 0, past.shape[0] - 1))]);
        if (cfg) ctx = model.AppendUncond(ctx);
        cmp.Close("ca_kv_compact", ctx.KvCompact, f.Out(o + "ca_kv_compact"), atol, rtol);
        cmp.ExactList("ca_cu_seqlens_k", ctx.CuSeqlens.Select(x => (long)x).ToArray(), f.Out(o + "ca_cu_seqlens_k").data<long>().ToArray());

        var ada = model.AdaLn(cond);
        using var cache = model.NewCache(ctx, sched);
        for (int si = 0; si < sched.Scales.Count; si++)
        {
            var h = f.Out($"{o}lm_out_cond.s{si}");
            if (cfg) h = cat([h, f.Out($"{o}lm_out_uncond.s{si}")], 0);
            var y = model.ForwardScale(projOut.forward(h), ada, cache, si);
            cmp.Close($"logits_raw.s{si}", model.Logits(y, cond), f.Out($"{o}logits_raw.s{si}"), atol, rtol);
        }
        Assert.True(cmp.Passed, cmp.Report());
    }
}
