using static TorchSharp.torch;

namespace VarGpt.Generation;

/// <summary>Turns decoded images into 8-bit pixels the way the official generation code does (end of autoregressive_infer_cfg).</summary>
public static class ImageOutput
{
    /// <summary>
    /// decoded [B,3,H,W] in [-1,1] -&gt; [B,H,W,3] uint8 RGB: clamp to [-1,1], (x+1)/2, *255, truncating cast, all in the
    /// input dtype (bf16 images round at every step, as the official code does). The official code then flips the channels
    /// to BGR for cv2.imwrite; we keep RGB. The result is on the input's device.
    /// </summary>
    public static Tensor ToUInt8Rgb(Tensor decoded)
    {
        if (decoded.dim() != 4 || decoded.shape[1] != 3)
            throw new ArgumentException($"ToUInt8Rgb expects [B,3,H,W], got [{string.Join(",", decoded.shape)}]");
        if (!decoded.is_floating_point()) throw new ArgumentException($"ToUInt8Rgb expects a floating image, got {decoded.dtype}");
        using var scope = NewDisposeScope();
        var x = decoded.detach().clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1).mul(255);
        return x.to(ScalarType.Byte).contiguous().MoveToOuterDisposeScope();
    }
}
