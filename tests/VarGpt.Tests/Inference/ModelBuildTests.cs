using VarGpt.Model;
using VarGpt.Tests.TestModels;
using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Tests.Inference;

/// <summary>
/// Building a model never relies on, nor changes, libtorch's process-wide default device and dtype: a model loading on
/// one thread must not turn the tensors another thread creates into META or bfloat16 ones.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ModelBuildTests
{
    [Fact]
    public void A_model_built_for_a_device_and_dtype_puts_every_tensor_there_whatever_the_process_defaults()
    {
        // defaults no module may use: a submodule built "in the defaults, then moved" fails (META has no data to move)
        // or stays on META, and one built in float64 would have allocated that first
        TorchTestSetup.Init();
        VargptForConditionalGeneration model;
        using (TorchDefaults.Scope(META, ScalarType.Float64))
            model = new VargptForConditionalGeneration(TinyVargpt.Config(), CPU, ScalarType.BFloat16);
        using var _ = model;
        var wrong = model.named_parameters().Where(p => p.parameter.device_type != DeviceType.CPU || p.parameter.dtype != ScalarType.BFloat16)
            .Select(p => $"{p.name} ({p.parameter.device_type}, {p.parameter.dtype})")
            .Concat(model.named_buffers().Where(b => b.buffer.device_type != DeviceType.CPU || b.buffer.dtype == ScalarType.Float64)
                .Select(b => $"{b.name} ({b.buffer.device_type}, {b.buffer.dtype})"))
            .ToList();
        Assert.True(wrong.Count == 0, "not built on CPU in bfloat16: " + string.Join(", ", wrong));
    }

    [Fact]
    public void The_library_never_sets_libtorchs_process_wide_defaults()
    {
        var src = Path.Combine(TestPaths.RepoRoot, "src");
        var offenders = Directory.EnumerateFiles(src, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .Where(f => File.ReadLines(f).Any(l => !l.TrimStart().StartsWith("//") && (l.Contains("set_default_device(") || l.Contains("set_default_dtype("))))
            .Select(f => Path.GetRelativePath(src, f)).ToList();
        Assert.True(offenders.Count == 0, "process-wide default set in: " + string.Join(", ", offenders));
    }
}
