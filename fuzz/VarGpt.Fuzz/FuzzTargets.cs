using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using VarGpt.Checkpoint;
using VarGpt.Configuration;
using VarGpt.Inference;
using VarGpt.Server;
using VarGpt.Server.Backend;
using VarGpt.Server.Http;
using VarGpt.Text;
using VarGpt.Training;
using VarGpt.Training.Data;
using VarGpt.Vision;

namespace VarGpt.Fuzz;

/// <summary>
/// The fuzz targets: one per input format a user or a file can feed VarGpt.NET, each going through the product's own
/// reader exactly as the CLI, the trainer or the server calls it (files are written to a scratch folder where the reader
/// takes a path). Inputs holding several files separate them with NUL bytes (<see cref="FuzzInput.Split"/>); the seeds
/// made by <see cref="FuzzSeeds"/> show each layout. fuzz/README.md lists the targets; docs/reliability.md their runs and findings.
/// </summary>
public static class FuzzTargets
{
    public static IReadOnlyList<FuzzTarget> All { get; } =
    [
        new("safetensors", "model.safetensors header (length, JSON, dtypes, shapes, offsets, overlaps) and loading its small tensors; an input starting with '{' is model.safetensors.index.json beside two valid shards (weight_map, shard names, tensors per shard)", Safetensors),
        new("config", "config.json, generation_config.json, preprocessor_config.json (NUL-separated; one part = the same bytes for all three): the records, their derived sizes, the scale-schedule table, smart_resize of the processor settings", Config),
        new("tokenizer", "tokenizer.json + tokenizer_config.json + special_tokens_map.json (NUL-separated), or, when the input starts with NUL, vocab.json + merges.txt + added_tokens.json; then encoding and decoding a fixed text with special tokens", Tokenizer),
        new("dataset", "LLaMA-Factory dataset_info.json + its records file (NUL-separated; one part = the records with a fixed sharegpt dataset_info.json), loaded as SFT and as DPO data, then the records through the vargpt_qwen2_vl chat template and the shipped tokenizer", Dataset),
        new("yaml", "the training yaml (YamlDotNet onto TrainingConfig, unknown/ignored keys, enums, validation)", Yaml),
        new("image", "encoded image bytes through RgbImage.Decode (format sniffing, SkiaSharp header and pixel decode, size limits) and the processor's smart_resize + PIL resize", Image),
        new("server-chat", "POST /v1/chat/completions bodies: JSON parse, the OpenAI fields, messages with data-URI images (decoded within the server limits), then the chat template and the shipped tokenizer", ServerChat),
        new("server-images", "POST /v1/images/generations JSON bodies (input starting with '{') and /v1/images/edits multipart bodies (anything else; boundary 'fuzzboundary'): ASP.NET's form reader, the image file, the form fields", ServerImages),
    ];

    public static FuzzTarget Get(string name) => All.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException($"unknown fuzz target '{name}' (known: {string.Join(", ", All.Select(t => t.Name))})");

    /// <summary>
    /// The errors an input may end in: the library's input-error family (the CLI's exit 2), and for the server targets
    /// what the server answers with a 4xx (its exception mapping decides; a 5xx is a finding).
    /// </summary>
    public static bool IsInputError(Exception e) => e is VargptInputException || FuzzInput.IsClientError(e);

    // ------------------------------------------------------------------------------------------------ shipped model

    /// <summary>The shipped model's folder, config and tokenizer (a real small tokenizer; read once per process).</summary>
    static readonly Lazy<(string Dir, VargptConfig Config, QwenTokenizer Tokenizer)> Shipped = new(() =>
    {
        var dir = ShippedModel.Resolve();
        return (dir, VargptConfig.Load(dir), QwenTokenizer.FromDirectory(dir));
    });

    static readonly Lazy<ServedModel> Served = new(() =>
    {
        var (dir, config, _) = Shipped.Value;
        return new ServedModel("shapesworld", 0, dir, config.MaxPositionEmbeddings, ModelBackend.SizesOf(config), CanSee: true, CanDraw: true);
    });

    /// <summary>
    /// Smaller server limits than the defaults so that the fuzzer reaches them with small inputs. (Lazy like every use of
    /// product code here: instrumented code may run only inside SharpFuzz's fork server, not in a static initializer.)
    /// </summary>
    static readonly Lazy<ServerOptions> LimitsValue = new(() => new() { MaxImageBytes = 256 << 10, MaxImagePixels = 1024 * 1024, MaxMessages = 16, MaxImagesPerRequest = 4 });
    static ServerOptions Limits => LimitsValue.Value;

    /// <summary>Runs one step of a multi-step target; an input error ends that step only.</summary>
    static T? Step<T>(Func<T> step) where T : class
    {
        try { return step(); }
        catch (Exception e) when (IsInputError(e)) { return null; }
    }

    static void Check(bool ok, string what)
    {
        if (!ok) throw new FuzzInvariantException(what);
    }

    // ------------------------------------------------------------------------------------------------ safetensors

    static void Safetensors(byte[] input)
    {
        var dir = FuzzInput.WorkDir("safetensors");
        string single = Path.Combine(dir, CheckpointReader.SingleFileName), index = Path.Combine(dir, CheckpointReader.IndexFileName);
        if (FuzzInput.FirstNonSpace(input) == '{')
        {
            EnsureShards(dir);
            FuzzInput.Put(single, null);
            FuzzInput.Put(index, input);
        }
        else
        {
            FuzzInput.Put(index, null);
            FuzzInput.Put(single, input);
        }
        using var reader = CheckpointReader.Open(dir);
        foreach (var name in reader.Names.Take(64).ToList())
        {
            var info = reader.Tensors[name];
            Check(info.Begin >= 0 && info.End >= info.Begin, $"tensor '{name}': offsets [{info.Begin}, {info.End}] accepted");
            Check(new FileInfo(reader.FileOf(name)).Length >= info.End, $"tensor '{name}' runs past its file");
            if (info.ByteLength > 1 << 20) continue;   // the tensors the header validated; large ones only cost time
            using var t = reader.Load(name);
            Check(t.numel() == info.ElementCount, $"tensor '{name}': loaded {t.numel()} elements, header says {info.ElementCount}");
        }
    }

    /// <summary>Two valid shards named by the index seeds (tensors a, b in the first, c in the second).</summary>
    static void EnsureShards(string dir)
    {
        var first = Path.Combine(dir, "model-00001-of-00002.safetensors");
        if (File.Exists(first)) return;
        File.WriteAllBytes(first, SafeTensorsBytes(("a", "F32", [2], 8), ("b", "I64", [1, 1], 8)));
        File.WriteAllBytes(Path.Combine(dir, "model-00002-of-00002.safetensors"), SafeTensorsBytes(("c", "BF16", [3], 6)));
    }

    /// <summary>A small valid safetensors file (zeros as data), written by hand so the seed does not depend on the writer under test.</summary>
    public static byte[] SafeTensorsBytes(params (string Name, string DType, long[] Shape, long Bytes)[] tensors)
    {
        var header = new Dictionary<string, object> { ["__metadata__"] = new Dictionary<string, string> { ["format"] = "pt" } };
        long offset = 0;
        foreach (var (name, dtype, shape, bytes) in tensors)
        {
            header[name] = new { dtype, shape, data_offsets = new[] { offset, offset + bytes } };
            offset += bytes;
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        var file = new byte[8 + json.Length + offset];
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)json.Length);
        json.CopyTo(file, 8);
        return file;
    }

    // ------------------------------------------------------------------------------------------------ configs

    static void Config(byte[] input)
    {
        var dir = FuzzInput.WorkDir("config");
        var parts = FuzzInput.Split(input, 3);
        if (parts.Count == 1) parts = [input, input, input];
        while (parts.Count < 3) parts.Add([]);
        string cfgPath = Path.Combine(dir, "config.json"), genPath = Path.Combine(dir, GenerationConfig.FileName), prePath = Path.Combine(dir, PreprocessorConfig.FileName);
        File.WriteAllBytes(cfgPath, parts[0]);
        File.WriteAllBytes(genPath, parts[1]);
        File.WriteAllBytes(prePath, parts[2]);

        if (Step(() => VargptConfig.Load(cfgPath)) is { } c)
        {
            // what model construction, generation and saving read from the record
            _ = (c.HeadDim, c.Vision.HeadDim, c.Vision.MlpHidden, c.Infinity.HeadDim, c.Infinity.FfnHidden, c.Infinity.TextChannels);
            _ = (c.Vae.EncoderChMult.Length, c.Vae.DecoderChMult.Length, c.PadTokenId, c.NumKeyValueHeads, c.MropeSection.Length);
            Step(() => c.Schedules.Get(1.0, c.Pn));
            foreach (var t in ScaleSchedules.Templates)
                foreach (var pn in c.Schedules.PnsOf(t))
                    _ = c.Schedules.Get(t, pn).SequenceLength;
            var again = VargptConfig.Parse(JsonDocument.Parse(ConfigJson.Serialize(c)).RootElement, "round trip");
            Check(again.HiddenSize == c.HiddenSize && again.Pn == c.Pn && again.CustomPns.Count == c.CustomPns.Count, "config.json does not survive a write and re-read");
            GenerationConfig.FromModelConfig(c).Validate();
        }
        if (Step(() => GenerationConfig.Load(genPath)) is { } g)
            g.Validate();   // what the generate loop checks again: a file that loaded must pass it
        if (Step(() => PreprocessorConfig.Load(prePath)) is { } p && Step(() => new ImageProcessor(p)) is { } processor)
            foreach (var (h, w) in new[] { (28, 28), (480, 640), (4000, 30), (7, 1000), (20000, 20000) })
            {
                (int H, int W, bool) size;
                // the façade and the collator answer smart_resize's ArgumentException (an impossible shape for these settings) with an input error
                try { size = ImageProcessor.SmartResize(h, w, p.Factor, p.MinPixels, p.MaxPixels); }
                catch (ArgumentException) { continue; }
                Check(size.H > 0 && size.W > 0 && size.H % p.Factor == 0 && size.W % p.Factor == 0,
                    $"smart_resize({h}, {w}) with factor {p.Factor}, min_pixels {p.MinPixels}, max_pixels {p.MaxPixels} gave {size.H}x{size.W}");
            }
    }

    // ------------------------------------------------------------------------------------------------ tokenizer

    const string SampleText = "<|im_start|>user\nDraw a red circle <|vision_start|><|image_pad|><|vision_end|> on the left, café 你好 👋\r\n  x<|im_end|>\n<|image_gen_start|>";

    static void Tokenizer(byte[] input)
    {
        var dir = FuzzInput.WorkDir("tokenizer");
        var parts = FuzzInput.Split(input, 4);
        byte[]? Part(int i) => i < parts.Count ? parts[i] : null;
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json" })
            File.Delete(Path.Combine(dir, f));
        if (parts.Count > 1 && parts[0].Length == 0)
        {
            FuzzInput.Put(Path.Combine(dir, "vocab.json"), Part(1));
            FuzzInput.Put(Path.Combine(dir, "merges.txt"), Part(2) ?? []);
            FuzzInput.Put(Path.Combine(dir, "added_tokens.json"), Part(3));
        }
        else
        {
            FuzzInput.Put(Path.Combine(dir, "tokenizer.json"), parts[0]);
            FuzzInput.Put(Path.Combine(dir, "tokenizer_config.json"), Part(1));
            FuzzInput.Put(Path.Combine(dir, "special_tokens_map.json"), Part(2));
        }
        var tok = QwenTokenizer.FromDirectory(dir);
        var ids = tok.Encode(SampleText);
        _ = tok.Decode(ids, skipSpecialTokens: false);
        _ = tok.Decode(ids, skipSpecialTokens: true);
        _ = tok.Decode([-1, 0, int.MaxValue, tok.VocabularySize], skipSpecialTokens: false);
        foreach (var id in ids.Take(16)) _ = (tok.IdToToken(id), tok.IsSpecial(id));
        _ = (tok.EosTokenId, tok.PadTokenId, tok.BosTokenId, tok.ChatTemplateSource?.Length);
    }

    // ------------------------------------------------------------------------------------------------ dataset

    /// <summary>The dataset_info.json used when the input holds only a records file: sharegpt with images, and a ranking twin.</summary>
    static readonly byte[] DefaultDatasetInfo = Encoding.UTF8.GetBytes("""
        {"fuzz": {"file_name": "data.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}},
         "fuzz_dpo": {"file_name": "data.json", "formatting": "sharegpt", "ranking": true,
                      "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected", "images": "images"},
                      "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}
        """);

    static void Dataset(byte[] input)
    {
        var dir = FuzzInput.WorkDir("dataset");
        var parts = FuzzInput.Split(input, 2);
        var (info, records) = parts.Count == 1 ? (DefaultDatasetInfo, parts[0]) : (parts[0], parts[1]);
        File.WriteAllBytes(Path.Combine(dir, DatasetInfo.FileName), info);
        File.WriteAllBytes(Path.Combine(dir, "data.json"), records);
        var image = Path.Combine(dir, "img", "1.png");
        if (!File.Exists(image))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(image)!);
            File.WriteAllBytes(image, [0x89, 0x50, 0x4E, 0x47]);   // the loader checks that image files exist; decoding is the image target's
        }
        // the datasets a yaml would name: the entries of dataset_info.json (when it parses), else one that is not there
        List<string> names;
        try
        {
            if (!System.Text.Unicode.Utf8.IsValid(info)) throw new JsonException("not UTF-8");
            using var doc = JsonDocument.Parse(info, new JsonDocumentOptions { AllowTrailingCommas = true });
            names = doc.RootElement.ValueKind == JsonValueKind.Object ? doc.RootElement.EnumerateObject().Select(p => p.Name).Distinct().Take(3).ToList() : [];
        }
        catch (JsonException) { names = []; }
        if (names.Count == 0) names = ["fuzz"];
        var tok = Shipped.Value.Tokenizer;
        foreach (var name in names)
            foreach (bool ranking in new[] { false, true })
            {
                var loaded = Step(() => DatasetLoader.Load([name], new DatasetLoadOptions { DatasetDir = dir, Ranking = ranking, MaxSamples = 64 }));
                foreach (var r in loaded ?? [])
                {
                    Check(r.Prompt.Count % 2 == 1 && r.Response.Count == (ranking ? 2 : 1), $"record {r.Index}: {r.Prompt.Count} prompt turns, {r.Response.Count} responses");
                    foreach (var answer in r.Response)
                    {
                        var turns = r.Prompt.Append(answer).Select(t => new LlamaFactoryMessage(t.Role, t.Content)).ToList();
                        var pairs = LlamaFactoryTemplate.EncodeMultiTurn(tok, turns, r.System.Length > 0 ? r.System : null);
                        Check(pairs.Count == turns.Count / 2, $"record {r.Index}: {pairs.Count} encoded pairs for {turns.Count} turns");
                    }
                }
            }
    }

    // ------------------------------------------------------------------------------------------------ training yaml

    static void Yaml(byte[] input)
    {
        var cfg = TrainingConfig.Parse(Encoding.UTF8.GetString(input), "fuzz.yaml");
        _ = (cfg.Dataset.Count, cfg.FreezeComponents.Count, cfg.Notes.Count);
    }

    // ------------------------------------------------------------------------------------------------ images

    static void Image(byte[] input)
    {
        var img = RgbImage.Decode(input, "fuzz.img");
        Check(img.Width > 0 && img.Height > 0 && img.Data.LongLength == 3L * img.Width * img.Height, $"decoded {img.Width}x{img.Height} with {img.Data.Length} bytes");
        var p = new PreprocessorConfig();
        int h, w;
        // a shape smart_resize cannot serve (too small, too elongated) is the user's image problem: the façade answers the
        // ArgumentException with an InvalidPromptException (VargptModel), the collator with an InvalidFileException
        try { (h, w, _) = ImageProcessor.SmartResize(img.Height, img.Width, p.Factor, p.MinPixels, 64 * 64 * 4); }
        catch (ArgumentException e) { throw new InvalidPromptException($"fuzz.img: {e.Message}", e); }
        var resized = PilResize.Resize(img, w, h, (PilFilter)p.Resample);
        Check(resized.Width == w && resized.Height == h, "resize size");
    }

    // ------------------------------------------------------------------------------------------------ server

    /// <summary>
    /// Runs a server request; an exception the server's own mapping answers with a 4xx is the client's (e.g. a
    /// framework's BadHttpRequestException), a 5xx is a finding, and so is an ArgumentException (a programming error
    /// even where the server maps it to 400).
    /// </summary>
    static void AsServer(Action request)
    {
        try { request(); }
        catch (Exception e) when (!IsInputError(e) && e is not ArgumentException && VargptServer.ToApiError(e, null) is { Status: < 500 } api)
        {
            throw new ApiException(api.Status, api.Message, api.Type, api.Param, api.Code);
        }
    }

    static void ServerChat(byte[] input) => AsServer(() =>
    {
        using var doc = Requests.ParseJsonBodyAsync(new MemoryStream(input), CancellationToken.None).GetAwaiter().GetResult();
        var call = Requests.ParseChat(doc, Served.Value, Limits);
        var prompt = ChatTemplate.Render(call.Job.Messages, addGenerationPrompt: true);
        _ = Shipped.Value.Tokenizer.Encode(prompt);
    });

    static void ServerImages(byte[] input) => AsServer(() =>
    {
        if (FuzzInput.FirstNonSpace(input) == '{')
        {
            using var doc = Requests.ParseJsonBodyAsync(new MemoryStream(input), CancellationToken.None).GetAwaiter().GetResult();
            _ = Requests.ParseImage(RequestFields.Root(doc), Served.Value, Limits, null);
            return;
        }
        var context = new DefaultHttpContext();
        context.Request.Method = "POST";
        context.Request.ContentType = "multipart/form-data; boundary=fuzzboundary";
        context.Request.ContentLength = input.Length;
        context.Request.Body = new MemoryStream(input);
        var form = Requests.ReadFormAsync(context.Request, CancellationToken.None).GetAwaiter().GetResult();
        _ = Requests.ParseEditFormAsync(form, Served.Value, Limits, CancellationToken.None).GetAwaiter().GetResult();
    });
}
