using VarGpt.ShapesWorld;

namespace VarGpt.Tests.ShapesWorld;

public class ShapesGatesTests
{
    static VaeEvaluation Vae(double scorer, int colors) =>
        new(200, 30.0, scorer, 0.99, 0.02, scorer, 0.02, [1.0, 0.99], "bf16-rounded weights, float32 compute", 1234, colors);

    [Fact]
    public void The_vae_gate_needs_the_scorer_threshold_and_every_colour_distinct()
    {
        Assert.True(ShapesGates.Vae(Vae(0.995, 7), 0.99).Passed);
        Assert.False(ShapesGates.Vae(Vae(0.98, 7), 0.99).Passed);
        // a VAE that renders two colours alike fails even when the scorer figure passes
        var g = ShapesGates.Vae(Vae(0.995, 6), 0.99);
        Assert.False(g.Passed);
        Assert.Contains("colours read right 6/7", g.Detail);
    }

    [Fact]
    public void The_vision_gate_reads_the_weakest_attribute()
    {
        var e = new VisionProbeEvaluation(200, 900, Color: 1.0, Shape: 0.97, Size: 0.999, Position: 1.0, Occupancy: 0.995);
        var g = ShapesGates.Vision(e, 0.99);
        Assert.Equal(0.97, g.Value);
        Assert.False(g.Passed);
        Assert.True(ShapesGates.Vision(e with { Shape = 0.991 }, 0.99).Passed);
    }

    [Fact]
    public void Gates_are_recorded_in_order_replaced_by_name_and_a_failed_one_stops_the_run_only_when_asked()
    {
        using var dir = TestPaths.Temp();
        var log = new StringWriter();
        var pass = ShapesGates.Task("understanding", new ShapesTaskResult("understanding", new ShapesCount(96, 100), new Dictionary<string, ShapesCount>(), 1), 0.95, "answers");
        var fail = ShapesGates.Vae(Vae(0.15, 7), 0.99);

        ShapesGates.Record(dir.Path, fail, log, stop: false); // recorded, printed, the run goes on
        ShapesGates.Record(dir.Path, pass, log, stop: true);
        Assert.Equal(["vae", "understanding"], ShapesGates.Read(dir.Path).Select(g => g.Name));
        Assert.Contains("[gate vae]", log.ToString());
        Assert.Contains("FAILED", log.ToString());

        var e = Assert.Throws<ShapesGateFailedException>(() => ShapesGates.Record(dir.Path, fail with { Value = 0.2 }, log, stop: true));
        Assert.Equal("vae", e.Gate.Name);
        Assert.Contains("--ignore-gates", e.Message);
        // the re-measured gate replaced the old one in place of appending a second "vae"
        var gates = ShapesGates.Read(dir.Path);
        Assert.Equal(["understanding", "vae"], gates.Select(g => g.Name));
        Assert.Equal(0.2, gates.Single(g => g.Name == "vae").Value);
    }

    [Fact]
    public void A_damaged_gates_file_is_named_in_the_error()
    {
        using var dir = TestPaths.Temp();
        File.WriteAllText(Path.Combine(dir.Path, ShapesGates.FileName), "{ not json");
        var e = Assert.Throws<InvalidDataException>(() => ShapesGates.Read(dir.Path));
        Assert.Contains(ShapesGates.FileName, e.Message);
    }
}
