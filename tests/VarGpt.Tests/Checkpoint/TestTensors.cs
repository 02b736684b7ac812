using static TorchSharp.torch;

namespace VarGpt.Tests.Checkpoint;

static class TestTensors
{
    /// <summary>Same shape, dtype and values (no broadcasting).</summary>
    public static bool Same(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();
}
