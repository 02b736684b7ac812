using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Golden;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Model;

namespace VarGpt.Tests.Generation;

public class BsqVaeTests(ITestOutputHelper output)
{
    static readonly VaeConfig Tiny = new() { BaseCh = 24, CodebookDim = 8, EncoderChMult = [1, 1, 1, 2, 2], DecoderChMult = [1, 1, 1, 2, 2], NumResBlocks = 2, PatchSize = 16 };

    [Theory]
    [InlineData("bsq_vae")]
    [InlineData("bitwise_self_correction")]
    public void Golden_fixture_passes_with_report(string kind)
    {
        TorchTestSetup.Init();
        var dir = Path.Combine(TestPaths.Golden, kind);
        Assert.True(Directory.Exists(dir), $"fixture folder missing: {dir}");
        var outcome = FixtureKinds.Run(dir);
        output.WriteLine(outcome.Message);
        Assert.Equal(FixtureStatus.Pass, outcome.Status);
    }

    [Fact]
    public void Codes_formula_on_random_bits()
    {
        TorchTestSetup.Init();
        foreach (int d in new[] { 8, 32 })
        {
            var gen = new Generator(7, CPU);
            using var bits = randint(0, 2, [3, 1, 4, 5, d], ScalarType.Int64, generator: gen);
            using var codes = MultiScaleResidual.CodesFromBits(bits);
            Assert.Equal(new long[] { 3, d, 1, 4, 5 }, codes.shape);
            Assert.Equal(ScalarType.Float32, codes.dtype);
            // (2*bit - 1)/sqrt(d), channel-first
            using var expected = (bits.to(ScalarType.Float64) * 2 - 1).div(Math.Sqrt(d)).permute(0, 4, 1, 2, 3);
            double maxErr = (codes.to(ScalarType.Float64) - expected).abs().max().item<double>();
            Assert.True(maxErr < 1e-7, $"d={d}: max error {maxErr}");
            // unit norm per position
            using var norms = codes.to(ScalarType.Float64).pow(2).sum(1).sqrt();
            Assert.True((norms - 1).abs().max().item<double>() < 1e-6);
        }
    }

    [Fact]
    public void Exact_zero_gives_bit_zero_and_sign_gives_bits()
    {
        TorchTestSetup.Init();
        using var lfq = new BSQ(4);
        // one position per row of channel values: [+,0,-,-0], [0,0,0,1e-30], all zero
        using var z = tensor(new float[] { 1f, 0f, -2f, -0f, 0f, 0f, 0f, 1e-30f, 0f, 0f, 0f, 0f }).reshape(3, 4).T.reshape(1, 4, 1, 1, 3);
        var (q, bits) = lfq.forward(z);
        using var _q = q; using var _b = bits;
        Assert.Equal(new long[] { 1, 1, 1, 3, 4 }, bits.shape);
        Assert.Equal(new long[] { 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0 }, bits.flatten().data<long>().ToArray());
        // quantized values are +-1/2 (d = 4)
        Assert.True((q.abs() - 0.5f).abs().max().item<float>() < 1e-6f);
        Assert.Equal(new long[] { 8, 4, 2, 1 }, lfq.get_buffer("mask")!.data<long>().ToArray());
    }

    [Fact]
    public void Same_size_trilinear_is_identity_and_accumulate_matches_official_rules()
    {
        TorchTestSetup.Init();
        var gen = new Generator(3, CPU);
        using var x = randn([2, 8, 1, 6, 5], generator: gen);
        using var same = MultiScaleResidual.Resize(x, new Scale(1, 6, 5), MultiScaleResidual.Up);
        Assert.True(Same(same, x));
        using var small = randn([2, 8, 1, 2, 3], generator: gen);
        using var acc = MultiScaleResidual.Accumulate(x, small, new Scale(1, 6, 5));
        using var up = nn.functional.interpolate(small, [1, 6, 5], mode: InterpolationMode.Trilinear, align_corners: false);
        Assert.True(Same(acc, x + up));
        using var first = MultiScaleResidual.Accumulate(null, small, new Scale(1, 6, 5));
        Assert.True(Same(first, up));
        using var tokens = MultiScaleResidual.ToTokens(small);
        Assert.Equal(new long[] { 2, 6, 8 }, tokens.shape);
        Assert.Equal(small[1, 3, 0, 1, 2].item<float>(), tokens[1, 5, 3].item<float>());
    }

    /// <summary>Same shape, dtype and every element bitwise equal.</summary>
    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    static Tensor RandomFeatures(long seed, int b = 2, int d = 8, int hw = 16)
    {
        var gen = new Generator((ulong)seed, CPU);
        return randn([b, d, hw, hw], generator: gen);
    }

    static readonly Scale[] Schedule = [new(1, 1, 1), new(1, 2, 2), new(1, 4, 4), new(1, 6, 6), new(1, 8, 8), new(1, 12, 12), new(1, 16, 16)];

    [Fact]
    public void Flip_noise_off_is_deterministic()
    {
        TorchTestSetup.Init();
        using var f = RandomFeatures(11);
        using var lfq = new BSQ(8);
        using var a = new BitwiseSelfCorrection(seed: 1) { NoiseApplyStrength = 0 };
        using var b = new BitwiseSelfCorrection(seed: 999) { NoiseApplyStrength = 0 };
        using var ta = a.FlipRequant(lfq, Schedule, f);
        using var tb = b.FlipRequant(lfq, Schedule, f);
        Assert.True(Same(ta.XBLCWoPrefix, tb.XBLCWoPrefix));
        Assert.True(Same(ta.GtBL, tb.GtBL));
        Assert.All(ta.FlipProbabilities, p => Assert.Equal(0, p));
        Assert.Equal(new long[] { 2, 520, 8 }, ta.XBLCWoPrefix.shape);
        Assert.Equal(new long[] { 2, 521, 8 }, ta.GtBL.shape);
        // with the noise off the first scale's input is the trilinear resize of the requantised first scale
        using var codes0 = MultiScaleResidual.CodesFromBits(ta.GtBits[0].reshape(2, 1, 1, 1, 8));
        using var sum0 = MultiScaleResidual.Accumulate(null, codes0, Schedule[^1]);
        using var in1 = MultiScaleResidual.ToTokens(MultiScaleResidual.NextScaleInput(sum0, Schedule[1]));
        Assert.True(Same(in1, ta.XBLCWoPrefix[.., ..4, ..]));
    }

    [Fact]
    public void Flip_noise_on_is_reproducible_and_flips_the_expected_fraction()
    {
        TorchTestSetup.Init();
        using var f = RandomFeatures(12);
        using var lfq = new BSQ(8);
        using var clean = new BitwiseSelfCorrection(seed: 5) { NoiseApplyStrength = 0 };
        using var a = new BitwiseSelfCorrection(seed: 5);
        using var b = new BitwiseSelfCorrection(seed: 5);
        using var c = new BitwiseSelfCorrection(seed: 6);
        using var t0 = clean.FlipRequant(lfq, Schedule, f);
        using var ta = a.FlipRequant(lfq, Schedule, f);
        using var tb = b.FlipRequant(lfq, Schedule, f);
        using var tc = c.FlipRequant(lfq, Schedule, f);
        Assert.True(Same(ta.XBLCWoPrefix, tb.XBLCWoPrefix) && Same(ta.GtBL, tb.GtBL));
        Assert.Equal(ta.FlipProbabilities, tb.FlipProbabilities);
        Assert.False(Same(ta.XBLCWoPrefix, tc.XBLCWoPrefix) && ta.FlipProbabilities.SequenceEqual(tc.FlipProbabilities));
        // every p is k/100 with k in 0..30, one per scale
        Assert.Equal(Schedule.Length, ta.FlipProbabilities.Count);
        Assert.All(ta.FlipProbabilities, p => Assert.True(p >= 0 && p <= 0.30 + 1e-12 && Math.Abs(p * 100 - Math.Round(p * 100)) < 1e-9, $"p={p}"));
        // labels of the first scale never see noise (nothing is accumulated before it)
        Assert.True(Same(ta.GtBits[0], t0.GtBits[0]));

        // the flip mask itself: rate within 4 sigma of p on 200k bits, and flipped bits are 1 - bit
        using var bsc = new BitwiseSelfCorrection(seed: 42);
        using var bits = randint(0, 2, [4, 1, 100, 125, 4], ScalarType.Int64, generator: new Generator(1, CPU));
        foreach (double p in new[] { 0.0, 0.01, 0.17, 0.30 })
        {
            using var flipped = bsc.FlipBits(bits, p);
            double rate = flipped.ne(bits).to(ScalarType.Float64).mean().item<double>();
            double sigma = Math.Sqrt(p * (1 - p) / bits.numel());
            output.WriteLine($"p={p} measured flip rate {rate:F5}");
            Assert.True(Math.Abs(rate - p) <= 4 * sigma + 1e-12, $"p={p}: flip rate {rate}");
            Assert.True(flipped.ge(0).all().item<bool>() && flipped.le(1).all().item<bool>());
        }
        // draws cover {0..30}/100 and nothing else
        var seen = new HashSet<int>();
        for (int i = 0; i < 2000; i++) seen.Add((int)Math.Round(bsc.DrawFlipProbability() * 100));
        Assert.Equal(Enumerable.Range(0, 31).ToHashSet(), seen);
    }

    [Fact]
    public void UInt8_conversion_clamps_truncates_and_keeps_rgb()
    {
        TorchTestSetup.Init();
        // (x+1)/2*255: x=-1 -> 0, x=1 -> 255, 127.9 -> 127, out of range clamps
        float x1279 = 127.9f / 255f * 2f - 1f;
        using var img = tensor(new float[] { -1f, 1f, x1279, 2f, -3f, 0.999f }).reshape(1, 1, 2, 3).expand(1, 3, 2, 3).contiguous();
        img[0, 1] = img[0, 1] * 0 - 1; // green channel all 0
        using var u8 = ImageOutput.ToUInt8Rgb(img);
        Assert.Equal(ScalarType.Byte, u8.dtype);
        Assert.Equal(new long[] { 1, 2, 3, 3 }, u8.shape);
        var r = u8[.., .., .., 0].flatten().data<byte>().ToArray();
        Assert.Equal(new byte[] { 0, 255, 127, 255, 0, 254 }, r);
        Assert.All(u8[.., .., .., 1].flatten().data<byte>().ToArray(), v => Assert.Equal(0, v));
        Assert.Equal(r, u8[.., .., .., 2].flatten().data<byte>().ToArray());
    }

    [Fact]
    public void Module_tree_matches_official_keys_and_bf16_keeps_mask_integral()
    {
        TorchTestSetup.Init();
        using var vae = new BsqVae(Tiny);
        // a fresh module is finite with PyTorch's GroupNorm init (TorchSharp's GroupNorm alone leaves it uninitialised)
        Assert.All(vae.parameters(), p => Assert.False(p.isnan().any().item<bool>()));
        Assert.True(vae.encoder.norm_out.norm.weight!.eq(1).all().item<bool>() && vae.encoder.norm_out.norm.bias!.eq(0).all().item<bool>());
        var keys = vae.state_dict().Keys.ToHashSet();
        Assert.Contains("encoder.down.0.block.0.norm1.norm.weight", keys);
        Assert.Contains("encoder.down.3.downsample.conv.conv.weight", keys);
        Assert.DoesNotContain("encoder.down.4.downsample.conv.conv.weight", keys);
        Assert.Contains("encoder.down.3.block.0.nin_shortcut.conv.weight", keys);
        Assert.Contains("decoder.up.4.block.2.conv2.conv.bias", keys);
        Assert.Contains("decoder.up.1.upsample.conv.conv.weight", keys);
        Assert.DoesNotContain("decoder.up.0.upsample.conv.conv.weight", keys);
        Assert.Contains("quantizer.lfq.mask", keys);
        Assert.Equal(265 - 0, keys.Count); // the bsq_vae fixture (same sizes) has 265 tensors

        using var bf = new BsqVae(Tiny, dtype: ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, bf.DType);
        Assert.Equal(ScalarType.Int64, bf.quantizer.lfq.get_buffer("mask")!.dtype);
    }

    [Fact]
    public void Bf16_vae_loads_fixture_weights_and_stays_close_to_fp32()
    {
        TorchTestSetup.Init();
        using var f = new Fixture(Path.Combine(TestPaths.Golden, "bsq_vae"));
        var weights = f.LoadWeights();
        using var bf = new BsqVae(Tiny, dtype: ScalarType.BFloat16);
        StateDict.Load(bf, weights, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix }); // fp32 checkpoint into bf16 weights; the I64 mask stays I64
        Assert.Equal(ScalarType.Int64, bf.quantizer.lfq.get_buffer("mask")!.dtype);
        Assert.True(bf.quantizer.lfq.get_buffer("mask")!.eq(weights["vae_local.quantizer.lfq.mask"]).all().item<bool>());
        using var raw = bf.Encode(f.In("image"));
        Assert.Equal(ScalarType.Float32, raw.dtype);
        using var dec = bf.Decode(f.Out("z"));
        Assert.Equal(ScalarType.BFloat16, dec.dtype);
        using var rawExp = f.Out("raw_features");
        using var decExp = f.Out("decoded");
        double rawErr = (raw - rawExp).abs().max().item<float>(), rawScale = rawExp.abs().max().item<float>();
        double decErr = (dec.to(ScalarType.Float32) - decExp).abs().max().item<float>();
        double decMean = (dec.to(ScalarType.Float32) - decExp).abs().mean().item<float>();
        output.WriteLine($"bf16 vs fp32 fixture: raw features max abs diff {rawErr:G3} (max |raw| {rawScale:G3}); decoded max {decErr:G3} mean {decMean:G3}");
        Assert.True(rawErr < 0.05 * rawScale, $"bf16 encoder off by {rawErr}");
        Assert.True(decErr < 0.1 && decMean < 0.02, $"bf16 decoder off by max {decErr} mean {decMean}");
        using var u8 = ImageOutput.ToUInt8Rgb(dec);
        Assert.Equal(new long[] { 1, 128, 128, 3 }, u8.shape);
        foreach (var t in weights.Values) t.Dispose();
    }

    /// <summary>
    /// The generation-side path on the full-model fixture: the sampled bits of every scale -> codes -> running sum
    /// (generation rule: last scale added without resize) -> VAE decode -> uint8 RGB, against the official outputs.
    /// </summary>
    [Theory]
    [InlineData("cfg3")]
    [InlineData("cfg1")]
    public void Generation_bits_to_image_matches_vargpt_generate_fixture(string variant)
    {
        TorchTestSetup.Init();
        using var f = new Fixture(Path.Combine(TestPaths.Golden, "vargpt_generate"));
        var cfg = ConfigJson.Parse<VaeConfig>(f.Config.GetProperty("vae"), f.Id + ":config.vae");
        using var vae = new BsqVae(cfg);
        var weights = f.LoadWeights();
        StateDict.Load(vae, weights, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix });
        foreach (var t in weights.Values) t.Dispose();

        var bits = new List<Tensor>();
        for (int k = 0; f.Has($"out.{variant}.bits.s{k}"); k++) bits.Add(f.Out($"{variant}.bits.s{k}"));
        Assert.True(bits.Count >= 2, "fixture has no per-scale bits");
        var final = new Scale(1, (int)bits[^1].shape[2], (int)bits[^1].shape[3]);
        Tensor? summed = null;
        for (int k = 0; k < bits.Count; k++)
        {
            using var codes = MultiScaleResidual.CodesFromBits(bits[k]);
            var next = MultiScaleResidual.Accumulate(summed, codes, final);
            summed?.Dispose();
            summed = next;
            if (k < bits.Count - 1)
            {
                using var nextIn = MultiScaleResidual.NextScaleInput(summed, new Scale(1, (int)bits[k + 1].shape[2], (int)bits[k + 1].shape[3]));
                using var tokens = MultiScaleResidual.ToTokens(nextIn);
                Assert.Equal(new long[] { 1, bits[k + 1].shape[2] * bits[k + 1].shape[3], cfg.CodebookDim }, tokens.shape);
            }
        }
        using var expSummed = f.Out($"{variant}.summed_codes");
        double sumErr = (summed!.squeeze(2) - expSummed).abs().max().item<float>();
        using var decoded = vae.Decode(summed);
        using var expDecoded = f.Out($"{variant}.decoded");
        double decErr = (decoded - expDecoded).abs().max().item<float>();
        output.WriteLine($"{variant}: summed_codes max abs diff {sumErr:G3}, decoded {decErr:G3}");
        Assert.True(sumErr < 1e-5, $"summed codes off by {sumErr}");
        Assert.True(decErr < 1e-4, $"decoded off by {decErr}");

        using var expRgb = f.Out($"{variant}.image_rgb_hwc_u8");
        using var fromExpected = ImageOutput.ToUInt8Rgb(expDecoded);
        Assert.True(Same(fromExpected[0], expRgb), "uint8 rule differs from the official one on the official decoded image");
        using var ours = ImageOutput.ToUInt8Rgb(decoded);
        long maxLevel = (ours[0].to(ScalarType.Int64) - expRgb.to(ScalarType.Int64)).abs().max().item<long>();
        output.WriteLine($"{variant}: uint8 max level diff {maxLevel}");
        Assert.True(maxLevel <= 1);
        using var expBgr = f.Out($"{variant}.image_bgr_hwc_u8");
        Assert.True(Same(expRgb.flip(2), expBgr));
        summed.Dispose();
        foreach (var t in bits) t.Dispose();
    }

    [Fact]
    public void Strict_load_names_missing_and_wrong_shapes()
    {
        TorchTestSetup.Init();
        using var vae = new BsqVae(Tiny);
        var sd = vae.state_dict().ToDictionary(kv => "vae_local." + kv.Key, kv => kv.Value);
        sd.Remove("vae_local.decoder.conv_out.conv.bias");
        var e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(vae, sd, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix }));
        Assert.Contains("vae_local.decoder.conv_out.conv.bias", e.Message);
        sd["vae_local.decoder.conv_out.conv.bias"] = zeros(4);
        e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(vae, sd, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix }));
        Assert.Contains("[4]", e.Message);
        sd["vae_local.decoder.conv_out.conv.bias"] = zeros(3);
        sd["vae_local.decoder.extra"] = zeros(3);
        e = Assert.Throws<StateDictMismatchException>(() => StateDict.Load(vae, sd, new StateDictOptions { Prefix = ModelComponents.Vae.Prefix }));
        Assert.Contains("vae_local.decoder.extra", e.Message);
    }
}
