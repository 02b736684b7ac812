using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// How a <see cref="ConvRouter"/> chooses. Defaults: self-checked choice, nothing injected, the first fallback
/// reported once on stderr. <see cref="FromEnvironment"/> reads the two diagnostic switches below.
/// </summary>
public sealed record ConvRouterOptions
{
    /// <summary>Diagnostic/test switch: <c>VARGPT_CONV_ROUTE=default|channels_last|im2col|float64</c> runs every
    /// convolution by that route without checks (<c>default</c> = libtorch as before the router; unset or <c>auto</c> =
    /// self-checked choice).</summary>
    public const string RouteVariable = "VARGPT_CONV_ROUTE";

    /// <summary>Diagnostic/test switch: <c>VARGPT_CONV_FAULT=default[,channels_last…]</c> corrupts those routes'
    /// results (scaled by 1/16, one NaN: a stand-in for the wrong AMD Zen 5 kernel's values and NaNs) to show the checks catch it.</summary>
    public const string FaultVariable = "VARGPT_CONV_FAULT";

    /// <summary>Run every convolution by this route, unchecked; null = check and choose.</summary>
    public ConvRoute? Force { get; init; }

    /// <summary>Routes whose results are corrupted (fault injection for tests and <c>vargpt doctor</c>); empty in normal use.</summary>
    public IReadOnlySet<ConvRoute> FaultyRoutes { get; init; } = new HashSet<ConvRoute>();

    /// <summary>Receives one message the first time a route other than the default is taken; null = stderr.</summary>
    public Action<string>? Warn { get; init; }

    /// <summary>The options <see cref="RouteVariable"/> and <see cref="FaultVariable"/> ask for; an unknown value is an error naming the variable.</summary>
    public static ConvRouterOptions FromEnvironment()
    {
        var route = Environment.GetEnvironmentVariable(RouteVariable);
        var fault = Environment.GetEnvironmentVariable(FaultVariable);
        try
        {
            return new ConvRouterOptions
            {
                Force = string.IsNullOrWhiteSpace(route) || route.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase) ? null : ConvRoutes.Parse(route),
                FaultyRoutes = string.IsNullOrWhiteSpace(fault) ? new HashSet<ConvRoute>()
                    : fault.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(ConvRoutes.Parse).ToHashSet(),
            };
        }
        catch (InvalidOptionException e)
        {
            throw new InvalidOptionException($"{RouteVariable}/{FaultVariable}: {e.Message} (or auto for {RouteVariable})", RouteVariable);
        }
    }

    /// <summary>The result of <paramref name="route"/> as this configuration delivers it: corrupted when the route is listed in <see cref="FaultyRoutes"/>.</summary>
    internal Tensor Deliver(ConvRoute route, Tensor y) => FaultyRoutes.Contains(route) ? Corrupt(y) : y;

    internal Func<Tensor, Tensor>? CorruptionFor(ConvRoute route) => FaultyRoutes.Contains(route) ? Corrupt : null;

    /// <summary>A stand-in for a wrong kernel: values off by a factor and one NaN (the Zen 5 encoder gave wrong values, sometimes NaN).</summary>
    static Tensor Corrupt(Tensor y)
    {
        using var scope = NewDisposeScope();
        var mark = zeros(y.numel(), dtype: y.dtype, device: y.device);
        if (y.numel() > 0) mark[0] = double.NaN;
        return (y * 0.0625 + mark.view(y.shape)).MoveToOuterDisposeScope();
    }
}

/// <summary>One decision of a <see cref="ConvRouter"/>: the problem, the route taken, and every route's check.</summary>
public sealed record ConvDecision(ConvCall Call, ConvRoute Route, IReadOnlyList<ConvRouteCheck> Checks)
{
    public override string ToString() => $"{Call}: {ConvRoutes.Name(Route)} [{string.Join("; ", Checks)}]";
}

/// <summary>
/// Computes a model's 2-D convolutions by a route checked on this CPU. The first time a problem (dtype, shapes,
/// stride, padding, backward or not, thread count) is seen, the default route's real result is compared with a
/// float64 reference at sampled positions and recomputed once to be sure it is repeatable; for problems that need a
/// backward, forward and backward are also checked on seeded random data of the same shape. The first route that
/// passes (see <see cref="ConvRoutes.Order"/>) serves this problem from then on. On a CPU where the default kernels
/// are right — every one seen so far but AMD Zen 5 with the fixture VAE's 24-channel convolutions — results are
/// bit-identical to plain <c>F.conv2d</c>; the cost is one extra convolution and a small float64 product per
/// distinct problem (docs/notes/cpu-kernels.md).
/// <para>A router belongs to one model (the BSQ-VAE owns one); its decisions are that model's state, safe to
/// consult from concurrent requests. Non-CPU tensors go straight to <c>F.conv2d</c>.</para>
/// </summary>
public sealed class ConvRouter
{
    readonly ConcurrentDictionary<ConvCall, ConvDecision> _decisions = new();
    int _warned;

    public ConvRouter(ConvRouterOptions? options = null)
    {
        Options = options ?? new ConvRouterOptions();
        // The NNPACK probe warns on every small conv on CPUs it does not know; VarGpt never uses NNPACK (see the method).
        LibTorchNative.DisableNnpack();
    }

    public ConvRouterOptions Options { get; }

    /// <summary>The decisions taken so far, in no particular order.</summary>
    public IReadOnlyList<ConvDecision> Decisions => _decisions.Values.ToList();

    /// <summary>conv2d(x, weight, bias) with square <paramref name="stride"/> and <paramref name="padding"/>; x [N,C,H,W] → [N,O,H',W'].</summary>
    public Tensor Conv2d(Tensor x, Tensor weight, Tensor? bias, long stride, long padding)
    {
        if (Options.Force is { } forced) return Options.Deliver(forced, ConvRoutes.Run(forced, x, weight, bias, stride, padding));
        if (x.device_type != DeviceType.CPU || x.dim() != 4) return ConvRoutes.Run(ConvRoute.Default, x, weight, bias, stride, padding);
        bool backward = is_grad_enabled() && (x.requires_grad || weight.requires_grad || (bias?.requires_grad ?? false));
        var call = ConvCall.Of(x, weight, stride, padding, backward);
        if (_decisions.TryGetValue(call, out var known))
            return Options.Deliver(known.Route, ConvRoutes.Run(known.Route, x, weight, bias, stride, padding));
        return Decide(call, x, weight, bias, stride, padding);
    }

    Tensor Decide(ConvCall call, Tensor x, Tensor weight, Tensor? bias, long stride, long padding)
    {
        var checks = new List<ConvRouteCheck>();
        foreach (var route in ConvRoutes.Order)
        {
            var y = Options.Deliver(route, ConvRoutes.Run(route, x, weight, bias, stride, padding));
            var check = ConvRoutes.CheckForward(route, y, x, weight, bias, stride, padding,
                rerun: () => { using var _ = no_grad(); return Options.Deliver(route, ConvRoutes.Run(route, x, weight, bias, stride, padding)); });
            if (check.Pass && call.Backward)
            {
                var b = ConvRoutes.CheckSynthetic(route, call, Options.CorruptionFor(route));
                check = b with { ForwardError = Math.Max(check.ForwardError, b.ForwardError) };
            }
            checks.Add(check);
            if (check.Pass)
            {
                var decision = new ConvDecision(call, route, checks);
                _decisions.TryAdd(call, decision);
                if (route != ConvRoute.Default && Interlocked.Exchange(ref _warned, 1) == 0)
                    (Options.Warn ?? Console.Error.WriteLine)(
                        $"warning: libtorch's convolution gave wrong results on this CPU ({CpuInfo.Detect().Summary}) for {call}: {checks[0]}. " +
                        $"VarGpt computes it by the {ConvRoutes.Name(route)} route instead (checked), as any other convolution that fails its check; results stay right. 'vargpt doctor' shows every kernel check.");
                return y;
            }
            y.Dispose();
        }
        throw new InvalidOperationException(
            $"No convolution implementation gives right results on this CPU ({CpuInfo.Detect().Summary}) for {call}: {string.Join("; ", checks)}. " +
            "Please report it with the output of 'vargpt doctor'; setting ONEDNN_MAX_CPU_ISA=AVX2 in the environment before starting may help.");
    }
}
