using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace VarGpt.ShapesWorld;

/// <summary>
/// One gate of the recipe: a held-out measurement of a finished stage that must pass before a later stage builds on it
/// (issue 16: "do not train a later stage on a stage that has not passed its gate").
/// </summary>
/// <param name="Name">stage the gate checks (vae, vision, understanding, text_to_image, final_*)</param>
/// <param name="Measure">what was measured, in words</param>
/// <param name="Value">the measured fraction (0–1)</param>
/// <param name="Threshold">the lowest passing value</param>
/// <param name="Detail">the numbers behind it (counts, breakdowns), for the log and the JSON</param>
public sealed record ShapesGate(string Name, string Measure, double Value, double Threshold, bool Passed, string Detail)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"[gate {Name}] {Measure}: {Value:P1} (needs ≥ {Threshold:P0}) — {(Passed ? "passed" : "FAILED")}; {Detail}");
}

/// <summary>A gate failed and the recipe stopped before the stages that would build on the failed one.</summary>
public sealed class ShapesGateFailedException(ShapesGate gate, string gatesFile)
    : Exception($"{gate}. The recipe stops here: later stages would build on a stage that failed its held-out check (all gates: {gatesFile}). " +
        "Fix the stage and rerun (delete its .done marker to redo it), or pass --ignore-gates to record the gates and go on anyway.")
{
    public ShapesGate Gate { get; } = gate;
}

/// <summary>The gates of a run, kept in OUT/gates.json (one object per gate, in recipe order; rewritten atomically).</summary>
public static class ShapesGates
{
    public const string FileName = "gates.json";

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The gates recorded so far in <paramref name="root"/>/gates.json (empty when none).</summary>
    public static IReadOnlyList<ShapesGate> Read(string root)
    {
        var path = Path.Combine(root, FileName);
        if (!File.Exists(path)) return [];
        try { return JsonSerializer.Deserialize<List<ShapesGate>>(File.ReadAllText(path), Json) ?? []; }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not a gates file ({e.Message}); delete it to measure the gates again", e); }
    }

    /// <summary>Records <paramref name="gate"/> (replacing an earlier one of the same name), prints it, and throws
    /// <see cref="ShapesGateFailedException"/> when it failed and <paramref name="stop"/> is set.</summary>
    public static void Record(string root, ShapesGate gate, TextWriter log, bool stop)
    {
        var gates = Read(root).Where(g => g.Name != gate.Name).Append(gate).ToList();
        var path = Path.Combine(root, FileName);
        AtomicFile.WriteAllText(path, JsonSerializer.Serialize(gates, Json) + "\n");
        log.WriteLine(gate.ToString());
        if (!gate.Passed && stop) throw new ShapesGateFailedException(gate, path);
    }

    /// <summary>The VAE gate: the scorer reads ≥ threshold of the held-out round trips right (encode → multi-scale bits →
    /// decode → uint8, bf16-rounded weights as shipped) and every colour comes back distinct.</summary>
    public static ShapesGate Vae(VaeEvaluation e, double threshold)
    {
        int colors = ShapesPalette.Colors.Length;
        return new ShapesGate("vae", $"scorer on {e.Images} held-out round trips ({e.DType}), every colour distinct", e.ScorerAccuracy, threshold,
            e.ScorerAccuracy >= threshold && e.ColorsReadRight == colors,
            string.Create(CultureInfo.InvariantCulture, $"PSNR {e.Psnr:F2} dB, colours read right {e.ColorsReadRight}/{colors}, with {e.FlipRate:P0} bits flipped {e.ScorerAccuracyWithFlips:P1}"));
    }

    /// <summary>The vision gate: the token probe names colour, shape, size and position of every object token of the
    /// held-out scenes, and object vs background of every token, at ≥ threshold each.</summary>
    public static ShapesGate Vision(VisionProbeEvaluation e, double threshold) =>
        new("vision", $"token probe on {e.Scenes} held-out scenes, the lowest attribute", e.Min, threshold, e.Min >= threshold, e.ToString());

    /// <summary>A gate on one task's held-out accuracy from <see cref="ShapesEvaluation"/>.</summary>
    public static ShapesGate Task(string name, ShapesTaskResult t, double threshold, string what) =>
        new(name, $"{what} ({t.Count.Total} held-out samples)", t.Accuracy, threshold, t.Accuracy >= threshold,
            $"{t.Count}" + (t.Breakdown.Count > 0 ? "; " + string.Join(", ", t.Breakdown.Select(kv => $"{kv.Key} {kv.Value}")) : ""));
}
