using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// y = x Wᵀ + b for a decode step's few-row input on the CPU: a hand-written GEMV that reads the weight once, split
/// into contiguous row blocks over libtorch's intra-op thread count. libtorch's one-row fp32 <c>linear</c> goes to a
/// single-threaded MKL sgemv that streams weights at 10.5-12 GB/s on the 2-core box (bf16 ~8 GB/s), while one core
/// reads ~21 GB/s and two ~30 GB/s (docs/performance.md, "Chat"). A decode step is nothing but such weight reads, so
/// the language model's linears call <see cref="Forward"/>: the fast path for the few-row, no-autograd CPU fp32/bf16
/// case, plain <c>linear</c> otherwise (prefill, training, LoRA-wrapped layers, CUDA, fp16).
/// Numerics: the same products summed in another order (fp32, 4 vector accumulators per row); bf16 results are
/// accumulated in fp32 (bias included) and rounded to nearest-even once (within one bf16 ulp of libtorch's bf16
/// linear; tested in DecodeLinearTests). <see cref="LinearInt8(Tensor, Tensor, Tensor, Tensor?)"/> is the same GEMV over
/// int8 weights with a per-row scale (<see cref="Int8Linear"/>'s decode path), sharing the row split and threads.
/// </summary>
public static class DecodeLinear
{
    /// <summary>Inputs with at most this many rows (product of the leading dims) take the fast path.</summary>
    public const int MaxRows = 4;

    /// <summary>Each thread gets at least this much weight (a fork/join costs ~10 µs, 128 KiB takes ~5 µs to read).</summary>
    const long BytesPerThread = 128 << 10;

    /// <summary><paramref name="layer"/>(x), through the fast GEMV when <see cref="Applies"/> (the layer must be a plain nn.Linear).</summary>
    public static Tensor Forward(nn.Module<Tensor, Tensor> layer, Tensor x) =>
        layer is Linear l && Applies(x, l.weight!, l.bias) ? Linear(x, l.weight!, l.bias) : layer.forward(x);

    /// <summary>
    /// True when the fast path computes linear(x, weight, bias): CPU, fp32 or bf16 (x, weight and bias alike), weight
    /// [O, I] contiguous, at most <see cref="MaxRows"/> rows, no autograd graph needed, SIMD available.
    /// </summary>
    public static bool Applies(Tensor x, Tensor weight, Tensor? bias) =>
        FewRowInput(x, weight, bias) && weight.dtype == x.dtype && !(is_grad_enabled() && weight.requires_grad);

    /// <summary>
    /// What both GEMVs need of the input: SIMD, the CPU, x fp32 or bf16 [..., I] with at most <see cref="MaxRows"/> rows
    /// against a contiguous 2-d weight [O, I] (I ≠ 0) that one span can address, bias [O] in x's dtype, and no autograd
    /// graph through x or bias.
    /// </summary>
    static bool FewRowInput(Tensor x, Tensor weight, Tensor? bias)
    {
        if (!Vector.IsHardwareAccelerated || x.device_type != TorchSharp.DeviceType.CPU || weight.device_type != TorchSharp.DeviceType.CPU) return false;
        var t = x.dtype;
        if ((t != ScalarType.Float32 && t != ScalarType.BFloat16) || weight.dim() != 2 || x.dim() < 1) return false;
        long inF = weight.shape[1];
        if (x.shape[^1] != inF || inF == 0 || x.numel() > MaxRows * inF || !weight.is_contiguous()) return false;
        if (weight.numel() * weight.element_size() > int.MaxValue) return false; // Tensor.bytes is an int-length span
        if (bias is not null && (bias.dtype != t || bias.dim() != 1 || bias.shape[0] != weight.shape[0] || bias.device_type != TorchSharp.DeviceType.CPU)) return false;
        return !(is_grad_enabled() && (x.requires_grad || (bias?.requires_grad ?? false)));
    }

    /// <summary>linear(x, weight, bias) by the fast GEMV; x [..., I], weight [O, I], bias [O] → [..., O]. Check <see cref="Applies"/> first.</summary>
    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias) => Linear(x, weight, bias, ThreadsFor(weight));

    /// <summary>As <see cref="Linear(Tensor, Tensor, Tensor?)"/> with the rows split into <paramref name="threads"/> chunks (tests).</summary>
    internal static Tensor Linear(Tensor x, Tensor weight, Tensor? bias, int threads)
    {
        if (!Applies(x, weight, bias)) throw new ArgumentException($"DecodeLinear does not apply to x {Describe(x)}, weight {Describe(weight)}");
        long O = weight.shape[0], I = weight.shape[1];
        int rows = (int)(x.numel() / I);
        var y = empty(OutputShape(x, O), weight.dtype, x.device);
        if (O == 0 || rows == 0) return y;
        using var xc = x.contiguous();
        // x in fp32 once (the kernel reads it for every weight row)
        using var xf = xc.dtype == ScalarType.Float32 ? xc.alias() : xc.to(ScalarType.Float32);
        using var bc = bias?.contiguous();
        unsafe
        {
            fixed (byte* pw = weight.bytes, px = xf.bytes, py = y.bytes, pb = bc is null ? default : bc.bytes)
            {
                var job = new Job(pw, (float*)px, py, pb, weight.dtype == ScalarType.BFloat16, rows, O, I);
                ForRowBlocks(O, threads, job.Run);
            }
        }
        return y;
    }

    /// <summary>
    /// True when <see cref="LinearInt8(Tensor, Tensor, Tensor, Tensor?)"/> computes x · (scale ⊙ q)ᵀ + bias: CPU, x fp32
    /// or bf16 (bias alike), q int8 [O, I] contiguous, scale fp32 [O] contiguous, at most <see cref="MaxRows"/> rows, no
    /// autograd graph for x or bias, SIMD available.
    /// </summary>
    public static bool AppliesInt8(Tensor x, Tensor q, Tensor scale, Tensor? bias) =>
        q.dtype == ScalarType.Int8 && FewRowInput(x, q, bias) &&
        scale.dtype == ScalarType.Float32 && scale.dim() == 1 && scale.shape[0] == q.shape[0] && scale.is_contiguous() && scale.device_type == TorchSharp.DeviceType.CPU;

    /// <summary>
    /// x · (scale ⊙ q)ᵀ + bias for an int8 weight with one fp32 scale per output row: each row's dot product is summed in
    /// fp32 from the widened int8 values, multiplied by the row's scale once, the bias added, and the result rounded
    /// once to x's dtype. Check <see cref="AppliesInt8"/> first.
    /// </summary>
    public static Tensor LinearInt8(Tensor x, Tensor q, Tensor scale, Tensor? bias) => LinearInt8(x, q, scale, bias, ThreadsFor(q));

    /// <summary>As <see cref="LinearInt8(Tensor, Tensor, Tensor, Tensor?)"/> with the rows split into <paramref name="threads"/> chunks (tests).</summary>
    internal static Tensor LinearInt8(Tensor x, Tensor q, Tensor scale, Tensor? bias, int threads)
    {
        if (!AppliesInt8(x, q, scale, bias)) throw new ArgumentException($"the int8 GEMV does not apply to x {Describe(x)}, weight {Describe(q)}, scale {Describe(scale)}");
        long O = q.shape[0], I = q.shape[1];
        int rows = (int)(x.numel() / I);
        var y = empty(OutputShape(x, O), x.dtype, x.device);
        if (O == 0 || rows == 0) return y;
        using var xc = x.contiguous();
        using var xf = xc.dtype == ScalarType.Float32 ? xc.alias() : xc.to(ScalarType.Float32);
        using var bc = bias?.contiguous();
        unsafe
        {
            fixed (byte* pw = q.bytes, ps = scale.bytes, px = xf.bytes, py = y.bytes, pb = bc is null ? default : bc.bytes)
            {
                var job = new Int8Job((sbyte*)pw, (float*)ps, (float*)px, py, pb, x.dtype == ScalarType.BFloat16, rows, O, I);
                ForRowBlocks(O, threads, job.Run);
            }
        }
        return y;
    }

    /// <summary>Intra-op threads for a GEMV over <paramref name="weight"/>: one per <see cref="BytesPerThread"/>, at most libtorch's thread count.</summary>
    internal static int ThreadsFor(Tensor weight) =>
        (int)Math.Clamp(weight.numel() * weight.element_size() / BytesPerThread, 1, Math.Max(1, get_num_threads()));

    /// <summary>
    /// Runs <paramref name="run"/>(s, e) over output rows [0, <paramref name="outRows"/>) split into blocks of
    /// <see cref="RowsPerBlock"/>, on the caller alone or on <paramref name="threads"/> threads (<see cref="ForkJoin"/>).
    /// Results do not depend on the split as long as <paramref name="run"/> computes every output row on its own.
    /// </summary>
    internal static void ForRowBlocks(long outRows, int threads, Action<long, long> run)
    {
        long blocks = (outRows + RowsPerBlock - 1) / RowsPerBlock;
        int n = (int)Math.Min(threads, blocks);
        if (n <= 1) { run(0, outRows); return; }
        // ChunksPerThread contiguous chunks of whole blocks of rows (cache-line multiples of the output),
        // claimed by the caller and n - 1 pool helpers (ForkJoin)
        int chunks = (int)Math.Min(blocks, (long)n * ChunksPerThread);
        ForkJoin.Run(chunks, n - 1, k => run(blocks * k / chunks * RowsPerBlock, Math.Min(outRows, blocks * (k + 1) / chunks * RowsPerBlock)));
    }

    static long[] OutputShape(Tensor x, long outFeatures)
    {
        var shape = x.shape.ToArray();
        shape[^1] = outFeatures;
        return shape;
    }

    static string Describe(Tensor t) => $"{t.dtype} [{string.Join(",", t.shape)}] on {t.device}";

    const int RowsPerBlock = 16;

    /// <summary>Chunks per participating thread: lets the caller take over the share of a helper that starts late.</summary>
    const int ChunksPerThread = 4;

    /// <summary>
    /// Runs body(0..chunks-1) on the calling thread and up to <c>helpers</c> thread-pool threads, each claiming the next
    /// chunk with an atomic counter. The caller waits only for chunks a helper has claimed, never for a helper that has
    /// not started (Parallel.For waits for its queued replica even when the caller did all the work; on a busy 2-core
    /// machine waking it cost more than the GEMV: docs/performance.md, "Serving"). An exception in any chunk is
    /// rethrown on the caller once the claimed chunks are done. Results do not depend on the split: every output
    /// element is one Dot over its whole weight row.
    /// </summary>
    internal sealed class ForkJoin
    {
        readonly Action<int> _body;
        readonly int _chunks;
        int _next = -1, _done;
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? _error;

        ForkJoin(int chunks, Action<int> body) { _chunks = chunks; _body = body; }

        public static void Run(int chunks, int helpers, Action<int> body)
        {
            var f = new ForkJoin(chunks, body);
            for (int h = 0; h < helpers; h++) ThreadPool.UnsafeQueueUserWorkItem(static o => ((ForkJoin)o!).Work(), f);
            f.Work();
            var spin = new SpinWait();
            while (Volatile.Read(ref f._done) < chunks) spin.SpinOnce();   // only chunks already running elsewhere remain
            f._error?.Throw();
        }

        void Work()
        {
            int k;
            while ((k = Interlocked.Increment(ref _next)) < _chunks)
            {
                try { _body(k); }
                catch (Exception e)
                {
                    // a pool thread must not die with it (that ends the process); the caller rethrows the first one
                    Interlocked.CompareExchange(ref _error, System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e), null);
                }
                finally { Interlocked.Increment(ref _done); }
            }
        }
    }

    /// <summary>Pointers and sizes of one call; Run computes output columns [s, e) of every row.</summary>
    readonly unsafe struct Job(byte* w, float* x, byte* y, byte* b, bool bf16, int rows, long o, long i)
    {
        public void Run(long s, long e)
        {
            if (bf16) RunBf16(s, e);
            else RunF32(s, e);
        }

        void RunF32(long s, long e)
        {
            var W = (float*)w; var Y = (float*)y; var B = (float*)b;
            for (long r = s; r < e; r++)
                for (int row = 0; row < rows; row++)   // the weight row stays in L1/L2 across the input rows
                {
                    float v = DotF32(W + r * i, x + row * i, i);
                    Y[row * o + r] = B == null ? v : v + B[r];
                }
        }

        void RunBf16(long s, long e)
        {
            var W = (ushort*)w; var Y = (ushort*)y; var B = (ushort*)b;
            for (long r = s; r < e; r++)
                for (int row = 0; row < rows; row++)
                {
                    float v = DotBf16(W + r * i, x + row * i, i);
                    if (B != null) v += BitConverter.Int32BitsToSingle(B[r] << 16);
                    Y[row * o + r] = ToBf16(v);
                }
        }
    }

    /// <summary>An int8 GEMV call: output column r of every row = scale[r] · (q row r · x) + bias[r], rounded once to the output dtype.</summary>
    readonly unsafe struct Int8Job(sbyte* w, float* scale, float* x, byte* y, byte* b, bool bf16, int rows, long o, long i)
    {
        public void Run(long s, long e)
        {
            for (long r = s; r < e; r++)
                for (int row = 0; row < rows; row++)   // the weight row stays in L1/L2 across the input rows
                {
                    // the row's scale multiplies the whole sum once (per-row quantization: Int8Linear)
                    float v = DotInt8(w + r * i, x + row * i, i) * scale[r];
                    if (bf16)
                    {
                        if (b != null) v += BitConverter.Int32BitsToSingle(((ushort*)b)[r] << 16);
                        ((ushort*)y)[row * o + r] = ToBf16(v);
                    }
                    else ((float*)y)[row * o + r] = b == null ? v : v + ((float*)b)[r];
                }
        }
    }

    /// <summary>
    /// int8 row · fp32 x in fp32: each int8 widened to int32 (vpmovsxbd straight from memory), converted to fp32 (exact)
    /// and multiplied-added into 4 accumulators; one sequential stream of weight bytes as in <see cref="DotF32"/>. The
    /// widening and conversion cost about as much as the FMA, so this is near its compute bound on one Zen 4 core
    /// (~28 G weights/s) as well as near the memory bound (~21 GB/s per core).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe float DotInt8(sbyte* w, float* x, long n)
    {
        long k = 0;
        float s;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            // 64 weights per step in two halves (measured on Zen 4, one core, CPU time: 21-22 GB/s from memory and
            // 28.6 G weights/s from cache, against 19.5 and 25.5 for the 256-bit loop below; bf16 reads 10-11 G weights/s)
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; k <= n - 128; k += 128)
            {
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k))), Vector512.Load(x + k), a0);
                a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 16))), Vector512.Load(x + k + 16), a1);
                a2 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 32))), Vector512.Load(x + k + 32), a2);
                a3 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 48))), Vector512.Load(x + k + 48), a3);
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 64))), Vector512.Load(x + k + 64), a0);
                a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 80))), Vector512.Load(x + k + 80), a1);
                a2 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 96))), Vector512.Load(x + k + 96), a2);
                a3 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k + 112))), Vector512.Load(x + k + 112), a3);
            }
            for (; k <= n - 16; k += 16)
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(w + k))), Vector512.Load(x + k), a0);
            s = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        else if (Avx2.IsSupported && Fma.IsSupported)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; k <= n - 32; k += 32)
            {
                a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + k)), Avx.LoadVector256(x + k), a0);
                a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + k + 8)), Avx.LoadVector256(x + k + 8), a1);
                a2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + k + 16)), Avx.LoadVector256(x + k + 16), a2);
                a3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + k + 24)), Avx.LoadVector256(x + k + 24), a3);
            }
            for (; k <= n - 8; k += 8)
                a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(w + k)), Avx.LoadVector256(x + k), a0);
            s = Vector256.Sum((a0 + a1) + (a2 + a3));
        }
        else
        {
            // portable: sbyte → short → int → float with System.Numerics (Vector<sbyte> = 4 Vector<float>)
            int L = Vector<sbyte>.Count, F = Vector<float>.Count;
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (; k <= n - L; k += L)
            {
                WidenInt8(w + k, out var f0, out var f1, out var f2, out var f3);
                a0 = Vector.FusedMultiplyAdd(f0, Vector.Load(x + k), a0);
                a1 = Vector.FusedMultiplyAdd(f1, Vector.Load(x + k + F), a1);
                a2 = Vector.FusedMultiplyAdd(f2, Vector.Load(x + k + 2 * F), a2);
                a3 = Vector.FusedMultiplyAdd(f3, Vector.Load(x + k + 3 * F), a3);
            }
            s = Vector.Sum((a0 + a1) + (a2 + a3));
        }
        for (; k < n; k++) s += w[k] * x[k];
        return s;
    }

    /// <summary>The four fp32 vectors of one Vector&lt;sbyte&gt; of int8 values (sbyte → short → int → float, exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void WidenInt8(sbyte* q, out Vector<float> f0, out Vector<float> f1, out Vector<float> f2, out Vector<float> f3)
    {
        Vector.Widen(Vector.Load(q), out Vector<short> lo, out Vector<short> hi);
        Vector.Widen(lo, out Vector<int> i0, out Vector<int> i1);
        Vector.Widen(hi, out Vector<int> i2, out Vector<int> i3);
        f0 = Vector.ConvertToSingle(i0); f1 = Vector.ConvertToSingle(i1);
        f2 = Vector.ConvertToSingle(i2); f3 = Vector.ConvertToSingle(i3);
    }

    /// <summary>
    /// One weight row · x with 4 accumulators. Rows are streamed one after the other (a single sequential stream for
    /// the hardware prefetcher): measured 24 GB/s on one core, against 18 GB/s interleaving 8 rows and 11-12 GB/s for MKL.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe float DotF32(float* w, float* x, long n)
    {
        int L = Vector<float>.Count;
        long n4 = n - n % (4 * L), n1 = n - n % L, k = 0;
        Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (; k < n4; k += 4 * L)
        {
            a0 = Vector.FusedMultiplyAdd(Vector.Load(w + k), Vector.Load(x + k), a0);
            a1 = Vector.FusedMultiplyAdd(Vector.Load(w + k + L), Vector.Load(x + k + L), a1);
            a2 = Vector.FusedMultiplyAdd(Vector.Load(w + k + 2 * L), Vector.Load(x + k + 2 * L), a2);
            a3 = Vector.FusedMultiplyAdd(Vector.Load(w + k + 3 * L), Vector.Load(x + k + 3 * L), a3);
        }
        for (; k < n1; k += L) a0 = Vector.FusedMultiplyAdd(Vector.Load(w + k), Vector.Load(x + k), a0);
        float s = Vector.Sum((a0 + a1) + (a2 + a3));
        for (; k < n; k++) s += w[k] * x[k];
        return s;
    }

    /// <summary>bf16 row · fp32 x in fp32: bf16 → fp32 is the 16-bit pattern shifted into the high half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe float DotBf16(ushort* w, float* x, long n)
    {
        int L = Vector<ushort>.Count, H = Vector<float>.Count; // L = 2H
        long n2 = n - n % (2 * L), n1 = n - n % L, k = 0;
        Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (; k < n2; k += 2 * L)
        {
            Vector.Widen(Vector.Load(w + k), out Vector<uint> lo, out Vector<uint> hi);
            a0 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16)), Vector.Load(x + k), a0);
            a1 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16)), Vector.Load(x + k + H), a1);
            Vector.Widen(Vector.Load(w + k + L), out lo, out hi);
            a2 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16)), Vector.Load(x + k + L), a2);
            a3 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16)), Vector.Load(x + k + L + H), a3);
        }
        for (; k < n1; k += L)
        {
            Vector.Widen(Vector.Load(w + k), out Vector<uint> lo, out Vector<uint> hi);
            a0 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16)), Vector.Load(x + k), a0);
            a1 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16)), Vector.Load(x + k + H), a1);
        }
        float s = Vector.Sum((a0 + a1) + (a2 + a3));
        for (; k < n; k++) s += BitConverter.Int32BitsToSingle(w[k] << 16) * x[k];
        return s;
    }

    /// <summary>fp32 → bf16, round to nearest even (NaN stays a quiet NaN), as torch's conversion.</summary>
    internal static ushort ToBf16(float v)
    {
        uint bits = BitConverter.SingleToUInt32Bits(v);
        if (float.IsNaN(v)) return (ushort)((bits >> 16) | 0x40);
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1)) >> 16);
    }
}
