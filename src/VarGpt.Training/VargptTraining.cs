using TorchSharp;
using VarGpt.Generation;
using VarGpt.LanguageModel;
using VarGpt.Model;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Training;

/// <summary>Inputs of one training forward (the tensors LLaMA-Factory's collator hands to the official forward).</summary>
/// <param name="InputIds">[B, T] i64, right-padded; a generation sample holds &lt;|image_gen_start|&gt;, Lpad × &lt;|image_gen_pad|&gt;, &lt;|image_gen_end|&gt;</param>
/// <param name="AttentionMask">[B, T] (1 = token, 0 = padding) or null</param>
/// <param name="PixelValues">understanding patches [Np, 1176] (vision processor output) or null</param>
/// <param name="ImageGridThw">[n, 3] i64 grids of the understanding images</param>
/// <param name="PixelGenValues">generation targets [G, 3, H, W] in [-1, 1], one per generation sample in row order, or null</param>
public sealed record VargptTrainingInputs(Tensor InputIds, Tensor? AttentionMask = null, Tensor? PixelValues = null,
    Tensor? ImageGridThw = null, Tensor? PixelGenValues = null);

/// <summary>Randomness of the training forward. The fixtures switch all of it off.</summary>
public sealed record VargptTrainingOptions
{
    /// <summary>BitwiseSelfCorrection noise_apply_strength (official 0.3); 0 = clean teacher forcing.</summary>
    public double NoiseApplyStrength { get; init; } = 0.3;
    /// <summary>Seed of the bit-flip noise and of Infinity's cond dropout (one forward = one seed, so a resumed run replays it).</summary>
    public long Seed { get; init; }
    /// <summary>vargpt_train_positions: mrope. Position ids as inference gives them (get_rope_index over the prompt, the
    /// raw index for image-generation rows) instead of the official 1-D positions (<see cref="VargptTraining.InferencePositions"/>).</summary>
    public bool MropePositions { get; init; }
    /// <summary>Keep the intermediate tensors in <see cref="VargptTrainingOutput.Debug"/> (fixtures, debugging).</summary>
    public bool KeepDebug { get; init; }
}

/// <summary>Intermediates of the generation half (official names in comments).</summary>
public sealed record VargptTrainingDebug(
    Tensor XBLCWoPrefix,      // x_BLC_wo_prefix [G, L-1, d] (model dtype)
    Tensor InfinityXBLC,      // x_BLC of Infinity.forward [G, Lpad, C]
    Tensor InputsEmbeds,      // LLM inputs_embeds after both scatters [B, T, H]
    Tensor Hidden,            // post-norm LLM states [B, T, H]
    Tensor DecoderXBLC,       // image_gen_projector_out(h at the pad rows) [G, Lpad, C]
    CrossAttnKv Context,      // image_gen_projector_out(h[b, :pos]) packed, cu_seqlens
    Tensor Cond);             // cond_BD [G, C]

/// <summary>Output of <see cref="VargptTraining.Forward"/>; dispose it when the loss is computed.</summary>
public sealed class VargptTrainingOutput : IDisposable
{
    /// <summary>lm_head(h) [B, T, V] in the model dtype (with the graph).</summary>
    public required Tensor Logits { get; init; }
    /// <summary>Infinity bit logits [G, L, 2d] (bit k: columns 2k, 2k+1), or null without generation targets.</summary>
    public Tensor? GenLogits { get; init; }
    /// <summary>Clean bit labels [G, L, d] i64 (gt_BL), or null.</summary>
    public Tensor? ImageGenLabels { get; init; }
    /// <summary>The schedule of the targets (template from the image ratio, pn of the model), or null.</summary>
    public ScaleSchedule? Schedule { get; init; }
    public VargptTrainingDebug? Debug { get; init; }

    public void Dispose()
    {
        Logits.Dispose();
        GenLogits?.Dispose();
        ImageGenLabels?.Dispose();
        if (Debug is { } d)
        {
            d.XBLCWoPrefix.Dispose(); d.InfinityXBLC.Dispose(); d.InputsEmbeds.Dispose(); d.Hidden.Dispose();
            d.DecoderXBLC.Dispose(); d.Context.KvCompact.Dispose(); d.Cond.Dispose();
        }
    }
}

/// <summary>
/// The v1.1 training forward of VARGPT (official modeling_vargpt_qwen2_vl.py forward with pixel_gen_values, the
/// "version == 1.1" branch taken in training and with dpo_training; reference §7.3):
/// <list type="number">
/// <item>targets: get_vae_gt_xin_v1_1 (VAE encoder without grad, bitwise self-correction) → x_BLC_wo_prefix, gt_BL;</item>
/// <item>Infinity.forward: sos_embedding[image_gen_start] per image (cond dropout in training) → x_BLC [G, Lpad, C],
/// cond_BD, AdaLN vector, block-causal mask;</item>
/// <item>image_gen_projector(x_BLC) masked-scattered into the &lt;|image_gen_pad|&gt; rows (row-major), vision
/// features into the &lt;|image_pad|&gt; rows;</item>
/// <item>LLM over the whole sequence: plain causal + padding mask, 1-D positions 0..T-1 (position_ids = None);</item>
/// <item>gen hidden = h at the pad rows [G, Lpad, H]; context of sample b = h[b, :pos], pos = index of
/// &lt;|image_gen_start|&gt; (process_hidden_states); both through image_gen_projector_out;</item>
/// <item>Infinity.forward_decoder with the block-causal mask → gen logits [G, L, 2d]; text logits = lm_head(h).</item>
/// </list>
/// Without generation targets it is the plain text/understanding forward (logits only).
/// </summary>
public static class VargptTraining
{
    public static VargptTrainingOutput Forward(VargptForConditionalGeneration m, VargptTrainingInputs x, VargptTrainingOptions? options = null)
    {
        var o = options ?? new VargptTrainingOptions();
        var cfg = m.Config;
        var ids = x.InputIds;
        if (ids.dim() != 2) throw new ArgumentException($"input_ids must be [B, T], got [{string.Join(",", ids.shape)}]");
        int B = (int)ids.shape[0], T = (int)ids.shape[1];
        long[] hostIds;
        using (var c = ids.to(ScalarType.Int64).cpu().contiguous()) hostIds = c.data<long>().ToArray();
        int padId = cfg.ImageGen.PadId, startId = cfg.ImageGen.StartId;

        using var scope = NewDisposeScope();
        var device = m.Device;
        var dtype = m.DType;
        var idsDev = ids.to(ScalarType.Int64, device);

        // ---- generation targets and the Infinity prefix (official: before the embedding lookup)
        bool gen = x.PixelGenValues is not null;
        Tensor? gtBL = null, xSH = null, xWoPrefix = null;
        InfinityPrefix? prefix = null;
        ScaleSchedule? schedule = null;
        int G = 0;
        if (gen)
        {
            var pix = x.PixelGenValues!;
            if (pix.dim() != 4 || pix.shape[1] != 3)
                throw new ArgumentException($"pixel_gen_values must be [G, 3, H, W], got [{string.Join(",", pix.shape)}]");
            G = (int)pix.shape[0];
            using var bsc = new BitwiseSelfCorrection(o.Seed) { NoiseApplyStrength = o.NoiseApplyStrength };
            var (targets, sched) = GetVaeGtXin(m, bsc, pix);
            schedule = sched;
            gtBL = targets.GtBL;
            xWoPrefix = targets.XBLCWoPrefix.to(dtype);
            foreach (var t in targets.GtBits) t.Dispose();
            targets.XBLCWoPrefix.Dispose();
            // get_sos_word_embeddings: row image_gen_start_token_id of sos_embedding, once per image
            var sos = m.SosEmbedding.forward(full((long)G, (long)startId, ScalarType.Int64, device));
            prefix = m.VargptGen.Prefix(CrossAttnKv.OneRowEach(sos), xWoPrefix, sched, new Random(unchecked((int)(o.Seed * 0x9E3779B1L) ^ 0x5bd1e995)));
            xSH = m.ImageGenProjector.forward(prefix.XBLC).reshape(-1, cfg.HiddenSize);
        }

        // ---- embeddings: text, vision features, generation inputs
        Tensor? imageEmbeds = null;
        if (x.PixelValues is not null)
        {
            if (x.ImageGridThw is null) throw new ArgumentException("pixel_values given without image_grid_thw");
            imageEmbeds = m.Visual.forward(x.PixelValues.to(m.Visual.DType, device), x.ImageGridThw.to(ScalarType.Int64, device));
        }
        var embeds = m.EmbedInputs(idsDev, imageEmbeds);

        // per-row host bookkeeping: pad rows (row-major order = masked_scatter order), first pad of each row
        var padRows = new List<long>();
        var firstPad = new int[B];
        for (int b = 0; b < B; b++)
        {
            firstPad[b] = -1;
            int starts = 0;
            for (int t = 0; t < T; t++)
            {
                long v = hostIds[b * T + t];
                if (v == padId) { padRows.Add((long)b * T + t); if (firstPad[b] < 0) firstPad[b] = t; }
                else if (v == startId) starts++;
            }
            if (gen && starts > 1)
                throw new ArgumentException($"row {b} holds {starts} <|image_gen_start|> blocks; the v1.1 training forward supports one generation target per sample (process_hidden_states takes one context per row)");
        }
        if (gen)
        {
            long features = xSH!.shape[0];
            if (padRows.Count != features)
                throw new ArgumentException($"Gen Image features and image tokens do not match: tokens: {padRows.Count} (<|image_gen_pad|> id {padId}), " +
                    $"features {features} ({G} target image(s) x {prefix!.XBLC.shape[1]} padded VAR tokens of schedule '{schedule!.Pn}' {schedule.Pixels.H}x{schedule.Pixels.W}); " +
                    $"each <image_gen> must expand to exactly {prefix.XBLC.shape[1]} pad tokens");
            var mask = idsDev.eq(padId).unsqueeze(-1).expand_as(embeds);
            embeds = embeds.masked_scatter(mask, xSH.to(embeds.dtype));
        }

        // ---- LLM: causal + padding mask, positions 0..T-1 (the official forward passes position_ids = None; MropePositions: as inference)
        var mask2d = x.AttentionMask?.to(ScalarType.Int64, device);
        var positions = o.MropePositions ? InferencePositions(ids, x.ImageGridThw, x.AttentionMask, cfg, firstPad).to(device) : null;
        var h = m.model.forward(embeds, positions, mask2d);
        var logits = m.lm_head.forward(h);

        if (!gen)
            return new VargptTrainingOutput { Logits = logits.MoveToOuterDisposeScope() };

        // ---- generation half: gen hidden at the pad rows, per-sample context before <|image_gen_start|>
        var rows = tensor(padRows.ToArray(), device: device);
        long lpad = prefix!.XBLC.shape[1];
        var genHidden = h.reshape(-1, cfg.HiddenSize).index_select(0, rows).view(G, lpad, cfg.HiddenSize);
        var ctxRows = new List<Tensor>();
        for (int b = 0; b < B; b++)
        {
            if (firstPad[b] < 0) continue;          // official: rows without pad tokens contribute no context
            int pos = firstPad[b] - 1;              // index of <|image_gen_start|>; context = h[b, :pos]
            if (pos <= 0) throw new ArgumentException($"row {b}: the generation block starts at position {pos}; the target needs a prompt before <|image_gen_start|>");
            ctxRows.Add(h[b].narrow(0, 0, pos));
        }
        if (ctxRows.Count != G)
            throw new ArgumentException($"{ctxRows.Count} rows hold a generation block but {G} target images were given");
        var context = CrossAttnKv.Pack(ctxRows);
        context = context with { KvCompact = m.ImageGenProjectorOut.forward(context.KvCompact) };
        var decX = m.ImageGenProjectorOut.forward(genHidden);
        var genLogits = m.VargptGen.ForwardDecoder(decX, context, prefix.Ada, prefix.Cond, schedule!, prefix.AttnMask);

        VargptTrainingDebug? debug = null;
        if (o.KeepDebug)
            debug = new VargptTrainingDebug(xWoPrefix!.detach().MoveToOuterDisposeScope(), prefix.XBLC.detach().MoveToOuterDisposeScope(),
                embeds.detach().MoveToOuterDisposeScope(), h.detach().MoveToOuterDisposeScope(), decX.detach().MoveToOuterDisposeScope(),
                context with { KvCompact = context.KvCompact.detach().MoveToOuterDisposeScope() }, prefix.Cond.detach().MoveToOuterDisposeScope());
        return new VargptTrainingOutput
        {
            Logits = logits.MoveToOuterDisposeScope(), GenLogits = genLogits.MoveToOuterDisposeScope(),
            ImageGenLabels = gtBL!.MoveToOuterDisposeScope(), Schedule = schedule, Debug = debug,
        };
    }

    /// <summary>
    /// Position ids [3, B, T] the inference path gives a training row (vargpt_train_positions: mrope): get_rope_index over
    /// the row (as the prefill and decoding of the prompt and the text before &lt;|image_gen_start|&gt; see them), then, from
    /// the first &lt;|image_gen_pad|&gt; of a generation row on, the raw index t: autoregressive_infer_cfg runs the image
    /// tokens with position_ids None, i.e. at their KV-cache index, and that row's cache holds exactly the t tokens before
    /// it (right padding). Rows without images get plain cumulative positions, the same as the official 1-D ones.
    /// </summary>
    public static Tensor InferencePositions(Tensor inputIds, Tensor? imageGridThw, Tensor? attentionMask, VargptConfig config, IReadOnlyList<int> firstPad)
    {
        var (pos, deltas) = RopeIndex.GetRopeIndex(inputIds.cpu(), imageGridThw?.cpu(), attentionMask?.cpu(), config);
        deltas.Dispose();
        int B = (int)inputIds.shape[0], T = (int)inputIds.shape[1];
        using (pos)
        {
            var host = pos.contiguous().data<long>().ToArray();
            for (int b = 0; b < B; b++)
                if (firstPad[b] >= 0)
                    for (int r = 0; r < 3; r++)
                        for (int t = firstPad[b]; t < T; t++) host[(r * B + b) * T + t] = t;
            return tensor(host, [3, B, T], ScalarType.Int64);
        }
    }

    /// <summary>
    /// Official get_vae_gt_xin_v1_1: template = nearest h/w of the targets, schedule of that template with the targets'
    /// pixel size (<see cref="ScheduleForTargets"/>), raw features from the VAE encoder without grad, then flip_requant
    /// over all scales.
    /// </summary>
    public static (BitwiseSelfCorrection.Targets Targets, ScaleSchedule Schedule) GetVaeGtXin(VargptForConditionalGeneration m, BitwiseSelfCorrection bsc, Tensor pixelGenValues)
    {
        var schedule = ScheduleForTargets((int)pixelGenValues.shape[^2], (int)pixelGenValues.shape[^1], m.Config);
        return (bsc.GetVaeGtXin(m.VaeLocal, pixelGenValues.to(m.VaeLocal.Device), schedule), schedule);
    }

    /// <summary>
    /// The schedule of H×W targets in the model's table: nearest template of H/W, then the model's pn
    /// (vargpt_gen_args.pn, what the official code uses) if its pixel size is H×W, else the table's pn of that template
    /// with that pixel size (the official model trained at 256 and 512 with the matching pn). Errors name the sizes that exist.
    /// </summary>
    public static ScaleSchedule ScheduleForTargets(int height, int width, VargptConfig config)
    {
        double template = ScaleSchedules.NearestTemplate((double)height / width);
        var table = config.Schedules;
        var all = table.PnsOf(template).Select(pn => table.Get(template, pn)).ToList();
        var match = all.Where(s => s.Pixels == (height, width)).OrderBy(s => s.Pn == config.Pn ? 0 : 1).FirstOrDefault();
        return match ?? throw new InvalidOptionException(
            $"target images are {height}x{width} pixels but no scale schedule of template {template.ToString(System.Globalization.CultureInfo.InvariantCulture)} has that size " +
            $"(available: {string.Join(", ", all.Select(s => $"{s.Pn} = {s.Pixels.H}x{s.Pixels.W}"))}); crop the targets to one of them");
    }
}
