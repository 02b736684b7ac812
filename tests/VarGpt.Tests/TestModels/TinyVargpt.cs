using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Text;
using VarGpt.Training;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.TestModels;

/// <summary>
/// A random tiny VARGPT for training tests: a byte-level BPE tokenizer trained on the test chats (Qwen layout and
/// special tokens), LM hidden 32 × 2 layers, a one-block vision tower, Infinity 128 wide × 2 blocks, a tiny VAE, and a
/// 3-scale schedule "t64" (1, 2×2, 4×4 → 64×64 pixels, 21 VAR tokens, padded to 24 with pad_to_multiplier 8).
/// </summary>
public static class TinyVargpt
{
    public const string Pn = "t64";
    public const int Side = 64;

    public static ScaleSchedule Schedule { get; } = new(1.0, Pn, (Side, Side), [new Scale(1, 1, 1), new Scale(1, 2, 2), new Scale(1, 4, 4)]);

    static readonly string[] Corpus =
    [
        "draw a red square", "Here is a red square.", "draw a blue circle", "Here is a blue circle.",
        "what colour is this?", "It is green.", "make it yellow", "The output image is: ", "describe it", "A plain grey picture.",
        "paint a sunset", "Here is a sunset.",
    ];

    static readonly Lazy<(string Dir, QwenTokenizer Tok)> _tok = new(() =>
    {
        var texts = Corpus.SelectMany(t => Enumerable.Repeat(BpeTrainer.ChatText(t, t), 3)).ToList();
        var bpe = BpeTrainer.Train(texts, vocabSize: 400, specialTokens: ByteLevelBpeTokenizer.SpecialTokens);
        var dir = TestPaths.ProcessTemp("tiny-tokenizer");
        bpe.Save(dir);
        return (dir, QwenTokenizer.FromDirectory(dir));
    });

    public static QwenTokenizer Tokenizer => _tok.Value.Tok;
    public static string TokenizerDir => _tok.Value.Dir;

    /// <summary>Tiny config; randomisations (bit-flip noise is separate) set by <paramref name="noisy"/>: cond dropout 0.1 and drop-path 0.1, or both 0.</summary>
    public static VargptConfig Config(bool noisy = false) =>
        TinyModels.Sized(Tokenizer, hidden: 32, intermediate: 64, layers: 2, heads: 2, kvHeads: 1, mrope: [2, 3, 3],
            vision: new VisionConfig { Depth = 1, EmbedDim = 16, NumHeads = 1, MlpRatio = 2, HiddenSize = 32 }) with
        {
            Infinity = new InfinityConfig
            {
                Depth = 2, EmbedDim = 128, NumHeads = 4, MlpRatio = 1, BlockChunks = 2, TextChannels = 128, TextMaxLen = 512,
                CodebookDim = 8, PadToMultiplier = 8, DropPathRate = noisy ? 0.1 : 0, CondDropRate = noisy ? 0.1 : 0,
            },
            Vae = new VaeConfig { BaseCh = 24, CodebookDim = 8, EncoderChMult = [1, 1, 1, 1, 1], DecoderChMult = [1, 1, 1, 1, 1], NumResBlocks = 1, PatchSize = 16 },
            Pn = Pn, CustomPns = [Schedule], TorchDtype = "float32",
        };

    /// <summary>A model folder of the tiny config (its tokenizer, config.json, weights drawn with <paramref name="seed"/>), for `vargpt train`.</summary>
    public static TinyModel Folder(int seed) => new()
    {
        Name = $"tiny-vargpt-{seed}",
        Tokenizer = dir => { foreach (var f in Directory.GetFiles(TokenizerDir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)), overwrite: true); },
        Config = (_, _) => Config(),
        Seed = seed,
    };

    public static VargptForConditionalGeneration Model(VargptConfig cfg, int seed) => TinyModels.Module(cfg, seed);

    public static VargptCollator Collator(VargptConfig cfg, int cutoff = 1024, int seed = 1) =>
        new(Tokenizer, cfg, new VargptCollatorOptions { CutoffLen = cutoff, ImageGenResolution = Side, Seed = seed });

    /// <summary>A solid or two-colour test image (w×h) written as PNG.</summary>
    public static string WriteImage(string dir, string name, int w, int h, (byte R, byte G, byte B) a, (byte R, byte G, byte B)? b = null)
    {
        var img = new RgbImage(w, h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                var c = b is { } bb && x >= w / 2 ? bb : a;
                int i = (y * w + x) * 3;
                img.Data[i] = c.R; img.Data[i + 1] = c.G; img.Data[i + 2] = c.B;
            }
        var path = Path.Combine(dir, name);
        img.SavePng(path);
        return path;
    }

    /// <summary>Writes dataset_info.json with one sharegpt dataset "tiny" (ranking for DPO) and its records.</summary>
    public static void WriteDataset(string dir, JsonArray records, bool ranking = false)
    {
        var entry = new JsonObject
        {
            ["file_name"] = "tiny.json", ["formatting"] = "sharegpt",
            ["columns"] = ranking
                ? new JsonObject { ["messages"] = "messages", ["chosen"] = "chosen", ["rejected"] = "rejected", ["images"] = "images" }
                : new JsonObject { ["messages"] = "messages", ["images"] = "images" },
            ["tags"] = new JsonObject { ["role_tag"] = "role", ["content_tag"] = "content", ["user_tag"] = "user", ["assistant_tag"] = "assistant" },
        };
        if (ranking) entry["ranking"] = true;
        File.WriteAllText(Path.Combine(dir, "dataset_info.json"), new JsonObject { ["tiny"] = entry }.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tiny.json"), records.ToJsonString());
    }

    public static JsonObject Sft(string user, string assistant, params string[] images) => new()
    {
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = user }, new JsonObject { ["role"] = "assistant", ["content"] = assistant }),
        ["images"] = new JsonArray(images.Select(i => (JsonNode)i).ToArray()),
    };

    public static JsonObject Pair(string user, string chosen, string rejected, string chosenImage, string rejectedImage) => new()
    {
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = user }),
        ["chosen"] = new JsonObject { ["role"] = "assistant", ["content"] = chosen },
        ["rejected"] = new JsonObject { ["role"] = "assistant", ["content"] = rejected },
        ["images"] = new JsonArray(chosenImage, rejectedImage),
    };

    /// <summary>
    /// The training yaml of a tiny SFT run on <see cref="MixedRecords"/> (dataset "tiny", 64² targets, batch 2, cosine);
    /// paths are written as given. <paramref name="extra"/>: more yaml lines.
    /// </summary>
    public static string SftYaml(string model, string data, string output = "out", int steps = 3, int saveSteps = 2,
        string finetuningType = "full", string extra = "") => $"""
        model_name_or_path: {model}
        stage: sft
        finetuning_type: {finetuningType}
        vargpt_train_stage: 4
        dataset: tiny
        dataset_dir: {data}
        image_gen_resolution: 64
        per_device_train_batch_size: 2
        learning_rate: 1.0e-3
        max_steps: {steps}
        lr_scheduler_type: cosine
        warmup_ratio: 0.1
        logging_steps: 1
        save_steps: {saveSteps}
        output_dir: {output}
        {extra}
        """;

    /// <summary>The mixed 4-sample SFT set: generation, understanding, editing, text. Images: 64×64 targets, 56×56 inputs.</summary>
    public static IReadOnlyList<TrainingRecord> MixedRecords(string dir)
    {
        WriteImage(dir, "red.png", 80, 64, (220, 30, 30), (30, 30, 220));
        WriteImage(dir, "green.png", 56, 56, (30, 200, 40));
        WriteImage(dir, "yellow.png", 64, 64, (230, 220, 30), (20, 20, 20));
        WriteDataset(dir, new JsonArray(
            Sft("draw a red square", "Here is a red square.<image_gen>", "red.png"),
            Sft("<image>what colour is this?", "It is green.", "green.png"),
            Sft("<image>make it yellow", "The output image is: <image_gen>", "green.png", "yellow.png"),
            Sft("describe it", "A plain grey picture.")));
        return DatasetLoader.Load(["tiny"], new DatasetLoadOptions { DatasetDir = dir });
    }
}

/// <summary>Always the same collated batch (epoch 0, index 0): the overfitting tests need fixed crops.</summary>
public sealed class FixedBatch(VargptCollator collator, IReadOnlyList<EncodedItem> items) : ITrainingData<VargptBatch>
{
    public int BatchesPerEpoch => 1;
    public VargptBatch GetBatch(int epoch, int index) => collator.Collate(items, 0, 0);
}
