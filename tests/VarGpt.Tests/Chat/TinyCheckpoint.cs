using System.Text.Json.Nodes;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Text;
using static TorchSharp.torch;

namespace VarGpt.Tests.Chat;

/// <summary>
/// A complete tiny checkpoint folder in the official layout, written once per test process: the ShapesWorld BPE
/// tokenizer (with the Qwen2-VL + VARGPT special tokens), config.json with ids read from it, Qwen2-VL's shipped
/// generation_config.json values (greedy file settings do_sample/top_k 1/top_p 0.001, repetition_penalty 1.05),
/// a preprocessor_config.json with a small max_pixels (112x112) so resizing is cheap to test, and seeded random weights
/// of every part (LM 2x64, ViT 1x32, Infinity 2x128, BSQ-VAE base 32, pn tiny5 = 128x128).
/// Sizes follow the `vargpt init --preset tiny` shapes so the helper can switch to that code once it is on main.
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
        var dir = Path.Combine(Path.GetTempPath(), "vargpt-chat-tiny-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        Write(dir, seed: 1234);
        return dir;
    }

    public static void Write(string dir, long seed)
    {
        BpeTrainer.TrainShapesWorld(samples: 400, vocabSize: 400).Save(dir);
        var tok = QwenTokenizer.FromDirectory(dir);
        int Id(string t) => tok.TokenToId(t);
        int vocab = Math.Max(tok.VocabularySize, ByteLevelBpeTokenizer.SpecialTokens.Max(Id) + 1);
        var special = new JsonObject
        {
            ["image_gen_start"] = SpecialTokens.ImageGenStart, ["image_gen_start_token_id"] = Id(SpecialTokens.ImageGenStart),
            ["image_gen_end"] = SpecialTokens.ImageGenEnd, ["image_gen_end_token_id"] = Id(SpecialTokens.ImageGenEnd),
            ["image_gen_pad"] = SpecialTokens.ImageGenPad, ["image_gen_pad_token_id"] = Id(SpecialTokens.ImageGenPad),
        };
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("VARGPTQwen2VLForConditionalGeneration"),
            ["model_type"] = "vargpt_qwen2_vl",
            ["vocab_size"] = vocab, ["hidden_size"] = 64, ["intermediate_size"] = 128, ["num_hidden_layers"] = 2,
            ["num_attention_heads"] = 4, ["num_key_value_heads"] = 2, ["hidden_act"] = "silu", ["max_position_embeddings"] = 32768,
            ["rms_norm_eps"] = 1e-6, ["rope_theta"] = 1000000.0, ["tie_word_embeddings"] = false, ["torch_dtype"] = "float32",
            ["rope_scaling"] = new JsonObject { ["type"] = "default", ["rope_type"] = "default", ["mrope_section"] = new JsonArray(2, 3, 3) },
            ["bos_token_id"] = Id(SpecialTokens.EndOfText), ["eos_token_id"] = Id(SpecialTokens.ImEnd), ["pad_token_id"] = Id(SpecialTokens.EndOfText),
            ["vision_start_token_id"] = Id(SpecialTokens.VisionStart), ["vision_end_token_id"] = Id(SpecialTokens.VisionEnd),
            ["vision_token_id"] = Id("<|vision_pad|>"), ["image_token_id"] = Id(SpecialTokens.ImagePad), ["video_token_id"] = Id(SpecialTokens.VideoPad),
            ["vision_config"] = new JsonObject
            {
                ["depth"] = 1, ["embed_dim"] = 32, ["num_heads"] = 2, ["mlp_ratio"] = 4, ["hidden_size"] = 64, ["in_channels"] = 3,
                ["patch_size"] = 14, ["spatial_merge_size"] = 2, ["temporal_patch_size"] = 2,
            },
            ["vargpt_gen_config"] = new InfinityConfig { Depth = 2, EmbedDim = 128, NumHeads = 4, MlpRatio = 4, BlockChunks = 2, TextChannels = 128, CodebookDim = 8 }.ToJson(),
            ["vae_config"] = new VaeConfig { BaseCh = 32, CodebookDim = 8, EncoderChMult = [1, 1, 1, 1, 1], DecoderChMult = [1, 1, 1, 1, 1], NumResBlocks = 1 }.ToJson(),
            ["vargpt_gen_args"] = new JsonObject { ["pn"] = Tiny5.Pn },
            ["special_tokens"] = special,
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var generation = new JsonObject
        {
            ["bos_token_id"] = Id(SpecialTokens.EndOfText), ["pad_token_id"] = Id(SpecialTokens.EndOfText),
            ["eos_token_id"] = new JsonArray(Id(SpecialTokens.ImEnd), Id(SpecialTokens.EndOfText)),
            ["do_sample"] = true, ["temperature"] = 0.1, ["top_k"] = 1, ["top_p"] = 0.001, ["repetition_penalty"] = 1.05,
            ["special_tokens"] = special.DeepClone(),
        };
        File.WriteAllText(Path.Combine(dir, GenerationConfig.FileName), generation.ToJsonString());
        File.WriteAllText(Path.Combine(dir, PreprocessorConfig.FileName), new JsonObject
        {
            ["min_pixels"] = 56 * 56, ["max_pixels"] = MaxPixels, ["patch_size"] = 14, ["temporal_patch_size"] = 2, ["merge_size"] = 2,
            ["image_mean"] = new JsonArray(0.48145466, 0.4578275, 0.40821073), ["image_std"] = new JsonArray(0.26862954, 0.26130258, 0.27577711),
        }.ToJsonString());

        RegisterTiny5();
        var cfg = VargptConfig.Load(dir);
        using var model = new VargptForConditionalGeneration(cfg, CPU, ScalarType.Float32);
        using (no_grad())
        using (var g = new TorchSharp.torch.Generator((ulong)seed))
            foreach (var (name, p) in model.named_parameters())
            {
                // norm scales/shifts and Infinity's attention scale keep their constructor values; everything else N(0, 0.02) like HF init
                if (p.dim() == 1 && name.Contains("norm", StringComparison.Ordinal) || name.EndsWith("scale_mul_1H11", StringComparison.Ordinal)) continue;
                nn.init.normal_(p, 0, name.Contains("embed", StringComparison.Ordinal) ? 1.0 : 0.02, g);
            }
        StateDict.Save(model, Path.Combine(dir, "model.safetensors"));
    }

    /// <summary>The fixtures' fx5 schedule under the init preset's name: 5 scales up to 8x8 latents = 128x128 pixels.</summary>
    static readonly ScaleSchedule Tiny5 = new(1.0, "tiny5", (128, 128), [new(1, 1, 1), new(2, 2, 2), new(3, 4, 4), new(4, 6, 6), new(5, 8, 8)]);

    public static void RegisterTiny5() => ScaleSchedules.Register(Tiny5.Template, Tiny5.Pn, Tiny5.Pixels, Tiny5.RawScales);

    static readonly Lazy<VargptChat> _chat = new(() => VargptChat.Load(Dir), LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>One loaded chat over <see cref="Dir"/> for tests that only read the model.</summary>
    public static VargptChat Chat { get { RegisterTiny5(); return _chat.Value; } }
}
