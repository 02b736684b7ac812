using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Tests.Torch;

public class TorchLoadingTests
{
    [Fact]
    public void Libtorch_loads_and_computes()
    {
        TorchTestSetup.Init();
        using var a = tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2).requires_grad_();
        using var y = a.matmul(a).sum();
        y.backward();
        Assert.Equal(54f, y.item<float>());
        Assert.Equal(new float[] { 7, 11, 9, 13 }, a.grad!.data<float>().ToArray());
    }

    /// <summary>
    /// If the deps.json copy of libLibTorchSharp fails to load, TorchSharp silently "consolidates" ~480 MB of natives
    /// into a cpu/ folder beside the binaries and loads an unpatched copy from there. That must never happen.
    /// </summary>
    [Fact]
    public void TorchSharp_never_consolidates_natives()
    {
        TorchTestSetup.Init();
        using var t = ones(1);
        var bin = AppContext.BaseDirectory;
        Assert.False(Directory.Exists(Path.Combine(bin, "cpu")), $"TorchSharp consolidated natives into {Path.Combine(bin, "cpu")}: the patched libLibTorchSharp.so did not load");
    }
}
