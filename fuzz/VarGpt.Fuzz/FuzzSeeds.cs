using System.Text;
using SkiaSharp;
using VarGpt.Inference;

namespace VarGpt.Fuzz;

/// <summary>
/// The seed corpus of each target, made from the real files: the shipped model's configs and tokenizer, the official
/// demo dataset and golden-fixture checkpoints in ../shared (when present; they are not the project's to commit), and
/// small hand-made inputs for the layouts no real file shows (a sharded index, ranking data, every image format, each
/// API's request shapes). fuzz/run.sh writes them with <c>VarGpt.Fuzz --seeds DIR</c>; the replay test feeds them
/// in-process. Extra seeds (e.g. afl queue entries worth keeping) go to fuzz/corpus/TARGET.
/// </summary>
public static class FuzzSeeds
{
    /// <summary>
    /// The keys, values and comments of the official stage-3 SFT yaml (examples/train_vargpt_qwen2vl_1_1/
    /// vargpt_pretraining_7b_v1_1_stage_sft.yaml): a yaml seed in the official layout, and the training-config test's
    /// stand-in when the official checkout is absent.
    /// </summary>
    public const string OfficialSftYaml = """
        ### model
        model_name_or_path: VARGPT-family/VARGPT-v1.1
        ### method
        stage: sft
        do_train: true
        finetuning_type: full
        deepspeed: examples/deepspeed/ds_z3_config.json
        vargpt_version: "qwen2vl-v1.1"
        vargpt_train_stage: 3 # for check code logit
        ### dataset
        dataset:  train_vargpt_v1_1_demo
        template: vargpt_qwen2_vl
        cutoff_len: 8192
        max_samples: 1000000000
        overwrite_cache: true
        preprocessing_num_workers: 16 # 8
        ### output
        output_dir: saves/vargpt_qwen2vl-7b-v1-1/full/stagex-pt-5e-5
        logging_steps: 10
        save_steps: 1000
        plot_loss: true
        overwrite_output_dir: true
        ### train
        per_device_train_batch_size: 1 # 32
        gradient_accumulation_steps: 2
        learning_rate: 5.0e-5
        num_train_epochs: 6.0 # 3
        lr_scheduler_type: cosine
        warmup_ratio: 0.1
        bf16: true
        fp16: false
        ddp_timeout: 180000000
        """;

    static byte[] U(string s) => Encoding.UTF8.GetBytes(s);
    static readonly byte[] Nul = [0];
    static byte[] Join(params byte[][] parts) => parts.Aggregate((a, b) => [.. a, .. Nul, .. b]);

    /// <summary>The repository root (the folder with VarGpt.sln above the running assembly), or null.</summary>
    public static string? RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "VarGpt.sln"))) return d.FullName;
        return Environment.GetEnvironmentVariable("VARGPT_REPO") is { Length: > 0 } r ? r : null;
    }

    /// <summary>../shared beside the repository (VARGPT_SHARED overrides), or null when absent.</summary>
    public static string? Shared()
    {
        var s = Environment.GetEnvironmentVariable("VARGPT_SHARED") is { Length: > 0 } env ? env
            : RepoRoot() is { } root ? Path.Combine(root, "..", "shared") : null;
        return s != null && Directory.Exists(s) ? Path.GetFullPath(s) : null;
    }

    /// <summary>The seeds of <paramref name="target"/> by file name.</summary>
    public static IReadOnlyDictionary<string, byte[]> For(string target)
    {
        var seeds = new SortedDictionary<string, byte[]>(StringComparer.Ordinal);
        var model = ShippedModel.Resolve();
        byte[] M(string f) => File.ReadAllBytes(Path.Combine(model, f));
        var shared = Shared();
        void FromShared(string name, string relative, Func<byte[], byte[]>? wrap = null)
        {
            if (shared is null) return;
            var path = Path.Combine(shared, relative);
            if (File.Exists(path) && new FileInfo(path).Length <= 256 << 10) seeds[name] = (wrap ?? (b => b))(File.ReadAllBytes(path));
        }
        switch (target)
        {
            case "safetensors":
                seeds["f32-i64.safetensors"] = FuzzTargets.SafeTensorsBytes(("w", "F32", [2, 3], 24), ("ids", "I64", [2], 16));
                seeds["bf16-f16-u8-bool-empty.safetensors"] = FuzzTargets.SafeTensorsBytes(("x", "BF16", [4], 8), ("h", "F16", [1, 2], 4), ("m", "U8", [3], 3), ("b", "BOOL", [2], 2), ("e", "F32", [0, 5], 0));
                seeds["scalar-f64.safetensors"] = FuzzTargets.SafeTensorsBytes(("s", "F64", [], 8));
                seeds["index.json"] = U("""{"metadata": {"total_size": 22}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}}""");
                foreach (var kind in new[] { "qwen2_lm_decode", "rope_index", "scale_schedule", "vlm_generate" })
                    FromShared($"golden-{kind}.safetensors", Path.Combine("golden", kind, "io.safetensors"));
                seeds["adapter_model.safetensors"] = File.ReadAllBytes(Path.Combine(model, "adapter", "adapter_model.safetensors")) is { Length: <= 256 << 10 } a ? a : [];
                if (seeds["adapter_model.safetensors"].Length == 0) seeds.Remove("adapter_model.safetensors");
                break;
            case "config":
                seeds["shapesworld.cfg"] = Join(M("config.json"), M("generation_config.json"), M("preprocessor_config.json"));
                seeds["shapesworld-config.json"] = M("config.json");
                seeds["qwen2vl-preprocessor.json"] = U("""{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}""");
                seeds["size-spelling.json"] = U("""{"size": {"shortest_edge": 3136, "longest_edge": 12845056}, "resample": 3}""");
                seeds["generation-eos-list.json"] = U("""{"bos_token_id": 151643, "do_sample": true, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "repetition_penalty": 1.05, "temperature": 0.1, "top_k": 1, "top_p": 0.001, "max_new_tokens": 512}""");
                break;
            case "tokenizer":
                seeds["shapesworld.tok"] = Join(M("tokenizer.json"), M("tokenizer_config.json"), M("special_tokens_map.json"));
                seeds["shapesworld-tokenizer.json"] = M("tokenizer.json");
                seeds["shapesworld-vocab-merges.tok"] = Join([], M("vocab.json"), M("merges.txt"), M("added_tokens.json"));
                seeds["tiny.tok"] = U("""{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": ["a b"]}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}, "decoder": {"type": "ByteLevel"}, "normalizer": {"type": "NFC"}, "added_tokens": [{"id": 4, "content": "<|im_end|>", "special": true, "lstrip": true}]}""");
                break;
            case "dataset":
                seeds["sft-text-understanding.json"] = U("""
                    [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
                     {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>What shape?"}, {"role": "assistant", "content": "A circle."}], "images": ["img/1.png"]},
                     {"messages": [{"role": "user", "content": "Draw a red square."}, {"role": "assistant", "content": "<image_gen>"}], "images": ["img/1.png"]},
                     {"messages": [{"role": "user", "content": "<image>Make it blue."}, {"role": "assistant", "content": "Done <image_gen>"}], "images": ["img/1.png", "img/1.png"]}]
                    """);
                seeds["sft.jsonl"] = U("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}, {\"role\": \"user\", \"content\": \"c\"}, {\"role\": \"assistant\", \"content\": \"d\"}]}\n{\"messages\": []}\n");
                seeds["dpo.json"] = U("""[{"conversations": [{"from": "human", "value": "Draw a circle."}], "chosen": {"from": "gpt", "value": "<image_gen>"}, "rejected": {"from": "gpt", "value": "<image_gen>"}, "images": ["img/1.png", "img/1.png"]}]""");
                seeds["info-and-records.ds"] = Join(U("""{"mine": {"file_name": "data.json", "formatting": "sharegpt", "num_samples": 3, "columns": {"messages": "messages", "images": "images", "system": "system"}, "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}}}"""),
                    U("""[{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "system": "s"}]"""));
                foreach (var f in new[] { "dpo.jsonl", "sft.jsonl", "understanding.jsonl" })
                    if (File.Exists(Path.Combine(model, "training", f)) && new FileInfo(Path.Combine(model, "training", f)).Length <= 64 << 10)
                        seeds[$"shapesworld-{f}"] = M(Path.Combine("training", f));
                if (shared != null)
                {
                    var demo = Path.Combine(shared, "data", "vargpt-official-demo");
                    foreach (var f in new[] { "train_vargpt_v1_1_demo.json", "eval_inference_demo.json", "eval_inference_demo_edit.json" })
                        if (File.Exists(Path.Combine(demo, f)))
                            seeds[$"official-demo-{f}.ds"] = Join(File.ReadAllBytes(Path.Combine(demo, "dataset_info.json")), File.ReadAllBytes(Path.Combine(demo, f)));
                }
                break;
            case "yaml":
                seeds["sft-full.yaml"] = U(OfficialSftYaml);
                seeds["dpo-lora.yaml"] = U("""
                    model_name_or_path: models/shapesworld
                    stage: dpo
                    finetuning_type: lora
                    lora_rank: 8
                    lora_dropout: 0.05
                    pref_beta: 0.1
                    pref_loss: sigmoid
                    dataset: [shapes_dpo, other]
                    dataset_dir: data
                    image_dir: data/images
                    output_dir: runs/dpo
                    max_steps: 20
                    save_steps: 10
                    save_total_limit: 2
                    vargpt_freeze: [vision, lm]
                    """);
                seeds["flow.yaml"] = U("{model_name_or_path: m, output_dir: o, dataset: 'a, b', learning_rate: 1e-4, num_train_epochs: 1}\n");
                break;
            case "image":
                foreach (var (name, bytes) in Images()) seeds[name] = bytes;
                FromShared("demo-1.jpg", Path.Combine("data", "vargpt-official-demo", "vargpt_demo", "1.jpg"));
                break;
            case "server-chat":
                var png = Convert.ToBase64String(Images()["rgba-40x30.png"]);
                seeds["text.json"] = U("""{"model": "shapesworld", "messages": [{"role": "user", "content": "Draw a red circle."}], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n", "."]}""");
                seeds["image-parts.json"] = U($$$"""{"model": "shapesworld", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "What shape?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,{{{png}}}"}}]}, {"role": "assistant", "content": "A circle."}, {"role": "user", "content": "Color?"}], "stream": true, "stream_options": {"include_usage": true}, "max_completion_tokens": 4}""");
                seeds["extensions.json"] = U("""{"model": "shapesworld", "messages": [{"role": "user", "content": "Draw."}], "generate_images": true, "image_seed": 1, "cfg": 3, "tau": 0.5, "image_top_k": 900, "image_top_p": 0.97, "top_k": 5, "repetition_penalty": 1.1, "ignore_eos": false, "n": 1, "response_format": {"type": "text"}}""");
                break;
            case "server-images":
                seeds["generation.json"] = U("""{"model": "shapesworld", "prompt": "a red circle", "n": 2, "size": "128x128", "response_format": "b64_json", "output_format": "png", "seed": 7, "cfg": 3, "tau": 0.5, "top_k": 900, "top_p": 0.97, "stream": true, "partial_images": 2, "force_image_start": true}""");
                seeds["generation-auto.json"] = U("""{"prompt": "x", "size": "auto"}""");
                seeds["edit.multipart"] = Multipart(("prompt", null, U("Make the circle blue.")), ("n", null, U("1")), ("seed", null, U("5")), ("stream", null, U("false")),
                    ("edit_max_pixels", null, U("4096")), ("image", "in.png", Images()["rgba-40x30.png"]));
                seeds["edit-array.multipart"] = Multipart(("image[]", "a.jpg", Images()["rgb-33x17.jpg"]), ("prompt", null, U("Edit.")), ("size", null, U("128x128")));
                break;
            default: throw new ArgumentException($"no seeds for target '{target}'");
        }
        return seeds;
    }

    /// <summary>Writes every target's seeds (plus fuzz/corpus/TARGET, when present) to DIR/TARGET/.</summary>
    public static void WriteAll(string dir, string? corpusDir)
    {
        foreach (var t in FuzzTargets.All)
        {
            var d = Path.Combine(dir, t.Name);
            Directory.CreateDirectory(d);
            foreach (var (name, bytes) in For(t.Name)) File.WriteAllBytes(Path.Combine(d, name), bytes);
            if (corpusDir != null && Directory.Exists(Path.Combine(corpusDir, t.Name)))
                foreach (var f in Directory.EnumerateFiles(Path.Combine(corpusDir, t.Name)))
                    File.Copy(f, Path.Combine(d, "corpus-" + Path.GetFileName(f)), overwrite: true);
        }
    }

    /// <summary>A multipart/form-data body with the boundary the server-images target sets.</summary>
    public static byte[] Multipart(params (string Name, string? File, byte[] Data)[] parts)
    {
        var ms = new MemoryStream();
        void W(string s) => ms.Write(Encoding.UTF8.GetBytes(s));
        foreach (var (name, file, data) in parts)
        {
            W("--fuzzboundary\r\n");
            W(file is null ? $"Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                : $"Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: {(file.EndsWith(".png") ? "image/png" : "image/jpeg")}\r\n\r\n");
            ms.Write(data);
            W("\r\n");
        }
        W("--fuzzboundary--\r\n");
        return ms.ToArray();
    }

    /// <summary>Small images in every format the decoder takes, encoded by SkiaSharp (BMP and GIF by hand: Skia only decodes them).</summary>
    static Dictionary<string, byte[]> Images()
    {
        var images = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        byte[] Encode(int w, int h, SKColorType type, SKAlphaType alpha, SKEncodedImageFormat format, int quality)
        {
            using var bmp = new SKBitmap(new SKImageInfo(w, h, type, alpha));
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    bmp.SetPixel(x, y, new SKColor((byte)(x * 255 / w), (byte)(y * 255 / h), (byte)((x + y) % 256), (byte)(x % 3 == 0 ? 128 : 255)));
            using var img = SKImage.FromBitmap(bmp);
            using var data = img.Encode(format, quality) ?? throw new InvalidOperationException($"SkiaSharp cannot encode {type} as {format}");
            return data.ToArray();
        }
        images["rgba-40x30.png"] = Encode(40, 30, SKColorType.Rgba8888, SKAlphaType.Unpremul, SKEncodedImageFormat.Png, 100);
        images["opaque-29x31.png"] = Encode(29, 31, SKColorType.Rgba8888, SKAlphaType.Opaque, SKEncodedImageFormat.Png, 100);
        images["rgb-33x17.jpg"] = Encode(33, 17, SKColorType.Rgba8888, SKAlphaType.Opaque, SKEncodedImageFormat.Jpeg, 80);
        images["rgba-30x30.webp"] = Encode(30, 30, SKColorType.Rgba8888, SKAlphaType.Unpremul, SKEncodedImageFormat.Webp, 100);
        images["rgb-30x29.webp"] = Encode(30, 29, SKColorType.Rgba8888, SKAlphaType.Opaque, SKEncodedImageFormat.Webp, 70);
        // 2x2 24-bit BMP (rows bottom-up, padded to 4 bytes)
        images["2x2.bmp"] = [0x42, 0x4D, 70, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 16, 0, 0, 0,
            0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 255, 0, 255, 0, 0, 0];
        // 1x1 GIF89a with a transparent palette entry
        images["1x1-transparent.gif"] = [0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 1, 0, 1, 0, 0x80, 0, 0, 255, 0, 0, 0, 0, 255, 0x21, 0xF9, 4, 1, 0, 0, 0, 0,
            0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 1, 0, 0x3B];
        // a PNG header claiming 23000x23000 (issue 18 finding 6): must be refused from the header, before any pixel memory
        var big = (byte[])images["opaque-29x31.png"].Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(big.AsSpan(16), 23000);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(big.AsSpan(20), 23000);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(big.AsSpan(29), Crc32(big.AsSpan(12, 17)));
        images["claims-23000x23000.png"] = big;
        return images;
    }

    /// <summary>The PNG chunk CRC (CRC-32, polynomial 0xEDB88320) of a chunk's type and data.</summary>
    static uint Crc32(ReadOnlySpan<byte> bytes)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in bytes)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }
}
