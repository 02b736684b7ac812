using VarGpt.Inference;
using VarGpt.Server.Backend;
using VarGpt.Server.Bench;

namespace VarGpt.Tests.Server;

/// <summary>The short version of `vargpt bench serve` (load, then faults during load) on the shipped model: every check holds.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ServeBenchmarkTests
{
    [Fact]
    public async Task The_quick_load_and_fault_run_passes_every_check()
    {
        var log = new StringWriter();
        var result = await ServeBenchmark.RunAsync(() => ModelBackend.Load(ShippedModel.Resolve()), ServeBenchOptions.Quick, ServedModel.ScenePng(), log);
        Assert.True(result.Passed, string.Join("\n", result.Failures));
        var m = result.Metrics.ToDictionary(x => x.Name, x => x.Value);
        Assert.Equal(0, m["mixed_failed_c1"]);
        Assert.Equal(0, m["mixed_failed_c4"]);
        Assert.Equal(ServeBenchOptions.Quick.Disconnects, m["faults_disconnected"]);
        Assert.True(m["decode_tokens_per_second_c4"] > 0);
        Assert.True(m["first_preview_idle_p50"] > 0);
    }
}
