using System.Text.Json;
using VarGpt.Text;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "chat_template": every prompt of the Qwen2-VL chat template (exact strings), the processor's
/// &lt;|image_pad|&gt; expansion with its ids, and the LLaMA-Factory "vargpt_qwen2_vl" training format of an edit sample.
/// </summary>
public sealed class ChatTemplateFixture : IFixtureKind
{
    public string Kind => "chat_template";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        var p = f.Params;
        var tok = FixtureTokenizers.Load(f, f.Config.GetProperty("tokenizer_dir").GetString()!);
        int merge = f.Config.GetProperty("image_processor").GetProperty("merge_size").GetInt32();
        bool genPrompt = p.GetProperty("add_generation_prompt").GetBoolean();
        cmp.Equal("chat_template_source", tok.ChatTemplateSource ?? "<none>", p.GetProperty("chat_template").GetString()!);

        var conversations = p.GetProperty("conversations").EnumerateObject().ToDictionary(c => c.Name, c => ParseConversation(c.Value));
        foreach (var prompt in p.GetProperty("prompts").EnumerateObject())
        {
            if (!conversations.TryGetValue(prompt.Name, out var conv)) throw new InvalidFileException($"{f.Id}: no conversation '{prompt.Name}'");
            cmp.Equal($"prompt.{prompt.Name}", ChatTemplate.Render(conv, genPrompt), prompt.Value.GetString()!);
        }
        cmp.Equal("prompt.two_turn(no generation prompt)", ChatTemplate.Render(conversations["two_turn"], addGenerationPrompt: false),
            p.GetProperty("prompt_two_turn_without_generation_prompt").GetString()!);

        var ex = p.GetProperty("expansion");
        var grids = ex.GetProperty("image_grid_thw").EnumerateArray().Select(g => (g[0].GetInt32(), g[1].GetInt32(), g[2].GetInt32())).ToList();
        int exMerge = ex.GetProperty("merge_size").GetInt32();
        var prompt0 = ChatTemplate.Render(conversations[ex.GetProperty("conversation").GetString()!], genPrompt);
        var expanded = PromptExpansion.ExpandImagePads(prompt0, grids, exMerge);
        cmp.Equal("expansion.expanded_text", expanded, ex.GetProperty("expanded_text").GetString()!);
        cmp.ExactList("expansion.num_image_pad_tokens", [grids.Sum(g => PromptExpansion.ImageTokenCount(g, exMerge))], [ex.GetProperty("num_image_pad_tokens").GetInt64()]);
        cmp.ExactList("expansion.input_ids", Longs(tok.Encode(expanded)), Longs(ex.GetProperty("input_ids_slow_tokenizer")));

        RunLlamaFactory(f, p.GetProperty("llamafactory_vargpt_qwen2_vl"), tok, merge, cmp);
    }

    static void RunLlamaFactory(Fixture f, JsonElement lf, QwenTokenizer tok, int merge, FixtureComparer cmp)
    {
        var messages = lf.GetProperty("messages").EnumerateArray()
            .Select(m => new LlamaFactoryMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();
        // grid of the input image: LLaMA-Factory's own resize, then the Qwen2-VL processor's smart_resize with the
        // checkpoint limits from the fixture config
        var (w, h) = LlamaFactoryImageSize(lf.GetProperty("input_image_wh")[0].GetInt32(), lf.GetProperty("input_image_wh")[1].GetInt32());
        var ip = f.Config.GetProperty("image_processor");
        var (rh, rw) = SmartResize(h, w, 28, ip.GetProperty("min_pixels").GetInt64(), ip.GetProperty("max_pixels").GetInt64());
        var grid = (1, rh / 14, rw / 14);

        var expandedMsgs = PromptExpansion.ExpandTrainingPlaceholders(messages, [grid], merge, lf.GetProperty("answer_num_image_gen_pad").GetInt32());
        var (promptText, answerText) = LlamaFactoryTemplate.RenderMultiTurn(expandedMsgs).Single();
        cmp.Equal("llamafactory.prompt_text", promptText, lf.GetProperty("prompt_text").GetString()!);
        var (promptIds, answerIds) = LlamaFactoryTemplate.EncodeMultiTurn(tok, expandedMsgs).Single();
        cmp.ExactList("llamafactory.prompt_ids", Longs(promptIds), Longs(lf.GetProperty("prompt_ids")));
        cmp.ExactList("llamafactory.answer_num_ids", [answerIds.Count], [lf.GetProperty("answer_num_ids").GetInt64()]);
        int nGen = lf.GetProperty("answer_num_image_gen_pad").GetInt32();
        string expAnswer = lf.GetProperty("answer_prefix").GetString()! + SpecialTokens.ImageGenStart
            + string.Concat(Enumerable.Repeat(SpecialTokens.ImageGenPad, nGen)) + SpecialTokens.ImageGenEnd + lf.GetProperty("answer_suffix").GetString()!;
        cmp.Equal("llamafactory.answer_text", answerText, expAnswer);
        cmp.Equal("llamafactory.answer_decoded", tok.Decode(answerIds, skipSpecialTokens: false), expAnswer);
        int padId = tok.TokenToId(SpecialTokens.ImageGenPad);
        cmp.ExactList("llamafactory.answer_num_image_gen_pad", [answerIds.Count(i => i == padId)], [nGen]);
    }

    /// <summary>
    /// Image size after LLaMA-Factory's BasePlugin._preprocess_image (shrink to at most image_resolution = 512*512 pixels,
    /// the model_args default) and VargptQwen2vlPlugin._preprocess_image (sides below 28 raised to 28, aspect ratios
    /// above 200 cut to 180). Only the size matters here; the pixels are resampled with PIL NEAREST by the training side.
    /// </summary>
    static (int W, int H) LlamaFactoryImageSize(int width, int height, long imageResolution = 512 * 512)
    {
        if ((long)width * height > imageResolution)
        {
            double factor = Math.Sqrt(imageResolution / (double)((long)width * height));
            (width, height) = ((int)(width * factor), (int)(height * factor));
        }
        if (Math.Min(width, height) < 28) (width, height) = (Math.Max(width, 28), Math.Max(height, 28));
        if (width / (double)height > 200) width = height * 180;
        if (height / (double)width > 200) height = width * 180;
        return (width, height);
    }

    /// <summary>
    /// Qwen2-VL smart_resize (image_processing_qwen2_vl.py), only to derive the fixture image's grid here; the image
    /// processor proper belongs to the vision side.
    /// </summary>
    static (int H, int W) SmartResize(int height, int width, int factor, long minPixels, long maxPixels)
    {
        int hBar = (int)Math.Round(height / (double)factor, MidpointRounding.ToEven) * factor;
        int wBar = (int)Math.Round(width / (double)factor, MidpointRounding.ToEven) * factor;
        if ((long)hBar * wBar > maxPixels)
        {
            double beta = Math.Sqrt((double)height * width / maxPixels);
            hBar = (int)Math.Floor(height / beta / factor) * factor;
            wBar = (int)Math.Floor(width / beta / factor) * factor;
        }
        else if ((long)hBar * wBar < minPixels)
        {
            double beta = Math.Sqrt(minPixels / ((double)height * width));
            hBar = (int)Math.Ceiling(height * beta / factor) * factor;
            wBar = (int)Math.Ceiling(width * beta / factor) * factor;
        }
        return (hBar, wBar);
    }

    /// <summary>A conversation of the fixture: content is a plain string or a list of {type: text|image} items.</summary>
    static List<ChatMessage> ParseConversation(JsonElement conv) => conv.EnumerateArray().Select(m =>
    {
        string role = m.GetProperty("role").GetString()!;
        var c = m.GetProperty("content");
        if (c.ValueKind == JsonValueKind.String) return new ChatMessage(role, c.GetString()!);
        var parts = c.EnumerateArray().Select(item =>
        {
            // the template's test: type == 'image' or an 'image' / 'image_url' key
            bool image = (item.TryGetProperty("type", out var t) && t.GetString() == "image") || item.TryGetProperty("image", out _) || item.TryGetProperty("image_url", out _);
            if (image) return ContentPart.Image;
            if (item.TryGetProperty("text", out var text)) return ContentPart.FromText(text.GetString()!);
            throw new InvalidFileException($"unsupported content item {item.GetRawText()}");
        }).ToList();
        return new ChatMessage(role, parts);
    }).ToList();

    static long[] Longs(IEnumerable<int> ids) => ids.Select(i => (long)i).ToArray();
    static long[] Longs(JsonElement a) => a.EnumerateArray().Select(v => v.GetInt64()).ToArray();
}
