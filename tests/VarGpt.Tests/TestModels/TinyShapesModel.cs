using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Training;
using static TorchSharp.torch;
using VarGpt.Configuration;
using VarGpt.Inference;

namespace VarGpt.Tests.TestModels;

/// <summary>
/// A random-weight ShapesWorld model folder in the shipped layout, at toy sizes: ShapesModelConfig.WriteModelFolder
/// (config.json with the 128×128 five-scale schedule, processor max_pixels 14000, greedy generation_config, tokenizer)
/// + model.safetensors in bf16 + shapesworld.json, plus a training/ folder with stage logs and vae_eval.json.
/// LM 64 wide × 1 layer (q_proj 64→64, v_proj 64→32), vision 1 block, Infinity 128 × 2 blocks, VAE base 24.
/// Built once per test process by <see cref="TinyModels"/>; treat it as read-only (copy it to add an adapter).
/// </summary>
public static class TinyShapesModel
{
    /// <summary>The shipped model's image layout (r4L): 128² renders, VAE patch 16 (five levels), pn 0.016M padded to 128
    /// rows, understanding images at 112². The recipe's defaults moved to 64² (issue 16); tests of the shipped layout pin it.</summary>
    public static readonly ShapesModelConfig ShippedLayout = new()
    {
        ImageSize = 128, Pn = "0.016M", VaePatchSize = 16, VaeChMult = [1, 1, 2, 2, 2], InfinityPadToMultiplier = 128,
        UnderstandingSide = 112, MaxPixels = 14000, MinPixels = 56 * 56,
    };

    public static readonly ShapesModelConfig Sizes = ShippedLayout with
    {
        HiddenSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, IntermediateSize = 128, MropeSection = [4, 6, 6],
        VisionDepth = 1, VisionEmbedDim = 32, VisionHeads = 2, VisionMlpRatio = 2,
        InfinityDepth = 2, InfinityEmbedDim = 128, InfinityHeads = 2, InfinityMlpRatio = 1, InfinityBlockChunks = 2, TextMaxLen = 128,
        VaeBaseCh = 24, VaeChMult = [1, 1, 1, 1, 1], CodebookDim = 8,
    };

    public static readonly ShapesWorldOptions World = new() { Seed = 3 };

    static readonly Lazy<ByteLevelBpeTokenizer> Bpe = new(() => BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(World), samples: 300, vocabSize: 400));

    /// <summary>The spec: ShapesModelConfig's layout at toy sizes, bf16 weights (seed 7), shapesworld.json and stage logs.</summary>
    public static readonly TinyModel Spec = new()
    {
        Name = "tiny-shapes-model",
        Tokenizer = dir => Bpe.Value.Save(dir),
        Config = (_, _) => Sizes.ToVargptConfig(Bpe.Value),
        Files = (dir, _) =>
        {
            File.WriteAllText(Path.Combine(dir, PreprocessorConfig.FileName), Sizes.PreprocessorJson().ToJsonString());
            File.WriteAllText(Path.Combine(dir, GenerationConfig.FileName), Sizes.GenerationConfigJson(Bpe.Value).ToJsonString());
            ShapesTraining.WriteWorld(dir, World);
            var training = Path.Combine(dir, ShapesReport.TrainingFolder);
            Directory.CreateDirectory(training);
            foreach (var (stage, n) in new[] { ("vae", 5), ("sft", 8) })
                File.WriteAllLines(Path.Combine(training, stage + ".jsonl"), Enumerable.Range(1, n).Select(i =>
                    $"{{\"current_steps\": {i * 10}, \"total_steps\": {n * 10}, \"loss\": {2.0 / i:R}, \"lr\": 0.001}}"));
            File.WriteAllText(Path.Combine(training, VaeTraining.EvalFile), """{"steps": 240, "fp32": {"psnr": 31.5, "scorer_accuracy": 0.99}}""");
        },
        Seed = 7,
        StoredDType = ScalarType.BFloat16,
    };

    public static string Dir => TinyModels.Folder(Spec);

    /// <summary>A copy of the folder (weights hard-linked would be shared; copied here) that a test may change.</summary>
    public static string Copy(string to)
    {
        foreach (var f in Directory.EnumerateFiles(Dir, "*", SearchOption.AllDirectories))
        {
            var dst = Path.Combine(to, Path.GetRelativePath(Dir, f));
            Directory.CreateDirectory(Path.GetDirectoryName(dst)!);
            File.Copy(f, dst, overwrite: true);
        }
        return to;
    }

    public static readonly LoraOptions AdapterOptions = new() { Rank = 4, Alpha = 8, Targets = ["q_proj", "v_proj"], AlsoTrainable = [] };

    /// <summary>
    /// Writes a PEFT adapter (Lora.SaveAdapter) for the folder's model to <paramref name="adapterDir"/>: A random, B
    /// random × <paramref name="bScale"/> (0 = an adapter that changes nothing). Returns the live-LoRA model
    /// (adapters applied, not merged) for comparisons; the caller disposes it.
    /// </summary>
    public static VargptModel WriteAdapter(string adapterDir, double bScale, long seed = 11)
    {
        var p = VargptModel.Load(Dir, new VargptModelOptions { MergeAdapter = false });
        Lora.Apply(p.Module, AdapterOptions);
        var g = new Generator((ulong)seed, CPU);
        using (no_grad())
            foreach (var (_, layer) in Lora.Layers(p.Module))
            {
                layer.lora_A.weight!.normal_(0, 0.3, g);
                layer.lora_B.weight!.normal_(0, 1, g).mul_(bScale);
            }
        Lora.SaveAdapter(adapterDir, p.Module, AdapterOptions);
        return p;
    }
}
