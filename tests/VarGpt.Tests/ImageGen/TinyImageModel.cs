using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.ImageGen;

/// <summary>
/// A tiny random VARGPT checkpoint folder in the official layout: a ShapesWorld BPE tokenizer (Qwen specials incl. the
/// three image-generation tokens), config.json with ids from that tokenizer and small "vargpt_gen_config"/"vae_config"
/// blocks, pn '0.06M' (256×256, 7 scales), and model.safetensors of a seeded random model. A random LM never emits
/// &lt;|image_gen_start|&gt; by itself, so tests force the image start.
/// </summary>
public static class TinyImageModel
{
    static readonly Lazy<ByteLevelBpeTokenizer> Tokenizer = new(() => BpeTrainer.TrainShapesWorld(new ShapesWorldGenerator(), samples: 300, vocabSize: 400));
    static readonly Dictionary<string, string> Built = [];
    static readonly Lock Gate = new();

    /// <summary>The folder of the tiny model with the given cfg_uncond rows (text_maxlen); built once per test run.</summary>
    public static string Folder(int textMaxLen = 512, bool withGeneration = true)
    {
        string key = $"t{textMaxLen}{(withGeneration ? "" : "-understanding")}";
        lock (Gate)
        {
            if (Built.TryGetValue(key, out var dir)) return dir;
            dir = TestPaths.ProcessTemp("tiny-image-" + key);
            Build(dir, textMaxLen, withGeneration);
            Built[key] = dir;
            return dir;
        }
    }

    static void Build(string dir, int textMaxLen, bool withGeneration)
    {
        TorchTestSetup.Init();
        var tok = Tokenizer.Value;
        tok.Save(dir);
        int Id(string t) => tok.SpecialTokenIds[t];
        var config = new JsonObject
        {
            ["model_type"] = "vargpt_qwen2_vl",
            ["vocab_size"] = tok.VocabSize,
            ["hidden_size"] = 32, ["intermediate_size"] = 64, ["num_hidden_layers"] = 2,
            ["num_attention_heads"] = 2, ["num_key_value_heads"] = 1, ["max_position_embeddings"] = 32768,
            ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 1e6, ["hidden_act"] = "silu", ["tie_word_embeddings"] = false,
            ["rope_scaling"] = new JsonObject { ["type"] = "default", ["rope_type"] = "default", ["mrope_section"] = new JsonArray(2, 3, 3) },
            ["bos_token_id"] = Id("<|endoftext|>"), ["eos_token_id"] = Id("<|im_end|>"), ["pad_token_id"] = Id("<|endoftext|>"),
            ["vision_start_token_id"] = Id("<|vision_start|>"), ["vision_end_token_id"] = Id("<|vision_end|>"),
            ["vision_token_id"] = Id("<|vision_pad|>"), ["image_token_id"] = Id("<|image_pad|>"), ["video_token_id"] = Id("<|video_pad|>"),
            ["vision_config"] = new JsonObject
            {
                ["depth"] = 1, ["embed_dim"] = 16, ["mlp_ratio"] = 2, ["num_heads"] = 1, ["in_chans"] = 3, ["hidden_size"] = 32,
                ["patch_size"] = 14, ["spatial_merge_size"] = 2, ["spatial_patch_size"] = 14, ["temporal_patch_size"] = 2,
            },
            ["special_tokens"] = new JsonObject
            {
                ["image_gen_start"] = "<|image_gen_start|>", ["image_gen_start_token_id"] = Id("<|image_gen_start|>"),
                ["image_gen_end"] = "<|image_gen_end|>", ["image_gen_end_token_id"] = Id("<|image_gen_end|>"),
                ["image_gen_pad"] = "<|image_gen_pad|>", ["image_gen_pad_token_id"] = Id("<|image_gen_pad|>"),
            },
            ["vargpt_gen_config"] = new InfinityConfig
            {
                Depth = 2, EmbedDim = 128, NumHeads = 4, MlpRatio = 1, BlockChunks = 2, TextChannels = 128, TextMaxLen = textMaxLen, CodebookDim = 8,
            }.ToJson(),
            ["vae_config"] = new VaeConfig { BaseCh = 24, CodebookDim = 8, EncoderChMult = [1, 1, 1, 1, 1], DecoderChMult = [1, 1, 1, 1, 1], NumResBlocks = 1 }.ToJson(),
            ["vargpt_gen_args"] = new JsonObject { ["pn"] = "0.06M" },
            ["torch_dtype"] = "float32",
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        var cfg = VargptConfig.Load(dir);
        manual_seed(1234);
        using var model = new VargptForConditionalGeneration(cfg, parts: withGeneration ? ModelParts.All : ModelParts.Understanding);
        StateDict.Save(model, Path.Combine(dir, "model.safetensors"));
    }
}
