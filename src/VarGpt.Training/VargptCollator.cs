using TorchSharp;
using VarGpt.Checkpoint;
using VarGpt.Generation;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Training.Data;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Training;

/// <summary>How records become tensors (the data_args of LLaMA-Factory that matter, plus the generation resolution).</summary>
public sealed record VargptCollatorOptions
{
    /// <summary>cutoff_len: samples longer than this are skipped (see <see cref="VargptCollator.EncodeAll"/>).</summary>
    public int CutoffLen { get; init; } = 2048;
    /// <summary>image_resolution: understanding and target images are NEAREST-shrunk to at most this many pixels first.</summary>
    public long ImageResolution { get; init; } = 512 * 512;
    /// <summary>Side of the square generation targets (official plugin: 512); must be the pixel size of a registered template-1.0 schedule.</summary>
    public int ImageGenResolution { get; init; } = 512;
    /// <summary>DataCollatorForSeq2Seq pad_to_multiple_of (8 for SFT and DPO training).</summary>
    public int PadToMultipleOf { get; init; } = 8;
    /// <summary>Seed of the random crops (a crop is a function of seed, epoch, batch index and image).</summary>
    public int Seed { get; init; } = 42;
    /// <summary>Vision processor settings (the checkpoint's preprocessor_config.json).</summary>
    public PreprocessorConfig Processor { get; init; } = new();
    /// <summary>true (official): train_aug on targets (1.125x LANCZOS resize + random crop); false: LANCZOS resize to S×S (none if already S×S).</summary>
    public bool TargetAugment { get; init; } = true;
}

/// <summary>One tokenized row: ids, labels (-100 on prompt tokens) and its images in token order.</summary>
public sealed record EncodedSample(TrainingRecord Record, int[] InputIds, int[] Labels, IReadOnlyList<ImageSlot> Images, IReadOnlyList<(int T, int H, int W)> Grids)
{
    public int Length => InputIds.Length;
    public bool HasTarget => Images.Any(i => i.IsTarget);
}

/// <summary>A dataset item: one SFT row, or a DPO pair (Chosen, Rejected).</summary>
public sealed record EncodedItem(EncodedSample Chosen, EncodedSample? Rejected = null)
{
    public int Length => Math.Max(Chosen.Length, Rejected?.Length ?? 0);
    public TrainingRecord Record => Chosen.Record;
}

/// <summary>Result of encoding a dataset: the kept items and the records skipped for exceeding cutoff_len.</summary>
public sealed record EncodedDataset(IReadOnlyList<EncodedItem> Items, IReadOnlyList<(TrainingRecord Record, int Length)> Skipped, int CutoffLen)
{
    public string SkippedSummary() => Skipped.Count == 0 ? "" :
        $"{Skipped.Count} of {Items.Count + Skipped.Count} sample(s) are longer than cutoff_len {CutoffLen} and were skipped (longest {Skipped.Max(s => s.Length)} tokens: {string.Join("; ", Skipped.Take(5).Select(s => $"{s.Record.Where} ({s.Length})"))}{(Skipped.Count > 5 ? "; ..." : "")})";
}

/// <summary>A collated batch, the tensors the official forward receives (all on CPU; the model moves them).</summary>
public sealed class VargptBatch : IDisposable
{
    public required Tensor InputIds { get; init; }        // [B, T] i64
    public required Tensor AttentionMask { get; init; }   // [B, T] i64
    public required Tensor Labels { get; init; }          // [B, T] i64, -100 on prompt and padding
    public Tensor? PixelValues { get; init; }             // [Np, 1176] f32
    public Tensor? ImageGridThw { get; init; }            // [n, 3] i64
    public Tensor? PixelGenValues { get; init; }          // [G, 3, S, S] f32 in [-1, 1]
    /// <summary>DPO: the first <see cref="Pairs"/> rows are chosen, the next <see cref="Pairs"/> rejected; 0 for SFT.</summary>
    public int Pairs { get; init; }
    /// <summary>Non-padding tokens (for tokens/s).</summary>
    public long Tokens { get; init; }
    /// <summary>Seed of the forward's randomness (bit-flip noise, cond dropout) for this batch.</summary>
    public long Seed { get; init; }
    public required IReadOnlyList<TrainingRecord> Records { get; init; }

    public VargptTrainingInputs Inputs => new(InputIds, AttentionMask, PixelValues, ImageGridThw, PixelGenValues);

    public void Dispose()
    {
        InputIds.Dispose(); AttentionMask.Dispose(); Labels.Dispose();
        PixelValues?.Dispose(); ImageGridThw?.Dispose(); PixelGenValues?.Dispose();
    }
}

/// <summary>
/// TrainingRecord → tensors exactly as VARGPT-family-training does it (reference §7.2):
/// <list type="bullet">
/// <item>template vargpt_qwen2_vl (<see cref="LlamaFactoryTemplate"/>), labels -100 on every prompt part
/// (processors/supervised.py, pairwise.py: chosen/rejected share the prompt);</item>
/// <item>&lt;image&gt; → vision_start + grid/4 × &lt;|image_pad|&gt; + vision_end, grid from the vision processor on the
/// NEAREST-preshrunk image (mm_plugin.VargptQwen2vlPlugin._preprocess_image);</item>
/// <item>&lt;image_gen&gt; → &lt;|image_gen_start|&gt; + Lpad × &lt;|image_gen_pad|&gt; + &lt;|image_gen_end|&gt;, Lpad = the
/// padded VAR length of the target schedule (2560 for 0.25M; the official plugin hard-codes that number);</item>
/// <item>targets: NEAREST preshrink → resize of the shorter side to round(1.125·S) (LANCZOS) → RandomCrop(S) →
/// [0,1] → 2x−1 (build_transforms' train_aug, used for every split incl. DPO);</item>
/// <item>padding right to a multiple of 8 with the tokenizer's pad id (attention 0, labels -100).</item>
/// </list>
/// Departures, all explicit: samples longer than cutoff_len are skipped (the official truncates, which cuts image
/// tokens and then fails in the forward); the crop offsets come from a seeded SplitMix64 per (seed, epoch, batch,
/// image) instead of torch.randint; LANCZOS is <see cref="PilResize"/>'s (bit-exactness vs PIL unverified).
/// </summary>
public sealed class VargptCollator
{
    readonly QwenTokenizer _tok;
    readonly VargptConfig _cfg;
    readonly ImageProcessor _processor;
    readonly int _padId, _visionStart, _genStart, _imagePad, _genPad;
    public VargptCollatorOptions Options { get; }
    /// <summary>Schedule of the generation targets (template 1.0, the pn whose pixel size is ImageGenResolution).</summary>
    public ScaleSchedule GenSchedule { get; }
    /// <summary>&lt;|image_gen_pad|&gt; tokens per target: the schedule's length rounded up to Infinity's pad_to_multiplier.</summary>
    public int ImageGenTokenCount { get; }

    public VargptCollator(QwenTokenizer tokenizer, VargptConfig config, VargptCollatorOptions? options = null)
    {
        _tok = tokenizer;
        _cfg = config;
        Options = options ?? new VargptCollatorOptions();
        if (Options.CutoffLen <= 0) throw new InvalidOptionException("cutoff_len must be > 0", "cutoff_len");
        if (Options.PadToMultipleOf <= 0) throw new InvalidOptionException("pad_to_multiple_of must be > 0", "pad_to_multiple_of");
        _processor = new ImageProcessor(Options.Processor);
        GenSchedule = ScheduleForResolution(Options.ImageGenResolution, config);
        ImageGenTokenCount = GenSchedule.PaddedLength(Math.Max(1, config.Infinity.PadToMultiplier));
        _padId = tokenizer.PadTokenId ?? config.PadTokenId;
        _visionStart = config.VisionStartTokenId;
        _genStart = config.ImageGen.StartId;
        _imagePad = config.ImageTokenId;
        _genPad = config.ImageGen.PadId;
        foreach (var (tokText, id) in new[] { (SpecialTokens.ImageGenStart, _genStart), (SpecialTokens.ImageGenPad, _genPad), (SpecialTokens.ImagePad, _imagePad), (SpecialTokens.VisionStart, _visionStart) })
            if (tokenizer.TryTokenToId(tokText) != id)
                throw new InvalidFileException($"the tokenizer maps {tokText} to {tokenizer.TryTokenToId(tokText)?.ToString() ?? "nothing"} but the model config expects id {id}; tokenizer and checkpoint do not belong together");
    }

    /// <summary>The template-1.0 schedule of the model's table with S×S pixels (the model's pn preferred); a clear error when none exists.</summary>
    public static ScaleSchedule ScheduleForResolution(int side, VargptConfig config)
    {
        try { return VargptTraining.ScheduleForTargets(side, side, config); }
        catch (InvalidOptionException e) { throw new InvalidOptionException($"image_gen_resolution {side}: {e.Message}", "image_gen_resolution"); }
    }

    // ------------------------------------------------------------------ encoding (text side)

    /// <summary>
    /// Encodes every record (Sft: one row each; Dpo: chosen + rejected rows). Records whose encoded length
    /// exceeds cutoff_len are skipped and listed in the result. Throws when nothing is left.
    /// </summary>
    public EncodedDataset EncodeAll(IReadOnlyList<TrainingRecord> records, TrainingStage stage)
    {
        if (records.Count == 0) throw new InvalidFileException("the dataset is empty: no records to train on (check 'dataset', 'max_samples' and the dataset files)");
        var items = new List<EncodedItem>();
        var skipped = new List<(TrainingRecord, int)>();
        foreach (var r in records)
        {
            var item = stage == TrainingStage.Dpo ? EncodePair(r) : new EncodedItem(EncodeSft(r));
            if (item.Length > Options.CutoffLen) skipped.Add((r, item.Length));
            else items.Add(item);
        }
        var ds = new EncodedDataset(items, skipped, Options.CutoffLen);
        if (items.Count == 0)
            throw new InvalidFileException($"no sample fits cutoff_len {Options.CutoffLen}: {ds.SkippedSummary()}. A generation target alone takes {ImageGenTokenCount + 2} tokens; raise cutoff_len");
        return ds;
    }

    /// <summary>One SFT row (supervised.py _encode_supervised_example without truncation).</summary>
    public EncodedSample EncodeSft(TrainingRecord r)
    {
        if (r.Kind == RecordKind.Preference) throw new InvalidFileException($"{r.Where}: a preference record cannot be used for SFT");
        var grids = UnderstandingGrids(r, r.Images);
        var messages = Expand(r, r.Prompt.Concat(r.Response).ToList(), grids);
        var pairs = LlamaFactoryTemplate.EncodeMultiTurn(_tok, messages, r.System);
        var ids = new List<int>();
        var labels = new List<int>();
        foreach (var (p, a) in pairs)
        {
            ids.AddRange(p); labels.AddRange(Enumerable.Repeat(-100, p.Count));
            ids.AddRange(a); labels.AddRange(a);
        }
        return Checked(r, ids.ToArray(), labels.ToArray(), r.Images, grids);
    }

    /// <summary>A DPO pair (pairwise.py): prompt + chosen with images[0], prompt + rejected with images[1].</summary>
    public EncodedItem EncodePair(TrainingRecord r)
    {
        if (r.Kind != RecordKind.Preference || r.Response.Count != 2 || r.Images.Count != 2)
            throw new InvalidFileException($"{r.Where}: DPO needs a preference record (chosen and rejected answers, images [chosen_target, rejected_target])");
        EncodedSample Branch(ChatTurn answer, ImageSlot target)
        {
            var messages = Expand(r, r.Prompt.Append(answer).ToList(), []);
            var pairs = LlamaFactoryTemplate.EncodeMultiTurn(_tok, messages, r.System);
            // encode_oneturn: everything before the last answer is the prompt
            var prompt = pairs.Take(pairs.Count - 1).SelectMany(p => p.Prompt.Concat(p.Answer)).Concat(pairs[^1].Prompt).ToArray();
            var ans = pairs[^1].Answer.ToArray();
            var labels = Enumerable.Repeat(-100, prompt.Length).Concat(ans).ToArray();
            return Checked(r, prompt.Concat(ans).ToArray(), labels, [target with { IsTarget = true }], []);
        }
        return new EncodedItem(Branch(r.Response[0], r.Images[0]), Branch(r.Response[1], r.Images[1]));
    }

    List<LlamaFactoryMessage> Expand(TrainingRecord r, List<ChatTurn> turns, IReadOnlyList<(int T, int H, int W)> grids)
    {
        var messages = turns.Select(t => new LlamaFactoryMessage(t.Role, t.Content)).ToList();
        try { return PromptExpansion.ExpandTrainingPlaceholders(messages, grids, _processor.Settings.MergeSize, ImageGenTokenCount).ToList(); }
        catch (ArgumentException e) { throw new InvalidFileException($"{r.Where}: {e.Message}", e); }   // the record's placeholders do not fit its images
    }

    /// <summary>Grids of the understanding images: NEAREST preshrink, then the processor's smart_resize.</summary>
    IReadOnlyList<(int T, int H, int W)> UnderstandingGrids(TrainingRecord r, IReadOnlyList<ImageSlot> images)
    {
        var s = _processor.Settings;
        var grids = new List<(int, int, int)>();
        foreach (var slot in images.Where(i => !i.IsTarget))
        {
            var img = ImageProcessor.PreprocessImageForTraining(LoadImage(r, slot), Options.ImageResolution);
            int h, w;
            try { (h, w, _) = ImageProcessor.SmartResize(img.Height, img.Width, s.Factor, s.MinPixels, s.MaxPixels); }
            catch (ArgumentException e) { throw new InvalidFileException($"{r.Where}: image {slot.Path}: {e.Message}", e); }   // too small or too elongated
            grids.Add((1, h / s.PatchSize, w / s.PatchSize));
        }
        return grids;
    }

    /// <summary>Token-count checks: the image tokens must be exactly those the images produce (text may contain special tokens literally).</summary>
    EncodedSample Checked(TrainingRecord r, int[] ids, int[] labels, IReadOnlyList<ImageSlot> images, IReadOnlyList<(int T, int H, int W)> grids)
    {
        int merge = _processor.Settings.MergeSize * _processor.Settings.MergeSize;
        long expectedImagePads = grids.Sum(g => (long)g.T * g.H * g.W / merge);
        int targets = images.Count(i => i.IsTarget);
        long imagePads = ids.LongCount(t => t == _imagePad), genPads = ids.LongCount(t => t == _genPad);
        int genStarts = ids.Count(t => t == _genStart), visionStarts = ids.Count(t => t == _visionStart);
        if (imagePads != expectedImagePads || visionStarts != grids.Count)
            throw new InvalidFileException($"{r.Where}: image-token mismatch: the encoded text holds {imagePads} <|image_pad|> token(s) in {visionStarts} vision block(s) " +
                $"but its {grids.Count} input image(s) give {expectedImagePads} feature row(s); does the text contain image special tokens literally?");
        if (genPads != (long)targets * ImageGenTokenCount || genStarts != targets)
            throw new InvalidFileException($"{r.Where}: image-token mismatch: the encoded text holds {genPads} <|image_gen_pad|> token(s) in {genStarts} generation block(s) " +
                $"but {targets} target image(s) need {targets} x {ImageGenTokenCount}; does the text contain image special tokens literally?");
        // images in token order (find_token_sequence): understanding at vision_start, targets at image_gen_start
        var inOrder = new List<ImageSlot>();
        int u = 0, g = 0;
        var und = images.Where(i => !i.IsTarget).ToList();
        var tgt = images.Where(i => i.IsTarget).ToList();
        foreach (var t in ids)
            if (t == _visionStart) inOrder.Add(und[u++]);
            else if (t == _genStart) inOrder.Add(tgt[g++]);
        return new EncodedSample(r, ids, labels, inOrder, grids);
    }

    static RgbImage LoadImage(TrainingRecord r, ImageSlot slot)
    {
        try { return RgbImage.Load(slot.Path); }
        catch (Exception e) when (e is ImageLoadException or InputNotFoundException)
        {
            throw new InvalidFileException($"{r.Where}: {e.Message}", e);
        }
    }

    // ------------------------------------------------------------------ collation (tensors)

    /// <summary>
    /// Collates rows (SFT: the items' rows; DPO: all chosen rows then all rejected rows) into one right-padded batch
    /// with the pixel tensors. <paramref name="epoch"/> and <paramref name="index"/> seed the random crops.
    /// </summary>
    public VargptBatch Collate(IReadOnlyList<EncodedItem> items, int epoch, int index)
    {
        if (items.Count == 0) throw new ArgumentException("cannot collate an empty batch");
        bool dpo = items[0].Rejected is not null;
        var rows = dpo ? items.Select(i => i.Chosen).Concat(items.Select(i => i.Rejected!)).ToList() : items.Select(i => i.Chosen).ToList();
        int maxLen = rows.Max(r => r.Length);
        int T = (maxLen + Options.PadToMultipleOf - 1) / Options.PadToMultipleOf * Options.PadToMultipleOf;
        int B = rows.Count;
        var ids = new long[B * T];
        var mask = new long[B * T];
        var labels = new long[B * T];
        Array.Fill(ids, _padId);
        Array.Fill(labels, -100L);
        long tokens = 0;
        var understanding = new List<RgbImage>();
        var expectedGrids = new List<(int T, int H, int W)>();
        var targets = new List<float[]>();
        ulong batchSeed = BatchSeed(Options.Seed, epoch, index);
        var rng = new SplitMix64(batchSeed);
        int S = GenSchedule.Pixels.H;
        for (int b = 0; b < B; b++)
        {
            var r = rows[b];
            for (int t = 0; t < r.Length; t++) { ids[b * T + t] = r.InputIds[t]; mask[b * T + t] = 1; labels[b * T + t] = r.Labels[t]; }
            tokens += r.Length;
            int gi = 0;
            foreach (var slot in r.Images)
            {
                var img = ImageProcessor.PreprocessImageForTraining(LoadImage(r.Record, slot), Options.ImageResolution);
                if (slot.IsTarget) targets.Add(Options.TargetAugment ? TargetPixels(img, S, ref rng) : ResizedTargetPixels(img, S));
                else { understanding.Add(img); expectedGrids.Add(r.Grids[gi++]); }
            }
        }

        Tensor? pixelValues = null, grid = null, pixelGen = null;
        if (understanding.Count > 0)
        {
            var p = _processor.Preprocess(understanding);
            using var g = p.ImageGridThw;
            var got = g.data<long>().ToArray();
            for (int i = 0; i < expectedGrids.Count; i++)
                if (got[3 * i] != expectedGrids[i].T || got[3 * i + 1] != expectedGrids[i].H || got[3 * i + 2] != expectedGrids[i].W)
                    throw new InvalidOperationException($"image-token mismatch: understanding image {i} of the batch now has grid ({got[3 * i]},{got[3 * i + 1]},{got[3 * i + 2]}) but was encoded with {expectedGrids[i]}; did the file change?");
            pixelValues = p.PixelValues;
            grid = g.clone();
        }
        if (targets.Count > 0)
        {
            var all = new float[targets.Count * 3 * S * S];
            for (int i = 0; i < targets.Count; i++) Array.Copy(targets[i], 0, all, i * 3 * S * S, 3 * S * S);
            pixelGen = tensor(all, [targets.Count, 3, S, S], ScalarType.Float32, CPU);
        }
        return new VargptBatch
        {
            InputIds = tensor(ids, [B, T], ScalarType.Int64, CPU), AttentionMask = tensor(mask, [B, T], ScalarType.Int64, CPU),
            Labels = tensor(labels, [B, T], ScalarType.Int64, CPU), PixelValues = pixelValues, ImageGridThw = grid, PixelGenValues = pixelGen,
            Pairs = dpo ? items.Count : 0, Tokens = tokens, Seed = (long)(batchSeed >> 1), Records = items.Select(i => i.Record).ToList(),
        };
    }

    /// <summary>A per-batch seed from (seed, epoch, index): crops and the forward's noise replay exactly on resume.</summary>
    public static ulong BatchSeed(int seed, int epoch, int index)
    {
        var m = new SplitMix64(((ulong)(uint)seed << 32) ^ ((ulong)(uint)epoch << 20) ^ (uint)index ^ 0x5EED_0000_0000_0000UL);
        return m.Next();
    }

    /// <summary>A target without augmentation: LANCZOS resize to S×S (skipped when it already is), ToTensor, 2x−1. [3, S, S] CHW.</summary>
    public static float[] ResizedTargetPixels(RgbImage img, int S)
    {
        var r = img.Width == S && img.Height == S ? img : PilResize.Resize(img, S, S, PilFilter.Lanczos);
        return CropToTensor(r, 0, 0, S);
    }

    /// <summary>
    /// build_transforms' train_aug on one target: Resize(round(1.125·S)) of the shorter side (torchvision: the longer
    /// side becomes int(mid·long/short)), LANCZOS; RandomCrop(S) with offsets uniform in [0, h−S] and [0, w−S];
    /// ToTensor; 2x−1. Returns [3, S, S] float32 CHW.
    /// </summary>
    public static float[] TargetPixels(RgbImage img, int S, ref SplitMix64 rng)
    {
        int mid = (int)Math.Round(1.125 * S, MidpointRounding.ToEven);
        int w = img.Width, h = img.Height;
        int ow, oh;
        if (w <= h) { ow = mid; oh = (int)((long)mid * h / w); }
        else { oh = mid; ow = (int)((long)mid * w / h); }
        var resized = (ow == w && oh == h) ? img : PilResize.Resize(img, ow, oh, PilFilter.Lanczos);
        int top = (int)rng.NextBelow((ulong)(oh - S + 1)), left = (int)rng.NextBelow((ulong)(ow - S + 1));
        return CropToTensor(resized, top, left, S);
    }

    /// <summary>The S×S crop at (top, left) as ToTensor then 2x−1: [3, S, S] float32 CHW.</summary>
    static float[] CropToTensor(RgbImage img, int top, int left, int S)
    {
        var px = new float[3 * S * S];
        var src = img.Data;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++)
            {
                int si = ((top + y) * img.Width + left + x) * 3;
                for (int c = 0; c < 3; c++) px[c * S * S + y * S + x] = src[si + c] / 255f * 2f - 1f;
            }
        return px;
    }
}

/// <summary>
/// The encoded dataset as Trainer data: items shuffled per epoch (<see cref="ShuffledBatches{T}"/>) and collated on
/// demand, crops seeded by (epoch, index).
/// </summary>
public sealed class VargptData(VargptCollator collator, IReadOnlyList<EncodedItem> items, int batchSize, int seed, bool shuffle = true) : ITrainingData<VargptBatch>
{
    readonly ShuffledBatches<EncodedItem> _batches = new(items, batchSize, seed, shuffle);
    public int BatchesPerEpoch => _batches.BatchesPerEpoch;
    public VargptBatch GetBatch(int epoch, int index) => collator.Collate(_batches.GetBatch(epoch, index), epoch, index);
}
