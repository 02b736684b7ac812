using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Training;
using VarGpt.Training.Data;
using static TorchSharp.torch;

namespace VarGpt.Tests.Training;

/// <summary>The real objectives on a random tiny VARGPT: overfitting, DPO accuracy, exact resume, and the error paths.</summary>
[Collection(nameof(GlobalRngCollection))]
public class VargptTrainingTests(ITestOutputHelper output)
{
    static TrainerOptions Options(string dir, int steps, double lr, int saveSteps = 1000, string schedule = "constant") => new()
    {
        OutputDir = dir, LearningRate = lr, LrSchedulerType = schedule, WarmupRatio = schedule == "cosine" ? 0.05 : 0, MaxSteps = steps, MaxGradNorm = 1.0,
        LoggingSteps = 1000, SaveSteps = saveSteps, Seed = 7, Output = TextWriter.Null, IsTerminal = false,
    };

    static void FreezeVae(nn.Module model) => Freezing.Apply(model, Freezing.Plan(model.named_parameters().Select(p => p.name), Freezing.ForbiddenModules("qwen2vl-v1.1", 5)));

    [Fact]
    public void Sft_overfits_a_mixed_batch_of_generation_understanding_editing_and_text()
    {
        TorchTestSetup.Init();
        using var tmp = TestPaths.Temp();
        var records = TinyVargpt.MixedRecords(tmp.Path);
        Assert.Equal([RecordKind.Generation, RecordKind.Understanding, RecordKind.Editing, RecordKind.Text], records.Select(r => r.Kind));
        var cfg = TinyVargpt.Config();
        var collator = TinyVargpt.Collator(cfg);
        var ds = collator.EncodeAll(records, "sft");
        Assert.Empty(ds.Skipped);
        using var model = TinyVargpt.Model(cfg, 1);
        FreezeVae(model);
        var objective = new VargptSftObjective(model, new VargptTrainingOptions { NoiseApplyStrength = 0 });
        using var trainer = new Trainer<VargptBatch>(model, objective, new FixedBatch(collator, ds.Items), Options(tmp["out"], 120, 6e-3, schedule: "cosine"));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var r = trainer.Train(cancel: TestContext.Current.CancellationToken);
        var losses = r.Steps.Select(s => s.Loss).ToList();
        double floor;
        using (var b = collator.Collate(ds.Items, 0, 0)) floor = TextLossFloor(b, cfg.ImageGen.PadId);
        output.WriteLine($"text-loss floor (shared prefixes, identical input images) {floor:F4}");
        output.WriteLine(string.Join(" ", losses.Where((_, i) => i % 10 == 0).Select(l => l.ToString("F3"))));
        output.WriteLine($"{losses.Count} steps in {sw.Elapsed.TotalSeconds:F1}s; loss {losses[0]:F4} -> {losses[^1]:F4}; last parts text {objective.LastParts.Text:F4} image {objective.LastParts.Image:F4}");
        Assert.True(losses[0] > 3, $"initial loss {losses[0]}");
        // "near zero": the image loss, and the text loss down to what identical prefixes make unavoidable
        Assert.True(objective.LastParts.Image < 0.01, $"image loss {objective.LastParts.Image}");
        Assert.True(objective.LastParts.Text < floor + 0.04, $"text loss {objective.LastParts.Text} vs floor {floor}");
        Assert.True(losses[^1] < floor + 0.05 && losses[^1] < 0.01 * losses[0], $"final loss {losses[^1]} (from {losses[0]}, floor {floor})");
    }

    /// <summary>
    /// The smallest mean text CE any model can reach on a generation batch (targets = input_ids, gen pads ignored):
    /// rows that share a prefix (here: the same input image too) but continue differently cannot all be predicted.
    /// </summary>
    static double TextLossFloor(VargptBatch b, int genPadId)
    {
        using var tl = VargptTrainingLoss.OtherLabels(b.InputIds, genPadId);
        long B = b.InputIds.shape[0], T = b.InputIds.shape[1];
        var ids = b.InputIds.data<long>().ToArray();
        var tg = tl.data<long>().ToArray();
        var counts = new Dictionary<string, Dictionary<long, int>>();
        var events = new List<(string Key, long Next)>();
        for (int r = 0; r < B; r++)
            for (int t = 0; t + 1 < T; t++)
            {
                long next = tg[r * T + t + 1];
                if (next == -100) continue;
                var key = string.Join(",", ids.Skip(r * (int)T).Take(t + 1));
                if (!counts.TryGetValue(key, out var d)) counts[key] = d = [];
                d[next] = d.GetValueOrDefault(next) + 1;
                events.Add((key, next));
            }
        return events.Sum(e => -Math.Log((double)counts[e.Key][e.Next] / counts[e.Key].Values.Sum())) / events.Count;
    }
}
