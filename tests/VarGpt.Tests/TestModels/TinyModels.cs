using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Configuration;
using VarGpt.Model;
using VarGpt.Presets;
using VarGpt.ShapesWorld;
using VarGpt.Text;
using static TorchSharp.torch;

namespace VarGpt.Tests.TestModels;

/// <summary>
/// A tiny random VARGPT model folder in the official layout, as a spec: the tokenizer, the sizes (a
/// <see cref="VargptConfig"/> whose ids are read from that tokenizer), the other descriptive files, and how the weights
/// are drawn. <see cref="TinyModels"/> writes every one of them the same way.
/// </summary>
public sealed record TinyModel
{
    /// <summary>Folder name and cache key: one folder per name and test process.</summary>
    public required string Name { get; init; }
    /// <summary>Writes the tokenizer files into the folder.</summary>
    public required Action<string> Tokenizer { get; init; }
    /// <summary>The config, given the folder and its tokenizer (ids are never hard-coded).</summary>
    public required Func<string, QwenTokenizer, VargptConfig> Config { get; init; }
    /// <summary>Other files after config.json (generation_config.json, preprocessor_config.json, shapesworld.json, ...).</summary>
    public Action<string, VargptConfig>? Files { get; init; }
    public ModelParts Parts { get; init; } = ModelParts.All;
    /// <summary>Seed of the weights: torch's generator before the module is built, or the per-tensor streams of <see cref="RandomCheckpoint"/>.</summary>
    public int Seed { get; init; }
    /// <summary>Draw the weights as `vargpt init` does (N(0, 0.02) per tensor from the seed and its name) instead of the modules' own init.</summary>
    public bool InitLikeVargptInit { get; init; }
    public ScalarType StoredDType { get; init; } = ScalarType.Float32;
}

/// <summary>
/// The one builder of the tests' tiny models (<see cref="TinyModel"/> specs): config.json is the record serialized
/// (<see cref="ConfigJson"/>), the weights are saved under the official names. Folders are built once per test
/// process and shared; treat them as read-only (copy one to change it).
/// </summary>
public static class TinyModels
{
    static readonly Dictionary<string, string> Built = [];
    static readonly Lock Gate = new();

    /// <summary>The folder of <paramref name="spec"/> (built on first use).</summary>
    public static string Folder(TinyModel spec)
    {
        lock (Gate)
        {
            if (Built.TryGetValue(spec.Name, out var dir)) return dir;
            TorchTestSetup.Init();
            dir = TestPaths.ProcessTemp(spec.Name);
            Write(spec, dir);
            Built[spec.Name] = dir;
            return dir;
        }
    }

    /// <summary>Writes <paramref name="spec"/> into <paramref name="dir"/>.</summary>
    public static VargptConfig Write(TinyModel spec, string dir)
    {
        Directory.CreateDirectory(dir);
        spec.Tokenizer(dir);
        var cfg = spec.Config(dir, QwenTokenizer.FromDirectory(dir));
        File.WriteAllText(Path.Combine(dir, "config.json"), ConfigJson.Serialize(cfg));
        spec.Files?.Invoke(dir, cfg);
        if (spec.InitLikeVargptInit)
            RandomCheckpoint.WriteWeights(dir, ModelArchitecture.Enumerate(cfg, spec.StoredDType), spec.Seed);
        else
        {
            using var model = Module(cfg, spec.Seed, spec.Parts);
            StateDict.Save(model, Path.Combine(dir, CheckpointReader.SingleFileName), spec.StoredDType);
        }
        return cfg;
    }

    /// <summary>A float32 CPU model of <paramref name="cfg"/> with torch's generator seeded first (the in-process form of a spec).</summary>
    public static VargptForConditionalGeneration Module(VargptConfig cfg, int seed, ModelParts parts = ModelParts.All)
    {
        manual_seed(seed);
        return new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32, parts);
    }

    // ---------------------------------------------------------------------------------------------- tokenizers

    /// <summary>The ShapesWorld BPE of `vargpt init --preset tiny` (4000 samples, 1024 tokens).</summary>
    public static void ShapesWorldTokenizer(string dir) => BpeTrainer.WriteShapesWorldTokenizer(dir);

    /// <summary>A smaller ShapesWorld BPE (300 samples, 400 tokens) of the world with <paramref name="worldSeed"/>.</summary>
    public static Action<string> SmallShapesWorldTokenizer(int worldSeed = 0) => dir =>
        BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(new ShapesWorldOptions { Seed = worldSeed }), samples: 300, vocabSize: 400).Save(dir);

    // ---------------------------------------------------------------------------------------------- the models

    /// <summary>
    /// `vargpt init --preset tiny` (LM 2x64, ViT 1x32, Infinity 2x128, BSQ-VAE base 32, pn tiny5 = 128x128; weights as
    /// init draws them, seed 1234), Qwen2-VL's shipped generation_config.json values (do_sample true, top_k 1, top_p
    /// 0.001, repetition_penalty 1.05), and a processor max_pixels of 112x112 so resizing is cheap to test.
    /// </summary>
    public static readonly TinyModel Chat = new()
    {
        Name = "chat-tiny",
        Tokenizer = ShapesWorldTokenizer,
        Config = (dir, tok) => PresetConfig(ModelPresets.Tiny, dir, tok),
        Files = (dir, cfg) =>
        {
            var ids = TokenizerIds.From(QwenTokenizer.FromDirectory(dir), dir);
            File.WriteAllText(Path.Combine(dir, GenerationConfig.FileName), ModelPreset.GenerationConfigJson(ids).ToJsonString());
            var pre = ModelPresets.Tiny.PreprocessorConfigJson();
            pre["max_pixels"] = ChatMaxPixels;
            File.WriteAllText(Path.Combine(dir, PreprocessorConfig.FileName), pre.ToJsonString());
        },
        Seed = 1234,
        InitLikeVargptInit = true,
    };

    public const int ChatMaxPixels = 112 * 112;

    /// <summary>A preset's config.json for a tokenizer, as `vargpt init` writes it.</summary>
    static VargptConfig PresetConfig(ModelPreset preset, string dir, QwenTokenizer tok)
    {
        var json = preset.ConfigJson(TokenizerIds.From(tok, dir), dir, preset.DefaultDType);
        using var doc = System.Text.Json.JsonDocument.Parse(json.ToJsonString());
        return VargptConfig.Parse(doc.RootElement, $"preset {preset.Name}");
    }

    /// <summary>
    /// LM 32x2, ViT 1x16, Infinity 128x2 with <paramref name="textMaxLen"/> cfg_uncond rows, VAE base 24 / codebook 8,
    /// pn 0.06M (256x256, 7 scales); seed 1234; without <paramref name="withGeneration"/> an understanding-only
    /// checkpoint. A random LM never emits &lt;|image_gen_start|&gt; by itself, so image tests force the start.
    /// </summary>
    public static TinyModel Images(int textMaxLen = 512, bool withGeneration = true) => new()
    {
        Name = $"tiny-image-t{textMaxLen}{(withGeneration ? "" : "-understanding")}",
        Tokenizer = SmallShapesWorldTokenizer(),
        Config = (_, tok) => Sized(tok, hidden: 32, intermediate: 64, layers: 2, heads: 2, kvHeads: 1, mrope: [2, 3, 3], vision: new VisionConfig
        {
            Depth = 1, EmbedDim = 16, MlpRatio = 2, NumHeads = 1, HiddenSize = 32,
        }) with
        {
            VocabSize = tok.VocabularySize,
            Infinity = new InfinityConfig { Depth = 2, EmbedDim = 128, NumHeads = 4, MlpRatio = 1, BlockChunks = 2, TextChannels = 128, TextMaxLen = textMaxLen, CodebookDim = 8 },
            Vae = new VaeConfig { BaseCh = 24, CodebookDim = 8, EncoderChMult = [1, 1, 1, 1, 1], DecoderChMult = [1, 1, 1, 1, 1], NumResBlocks = 1 },
            Pn = "0.06M", TorchDtype = "float32",
        },
        Parts = withGeneration ? ModelParts.All : ModelParts.Understanding,
        Seed = 1234,
    };

    /// <summary>The sizes of a config with every id read from <paramref name="tok"/> (Qwen2-VL + VARGPT special tokens).</summary>
    public static VargptConfig Sized(QwenTokenizer tok, int hidden, int intermediate, int layers, int heads, int kvHeads, int[] mrope, VisionConfig vision)
    {
        int Id(string t) => tok.TokenToId(t);
        return new VargptConfig
        {
            VocabSize = tok.VocabularySize, HiddenSize = hidden, IntermediateSize = intermediate, NumHiddenLayers = layers,
            NumAttentionHeads = heads, NumKeyValueHeads = kvHeads, MropeSection = mrope, RmsNormEps = 1e-6, RopeTheta = 1e6,
            BosTokenId = Id(SpecialTokens.EndOfText), EosTokenIds = [Id(SpecialTokens.ImEnd)], PadTokenId = Id(SpecialTokens.EndOfText),
            VisionStartTokenId = Id(SpecialTokens.VisionStart), VisionEndTokenId = Id(SpecialTokens.VisionEnd),
            VisionTokenId = Id("<|vision_pad|>"), ImageTokenId = Id(SpecialTokens.ImagePad), VideoTokenId = Id(SpecialTokens.VideoPad),
            ImageGen = new ImageGenTokens(Id(SpecialTokens.ImageGenStart), Id(SpecialTokens.ImageGenEnd), Id(SpecialTokens.ImageGenPad)),
            Vision = vision,
        };
    }
}
