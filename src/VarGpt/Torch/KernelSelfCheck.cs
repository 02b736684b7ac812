using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace VarGpt.Torch;

/// <summary>One implementation tried for a kernel check: its name, verdict, error (max relative to the float64
/// reference; see <see cref="ConvRouteCheck"/>), tolerance, what went wrong, and the oneDNN implementations it ran
/// (filled when <see cref="KernelSelfCheckOptions.CaptureImplementations"/> is on).</summary>
public sealed record KernelAttempt(string Route, bool Pass, double Error, double Tolerance, string? Problem, IReadOnlyList<string> Implementations);

/// <summary>
/// One numerical check of a native kernel VarGpt relies on, e.g. "conv2d float32 fwd+bwd x[1,24,64,64] w[24,24,3,3]
/// s1 p1": the implementations tried in order (libtorch's default first) until one passed. Convolutions have
/// fallbacks (<see cref="ConvRoutes.Order"/>); linear and attention have only the default.
/// </summary>
public sealed record KernelCheck(string Name, IReadOnlyList<KernelAttempt> Attempts)
{
    /// <summary>The first passing attempt: what the product computes this kernel with; null = no right implementation.</summary>
    public KernelAttempt? Taken => Attempts.FirstOrDefault(a => a.Pass);
    public bool Pass => Taken is not null;
    public bool DefaultPass => Attempts.Count > 0 && Attempts[0].Pass;

    /// <summary>"PASS conv2d … default (error 1.2e-07 ≤ 1e-04)" or "PASS … default FAIL (…) → channels_last (…)" or "FAIL …".</summary>
    public override string ToString()
    {
        static string A(KernelAttempt a) =>
            $"{a.Route} {(a.Pass ? "PASS" : "FAIL")} (error {a.Error:G3}, tolerance {a.Tolerance:G3}{(a.Problem is null ? "" : "; " + a.Problem)}{(a.Implementations.Count == 0 ? "" : "; ran " + string.Join(", ", a.Implementations))})";
        return $"{(Pass ? "PASS" : "FAIL")} {Name}: {string.Join(" → ", Attempts.Select(A))}";
    }
}

public sealed record KernelSelfCheckOptions
{
    /// <summary>Convolution routes whose results are corrupted (fault injection; see <see cref="ConvRouterOptions.FaultyRoutes"/>).</summary>
    public IReadOnlySet<ConvRoute> FaultyRoutes { get; init; } = new HashSet<ConvRoute>();

    /// <summary>Try every convolution route, not only until one passes (diagnostics).</summary>
    public bool AllRoutes { get; init; }

    /// <summary>Record the oneDNN implementation names of each default attempt (<see cref="OneDnnVerbose.Capture"/>;
    /// redirects stdout meanwhile: command-line diagnostics only).</summary>
    public bool CaptureImplementations { get; init; }
}

/// <summary>
/// A cheap numerical self-check of the native kernels VarGpt relies on, each against float64 computed another way:
/// the BSQ-VAE convolutions (the fixture VAE's 24-channel shapes that AMD Zen 5's oneDNN got wrong, the shipped VAE's
/// 48/96-channel ones, stride-2 downsampling, 1×1 shortcuts, 3-channel in/out) forward and backward in fp32 and bf16,
/// linear forward and backward in fp32 and bf16, and scaled-dot-product attention (causal, additive mask, none)
/// forward and backward in fp32 and bf16. Run by <c>vargpt doctor</c> and by the test suite on every CI machine, so a
/// wrong kernel on a new CPU fails there with its name. Takes about a second on 2 cores (docs/notes/cpu-kernels.md).
/// Leaves libtorch's global RNG untouched (seeded local generators).
/// </summary>
public static class KernelSelfCheck
{
    /// <summary>The convolution problems checked (N, C, H, W, O, k, stride, padding).</summary>
    public static readonly IReadOnlyList<(long N, long C, long H, long W, long O, long K, long Stride, long Padding)> ConvProblems =
    [
        (1, 24, 64, 64, 24, 3, 1, 1),   // fixture VAE level-0 ResnetBlock conv (jit:avx512_core, aBcd16b, 16+8 channel tail)
        (2, 24, 16, 16, 24, 3, 1, 1),   // the same, batch 2 (bitwise_self_correction, training batches)
        (1, 24, 33, 33, 24, 3, 2, 0),   // fixture VAE Downsample: pad (0,1,0,1) then 3x3 stride 2
        (2, 24, 16, 16, 48, 3, 1, 1),   // channel change 24 -> 48
        (2, 24, 16, 16, 48, 1, 1, 0),   // nin_shortcut 1x1
        (1, 3, 64, 64, 24, 3, 1, 1),    // conv_in
        (1, 24, 64, 64, 3, 3, 1, 1),    // decoder conv_out
        (1, 48, 32, 32, 96, 3, 1, 1),   // shipped ShapesWorld VAE shapes
        (2, 96, 17, 17, 96, 3, 2, 0),
    ];

    public static IReadOnlyList<KernelCheck> Run(KernelSelfCheckOptions? options = null)
    {
        options ??= new KernelSelfCheckOptions();
        var checks = new List<KernelCheck>();
        foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            foreach (var p in ConvProblems)
                foreach (var backward in new[] { false, true })
                    checks.Add(Conv(new ConvCall(dt, p.N, p.C, p.H, p.W, p.O, p.K, p.K, p.Stride, p.Padding, backward, get_num_threads()), options));
            checks.Add(Linear(dt, rows: 64, inF: 512, outF: 1024, options));
            checks.Add(Linear(dt, rows: 3, inF: 512, outF: 1024, options));
            foreach (var mask in new[] { "causal", "additive mask", "no mask" })
                checks.Add(Attention(dt, mask, options));
        }
        return checks;
    }

    static KernelCheck Conv(ConvCall call, KernelSelfCheckOptions o)
    {
        var attempts = new List<KernelAttempt>();
        foreach (var route in ConvRoutes.Order)
        {
            var corrupt = o.FaultyRoutes.Contains(route) ? new ConvRouterOptions { FaultyRoutes = o.FaultyRoutes }.CorruptionFor(route) : null;
            var (c, impls) = Traced(o.CaptureImplementations && route == ConvRoute.Default, () => ConvRoutes.CheckSynthetic(route, call, corrupt));
            attempts.Add(new KernelAttempt(ConvRoutes.Name(route), c.Pass, Math.Max(c.ForwardError, c.BackwardError ?? 0), c.Tolerance, c.Problem, impls));
            if (c.Pass && !o.AllRoutes) break;
        }
        return new KernelCheck(call.ToString(), attempts);
    }

    static KernelCheck Linear(ScalarType dt, long rows, long inF, long outF, KernelSelfCheckOptions o)
    {
        var (a, impls) = Traced(o.CaptureImplementations, () =>
        {
            using var scope = NewDisposeScope();
            var g = new Generator(7UL);
            var x = randn([rows, inF], generator: g).to(dt).requires_grad_();
            var w = (randn([outF, inF], generator: g) / Math.Sqrt(inF)).to(dt).requires_grad_();
            var b = (randn([outF], generator: g) * 0.1).to(dt).requires_grad_();
            var gy = randn([rows, outF], generator: g).to(dt);
            Tensor y;
            using (enable_grad()) y = F.linear(x, w, b);
            y.backward([gy]);
            // float64 reference and magnitudes: y = x wᵀ + b, dx = gy w, dw = gyᵀ x, db = Σ gy
            var (x64, w64, b64, g64) = (x.detach().to(ScalarType.Float64), w.detach().to(ScalarType.Float64), b.detach().to(ScalarType.Float64), gy.to(ScalarType.Float64));
            double tol = ConvRoutes.Tolerance(dt);
            double e = Max(
                RelErr(y, x64.mm(w64.t()) + b64, x64.abs().mm(w64.abs().t()) + b64.abs()),
                RelErr(x.grad!, g64.mm(w64), g64.abs().mm(w64.abs())),
                RelErr(w.grad!, g64.t().mm(x64), g64.abs().t().mm(x64.abs())),
                RelErr(b.grad!, g64.sum(new long[] { 0 }), g64.abs().sum(new long[] { 0 })));
            return new KernelAttempt("default", e <= tol, e, tol, e <= tol ? null : ProblemOf(e, tol), []);
        });
        return new KernelCheck($"linear {TorchRuntime.DTypeName(dt)} fwd+bwd x[{rows},{inF}] w[{outF},{inF}] ({get_num_threads()} threads)", [a with { Implementations = impls }]);
    }

    static KernelCheck Attention(ScalarType dt, string mask, KernelSelfCheckOptions o)
    {
        const long B = 1, H = 4, L = 96, D = 64;
        var (a, impls) = Traced(o.CaptureImplementations, () =>
        {
            using var scope = NewDisposeScope();
            var g = new Generator(11UL);
            var q = randn([B, H, L, D], generator: g).to(dt).requires_grad_();
            var k = randn([B, H, L, D], generator: g).to(dt).requires_grad_();
            var v = randn([B, H, L, D], generator: g).to(dt).requires_grad_();
            var gy = randn([B, H, L, D], generator: g).to(dt);
            Tensor? additive = null;
            if (mask == "additive mask") // the language model's padding mask: 0 where visible, a large negative where not
            {
                var keep = rand([B, 1, L, L], generator: g).lt(0.8).logical_or(eye(L, dtype: ScalarType.Bool).view(1, 1, L, L));
                additive = where(keep, zeros([B, 1, L, L]), full([B, 1, L, L], -1e9)).to(dt);
            }
            Tensor y;
            using (enable_grad()) y = F.scaled_dot_product_attention(q, k, v, additive, is_casual: mask == "causal");
            y.backward([gy]);

            // float64 reference, differentiated by autograd in float64 (plain matmul + softmax)
            var q64 = q.detach().to(ScalarType.Float64).requires_grad_();
            var k64 = k.detach().to(ScalarType.Float64).requires_grad_();
            var v64 = v.detach().to(ScalarType.Float64).requires_grad_();
            Tensor y64;
            using (enable_grad())
            {
                var s = q64.matmul(k64.transpose(-2, -1)) / Math.Sqrt(D);
                if (mask == "causal") s = s.masked_fill(ones([L, L], dtype: ScalarType.Bool).triu(1), double.NegativeInfinity);
                if (additive is not null) s = s + additive.to(ScalarType.Float64);
                y64 = s.softmax(-1).matmul(v64);
            }
            y64.backward([gy.to(ScalarType.Float64)]);
            double tol = dt == ScalarType.Float32 ? 1e-4 : 5e-2;
            // Errors relative to each result's largest magnitude (attention output is a convex mix of value rows).
            double e = Max(GlobalRel(y, y64), GlobalRel(q.grad!, q64.grad!), GlobalRel(k.grad!, k64.grad!), GlobalRel(v.grad!, v64.grad!));
            return new KernelAttempt("default", e <= tol, e, tol, e <= tol ? null : ProblemOf(e, tol), []);
        });
        return new KernelCheck($"scaled_dot_product_attention {TorchRuntime.DTypeName(dt)} fwd+bwd q,k,v[{B},{H},{L},{D}] {mask} ({get_num_threads()} threads)", [a with { Implementations = impls }]);
    }

    static (T, IReadOnlyList<string>) Traced<T>(bool capture, Func<T> f)
    {
        if (!capture) return (f(), []);
        var (r, execs, _) = OneDnnVerbose.Capture(f);
        return (r, execs.Where(e => e.Primitive != "reorder").Select(e => $"{e.Primitive} {e.Implementation} {e.PropKind}").Distinct().ToList());
    }

    static double Max(params double[] xs) => xs.Max();

    static string ProblemOf(double e, double tol) => double.IsFinite(e) ? $"error {e:G3} above tolerance {tol:G3}" : "NaN or Inf in the result";

    /// <summary>max |got − ref| / scale elementwise (scale = the same computation on absolute values); NaN counts as infinite.</summary>
    static double RelErr(Tensor got, Tensor reference, Tensor scale)
    {
        using var scope = NewDisposeScope();
        var r = ((got.detach().to(ScalarType.Float64) - reference).abs() / (scale + 1e-30)).nan_to_num(nan: double.PositiveInfinity);
        return r.max().item<double>();
    }

    /// <summary>max |got − ref| / max |ref|; NaN counts as infinite.</summary>
    static double GlobalRel(Tensor got, Tensor reference)
    {
        using var scope = NewDisposeScope();
        var d = (got.detach().to(ScalarType.Float64) - reference.detach()).abs().nan_to_num(nan: double.PositiveInfinity).max().item<double>();
        return d / (reference.detach().abs().max().item<double>() + 1e-30);
    }
}
