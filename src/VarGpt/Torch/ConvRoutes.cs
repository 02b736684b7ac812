using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VarGpt.Torch;

/// <summary>
/// The ways VarGpt can compute a 2-D convolution on the CPU, in the order <see cref="ConvRouter"/> tries them.
/// All are differentiable (autograd builds the backward), all take and return NCHW tensors.
/// </summary>
public enum ConvRoute
{
    /// <summary>libtorch's own choice, exactly as <c>F.conv2d</c> (oneDNN for our shapes: <c>jit:avx512_core</c>,
    /// blocked aBcd16b layouts, on AVX-512 CPUs; ATen's im2col for small single images).</summary>
    Default,
    /// <summary>The input passed in channels-last strides: oneDNN's brgemm-based <c>brg_conv_fwd</c> kernels, another
    /// implementation than the default's; the result is made NCHW-contiguous again.</summary>
    ChannelsLast,
    /// <summary>Our own: zero-pad, <c>unfold</c> (im2col) in row bands, then a matrix product with the weight (fp32:
    /// MKL sgemm; bf16: libtorch's bf16 matmul). No oneDNN convolution kernel involved.</summary>
    Im2col,
    /// <summary>The convolution in float64 (ATen's slow_conv2d: im2col + dgemm; oneDNN has no f64 kernels), cast back.
    /// The last resort: exact to the rounding of the result, slower.</summary>
    Float64,
}

/// <summary>One convolution problem as the router keys it: dtype, input and weight shapes, stride, padding, whether
/// the backward is needed, and the intra-op thread count (libtorch's kernel choice depends on all of them).</summary>
public sealed record ConvCall(ScalarType DType, long N, long C, long H, long W, long O, long KH, long KW, long Stride, long Padding, bool Backward, int Threads)
{
    public long OutH => (H + 2 * Padding - KH) / Stride + 1;
    public long OutW => (W + 2 * Padding - KW) / Stride + 1;

    public static ConvCall Of(Tensor x, Tensor weight, long stride, long padding, bool backward) =>
        new(x.dtype, x.shape[0], x.shape[1], x.shape[2], x.shape[3], weight.shape[0], weight.shape[2], weight.shape[3], stride, padding, backward, get_num_threads());

    /// <summary>"conv2d bfloat16 fwd+bwd x[1,24,64,64] w[24,24,3,3] s1 p1 (1 thread)".</summary>
    public override string ToString() =>
        $"conv2d {TorchRuntime.DTypeName(DType)} {(Backward ? "fwd+bwd" : "fwd")} x[{N},{C},{H},{W}] w[{O},{C},{KH},{KW}] s{Stride} p{Padding} ({Threads} thread{(Threads == 1 ? "" : "s")})";
}

/// <summary>
/// The verdict on one route for one problem. Errors are the largest |result − float64 reference| divided by the
/// reference computed on absolute values (Σ|x·w| + |b| for the output; likewise for the gradients), so they read as
/// relative rounding error whatever the magnitudes: fp32 kernels land near 1e-7, bf16 near 1e-3; a wrong kernel near 1.
/// </summary>
public sealed record ConvRouteCheck(ConvRoute Route, bool Pass, double ForwardError, double? BackwardError, double Tolerance, string? Problem)
{
    public override string ToString() =>
        $"{ConvRoutes.Name(Route)} {(Pass ? "PASS" : "FAIL")} (fwd error {ForwardError:G3}{(BackwardError is { } b ? $", bwd error {b:G3}" : "")}, tolerance {Tolerance:G3}{(Problem is null ? "" : "; " + Problem)})";
}

/// <summary>The implementations behind <see cref="ConvRoute"/> and their numerical checks against float64. Stateless.</summary>
public static class ConvRoutes
{
    /// <summary>The order <see cref="ConvRouter"/> tries the routes in: cheapest first, the default (today's numerics) before any other.</summary>
    public static readonly IReadOnlyList<ConvRoute> Order = [ConvRoute.Default, ConvRoute.ChannelsLast, ConvRoute.Im2col, ConvRoute.Float64];

    public static string Name(ConvRoute r) => r switch
    {
        ConvRoute.Default => "default",
        ConvRoute.ChannelsLast => "channels_last",
        ConvRoute.Im2col => "im2col",
        ConvRoute.Float64 => "float64",
        _ => r.ToString(),
    };

    public static ConvRoute Parse(string name) => name.Trim().ToLowerInvariant().Replace('-', '_') switch
    {
        "default" or "onednn" => ConvRoute.Default,
        "channels_last" => ConvRoute.ChannelsLast,
        "im2col" => ConvRoute.Im2col,
        "float64" or "f64" => ConvRoute.Float64,
        _ => throw new InvalidOptionException($"unknown convolution route '{name}'; expected default, channels_last, im2col or float64"),
    };

    /// <summary>Largest accepted relative error (see <see cref="ConvRouteCheck"/>): ~300× what correct fp32 kernels show,
    /// ~8× correct bf16 ones (rounding of inputs, output and, in im2col, the bias add); wrong kernels miss by orders of magnitude.</summary>
    public static double Tolerance(ScalarType t) => t switch
    {
        ScalarType.Float32 or ScalarType.Float64 => 1e-4,
        _ => 3e-2,
    };

    /// <summary>Elements the im2col route unfolds at once (64 MiB of fp32); larger problems go in bands of output rows.</summary>
    const long Im2colBandElements = 16L << 20;

    /// <summary>conv2d(x, weight, bias) with square stride and padding by <paramref name="route"/>; x [N,C,H,W], weight [O,C,kh,kw].</summary>
    public static Tensor Run(ConvRoute route, Tensor x, Tensor weight, Tensor? bias, long stride, long padding)
    {
        switch (route)
        {
            case ConvRoute.Default:
                return F.conv2d(x, weight, bias, strides: [stride, stride], padding: [padding, padding]);
            case ConvRoute.ChannelsLast:
            {
                using var scope = NewDisposeScope();
                // NCHW shape with NHWC strides: what ATen's suggest_memory_format reads as channels_last
                var xcl = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);
                var y = F.conv2d(xcl, weight, bias, strides: [stride, stride], padding: [padding, padding]);
                return y.contiguous().MoveToOuterDisposeScope();
            }
            case ConvRoute.Im2col:
                return Im2col(x, weight, bias, stride, padding);
            case ConvRoute.Float64:
            {
                using var scope = NewDisposeScope();
                var y = F.conv2d(x.to(ScalarType.Float64), weight.to(ScalarType.Float64), bias?.to(ScalarType.Float64),
                    strides: [stride, stride], padding: [padding, padding]);
                return y.to(x.dtype).MoveToOuterDisposeScope();
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(route));
        }
    }

    /// <summary>
    /// Convolution as unfold + matmul (official conv semantics: cross-correlation, zero padding): the padded input is
    /// cut into bands of output rows so the unfolded block stays under <see cref="Im2colBandElements"/>.
    /// </summary>
    static Tensor Im2col(Tensor x, Tensor weight, Tensor? bias, long stride, long padding)
    {
        using var scope = NewDisposeScope();
        long n = x.shape[0], c = x.shape[1], o = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3];
        var xp = padding > 0 ? F.pad(x, [padding, padding, padding, padding]) : x;
        long outH = (xp.shape[2] - kh) / stride + 1, outW = (xp.shape[3] - kw) / stride + 1;
        var w2 = weight.reshape(o, c * kh * kw);                                   // [O, C·kh·kw], (c, ky, kx) order as unfold
        long rows = Math.Clamp(Im2colBandElements / Math.Max(1, n * c * kh * kw * outW), 1, outH);
        var bands = new List<Tensor>();
        for (long r0 = 0; r0 < outH; r0 += rows)
        {
            long r = Math.Min(rows, outH - r0);
            var slab = xp.narrow(2, r0 * stride, (r - 1) * stride + kh);          // input rows the band reads
            var cols = F.unfold(slab, (kh, kw), stride: (stride, stride));           // [N, C·kh·kw, r·outW]
            var y = w2.matmul(cols);                                                // [N, O, r·outW]
            if (bias is not null) y = y + bias.view(1, o, 1);
            bands.Add(y.view(n, o, r, outW));
        }
        var result = bands.Count == 1 ? bands[0] : cat(bands, 2);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Checks a forward result <paramref name="y"/> = conv(x, weight, bias) against a float64 reference at sampled
    /// output positions: every output channel at positions spread along the first, middle and last rows and columns
    /// (where padding and tails live) of the first and last image, plus random ones, about 1/32 of all positions
    /// (<see cref="SamplePositions"/>). Cheaper than the convolution itself, so it can check a real call. <paramref name="rerun"/>, when given, recomputes the result:
    /// it must be bitwise identical (a kernel that is sometimes wrong often differs between runs).
    /// </summary>
    public static ConvRouteCheck CheckForward(ConvRoute route, Tensor y, Tensor x, Tensor weight, Tensor? bias, long stride, long padding, Func<Tensor>? rerun = null)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        double tol = Tolerance(x.dtype);
        long n = x.shape[0], outH = y.shape[2], outW = y.shape[3];
        var (bi, oy, ox) = SamplePositions(n, outH, outW);
        var (reference, scale) = SampledReference(x, weight, bias, stride, padding, bi, oy, ox);     // [P, O] float64
        var got = y.detach().permute(0, 2, 3, 1).index(TensorIndex.Tensor(bi), TensorIndex.Tensor(oy), TensorIndex.Tensor(ox)).to(ScalarType.Float64);
        var (err, problem) = Compare(got, reference, scale, tol);
        if (problem is null && rerun is not null)
        {
            var again = rerun();
            if (!again.detach().eq(y.detach()).all().item<bool>()) problem = "two runs gave different results";
        }
        return new ConvRouteCheck(route, problem is null, err, null, tol, problem);
    }

    /// <summary>
    /// Forward and backward of <paramref name="route"/> on seeded random data of <paramref name="call"/>'s shape
    /// (spatially shrunk when larger than ~2·10⁸ multiply-adds, keeping channels, kernel, stride and padding), against a
    /// full float64 forward and backward. <paramref name="corrupt"/> (tests, diagnostics) alters the route's results.
    /// </summary>
    public static ConvRouteCheck CheckSynthetic(ConvRoute route, ConvCall call, Func<Tensor, Tensor>? corrupt = null)
    {
        using var scope = NewDisposeScope();
        var (h, w) = CheckSize(call);
        var g = new Generator(20240613UL);
        var dt = call.DType;
        long outH = (h + 2 * call.Padding - call.KH) / call.Stride + 1, outW = (w + 2 * call.Padding - call.KW) / call.Stride + 1;
        var x = randn([call.N, call.C, h, w], generator: g).to(dt);
        var wt = (randn([call.O, call.C, call.KH, call.KW], generator: g) / Math.Sqrt(call.C * call.KH * call.KW)).to(dt);
        var b = (randn([call.O], generator: g) * 0.1).to(dt);
        var gy = randn([call.N, call.O, outH, outW], generator: g).to(dt);
        double tol = Tolerance(dt);

        var xr = x.clone().requires_grad_(call.Backward);
        var wr = wt.clone().requires_grad_(call.Backward);
        var br = b.clone().requires_grad_(call.Backward);
        Tensor y;
        using (var _ = enable_grad(call.Backward)) y = Run(route, xr, wr, br, call.Stride, call.Padding);
        if (corrupt is not null) y = corrupt(y);

        var x64 = x.to(ScalarType.Float64).requires_grad_(call.Backward);
        var w64 = wt.to(ScalarType.Float64).requires_grad_(call.Backward);
        var b64 = b.to(ScalarType.Float64).requires_grad_(call.Backward);
        Tensor y64;
        using (var _ = enable_grad(call.Backward)) y64 = F.conv2d(x64, w64, b64, strides: [call.Stride, call.Stride], padding: [call.Padding, call.Padding]);
        Tensor yScale;
        using (no_grad()) yScale = F.conv2d(x64.detach().abs(), w64.detach().abs(), b64.detach().abs(), strides: [call.Stride, call.Stride], padding: [call.Padding, call.Padding]);
        var (fwdErr, problem) = Compare(y.detach().to(ScalarType.Float64), y64.detach(), yScale, tol);
        double? bwdErr = null;
        if (call.Backward)
        {
            y.backward([gy]);
            y64.backward([gy.to(ScalarType.Float64)]);
            // gradient scales: the same backward on absolute values (|x|, |w|, |gy|) bounds every partial sum
            var xa = x64.detach().abs().requires_grad_();
            var wa = w64.detach().abs().requires_grad_();
            using (var _ = enable_grad())
                F.conv2d(xa, wa, null, strides: [call.Stride, call.Stride], padding: [call.Padding, call.Padding]).backward([gy.to(ScalarType.Float64).abs()]);
            var gx = xr.grad!; var gw = wr.grad!; var gb = br.grad!;
            if (corrupt is not null) gx = corrupt(gx);
            var (ex, px) = Compare(gx.to(ScalarType.Float64), x64.grad!, xa.grad!, tol);
            var (ew, pw) = Compare(gw.to(ScalarType.Float64), w64.grad!, wa.grad!, tol);
            var (eb, pb) = Compare(gb.to(ScalarType.Float64), b64.grad!, gy.to(ScalarType.Float64).abs().sum([0, 2, 3]), tol);
            bwdErr = Math.Max(ex, Math.Max(ew, eb));
            problem ??= px is not null ? "input gradient: " + px : pw is not null ? "weight gradient: " + pw : pb is not null ? "bias gradient: " + pb : null;
        }
        return new ConvRouteCheck(route, problem is null, fwdErr, bwdErr, tol, problem);
    }

    /// <summary>Spatial size of a synthetic check: the call's own unless it exceeds ~2·10⁸ multiply-adds, then halved until not
    /// (the height and width keep their remainders modulo 16 and the stride, so kernels meet the same tails).</summary>
    static (long H, long W) CheckSize(ConvCall c)
    {
        long h = c.H, w = c.W;
        long Macs(long hh, long ww) => c.N * c.O * c.C * c.KH * c.KW * ((hh + 2 * c.Padding - c.KH) / c.Stride + 1) * ((ww + 2 * c.Padding - c.KW) / c.Stride + 1);
        while (Macs(h, w) > 200_000_000 && h > 48 && w > 48)
        {
            h = h / 2 / 16 * 16 + h % 16;
            w = w / 2 / 16 * 16 + w % 16;
        }
        return (h, w);
    }

    /// <summary>Max of |got − ref| / (scale + tiny) and the first problem: a NaN/Inf where the reference is finite, or an error above tolerance.</summary>
    static (double Error, string? Problem) Compare(Tensor got, Tensor reference, Tensor scale, double tol)
    {
        using var scope = NewDisposeScope();
        var finiteRef = reference.isfinite();
        var badNonFinite = finiteRef.logical_and(got.isfinite().logical_not()).any().item<bool>();
        var rel = (got - reference).abs() / (scale + 1e-30);
        rel = where(finiteRef, rel, zeros_like(rel)).nan_to_num(nan: double.PositiveInfinity);
        double err = rel.numel() == 0 ? 0 : rel.max().item<double>();
        if (badNonFinite) return (double.PositiveInfinity, "NaN or Inf where the float64 reference is finite");
        return (err, err > tol ? $"error {err:G3} above tolerance {tol:G3}" : null);
    }

    /// <summary>
    /// Output positions to sample: (image, row, column) index tensors of equal length. About 1/32 of the output
    /// positions (at least 16, at most ~830): per sampled position the reference costs ~4 times what the convolution
    /// does (float64, plus the absolute-value product), so this keeps it near an eighth of the checked convolution.
    /// </summary>
    static (Tensor B, Tensor Y, Tensor X) SamplePositions(long n, long outH, long outW)
    {
        var b = new List<long>(); var ys = new List<long>(); var xs = new List<long>();
        void Add(long bb, long yy, long xx) { b.Add(bb); ys.Add(yy); xs.Add(xx); }
        long budget = Math.Max(16, n * outH * outW / 32);
        var images = n == 1 ? [0L] : new[] { 0L, n - 1 };
        long perLine = Math.Clamp(budget * 3 / 4 / (images.Length * 6), 2, 128);
        IEnumerable<long> Spread(long len)
        {
            long count = Math.Min(len, perLine);
            for (long i = 0; i < count; i++) yield return count == 1 ? 0 : i * (len - 1) / (count - 1);
        }
        foreach (var img in images)
        {
            foreach (var row in new[] { 0L, outH / 2, outH - 1 }.Distinct())
                foreach (var col in Spread(outW)) Add(img, row, col);
            foreach (var col in new[] { 0L, outW / 2, outW - 1 }.Distinct())
                foreach (var row in Spread(outH)) Add(img, row, col);
        }
        var rng = new Random(7); // positions only; the global torch RNG is left untouched (training reproducibility)
        for (long i = 0, extra = Math.Clamp(budget / 4, 4, 64); i < extra; i++) Add(rng.NextInt64(n), rng.NextInt64(outH), rng.NextInt64(outW));
        return (tensor(b.ToArray()), tensor(ys.ToArray()), tensor(xs.ToArray()));
    }

    /// <summary>float64 conv outputs at the given positions, all channels: patches [P, C·kh·kw] times weightᵀ, plus bias; and the same on absolute values.</summary>
    static (Tensor Reference, Tensor Scale) SampledReference(Tensor x, Tensor weight, Tensor? bias, long stride, long padding, Tensor bi, Tensor oy, Tensor ox)
    {
        long o = weight.shape[0], kh = weight.shape[2], kw = weight.shape[3];
        var x64 = x.detach().to(ScalarType.Float64);
        var xp = (padding > 0 ? F.pad(x64, [padding, padding, padding, padding]) : x64).permute(0, 2, 3, 1);   // [N, Hp, Wp, C]
        var taps = new List<Tensor>();
        for (long ky = 0; ky < kh; ky++)
            for (long kx = 0; kx < kw; kx++)
                taps.Add(xp.index(TensorIndex.Tensor(bi), TensorIndex.Tensor(oy * stride + ky), TensorIndex.Tensor(ox * stride + kx)));   // [P, C]
        var patches = stack(taps, -1).flatten(1);                                  // [P, C·kh·kw] in (c, ky, kx) order
        var w2 = weight.detach().to(ScalarType.Float64).reshape(o, -1);
        var reference = patches.mm(w2.t());
        var scale = patches.abs().mm(w2.abs().t());
        if (bias is not null)
        {
            var b64 = bias.detach().to(ScalarType.Float64);
            reference = reference + b64;
            scale = scale + b64.abs();
        }
        return (reference, scale);
    }
}
