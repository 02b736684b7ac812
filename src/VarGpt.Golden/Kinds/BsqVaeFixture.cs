using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Torch;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "bsq_vae": encoder raw features, the MultiScaleBSQ encode() ladder (bits exact, z, var_input), bit-label codes,
/// decode_from_indices and decode(z), plus the pure codes formula on random bits. Strict fp32 on CPU.
/// </summary>
public sealed class BsqVaeFixture : IFixtureKind
{
    public string Kind => "bsq_vae";

    /// <summary>Builds the VAE from the fixture config and loads its weights strictly (every key is a vae_local.* key and is used).
    /// <paramref name="convRouting"/>: the VAE's convolution routing (null = from the environment, as in the product).</summary>
    internal static BsqVae LoadVae(Fixture f, ConvRouterOptions? convRouting = null)
    {
        var cfg = ConfigJson.Parse<VaeConfig>(f.Config, System.IO.Path.Combine(f.Dir, "fixture.json") + ":config");
        if (f.Config.TryGetProperty("codebook_size", out var cs) && cs.GetInt64() != 1L << cfg.CodebookDim)
            throw new InvalidFileException($"{f.Id}: codebook_size {cs.GetInt64()} != 2^codebook_dim (projections are not supported)");
        var vae = new BsqVae(cfg, convRouting: convRouting);
        var weights = f.LoadWeights();
        try
        {
            var foreign = weights.Keys.Where(k => !k.StartsWith(ModelComponents.Vae.Prefix, StringComparison.Ordinal)).ToList();
            if (foreign.Count > 0) throw new InvalidFileException($"{f.Id}: unexpected non-VAE weights: {string.Join(", ", foreign.Take(5))}");
            StateDict.Load(vae, weights, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix });
        }
        finally { foreach (var t in weights.Values) t.Dispose(); }
        return vae;
    }

    internal static Scale[] ParseSchedule(JsonElement arr) =>
        arr.EnumerateArray().Select(s => { var v = s.EnumerateArray().Select(x => x.GetInt32()).ToArray(); return new Scale(v[0], v[1], v[2]); }).ToArray();

    public void Run(Fixture f, FixtureComparer cmp) => Run(f, cmp, null);

    /// <summary>As <see cref="Run(Fixture, FixtureComparer)"/> with a given convolution routing (tests of the kernel fallbacks).</summary>
    internal void Run(Fixture f, FixtureComparer cmp, ConvRouterOptions? convRouting)
    {
        double atol = f.Atol("atol"), rtol = f.Atol("rtol"), decAtol = f.Atol("decoded_atol", atol);
        using var vae = LoadVae(f, convRouting);
        var schedule = ParseSchedule(f.Params.GetProperty("scale_schedule"));

        var raw = vae.Encode(f.In("image"));
        cmp.Close("raw_features", raw, f.Out("raw_features"), atol, rtol);

        using var ms = vae.quantizer.forward(raw, schedule);
        for (int k = 0; k < schedule.Length; k++)
        {
            cmp.Exact($"bit_indices.s{k}", ms.Bits[k], f.Out($"bit_indices.s{k}"));
            cmp.Close($"codes.s{k}", BSQ.IndicesToCodes(ms.Bits[k]), f.Out($"codes.s{k}"), atol, rtol);
            if (k < schedule.Length - 1)
                cmp.Close($"var_input.s{k}", ms.VarInputs[k], f.Out($"var_input.s{k}"), atol, rtol);
        }
        cmp.Check("var_input.count", !f.Has($"out.var_input.s{schedule.Length - 1}") && ms.VarInputs.Count == schedule.Length - 1,
            $"{ms.VarInputs.Count} var inputs for {schedule.Length} scales");
        cmp.Close("z", ms.Z, f.Out("z"), atol, rtol);

        var (summed, recon) = vae.DecodeFromBits(ms.Bits, schedule);
        cmp.Close("summed_codes", summed, f.Out("summed_codes"), atol, rtol);
        cmp.Close("recon_from_indices", recon, f.Out("recon_from_indices"), decAtol, rtol);
        cmp.Close("decoded", vae.Decode(ms.Z), f.Out("decoded"), decAtol, rtol);

        cmp.Close("random_bits_codes", BSQ.IndicesToCodes(f.In("random_bits")), f.Out("random_bits_codes"), atol, rtol);
    }
}
