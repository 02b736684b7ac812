using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using VarGpt.Configuration;

namespace VarGpt.Vision;

/// <summary>
/// Official PatchEmbed: Conv3d(C -> embed_dim, kernel = stride = (T, P, P), no bias). Every patch row already holds
/// exactly one kernel window, so the convolution is a linear map over the C*T*P*P features; we keep the Conv3d
/// parameter (name and shape proj.weight [embed_dim, C, T, P, P]) and apply it as a linear layer.
/// </summary>
public sealed class PatchEmbed : Module
{
    public readonly Conv3d proj;
    readonly int _embedDim;

    public PatchEmbed(int patchSize, int temporalPatchSize, int inChannels, int embedDim, Device? device = null, ScalarType? dtype = null) : base(nameof(PatchEmbed))
    {
        _embedDim = embedDim;
        proj = Conv3d(inChannels, embedDim, (temporalPatchSize, patchSize, patchSize),
            stride: (temporalPatchSize, patchSize, patchSize), bias: false, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <summary>[N, C*T*P*P] -> [N, embed_dim], in the weight's dtype (the official code casts the input to it).</summary>
    public Tensor forward(Tensor x)
    {
        var w = proj.weight!;
        using var w2 = w.view(_embedDim, -1);
        if (x.dtype == w.dtype) return functional.linear(x, w2);
        using var xc = x.to(w.dtype);
        return functional.linear(xc, w2);
    }
}

/// <summary>Official VisionRotaryEmbedding: inv_freq = 1 / theta^(2i/dim), always float32 (a non-persistent buffer
/// there; recomputed here so that casting the module to bfloat16 cannot touch it).</summary>
public sealed class VisionRotaryEmbedding(int dim, double theta = 10000.0)
{
    public int Dim { get; } = dim;

    /// <summary>[seqlen, dim/2] float32 table of position * inv_freq.</summary>
    public Tensor forward(long seqlen, Device device)
    {
        using var scope = NewDisposeScope();
        var exponent = arange(0, Dim, 2, ScalarType.Float32, device) / Dim;
        var invFreq = pow(tensor((float)theta, ScalarType.Float32, device), exponent).reciprocal();
        var seq = arange(seqlen, ScalarType.Float32, device);
        return outer(seq, invFreq).MoveToOuterDisposeScope();
    }
}

/// <summary>Official VisionMlp: fc2(act(fc1(x))), act from config.hidden_act (quick_gelu for Qwen2-VL).</summary>
public sealed class VisionMlp : Module
{
    public readonly Linear fc1, fc2;
    readonly Func<Tensor, Tensor> _act;

    public VisionMlp(int dim, int hiddenDim, string hiddenAct, Device? device = null, ScalarType? dtype = null) : base(nameof(VisionMlp))
    {
        fc1 = Linear(dim, hiddenDim, device: device, dtype: dtype);
        fc2 = Linear(hiddenDim, dim, device: device, dtype: dtype);
        _act = Activation(hiddenAct);
        RegisterComponents();
    }

    /// <summary>The transformers ACT2FN entries a vision config may name.</summary>
    public static Func<Tensor, Tensor> Activation(string name) => name switch
    {
        "quick_gelu" => x => { using var s = (x * 1.702).sigmoid_(); return x * s; },
        "gelu" => x => functional.gelu(x),
        "gelu_pytorch_tanh" or "gelu_new" => x => functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "silu" or "swish" => x => functional.silu(x),
        "relu" => x => functional.relu(x),
        _ => throw new NotSupportedException($"vision_config.hidden_act '{name}' is not supported (expected quick_gelu, gelu, gelu_pytorch_tanh, silu or relu)"),
    };

    public Tensor forward(Tensor x)
    {
        using var h = fc1.forward(x);
        using var a = _act(h);
        return fc2.forward(a);
    }
}

/// <summary>
/// Official VisionAttention / VisionSdpaAttention: fused qkv, 2-D rotary on q and k in float32, attention that is
/// full within each cu_seqlens segment (one temporal frame of one image) and blocked across segments. Instead of the
/// official dense N x N mask we attend each segment separately, which is the same computation.
/// </summary>
public sealed class VisionAttention : Module
{
    public readonly Linear qkv, proj;
    readonly int _numHeads, _headDim;

    public VisionAttention(int dim, int numHeads, Device? device = null, ScalarType? dtype = null) : base(nameof(VisionAttention))
    {
        if (dim % numHeads != 0) throw new ArgumentException($"vision embed_dim {dim} is not divisible by num_heads {numHeads}");
        _numHeads = numHeads;
        _headDim = dim / numHeads;
        qkv = Linear(dim, dim * 3, hasBias: true, device: device, dtype: dtype);
        proj = Linear(dim, dim, device: device, dtype: dtype);
        RegisterComponents();
    }

    /// <param name="x">[N, dim]</param>
    /// <param name="segments">cu_seqlens on the host ([0, ..., N])</param>
    /// <param name="cos">[N, head_dim] float32</param>
    /// <param name="sin">[N, head_dim] float32</param>
    public Tensor forward(Tensor x, long[] segments, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long n = x.shape[0];
        // [N, 3*dim] -> [3, heads, N, head_dim]
        var qkvOut = qkv.forward(x).view(n, 3, _numHeads, _headDim).permute(1, 2, 0, 3);
        var q = ApplyRotary(qkvOut[0], cos, sin);
        var k = ApplyRotary(qkvOut[1], cos, sin);
        var v = qkvOut[2];
        // SDPA with 4-D [1, heads, L, head_dim] inputs so libtorch can pick its fused CPU kernel instead of
        // materialising the [heads, L, L] score matrix (1.6 GB in float32 for a 4968-patch image).
        Tensor o;
        if (segments.Length == 2)
            o = functional.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)).squeeze(0); // default scale 1/sqrt(head_dim), as official
        else
        {
            var parts = new Tensor[segments.Length - 1];
            for (int i = 0; i < parts.Length; i++)
            {
                long s = segments[i], len = segments[i + 1] - segments[i];
                parts[i] = functional.scaled_dot_product_attention(
                    q.narrow(1, s, len).unsqueeze(0), k.narrow(1, s, len).unsqueeze(0), v.narrow(1, s, len).unsqueeze(0)).squeeze(0);
            }
            o = cat(parts, 1);
        }
        // [heads, N, head_dim] -> [N, dim]
        var merged = o.permute(1, 0, 2).reshape(n, -1);
        return proj.forward(merged).MoveToOuterDisposeScope();
    }

    /// <summary>Official apply_rotary_pos_emb_vision: rotate in float32, cast back to the activation dtype.</summary>
    static Tensor ApplyRotary(Tensor t, Tensor cos, Tensor sin)
    {
        var tf = t.to(ScalarType.Float32);
        var half = tf.shape[^1] / 2;
        var rotated = cat([tf.narrow(-1, half, half).neg(), tf.narrow(-1, 0, half)], -1);
        return (tf * cos + rotated * sin).to(t.dtype);
    }
}

/// <summary>Official Qwen2VLVisionBlock: x + attn(norm1(x)), then + mlp(norm2(x)); LayerNorm eps 1e-6.</summary>
public sealed class Qwen2VLVisionBlock : Module
{
    public readonly LayerNorm norm1, norm2;
    public readonly VisionAttention attn;
    public readonly VisionMlp mlp;

    public Qwen2VLVisionBlock(VisionConfig config, Device? device = null, ScalarType? dtype = null) : base(nameof(Qwen2VLVisionBlock))
    {
        norm1 = LayerNorm(config.EmbedDim, eps: 1e-6, device: device, dtype: dtype);
        norm2 = LayerNorm(config.EmbedDim, eps: 1e-6, device: device, dtype: dtype);
        attn = new VisionAttention(config.EmbedDim, config.NumHeads, device, dtype);
        mlp = new VisionMlp(config.EmbedDim, config.MlpHidden, config.HiddenAct, device, dtype);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, long[] segments, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        var h = x + attn.forward(norm1.forward(x), segments, cos, sin);
        return (h + mlp.forward(norm2.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>Official PatchMerger: LayerNorm(embed_dim) -> view 4 consecutive rows (one 2x2 window) as one ->
/// Linear -> GELU (erf) -> Linear to the language model width.</summary>
public sealed class PatchMerger : Module
{
    public readonly LayerNorm ln_q;
    public readonly Sequential mlp;
    readonly int _hiddenSize;

    public PatchMerger(int dim, int contextDim, int spatialMergeSize, Device? device = null, ScalarType? dtype = null) : base(nameof(PatchMerger))
    {
        _hiddenSize = contextDim * spatialMergeSize * spatialMergeSize;
        ln_q = LayerNorm(contextDim, eps: 1e-6, device: device, dtype: dtype);
        mlp = Sequential(("0", (Module<Tensor, Tensor>)Linear(_hiddenSize, _hiddenSize, device: device, dtype: dtype)), ("1", GELU()),
            ("2", Linear(_hiddenSize, dim, device: device, dtype: dtype)));
        RegisterComponents();
    }

    public Tensor forward(Tensor x)
    {
        using var n = ln_q.forward(x);
        using var v = n.view(-1, _hiddenSize);
        return mlp.forward(v);
    }
}

/// <summary>
/// Official Qwen2VisionTransformerPretrainedModel (checkpoint prefix "visual."): patch embedding, 2-D rotary,
/// depth x Qwen2VLVisionBlock with attention blocked per image/frame, 2x2 PatchMerger.
/// forward(pixel_values [N, C*T*P*P], grid_thw [n, 3]) -> [N / merge^2, hidden_size] in the module's dtype.
/// </summary>
public sealed class Qwen2VisionTransformerPretrainedModel : Module<Tensor, Tensor, Tensor>
{
    public readonly PatchEmbed patch_embed;
    public readonly ModuleList<Qwen2VLVisionBlock> blocks;
    public readonly PatchMerger merger;
    public VisionConfig Config { get; }
    readonly VisionRotaryEmbedding _rotary;

    public Qwen2VisionTransformerPretrainedModel(VisionConfig config, Device? device = null, ScalarType? dtype = null)
        : base(nameof(Qwen2VisionTransformerPretrainedModel))
    {
        Config = config;
        if (config.EmbedDim % config.NumHeads != 0 || config.HeadDim % 4 != 0)
            throw new ArgumentException($"vision head_dim {config.EmbedDim}/{config.NumHeads} must be an integer divisible by 4 (2-D rotary)");
        patch_embed = new PatchEmbed(config.PatchSize, config.TemporalPatchSize, config.InChannels, config.EmbedDim, device, dtype);
        _rotary = new VisionRotaryEmbedding(config.HeadDim / 2);
        blocks = new ModuleList<Qwen2VLVisionBlock>(Enumerable.Range(0, config.Depth).Select(_ => new Qwen2VLVisionBlock(config, device, dtype)).ToArray());
        merger = new PatchMerger(config.HiddenSize, config.EmbedDim, config.SpatialMergeSize, device, dtype);
        RegisterComponents();
    }

    public Device Device => patch_embed.proj.weight!.device;
    public ScalarType DType => blocks.Count > 0 ? blocks[0].mlp.fc2.weight!.dtype : patch_embed.proj.weight!.dtype;

    /// <summary>grid_thw as host triples, validated against the pixel rows.</summary>
    (long T, long H, long W)[] ReadGrid(Tensor gridThw, long rows)
    {
        if (gridThw.dim() != 2 || gridThw.shape[1] != 3)
            throw new ArgumentException($"grid_thw must have shape [n_images, 3], got [{string.Join(", ", gridThw.shape)}]");
        using var g = gridThw.detach().cpu().to(ScalarType.Int64).contiguous();
        var v = g.data<long>().ToArray();
        var grid = new (long, long, long)[v.Length / 3];
        long total = 0;
        int m = Config.SpatialMergeSize;
        for (int i = 0; i < grid.Length; i++)
        {
            grid[i] = (v[3 * i], v[3 * i + 1], v[3 * i + 2]);
            if (v[3 * i] <= 0 || v[3 * i + 1] <= 0 || v[3 * i + 2] <= 0 || v[3 * i + 1] % m != 0 || v[3 * i + 2] % m != 0)
                throw new ArgumentException($"grid_thw[{i}] = [{v[3 * i]}, {v[3 * i + 1]}, {v[3 * i + 2]}]: entries must be positive and h, w divisible by spatial_merge_size {m}");
            total += v[3 * i] * v[3 * i + 1] * v[3 * i + 2];
        }
        if (total != rows)
            throw new ArgumentException($"grid_thw describes {total} patches but pixel_values has {rows} rows");
        return grid;
    }

    /// <summary>Official cu_seqlens: cumulative h*w per temporal frame of each image, with a leading 0.</summary>
    public static long[] CuSeqlens(IReadOnlyList<(long T, long H, long W)> grid)
    {
        var cu = new List<long> { 0 };
        foreach (var (t, h, w) in grid)
            for (long i = 0; i < t; i++) cu.Add(cu[^1] + h * w);
        return cu.ToArray();
    }

    /// <summary>
    /// Official rot_pos_emb: each patch's (row, col) in the processor's order (merge windows in raster order, then
    /// raster inside a window), repeated per temporal frame, looked up in the float32 frequency table and
    /// concatenated -> [N, head_dim/2].
    /// </summary>
    public Tensor RotPosEmb(IReadOnlyList<(long T, long H, long W)> grid)
    {
        using var scope = NewDisposeScope();
        int m = Config.SpatialMergeSize;
        long n = grid.Sum(g => g.T * g.H * g.W);
        var ids = new long[n * 2];
        long k = 0, maxGrid = 0;
        foreach (var (t, h, w) in grid)
        {
            maxGrid = Math.Max(maxGrid, Math.Max(h, w));
            for (long f = 0; f < t; f++)
                for (long bh = 0; bh < h / m; bh++)
                    for (long bw = 0; bw < w / m; bw++)
                        for (long ih = 0; ih < m; ih++)
                            for (long iw = 0; iw < m; iw++)
                            {
                                ids[k++] = bh * m + ih;
                                ids[k++] = bw * m + iw;
                            }
        }
        var table = _rotary.forward(maxGrid, Device);        // [max_grid, head_dim/4]
        var posIds = tensor(ids, [n, 2], ScalarType.Int64, Device);
        return table[posIds].flatten(1).MoveToOuterDisposeScope(); // [N, 2, head_dim/4] -> [N, head_dim/2]
    }

    public override Tensor forward(Tensor pixelValues, Tensor gridThw) => Forward(pixelValues, gridThw, null);

    /// <summary>forward, optionally collecting every block's output (detached copies in the module dtype).</summary>
    public Tensor Forward(Tensor pixelValues, Tensor gridThw, List<Tensor>? blockOutputs)
    {
        long rowLen = (long)Config.InChannels * Config.TemporalPatchSize * Config.PatchSize * Config.PatchSize;
        if (pixelValues.dim() != 2 || pixelValues.shape[1] != rowLen)
            throw new ArgumentException($"pixel_values must have shape [N, {rowLen}], got [{string.Join(", ", pixelValues.shape)}]");
        var grid = ReadGrid(gridThw, pixelValues.shape[0]);
        var segments = CuSeqlens(grid);

        using var scope = NewDisposeScope();
        var x = patch_embed.forward(pixelValues.to(Device)); // a new handle (if any) belongs to this scope
        var emb = RotPosEmb(grid);                                   // [N, head_dim/2] float32
        var full = cat([emb, emb], -1);                              // [N, head_dim]
        var cos = full.cos();
        var sin = full.sin();
        foreach (var blk in blocks)
        {
            var next = blk.forward(x, segments, cos, sin);
            x.Dispose();
            x = next;
            if (blockOutputs != null)
            {
                var copy = x.detach().clone();
                copy.MoveToOuterDisposeScope();
                blockOutputs.Add(copy);
            }
        }
        return merger.forward(x).MoveToOuterDisposeScope();
    }
}
