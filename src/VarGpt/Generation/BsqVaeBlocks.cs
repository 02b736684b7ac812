using TorchSharp;
using TorchSharp.Modules;
using VarGpt.Torch;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace VarGpt.Generation;

public sealed partial class BsqVae
{
    // Building blocks of the BSQ-VAE (official bsq_vae/conv.py and flux_vqgan.py, cnn_type '2d', no attention).
    // Every conv / norm sits one level down in a wrapper module, so the state-dict keys carry ".conv." / ".norm.".

    /// <summary>
    /// Official conv.Conv with cnn_type '2d': a Conv2d stored as field <c>conv</c> (its weight and bias are the
    /// checkpoint's), computed by the VAE's <see cref="ConvRouter"/> so a wrong native kernel on some CPU is detected
    /// and routed around (docs/notes/cpu-kernels.md); without a router, plain <c>Conv2d.forward</c>.
    /// </summary>
    public sealed class Conv : Module<Tensor, Tensor>
    {
        public readonly Conv2d conv;
        readonly long _stride, _padding;

        /// <summary>Set once by the owning <see cref="BsqVae"/>.</summary>
        internal ConvRouter? Router { get; set; }

        public Conv(long inChannels, long outChannels, long kernelSize, long stride = 1, long padding = 0, Device? device = null, ScalarType? dtype = null) : base(nameof(Conv))
        {
            conv = Conv2d(inChannels, outChannels, kernelSize, stride: stride, padding: padding, device: device, dtype: dtype);
            _stride = stride;
            _padding = padding;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) =>
            Router is null ? conv.forward(x) : Router.Conv2d(x, conv.weight!, conv.bias, _stride, _padding);
    }

    /// <summary>Official flux_vqgan.Normalize ('group', spatial axis): GroupNorm(32 groups if C%32==0 else 24 if C%24==0), eps 1e-6.</summary>
    public sealed class Normalize : Module<Tensor, Tensor>
    {
        public readonly GroupNorm norm;

        public Normalize(long channels, Device? device = null, ScalarType? dtype = null) : base(nameof(Normalize))
        {
            long groups = channels % 32 == 0 ? 32 : channels % 24 == 0 ? 24
                : throw new ArgumentException($"BSQ-VAE GroupNorm needs a channel count divisible by 32 or 24 (official Normalize), got {channels}");
            norm = GroupNorm(groups, channels, eps: 1e-6, affine: true, device: device, dtype: dtype);
            // TorchSharp 0.107's GroupNorm leaves weight/bias uninitialised (torch.empty); PyTorch's default is 1 / 0.
            using (no_grad())
            {
                norm.weight!.fill_(1);
                norm.bias!.zero_();
            }
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => norm.forward(x);
    }

    /// <summary>Official flux_vqgan.ResnetBlock: h = conv2(swish(GN2(conv1(swish(GN1(x)))))); x (or nin_shortcut(x)) + h.</summary>
    public sealed class ResnetBlock : Module<Tensor, Tensor>
    {
        public readonly Normalize norm1;
        public readonly Conv conv1;
        public readonly Normalize norm2;
        public readonly Conv conv2;
        public readonly Conv? nin_shortcut;

        public ResnetBlock(long inChannels, long outChannels, Device? device = null, ScalarType? dtype = null) : base(nameof(ResnetBlock))
        {
            norm1 = new Normalize(inChannels, device: device, dtype: dtype);
            conv1 = new Conv(inChannels, outChannels, 3, 1, 1, device: device, dtype: dtype);
            norm2 = new Normalize(outChannels, device: device, dtype: dtype);
            conv2 = new Conv(outChannels, outChannels, 3, 1, 1, device: device, dtype: dtype);
            if (inChannels != outChannels) nin_shortcut = new Conv(inChannels, outChannels, 1, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            var h = conv1.forward(BsqVae.Swish(norm1.forward(x)));
            h = conv2.forward(BsqVae.Swish(norm2.forward(h)));
            var skip = nin_shortcut is null ? x : nin_shortcut.forward(x);
            return (skip + h).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Official flux_vqgan.Downsample: zero pad (0,1,0,1) (right and bottom only), then 3x3 stride-2 conv without padding.</summary>
    public sealed class Downsample : Module<Tensor, Tensor>
    {
        public readonly Conv conv;

        public Downsample(long channels, Device? device = null, ScalarType? dtype = null) : base(nameof(Downsample))
        {
            conv = new Conv(channels, channels, 3, stride: 2, padding: 0, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var padded = functional.pad(x, [0, 1, 0, 1], PaddingModes.Constant, 0);
            return conv.forward(padded);
        }
    }

    /// <summary>Official flux_vqgan.Upsample (use_pxsf False): nearest x2 then 3x3 conv.</summary>
    public sealed class Upsample : Module<Tensor, Tensor>
    {
        public readonly Conv conv;

        public Upsample(long channels, Device? device = null, ScalarType? dtype = null) : base(nameof(Upsample))
        {
            conv = new Conv(channels, channels, 3, 1, 1, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var up = functional.interpolate(x, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest);
            return conv.forward(up);
        }
    }

    /// <summary>One resolution level of the encoder (official <c>down[i]</c>: block list + optional downsample; its attn list is empty).</summary>
    public sealed class EncoderLevel : Module<Tensor, Tensor>
    {
        public readonly ModuleList<ResnetBlock> block;
        public readonly Downsample? downsample;

        public EncoderLevel(IEnumerable<ResnetBlock> blocks, Downsample? down) : base("down")
        {
            block = new ModuleList<ResnetBlock>(blocks.ToArray());
            downsample = down;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            foreach (var b in block) x = b.forward(x);
            if (downsample is not null) x = downsample.forward(x);
            return x.MoveToOuterDisposeScope();
        }
    }

    /// <summary>One resolution level of the decoder (official <c>up[i]</c>: num_res_blocks+1 blocks + optional upsample).</summary>
    public sealed class DecoderLevel : Module<Tensor, Tensor>
    {
        public readonly ModuleList<ResnetBlock> block;
        public readonly Upsample? upsample;

        public DecoderLevel(IEnumerable<ResnetBlock> blocks, Upsample? up) : base("up")
        {
            block = new ModuleList<ResnetBlock>(blocks.ToArray());
            upsample = up;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            foreach (var b in block) x = b.forward(x);
            if (upsample is not null) x = upsample.forward(x);
            return x.MoveToOuterDisposeScope();
        }
    }

    /// <summary>The middle of encoder and decoder (official <c>mid</c>: block_1, then block_2; no attn_1 since cnn_attention is 'no').</summary>
    public sealed class MidBlock : Module<Tensor, Tensor>
    {
        public readonly ResnetBlock block_1;
        public readonly ResnetBlock block_2;

        public MidBlock(long channels, Device? device = null, ScalarType? dtype = null) : base("mid")
        {
            block_1 = new ResnetBlock(channels, channels, device: device, dtype: dtype);
            block_2 = new ResnetBlock(channels, channels, device: device, dtype: dtype);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var h = block_1.forward(x);
            return block_2.forward(h);
        }
    }
}
