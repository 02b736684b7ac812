using VarGpt.Torch;
using static TorchSharp.torch;

namespace VarGpt.Tests.LanguageModel;

[Collection(nameof(TorchDefaultsCollection))]
public class DecodeLinearTests
{
    // (out, in, input shape prefix, bias): odd out dims leave partial 8-row blocks and uneven chunks
    public static TheoryData<long, long, long[], bool> Shapes => new()
    {
        { 896, 896, [1, 1], true },
        { 4867, 899, [1, 1], false },
        { 131, 64, [2, 2], true },
        { 7, 33, [3], false },
        { 1, 5, [1], true },
        { 17, 8, [1, 1], false },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Float32_equals_linear_for_every_chunking(long outF, long inF, long[] prefix, bool hasBias)
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator((ulong)(outF * 31 + inF), CPU);
        // the weight is a row slice of a larger tensor: a non-zero storage offset must be honoured
        var w = (randn([outF + 5, inF], generator: g) / Math.Sqrt(inF)).narrow(0, 3, outF);
        var b = hasBias ? randn([outF], generator: g) : null;
        var x = randn([.. prefix, inF], generator: g);
        var expected = nn.functional.linear(x, w, b);
        Assert.True(DecodeLinear.Applies(x, w, b));
        foreach (int threads in new[] { 1, 2, 3, 5 })
        {
            var y = DecodeLinear.Linear(x, w, b, threads);
            Assert.Equal(expected.shape, y.shape);
            Assert.Equal(ScalarType.Float32, y.dtype);
            double maxDiff = (y - expected).abs().max().item<float>();
            Assert.True(maxDiff < 2e-5, $"[{outF}x{inF}] threads {threads}: max |fast - linear| = {maxDiff}");
        }
    }

    [Fact]
    public void Non_contiguous_input_rows_are_read_correctly()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(7, CPU);
        var w = randn([40, 24], generator: g);
        var x = randn([2, 5, 24], generator: g).narrow(1, 4, 1);   // last position of a batch of 2: strided
        Assert.False(x.is_contiguous());
        var y = DecodeLinear.Linear(x, w, null, 2);
        Assert.True((y - nn.functional.linear(x, w)).abs().max().item<float>() < 2e-5);
    }

    [Fact]
    public void BFloat16_is_the_float32_sum_rounded_once()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(3, CPU);
        foreach (var (outF, inF) in new[] { (203L, 96L), (64L, 37L) })
        {
            var w = (randn([outF, inF], generator: g) / Math.Sqrt(inF)).to(ScalarType.BFloat16);
            var b = randn([outF], generator: g).to(ScalarType.BFloat16);
            var x = randn([1, 1, inF], generator: g).to(ScalarType.BFloat16);
            var exact = nn.functional.linear(x.to(ScalarType.Float32), w.to(ScalarType.Float32), b.to(ScalarType.Float32));
            var y = DecodeLinear.Linear(x, w, b, 2);
            Assert.Equal(ScalarType.BFloat16, y.dtype);
            // within half a bf16 ulp (at most 2^-8 relative) of the float32 result, plus fp32 summation noise
            var err = (y.to(ScalarType.Float32) - exact).abs() - exact.abs() * Math.Pow(2, -8);
            Assert.True(err.max().item<float>() < 1e-5, $"[{outF}x{inF}] bf16 result not the rounded fp32 sum (excess {err.max().item<float>()})");
            var plain = nn.functional.linear(x, w, b).to(ScalarType.Float32);
            Assert.True((y.to(ScalarType.Float32) - plain).abs().max().item<float>() <= 2 * Math.Pow(2, -8) * exact.abs().max().item<float>());
        }
    }

    [Fact]
    public void Forward_keeps_plain_linear_where_the_fast_path_does_not_apply()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        using var layer = nn.Linear(16, 12);
        var one = randn(1, 1, 16);
        // autograd on (the parameters require grad): plain linear, with a graph
        Assert.False(DecodeLinear.Applies(one, layer.weight!, layer.bias));
        Assert.True(DecodeLinear.Forward(layer, one).requires_grad);
        using (no_grad())
        {
            Assert.True(DecodeLinear.Applies(one, layer.weight!, layer.bias));
            Assert.False(DecodeLinear.Applies(randn(1, DecodeLinear.MaxRows + 1, 16), layer.weight!, layer.bias));  // prefill
            Assert.False(DecodeLinear.Applies(one.to(ScalarType.Float16), layer.weight!.to(ScalarType.Float16), null));
            Assert.False(DecodeLinear.Applies(one, layer.weight!.t(), null));                                      // [in, out] view
            var fast = DecodeLinear.Forward(layer, one);
            Assert.True((fast - layer.forward(one)).abs().max().item<float>() < 1e-5);
        }
    }

    [Fact]
    public void An_exception_in_a_chunk_reaches_the_caller_and_every_chunk_still_runs_once()
    {
        // a chunk that throws on a pool thread must not end the process: the caller rethrows it after the others
        int ran = 0;
        var e = Assert.Throws<InvalidOperationException>(() => DecodeLinear.ForkJoin.Run(64, 1, k =>
        {
            Interlocked.Increment(ref ran);
            Thread.SpinWait(2000);
            throw new InvalidOperationException("chunk " + k);
        }));
        Assert.StartsWith("chunk ", e.Message);
        Assert.Equal(64, ran);
        var seen = new int[16];
        DecodeLinear.ForkJoin.Run(16, 1, k => Interlocked.Increment(ref seen[k]));
        Assert.All(seen, n => Assert.Equal(1, n));
    }
}
