using ArchUnitNET.Domain;
using ArchUnitNET.Fluent;
using ArchUnitNET.Loader;
using ArchUnitNET.xUnitV3;
using static ArchUnitNET.Fluent.ArchRuleDefinition;
using ArchAssembly = System.Reflection.Assembly;

using VarGpt.Cli.Runner;

namespace VarGpt.Tests.Architecture;

/// <summary>
/// The dependency rules of docs/notes/architecture.md, checked on the compiled assemblies (ArchUnitNET reads the IL, so
/// fully qualified names count as much as using directives). A new namespace cycle or a reference against the allowed
/// directions fails here, naming the types.
/// </summary>
public class DependencyTests
{
    static readonly ArchAssembly Library = typeof(VarGpt.Inference.VargptModel).Assembly;
    static readonly ArchAssembly Training = typeof(VarGpt.Training.TrainingConfig).Assembly;
    static readonly ArchAssembly ShapesWorld = typeof(VarGpt.ShapesWorld.ShapesWorldGenerator).Assembly;
    static readonly ArchAssembly Golden = typeof(VarGpt.Golden.FixtureKinds).Assembly;
    static readonly ArchAssembly Benchmarks = typeof(VarGpt.Benchmarks.BenchRecord).Assembly;
    static readonly ArchAssembly Cli = typeof(VarGpt.Cli.Runner.CliRunner).Assembly;

    static readonly ArchUnitNET.Domain.Architecture Product =
        new ArchLoader().LoadAssemblies(Library, Training, ShapesWorld, Golden, Benchmarks, Cli).Build();

    /// <summary>The model library's namespaces, lowest first: each may use only those before it.</summary>
    static readonly string[] Layers =
    [
        "VarGpt.Torch", "VarGpt.Configuration", "VarGpt.Checkpoint", "VarGpt.Vision", "VarGpt.Text",
        "VarGpt.LanguageModel", "VarGpt.Generation", "VarGpt.Model", "VarGpt.Presets", "VarGpt.Inference",
    ];

    [Fact]
    public void Namespaces_form_no_cycle()
    {
        ArchUnitNET.Fluent.Slices.SliceRuleDefinition.Slices().Matching("VarGpt.(*)").Should().BeFreeOfCycles().Check(Product);
    }

    public static TheoryData<string> LayerNames => new(Layers);

    [Theory]
    [MemberData(nameof(LayerNames))]
    public void A_model_library_namespace_uses_only_the_ones_below_it(string layer)
    {
        var above = Layers.SkipWhile(l => l != layer).Skip(1).ToList();
        if (above.Count == 0) return;
        var rule = Types().That().ResideInNamespaceOrBelow(layer).Should()
            .NotDependOnAny(Types().That().ResideInNamespaceMatching("^(" + string.Join("|", above.Select(a => a.Replace(".", "\\."))) + ")($|\\.)"));
        rule.Check(Product);
    }

    [Fact]
    public void Vision_is_the_one_namespace_of_the_model_library_that_decodes_images_with_SkiaSharp()
    {
        Types().That().ResideInAssembly(Library).And().DoNotResideInNamespaceOrBelow("VarGpt.Vision").Should()
            .NotDependOnAny(Types().That().ResideInNamespaceMatching("^SkiaSharp")).Check(Product);
    }

    [Fact]
    public void The_model_library_knows_nothing_of_training_the_demo_the_fixtures_the_benchmarks_or_the_cli()
    {
        Types().That().ResideInAssembly(Library).Should()
            .NotDependOnAny(Types().That().ResideInAssembly(Training, ShapesWorld, Golden, Benchmarks, Cli)).Check(Product);
        Types().That().ResideInAssembly(Library).Should()
            .NotDependOnAny(Types().That().ResideInNamespaceMatching("^(System\\.CommandLine|Spectre|YamlDotNet)")).Check(Product);
    }

    [Fact]
    public void Training_does_not_use_the_demo_the_fixtures_the_benchmarks_or_the_cli()
    {
        Types().That().ResideInAssembly(Training).Should()
            .NotDependOnAny(Types().That().ResideInAssembly(ShapesWorld, Golden, Benchmarks, Cli)).Check(Product);
    }

    [Fact]
    public void ShapesWorld_golden_and_benchmarks_do_not_use_each_other_or_the_cli()
    {
        Types().That().ResideInAssembly(ShapesWorld).Should().NotDependOnAny(Types().That().ResideInAssembly(Golden, Benchmarks, Cli)).Check(Product);
        Types().That().ResideInAssembly(Golden).Should().NotDependOnAny(Types().That().ResideInAssembly(ShapesWorld, Benchmarks, Cli)).Check(Product);
        Types().That().ResideInAssembly(Benchmarks).Should().NotDependOnAny(Types().That().ResideInAssembly(Training, ShapesWorld, Golden, Cli)).Check(Product);
    }
}
