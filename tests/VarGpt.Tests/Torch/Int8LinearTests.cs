using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Tests.Torch;

/// <summary>
/// Int8Linear: the quantization rule, the int8 GEMV (decode) against dequantize-then-linear, and the blocked many-row
/// path. Tolerances are relative to Σ|w·x| per output (the rounding error of an fp32 sum scales with it).
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class Int8LinearTests
{
    // (out, in, bias): odd sizes leave partial 16-row blocks, uneven chunks and vector tails (in % 16 != 0)
    public static TheoryData<long, long, bool> Shapes => new()
    {
        { 896, 896, true },
        { 4867, 899, false },
        { 131, 64, true },
        { 7, 33, false },
        { 1, 5, true },
        { 37, 300, true },
    };

    static Tensor Weight(long outF, long inF, TorchSharp.torch.Generator g) =>
        randn([outF, inF], generator: g) / Math.Sqrt(inF) * (rand([outF, 1], generator: g) * 4 + 0.1);   // rows of unequal size

    /// <summary>Reference quantization in libtorch ops: s = amax/127, q = round-half-even(w/s) clamped to ±127.</summary>
    static (Tensor Q, Tensor S) Reference(Tensor w)
    {
        var wf = w.to(ScalarType.Float32);
        var s = wf.abs().amax([1]) / 127f;
        var q = (wf / s.clamp_min(float.Epsilon).unsqueeze(1)).round().clamp(-127, 127).to(ScalarType.Int8);
        return (q, s);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Int8_gemv_equals_dequantize_then_linear_for_1_to_4_rows_and_1_or_2_threads(long outF, long inF, bool hasBias)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator((ulong)(outF * 131 + inF), CPU);
        using var l = Int8Linear.Quantize(Weight(outF, inF, g), hasBias ? randn([outF], generator: g) : null);
        var wd = l.weight.to(ScalarType.Float64) * l.weight_scale.to(ScalarType.Float64).unsqueeze(1);
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var b = l.bias?.to(dtype);
            foreach (var rows in new long[] { 1, 2, 3, 4 })
            {
                var x = randn([rows, inF], generator: g).to(dtype);
                var exact = nn.functional.linear(x.to(ScalarType.Float64), wd, b?.to(ScalarType.Float64));
                var magnitude = nn.functional.linear(x.to(ScalarType.Float64).abs(), wd.abs(), b?.to(ScalarType.Float64).abs());
                // fp32: summation-order rounding only; bf16: plus the one rounding of the result (2^-8 relative)
                var allowed = magnitude * 1e-6 + (dtype == ScalarType.BFloat16 ? exact.abs() * Math.Pow(2, -8) : zeros_like(exact)) + 1e-7;
                Assert.True(DecodeLinear.AppliesInt8(x, l.weight, l.weight_scale, b));
                foreach (int threads in new[] { 1, 2 })
                {
                    var y = DecodeLinear.LinearInt8(x, l.weight, l.weight_scale, b, threads);
                    Assert.Equal(dtype, y.dtype);
                    Assert.Equal(new[] { rows, outF }, y.shape);
                    var excess = ((y.to(ScalarType.Float64) - exact).abs() - allowed).max().item<double>();
                    Assert.True(excess <= 0, $"[{outF}x{inF}] {dtype} rows {rows} threads {threads}: int8 GEMV off dequantize-then-linear by {excess:G3} beyond the tolerance");
                }
            }
        }
    }

    [Fact]
    public void Quantization_is_per_row_symmetric_round_half_even_from_fp32_and_bf16()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(5, CPU);
        var w = Weight(67, 101, g);
        w[3] = zeros(101);                                  // a zero row: scale 0, q 0
        w[5, 7] = tensor(-1000f);                           // an outlier only costs its own row precision
        foreach (var src in new[] { w, w.to(ScalarType.BFloat16) })
        {
            using var l = Int8Linear.Quantize(src, null);
            var (q, s) = Reference(src);
            Assert.Equal(ScalarType.Int8, l.weight.dtype);
            Assert.Equal(ScalarType.Float32, l.weight_scale.dtype);
            Assert.True(l.weight.equal(q).all().item<bool>(), $"{src.dtype}: int8 values differ from round(w / s)");
            Assert.True(l.weight_scale.equal(s).all().item<bool>(), $"{src.dtype}: scales differ from max|w| / 127");
            Assert.Equal(0f, l.weight_scale[3].item<float>());
            Assert.Equal(-127, (int)l.weight[5, 7].item<sbyte>());
            // |w - s·q| ≤ s/2 everywhere
            var err = (src.to(ScalarType.Float32) - l.Dequantize(0, 67, ScalarType.Float32)).abs() - l.weight_scale.unsqueeze(1) / 2;
            Assert.True(err.max().item<float>() <= 1e-6f);
        }
    }

    [Fact]
    public void Dequantize_rounds_once_to_bf16_and_matches_libtorch()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(9, CPU);
        using var l = Int8Linear.Quantize(Weight(45, 77, g), null);
        var f32 = l.weight.to(ScalarType.Float32) * l.weight_scale.unsqueeze(1);
        Assert.True(l.Dequantize(0, 45, ScalarType.Float32).equal(f32).all().item<bool>());
        Assert.True(l.Dequantize(0, 45, ScalarType.BFloat16).equal(f32.to(ScalarType.BFloat16)).all().item<bool>());
        Assert.True(l.Dequantize(10, 20, ScalarType.BFloat16).equal(f32.narrow(0, 10, 20).to(ScalarType.BFloat16)).all().item<bool>());
    }

    [Fact]
    public void Many_rows_take_the_blocked_dequantized_linear_for_any_row_count()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(11, CPU);
        using var l = Int8Linear.Quantize(Weight(203, 96, g), randn([203], generator: g));
        var wd = l.Dequantize(0, 203, ScalarType.Float32);
        foreach (var shape in new long[][] { [5, 96], [2, 9, 96], [1, 1, 96] })
        {
            var x = randn(shape, generator: g);
            var expected = nn.functional.linear(x, wd, l.bias);
            foreach (long block in new long[] { 96 * 7, 96 * 64, Int8Linear.DequantizeBlockElements })   // 29, 4 and 1 blocks
            {
                var y = l.DequantizedLinear(x, block);
                Assert.Equal(expected.shape, y.shape);
                Assert.True((y - expected).abs().max().item<float>() < 1e-5, $"[{string.Join(",", shape)}] block {block}");
            }
            var viaForward = l.forward(x);   // ≤ 4 rows: the GEMV; 5 or 18: the dequantized path
            Assert.True((viaForward - expected).abs().max().item<float>() < 1e-4);
        }
        // with autograd on x (the GEMV does not build a graph), gradients reach x through the dequantized path
        var xg = randn([2, 96], generator: g).requires_grad_(true);
        Assert.False(DecodeLinear.AppliesInt8(xg, l.weight, l.weight_scale, l.bias));
        l.forward(xg).sum().backward();
        Assert.True((xg.grad! - wd.sum([0]).expand(2, 96)).abs().max().item<float>() < 1e-4);
    }
}
