using System.Numerics;
using System.Runtime.CompilerServices;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// y = x Wᵀ + b with W stored as int8: <c>weight</c> q [O, I] int8 and <c>weight_scale</c> s [O] fp32, W ≈ s ⊙ q
/// (one scale per output row, symmetric: s = max|w_row| / 127, q = round-half-even(w / s), so |W - s ⊙ q| ≤ s/2).
/// Why this scheme: each output element is one row's dot product, so the row's scale multiplies the finished fp32 sum
/// once (nothing rescaled in the inner loop, no zero-point term); a row of large weights costs no precision in the
/// other rows; an fp32 scale adds 4 bytes to rows of thousands of bytes and no second rounding. <c>bias</c> stays in
/// the compute dtype. Few-row inputs (decode) take <see cref="DecodeLinear.LinearInt8(Tensor, Tensor, Tensor, Tensor?)"/>,
/// which reads the int8 rows directly; more rows (prefill, image rows) dequantize blocks of rows into the input's dtype
/// and run libtorch's linear on each, so the temporary weight stays bounded (<see cref="DequantizeBlockElements"/>).
/// </summary>
public sealed class Int8Linear : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // state-dict names
    public readonly Tensor weight;
    public readonly Tensor weight_scale;
    public readonly Tensor? bias;
#pragma warning restore IDE1006

    /// <summary>At most this many weight elements are dequantized at once on the many-row path (64 MiB in fp32).</summary>
    public const long DequantizeBlockElements = 1L << 24;

    public long InFeatures => weight.shape[1];
    public long OutFeatures => weight.shape[0];

    Int8Linear(Tensor q, Tensor scale, Tensor? bias) : base(nameof(Int8Linear))
    {
        weight = q;
        weight_scale = scale;
        this.bias = bias;
        register_buffer("weight", q);
        register_buffer("weight_scale", scale);
        if (bias is not null) register_buffer("bias", bias);
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (fp32 or bf16 [O, I] on the CPU) into new int8 and scale tensors; the
    /// layer shares <paramref name="bias"/>'s storage (detached). The source weight is only read.
    /// </summary>
    public static Int8Linear Quantize(Tensor weight, Tensor? bias)
    {
        if (weight.device_type != TorchSharp.DeviceType.CPU || weight.dim() != 2 || (weight.dtype != ScalarType.Float32 && weight.dtype != ScalarType.BFloat16))
            throw new ArgumentException($"int8 quantization needs an fp32 or bf16 [out, in] weight on the CPU, got {weight.dtype} [{string.Join(",", weight.shape)}] on {weight.device}");
        if (weight.numel() > int.MaxValue) throw new ArgumentException($"int8 quantization: weight [{string.Join(",", weight.shape)}] has more than 2^31 elements");
        if (bias is not null && (bias.dim() != 1 || bias.shape[0] != weight.shape[0]))
            throw new ArgumentException($"int8 quantization: bias [{string.Join(",", bias.shape)}] does not fit weight [{string.Join(",", weight.shape)}]");
        long O = weight.shape[0], I = weight.shape[1];
        using var src = weight.contiguous();
        var q = empty([O, I], ScalarType.Int8, CPU);
        var scale = empty([O], ScalarType.Float32, CPU);
        // in row blocks of at most 1 GiB of source (Tensor.bytes is an int-length span; an fp32 7B lm_head is 2.2 GB)
        long blockRows = Math.Max(1, (1L << 30) / Math.Max(1, I * weight.element_size()));
        for (long r = 0; r < O; r += blockRows)
        {
            long n = Math.Min(blockRows, O - r);
            using var block = src.narrow(0, r, n);
            unsafe
            {
                fixed (byte* pw = block.bytes, pq = q.bytes, ps = scale.bytes)
                {
                    var job = new QuantizeJob(pw, weight.dtype == ScalarType.BFloat16, (sbyte*)pq + r * I, (float*)ps + r, I);
                    DecodeLinear.ForRowBlocks(n, DecodeLinear.ThreadsFor(block), job.Run);
                }
            }
        }
        return new Int8Linear(q, scale, bias?.detach());
    }

    public override Tensor forward(Tensor x) =>
        DecodeLinear.AppliesInt8(x, weight, weight_scale, bias) ? DecodeLinear.LinearInt8(x, weight, weight_scale, bias) : DequantizedLinear(x, DequantizeBlockElements);

    /// <summary>The many-row path: linear over blocks of at most <paramref name="blockElements"/> dequantized weights (any row count; tests use small blocks).</summary>
    internal Tensor DequantizedLinear(Tensor x, long blockElements)
    {
        using var scope = NewDisposeScope();
        long O = OutFeatures, blockRows = Math.Max(1, blockElements / Math.Max(1, InFeatures));
        if (blockRows >= O) return nn.functional.linear(x, Dequantize(0, O, x.dtype), bias).MoveToOuterDisposeScope();
        var parts = new List<Tensor>();
        for (long r = 0; r < O; r += blockRows)
        {
            long n = Math.Min(blockRows, O - r);
            using var w = Dequantize(r, n, x.dtype);   // freed before the next block is made
            parts.Add(nn.functional.linear(x, w, bias?.narrow(0, r, n)));
        }
        return cat(parts, -1).MoveToOuterDisposeScope();
    }

    /// <summary>s ⊙ q of output rows [<paramref name="start"/>, start + <paramref name="count"/>) in <paramref name="dtype"/> (computed in fp32, rounded once).</summary>
    public Tensor Dequantize(long start, long count, ScalarType dtype)
    {
        if (start < 0 || count < 0 || start + count > OutFeatures) throw new ArgumentOutOfRangeException(nameof(count), $"rows [{start}, {start + count}) of a [{OutFeatures}, {InFeatures}] weight");
        if (weight.device_type != TorchSharp.DeviceType.CPU || (dtype != ScalarType.Float32 && dtype != ScalarType.BFloat16))
        {
            using var scope = NewDisposeScope();
            return (weight.narrow(0, start, count).to(ScalarType.Float32) * weight_scale.narrow(0, start, count).unsqueeze(1)).to(dtype).MoveToOuterDisposeScope();
        }
        long I = InFeatures;
        var w = empty([count, I], dtype, CPU);
        if (count == 0) return w;
        unsafe
        {
            fixed (byte* pq = weight.bytes, ps = weight_scale.bytes, pw = w.bytes)
            {
                var job = new DequantizeJob((sbyte*)pq + start * I, (float*)ps + start, pw, dtype == ScalarType.BFloat16, I);
                DecodeLinear.ForRowBlocks(count, DecodeLinear.ThreadsFor(w), job.Run);
            }
        }
        return w;
    }

    /// <summary>Rows [s, e) of a weight → int8 rows and their scales.</summary>
    readonly unsafe struct QuantizeJob(byte* w, bool bf16, sbyte* q, float* scale, long i)
    {
        public void Run(long s, long e)
        {
            var row = GC.AllocateUninitializedArray<float>((int)i);
            fixed (float* f = row)
                for (long r = s; r < e; r++)
                {
                    if (bf16) WidenBf16((ushort*)w + r * i, f, i);
                    else Buffer.MemoryCopy((float*)w + r * i, f, i * sizeof(float), i * sizeof(float));
                    scale[r] = QuantizeRow(f, q + r * i, i);
                }
        }
    }

    /// <summary>Rows [s, e) (relative to the job's first row) → s ⊙ q in fp32 or bf16.</summary>
    readonly unsafe struct DequantizeJob(sbyte* q, float* scale, byte* w, bool bf16, long i)
    {
        public void Run(long s, long e)
        {
            for (long r = s; r < e; r++)
                if (bf16) DequantizeRowBf16(q + r * i, scale[r], (ushort*)w + r * i, i);
                else DequantizeRowF32(q + r * i, scale[r], (float*)w + r * i, i);
        }
    }

    /// <summary>One row: s = max|w| / 127, q = clamp(round-half-even(w / s), ±127) (all zero for a zero row, s = 0). Returns s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe float QuantizeRow(float* w, sbyte* q, long n)
    {
        int F = Vector<float>.Count, L = Vector<sbyte>.Count;   // L = 4F
        long k = 0;
        var m = Vector<float>.Zero;
        for (; k <= n - F; k += F) m = Vector.Max(m, Vector.Abs(Vector.Load(w + k)));
        float amax = 0;
        for (int j = 0; j < F; j++) amax = Math.Max(amax, m[j]);
        for (; k < n; k++) amax = Math.Max(amax, Math.Abs(w[k]));
        if (!float.IsFinite(amax)) throw new ArgumentException("int8 quantization: the weight has a NaN or infinite value");
        if (amax == 0)
        {
            new Span<sbyte>(q, (int)n).Clear();
            return 0;
        }
        float s = amax / 127f;
        var vs = new Vector<float>(s);
        var hi = new Vector<float>(127f);
        // x + 1.5·2^23 - 1.5·2^23 rounds |x| < 2^22 to the nearest integer, ties to even (the fp32 addition's own rounding)
        var magic = new Vector<float>(12582912f);
        k = 0;
        for (; k <= n - L; k += L)
        {
            var q0 = Vector.ConvertToInt32(Vector.Min(hi, Vector.Max(-hi, Vector.Load(w + k) / vs + magic - magic)));
            var q1 = Vector.ConvertToInt32(Vector.Min(hi, Vector.Max(-hi, Vector.Load(w + k + F) / vs + magic - magic)));
            var q2 = Vector.ConvertToInt32(Vector.Min(hi, Vector.Max(-hi, Vector.Load(w + k + 2 * F) / vs + magic - magic)));
            var q3 = Vector.ConvertToInt32(Vector.Min(hi, Vector.Max(-hi, Vector.Load(w + k + 3 * F) / vs + magic - magic)));
            Vector.Narrow(Vector.Narrow(q0, q1), Vector.Narrow(q2, q3)).Store(q + k);
        }
        for (; k < n; k++) q[k] = (sbyte)Math.Clamp(MathF.Round(w[k] / s), -127f, 127f);
        return s;
    }

    static unsafe void WidenBf16(ushort* src, float* dst, long n)
    {
        int L = Vector<ushort>.Count, H = Vector<float>.Count;
        long k = 0;
        for (; k <= n - L; k += L)
        {
            Vector.Widen(Vector.Load(src + k), out Vector<uint> lo, out Vector<uint> hi);
            Vector.AsVectorSingle(Vector.ShiftLeft(lo, 16)).Store(dst + k);
            Vector.AsVectorSingle(Vector.ShiftLeft(hi, 16)).Store(dst + k + H);
        }
        for (; k < n; k++) dst[k] = BitConverter.Int32BitsToSingle(src[k] << 16);
    }

    /// <summary>The four fp32 vectors of one Vector&lt;sbyte&gt; of q, times s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Widen(sbyte* q, Vector<float> s, out Vector<float> f0, out Vector<float> f1, out Vector<float> f2, out Vector<float> f3)
    {
        DecodeLinear.WidenInt8(q, out f0, out f1, out f2, out f3);
        f0 *= s; f1 *= s; f2 *= s; f3 *= s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void DequantizeRowF32(sbyte* q, float scale, float* w, long n)
    {
        int F = Vector<float>.Count, L = Vector<sbyte>.Count;
        var s = new Vector<float>(scale);
        long k = 0;
        for (; k <= n - L; k += L)
        {
            Widen(q + k, s, out var f0, out var f1, out var f2, out var f3);
            f0.Store(w + k); f1.Store(w + k + F); f2.Store(w + k + 2 * F); f3.Store(w + k + 3 * F);
        }
        for (; k < n; k++) w[k] = q[k] * scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void DequantizeRowBf16(sbyte* q, float scale, ushort* w, long n)
    {
        int L = Vector<sbyte>.Count, U = Vector<ushort>.Count;   // L = 2U
        var s = new Vector<float>(scale);
        long k = 0;
        for (; k <= n - L; k += L)
        {
            Widen(q + k, s, out var f0, out var f1, out var f2, out var f3);
            Vector.Narrow(ToBf16(f0), ToBf16(f1)).Store(w + k);
            Vector.Narrow(ToBf16(f2), ToBf16(f3)).Store(w + k + U);
        }
        for (; k < n; k++) w[k] = DecodeLinear.ToBf16(q[k] * scale);
    }

    /// <summary>fp32 → bf16 bits (in the low half), round to nearest even; the values here are finite (|q·s| ≤ 127·s).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<uint> ToBf16(Vector<float> v)
    {
        var bits = Vector.AsVectorUInt32(v);
        return Vector.ShiftRightLogical(bits + new Vector<uint>(0x7FFFu) + (Vector.ShiftRightLogical(bits, 16) & Vector<uint>.One), 16);
    }
}
