using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Presets;

using VarGpt.ShapesWorld;

namespace VarGpt.Tests.Chat;

/// <summary>
/// A complete tiny checkpoint folder in the official layout, written once per test process by the `vargpt init`
/// code: the ShapesWorld BPE tokenizer (with the Qwen2-VL + VARGPT special tokens), config.json with ids read from it,
/// Qwen2-VL's shipped generation_config.json values (do_sample true, top_k 1, top_p 0.001, repetition_penalty 1.05),
/// seeded random weights of every part (LM 2x64, ViT 1x32, Infinity 2x128, BSQ-VAE base 32, pn tiny5 = 128x128), and
/// here a preprocessor_config.json max_pixels of 112x112.
/// </summary>
internal static class TinyCheckpoint
{
    public const int MaxPixels = 112 * 112;
    static readonly Lazy<string> _dir = new(Create, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The shared folder (created on first use, deleted at process exit). Treat it as read-only.</summary>
    public static string Dir => _dir.Value;

    static string Create()
    {
        TorchTestSetup.Init();
        var dir = TestPaths.ProcessTemp("chat-tiny");
        Write(dir, seed: 1234);
        return dir;
    }

    /// <summary>`vargpt init --preset tiny` (RandomCheckpoint) with a smaller max_pixels so resizing is cheap to test.</summary>
    public static void Write(string dir, long seed)
    {
        RandomCheckpoint.Create(ModelPresets.Tiny, dir, new RandomCheckpointOptions { DefaultTokenizer = BpeTrainer.WriteShapesWorldTokenizer, Seed = seed, Force = true });
        var pre = Path.Combine(dir, PreprocessorConfig.FileName);
        var json = JsonNode.Parse(File.ReadAllText(pre))!.AsObject();
        json["max_pixels"] = MaxPixels;
        File.WriteAllText(pre, json.ToJsonString());
    }

    static readonly Lazy<VargptModel> _chat = new(() => VargptModel.Load(Dir), LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>One loaded chat over <see cref="Dir"/> for tests that only read the model.</summary>
    public static VargptModel Chat => _chat.Value;
}
