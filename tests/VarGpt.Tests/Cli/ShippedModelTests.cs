using VarGpt.Model;
using VarGpt.Tests.ShapesWorld;
using VarGpt.Inference;

using VarGpt.Tests.TestModels;

namespace VarGpt.Tests.Cli;

/// <summary>
/// ShippedModel resolution and the CLI's "no --model" fallback. VARGPT_MODEL is process-wide: these tests run in the
/// non-parallel collection and restore it.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ShippedModelTests
{
    static T WithEnv<T>(string? value, Func<T> body)
    {
        var old = Environment.GetEnvironmentVariable(ShippedModel.EnvironmentVariable);
        Environment.SetEnvironmentVariable(ShippedModel.EnvironmentVariable, value);
        try { return body(); }
        finally { Environment.SetEnvironmentVariable(ShippedModel.EnvironmentVariable, old); }
    }

    [Fact]
    public void Environment_variable_wins_and_a_wrong_one_is_an_error()
    {
        using var tmp = TestPaths.Temp();
        Assert.Equal(tmp.Path, WithEnv(tmp.Path, ShippedModel.Resolve));
        var e = WithEnv(tmp["missing"], () => Assert.Throws<ShippedModelNotFoundException>(ShippedModel.Resolve));
        Assert.Contains(ShippedModel.EnvironmentVariable, e.Message);
        Assert.Contains(tmp["missing"], e.Message);
    }

    [Fact]
    public void Without_the_variable_the_shipped_folder_is_found_or_the_error_says_where_it_looked()
    {
        var found = WithEnv(null, () => ShippedModel.TryResolve(out var searched) is { } dir ? dir : null);
        if (found is not null)
        {
            // the repository has models/shapesworld: it must be a model folder
            Assert.True(File.Exists(Path.Combine(found, "config.json")));
            Assert.EndsWith(Path.Combine("models", "shapesworld"), found);
            return;
        }
        var e = WithEnv(null, () => Assert.Throws<ShippedModelNotFoundException>(ShippedModel.Resolve));
        Assert.Contains("no --model given and the shipped model was not found at", e.Message);
        Assert.Contains(Path.Combine(AppContext.BaseDirectory, "models", "shapesworld"), e.Message);
        Assert.Contains("pass --model DIR", e.Message);
        var (code, _, err) = WithEnv(null, () => CliHarness.Run("info"));
        Assert.Equal(2, code);
        Assert.Contains("pass --model DIR", err);
    }

    [Fact]
    public void Commands_without_model_use_the_default_model()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var dir = TinyShapesModel.Dir;
        var (code, stdout, err) = WithEnv(dir, () => CliHarness.Run("info"));
        Assert.True(code == 0, err);
        Assert.Contains(dir, stdout);
        var (code2, stdout2, err2) = WithEnv(dir, () => CliHarness.Run("shapes", "eval", "--count", "1", "--json", "--threads", "1"));
        Assert.True(code2 == 0, err2);
        Assert.Contains($"loaded {dir}", err2);
        Assert.Contains("\"generation_acc\"", stdout2);
        var (code3, stdout3, err3) = WithEnv(dir, () => CliHarness.Run("generate", "Draw a red circle.", "-o", tmp["out.png"],
            "--force-image-start", "--seed", "1"));
        Assert.True(code3 == 0, err3 + stdout3);
        Assert.Contains($"loading {dir}", err3);
    }

    [Fact]
    public void Help_says_what_happens_without_model()
    {
        var (_, stdout, _) = CliHarness.Run("chat", "--help");
        Assert.Contains("shipped ShapesWorld model", stdout);
        var (_, info, _) = CliHarness.Run("info", "--help");
        Assert.Contains("shipped ShapesWorld model", info);
        var (_, eval, _) = CliHarness.Run("shapes", "eval", "--help");
        Assert.Contains("--no-adapter", eval);
    }
}
