using System.Text;

namespace VarGpt.Text;

/// <summary>
/// Placeholder expansion, the one place where image slots in text become the right number of tokens:
/// <list type="bullet">
/// <item>inference (VARGPTQwen2VLProcessor.__call__): each &lt;|image_pad|&gt; of the chat-template prompt becomes
/// t*h*w/merge² copies for its image_grid_thw;</item>
/// <item>training data (LLaMA-Factory VargptQwen2vlPlugin.process_messages): "&lt;image&gt;" becomes
/// vision_start + pads + vision_end and "&lt;image_gen&gt;" becomes image_gen_start + N image_gen_pad + image_gen_end.</item>
/// </list>
/// Image counts are checked: a placeholder without a grid or a grid without a placeholder is an error.
/// </summary>
public static class PromptExpansion
{
    /// <summary>LLaMA-Factory's IMAGE_PLACEHOLDER / IMAGE_GEN_PLACEHOLDER / VIDEO_PLACEHOLDER (extras/constants.py defaults).</summary>
    public const string ImagePlaceholder = "<image>";
    public const string ImageGenPlaceholder = "<image_gen>";
    public const string VideoPlaceholder = "<video>";
    /// <summary>image_gen_token_num of the "vargpt_qwen2_vl" template registered in prepare_vargpt_v1_1.py (512x512 images).</summary>
    public const int VargptImageGenTokenCount = 2560;

    /// <summary>Number of LM tokens of one image: t*h*w / merge_size² (the vision merger folds merge×merge patches into one).</summary>
    public static int ImageTokenCount((int T, int H, int W) grid, int mergeSize)
    {
        if (grid.T <= 0 || grid.H <= 0 || grid.W <= 0) throw new ArgumentException($"image grid ({grid.T}, {grid.H}, {grid.W}) must be positive");
        if (mergeSize <= 0) throw new ArgumentOutOfRangeException(nameof(mergeSize), mergeSize, "merge size must be positive");
        if (grid.H % mergeSize != 0 || grid.W % mergeSize != 0)
            throw new ArgumentException($"image grid ({grid.T}, {grid.H}, {grid.W}): h and w must be multiples of merge_size {mergeSize}");
        return checked(grid.T * grid.H * grid.W) / (mergeSize * mergeSize);
    }

    /// <summary>The processor's expansion for one prompt: the i-th &lt;|image_pad|&gt; gets the i-th grid.</summary>
    public static string ExpandImagePads(string text, IReadOnlyList<(int T, int H, int W)> imageGrids, int mergeSize = 2) =>
        ExpandImagePads([text], imageGrids, mergeSize)[0];

    /// <summary>
    /// The processor's expansion for a batch of prompts: grids are consumed in order across the prompts, as
    /// VARGPTQwen2VLProcessor.__call__ does with its running index.
    /// </summary>
    public static IReadOnlyList<string> ExpandImagePads(IReadOnlyList<string> texts, IReadOnlyList<(int T, int H, int W)> imageGrids, int mergeSize = 2)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentNullException.ThrowIfNull(imageGrids);
        int total = texts.Sum(t => Count(t, SpecialTokens.ImagePad));
        if (total != imageGrids.Count)
            throw new ArgumentException($"the prompt{(texts.Count > 1 ? "s" : "")} contain{(texts.Count > 1 ? "" : "s")} {total} {SpecialTokens.ImagePad} placeholder{(total == 1 ? "" : "s")} but {imageGrids.Count} image grid{(imageGrids.Count == 1 ? " was" : "s were")} given (one image per placeholder, in order)");
        int next = 0;
        var result = new List<string>(texts.Count);
        foreach (var text in texts)
            result.Add(ReplaceEach(text, SpecialTokens.ImagePad, () => Repeat(SpecialTokens.ImagePad, ImageTokenCount(imageGrids[next++], mergeSize))));
        return result;
    }

    /// <summary>
    /// VargptQwen2vlPlugin.process_messages: <paramref name="imageGrids"/> lists, in placeholder order over all messages,
    /// either the grids of every image of the sample, "&lt;image&gt;" and "&lt;image_gen&gt;" alike (LLaMA-Factory's images
    /// list holds the generation targets too; the grids at "&lt;image_gen&gt;" positions are dropped, as the official does),
    /// or only the grids of the "&lt;image&gt;" inputs. Each "&lt;image&gt;" becomes
    /// vision_start + t*h*w/merge² image pads + vision_end, each "&lt;image_gen&gt;" becomes image_gen_start +
    /// <paramref name="imageGenTokenCount"/> image_gen pads + image_gen_end.
    /// </summary>
    public static IReadOnlyList<LlamaFactoryMessage> ExpandTrainingPlaceholders(IReadOnlyList<LlamaFactoryMessage> messages,
        IReadOnlyList<(int T, int H, int W)> imageGrids, int mergeSize = 2, int imageGenTokenCount = VargptImageGenTokenCount)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ArgumentNullException.ThrowIfNull(imageGrids);
        if (imageGenTokenCount <= 0) throw new ArgumentOutOfRangeException(nameof(imageGenTokenCount), imageGenTokenCount, "must be positive");
        if (messages.Any(m => m.Content.Contains(VideoPlaceholder, StringComparison.Ordinal)))
            throw new NotSupportedException($"{VideoPlaceholder} placeholders (video samples) are not supported");
        // official find_placeholder_positions: indices, among all placeholders of the joined contents, of the <image_gen> ones
        var kinds = PlaceholderKinds(string.Concat(messages.Select(m => m.Content)));
        int inputs = kinds.Count(k => !k);
        List<(int T, int H, int W)> grids;
        if (imageGrids.Count == kinds.Count) grids = imageGrids.Where((_, i) => !kinds[i]).ToList();
        else if (imageGrids.Count == inputs) grids = imageGrids.ToList();
        else throw new ArgumentException($"the messages contain {inputs} {ImagePlaceholder} and {kinds.Count - inputs} {ImageGenPlaceholder} placeholders but {imageGrids.Count} image grids were given (expected {kinds.Count}: one per placeholder, or {inputs}: one per {ImagePlaceholder}, in order)");
        string genBlock = SpecialTokens.ImageGenStart + Repeat(SpecialTokens.ImageGenPad, imageGenTokenCount) + SpecialTokens.ImageGenEnd;
        int next = 0;
        return messages.Select(m =>
        {
            string c = ReplaceEach(m.Content, ImagePlaceholder,
                () => SpecialTokens.VisionStart + Repeat(SpecialTokens.ImagePad, ImageTokenCount(grids[next++], mergeSize)) + SpecialTokens.VisionEnd);
            return m with { Content = ReplaceEach(c, ImageGenPlaceholder, () => genBlock) };
        }).ToList();
    }

    /// <summary>For each &lt;image&gt; / &lt;image_gen&gt; occurrence in text order: true if it is an &lt;image_gen&gt;.</summary>
    static List<bool> PlaceholderKinds(string text)
    {
        var found = new List<(int Pos, bool Gen)>();
        foreach (var (ph, gen) in new[] { (ImagePlaceholder, false), (ImageGenPlaceholder, true) })
            for (int p = text.IndexOf(ph, StringComparison.Ordinal); p >= 0; p = text.IndexOf(ph, p + 1, StringComparison.Ordinal))
                found.Add((p, gen));
        return found.OrderBy(f => f.Pos).Select(f => f.Gen).ToList();
    }

    /// <summary>Non-overlapping occurrences of <paramref name="token"/>.</summary>
    public static int Count(string text, string token)
    {
        int n = 0;
        for (int p = text.IndexOf(token, StringComparison.Ordinal); p >= 0; p = text.IndexOf(token, p + token.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>Replaces every occurrence left to right, calling <paramref name="replacement"/> once per occurrence.</summary>
    static string ReplaceEach(string text, string token, Func<string> replacement)
    {
        var sb = new StringBuilder();
        int pos = 0;
        for (int p = text.IndexOf(token, StringComparison.Ordinal); p >= 0; p = text.IndexOf(token, pos, StringComparison.Ordinal))
        {
            sb.Append(text, pos, p - pos).Append(replacement());
            pos = p + token.Length;
        }
        return sb.Append(text, pos, text.Length - pos).ToString();
    }

    static string Repeat(string s, int n) => new StringBuilder(s.Length * n).Insert(0, s, n).ToString();
}
