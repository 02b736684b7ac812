using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Checkpoint;
using VarGpt.Torch;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Generation;

/// <summary>
/// The BSQ-VAE of Infinity as VARGPT uses it (<c>vae_local</c>; official bsq_vae/flux_vqgan.py AutoEncoder built by
/// bsq_vae/vae.py:vae_model): a 2-D conv encoder/decoder without attention plus the MultiScaleBSQ quantizer.
/// State-dict keys (below the <c>vae_local.</c> prefix) are the official ones: encoder.*, decoder.*, quantizer.lfq.mask.
/// Weights live in the module dtype (float32 or bfloat16) on a configurable device; quantisation is always fp32.
/// </summary>
public sealed partial class BsqVae : nn.Module
{
    public readonly Encoder encoder;
    public readonly Decoder decoder;
    public readonly MultiScaleBSQ quantizer;

    public VaeConfig Config { get; }
    public int CodebookDim => Config.CodebookDim;

    /// <summary>Computes every encoder/decoder convolution by a route checked on this CPU (<see cref="Torch.ConvRouter"/>).</summary>
    public ConvRouter ConvRouter { get; }

    /// <param name="convRouting">How convolutions are checked and routed; null = <see cref="ConvRouterOptions.FromEnvironment"/>
    /// (self-checked unless the diagnostic variable VARGPT_CONV_ROUTE forces a route).</param>
    public BsqVae(VaeConfig config, Device? device = null, ScalarType dtype = ScalarType.Float32, ConvRouterOptions? convRouting = null) : base(nameof(BsqVae))
    {
        Config = config;
        ConvRouter = new ConvRouter(convRouting ?? ConvRouterOptions.FromEnvironment());
        if (config.PatchSize < 1) throw new ArgumentException($"vae_config.patch_size must be positive, got {config.PatchSize}");
        encoder = new Encoder(config.BaseCh, config.EncoderChMult, config.NumResBlocks, config.CodebookDim, config.PatchSize, device, dtype);
        decoder = new Decoder(config.BaseCh, config.DecoderChMult, config.NumResBlocks, config.CodebookDim, config.PatchSize, device, dtype);
        quantizer = new MultiScaleBSQ(config.CodebookDim, device);
        RegisterComponents();
        foreach (var m in modules().OfType<Conv>()) m.Router = ConvRouter;
        eval();
    }

    /// <summary>Floating dtype of the weights (the compute dtype of encoder and decoder).</summary>
    public ScalarType DType => encoder.conv_in.conv.weight!.dtype;
    public Device Device => encoder.conv_in.conv.weight!.device;

    internal static Tensor Swish(Tensor x)
    {
        using var s = x.sigmoid();
        return x * s; // x * sigmoid(x) as the official swish (not the fused silu)
    }

    /// <summary>
    /// Raw encoder features (official encode_for_raw_features): pixels [B,3,H,W] in [-1,1] -> [B,d,H/p,W/p] float32.
    /// Runs in the module dtype without gradient (the official training calls it under no_grad).
    /// </summary>
    public Tensor Encode(Tensor pixels)
    {
        if (pixels.dim() != 4 || pixels.shape[1] != 3)
            throw new ArgumentException($"BsqVae.Encode expects pixels [B,3,H,W], got [{string.Join(",", pixels.shape)}]");
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var h = encoder.forward(pixels.to(DType, Device));
        return h.to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decoder then clamp to [-1,1] (official AutoEncoder.decode). <paramref name="summedCodes"/> is [B,d,h,w] or the
    /// quantizer layout [B,d,1,h,w]; it is cast to the module dtype first (as the generation loop does). Returns [B,3,H,W]
    /// in the module dtype.
    /// </summary>
    public Tensor Decode(Tensor summedCodes)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var z = summedCodes;
        if (z.dim() == 5)
        {
            if (z.shape[2] != 1) throw new ArgumentException($"BsqVae.Decode: the time axis of [B,d,T,h,w] must be 1, got [{string.Join(",", z.shape)}]");
            z = z.squeeze(2);
        }
        if (z.dim() != 4 || z.shape[1] != CodebookDim)
            throw new ArgumentException($"BsqVae.Decode expects codes [B,{CodebookDim},h,w] or [B,{CodebookDim},1,h,w], got [{string.Join(",", summedCodes.shape)}]");
        var x = decoder.forward(z.to(DType, Device));
        return x.clamp(-1, 1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Official AutoEncoder.encode: raw features, then the MultiScaleBSQ residual ladder over <paramref name="schedule"/>.
    /// </summary>
    public (Tensor RawFeatures, MultiScaleBSQ.Output Quantized) EncodeMultiScale(Tensor pixels, IReadOnlyList<Scale> schedule)
    {
        var h = Encode(pixels);
        return (h, quantizer.forward(h, schedule));
    }

    /// <summary>
    /// Official AutoEncoder.decode_from_indices with bit labels: every scale's codes trilinearly resized to the last scale
    /// and summed (fp32), then decoded and clamped. Returns (summed codes [B,d,1,h,w], image [B,3,H,W]).
    /// </summary>
    public (Tensor SummedCodes, Tensor Image) DecodeFromBits(IReadOnlyList<Tensor> bitsPerScale, IReadOnlyList<Scale> schedule)
    {
        if (bitsPerScale.Count == 0) throw new ArgumentException("DecodeFromBits needs at least one scale of bits");
        using var scope = NewDisposeScope();
        Tensor? summed = null;
        foreach (var bits in bitsPerScale)
        {
            var codes = BSQ.IndicesToCodes(bits);
            // decode_from_indices resizes every scale, the last one included (a same-size trilinear resize is the identity)
            var up = MultiScaleResidual.Resize(codes, schedule[^1], MultiScaleResidual.Up);
            summed = summed is null ? up : summed + up;
        }
        var img = Decode(summed!);
        return (summed!.MoveToOuterDisposeScope(), img.MoveToOuterDisposeScope());
    }

    /// <summary>Official flux_vqgan.Encoder (cnn_type 2d, no attention, use_vae False so conv_out emits d channels).</summary>
    public sealed class Encoder : nn.Module<Tensor, Tensor>
    {
        public readonly Conv conv_in;
        public readonly ModuleList<EncoderLevel> down;
        public readonly MidBlock mid;
        public readonly Normalize norm_out;
        public readonly Conv conv_out;

        public Encoder(int ch, int[] chMult, int numResBlocks, int zChannels, int patchSize, Device? device = null, ScalarType? dtype = null) : base(nameof(Encoder))
        {
            double maxDown = Math.Log2(patchSize); // official np.log2(patch_size); a level downsamples when i < max_down
            conv_in = new Conv(3, ch, 3, 1, 1, device: device, dtype: dtype);
            var levels = new List<EncoderLevel>();
            long blockIn = ch;
            for (int i = 0; i < chMult.Length; i++)
            {
                blockIn = ch * (i == 0 ? 1 : chMult[i - 1]); // in_ch_mult = (1,) + ch_mult
                long blockOut = ch * chMult[i];
                var blocks = new List<ResnetBlock>();
                for (int j = 0; j < numResBlocks; j++) { blocks.Add(new ResnetBlock(blockIn, blockOut, device: device, dtype: dtype)); blockIn = blockOut; }
                levels.Add(new EncoderLevel(blocks, i < maxDown ? new Downsample(blockIn, device: device, dtype: dtype) : null));
            }
            down = new ModuleList<EncoderLevel>(levels.ToArray());
            mid = new MidBlock(blockIn, device: device, dtype: dtype);
            norm_out = new Normalize(blockIn, device: device, dtype: dtype);
            conv_out = new Conv(blockIn, zChannels, 3, 1, 1, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            var h = conv_in.forward(x);
            foreach (var level in down) h = level.forward(h);
            h = mid.forward(h);
            h = conv_out.forward(Swish(norm_out.forward(h)));
            return h.MoveToOuterDisposeScope();
        }
    }

    /// <summary>Official flux_vqgan.Decoder: conv_in, mid, levels from the deepest up with num_res_blocks+1 blocks, norm_out, conv_out.</summary>
    public sealed class Decoder : nn.Module<Tensor, Tensor>
    {
        public readonly Conv conv_in;
        public readonly MidBlock mid;
        public readonly ModuleList<DecoderLevel> up;
        public readonly Normalize norm_out;
        public readonly Conv conv_out;

        public Decoder(int ch, int[] chMult, int numResBlocks, int zChannels, int patchSize, Device? device = null, ScalarType? dtype = null) : base(nameof(Decoder))
        {
            double maxUp = Math.Log2(patchSize); // a level upsamples when 1 <= i <= max_up
            int n = chMult.Length;
            long blockIn = ch * chMult[n - 1];
            conv_in = new Conv(zChannels, blockIn, 3, 1, 1, device: device, dtype: dtype);
            mid = new MidBlock(blockIn, device: device, dtype: dtype);
            var levels = new DecoderLevel[n];
            for (int i = n - 1; i >= 0; i--)
            {
                long blockOut = ch * chMult[i];
                var blocks = new List<ResnetBlock>();
                for (int j = 0; j < numResBlocks + 1; j++) { blocks.Add(new ResnetBlock(blockIn, blockOut, device: device, dtype: dtype)); blockIn = blockOut; }
                levels[i] = new DecoderLevel(blocks, 1 <= i && i <= maxUp ? new Upsample(blockIn, device: device, dtype: dtype) : null);
            }
            up = new ModuleList<DecoderLevel>(levels);
            norm_out = new Normalize(blockIn, device: device, dtype: dtype);
            conv_out = new Conv(blockIn, 3, 3, 1, 1, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor z)
        {
            using var scope = NewDisposeScope();
            var h = conv_in.forward(z);
            h = mid.forward(h);
            for (int i = up.Count - 1; i >= 0; i--) h = up[i].forward(h);
            h = conv_out.forward(Swish(norm_out.forward(h)));
            return h.MoveToOuterDisposeScope();
        }
    }
}
