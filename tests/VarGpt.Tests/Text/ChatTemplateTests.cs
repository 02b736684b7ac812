using VarGpt.Text;

namespace VarGpt.Tests.Text;

public class ChatTemplateTests
{
    [Fact]
    public void Default_system_turn_images_in_place_and_generation_prompt()
    {
        var s = ChatTemplate.Render([ChatMessage.User(ContentPart.FromText("A "), ContentPart.Image, ContentPart.FromText(" B"))], addGenerationPrompt: true);
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nA <|vision_start|><|image_pad|><|vision_end|> B<|im_end|>\n<|im_start|>assistant\n", s);
    }

    [Fact]
    public void Own_system_message_replaces_the_default_and_no_generation_prompt()
    {
        var s = ChatTemplate.Render([ChatMessage.System("S"), ChatMessage.User("u"), ChatMessage.Assistant("a")], addGenerationPrompt: false);
        Assert.Equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n", s);
    }

    [Fact]
    public void Vision_ids_number_images_across_messages()
    {
        var s = ChatTemplate.Render([ChatMessage.User(ContentPart.Image), ChatMessage.Assistant("x"), ChatMessage.User(ContentPart.Image)], false, addVisionId: true);
        Assert.Contains("user\nPicture 1: <|vision_start|>", s);
        Assert.Contains("user\nPicture 2: <|vision_start|>", s);
    }

    [Fact]
    public void Empty_conversation_renders_only_the_generation_prompt() =>
        Assert.Equal("<|im_start|>assistant\n", ChatTemplate.Render([], addGenerationPrompt: true));
}

public class PromptExpansionTests
{
    [Fact]
    public void Image_pads_expand_per_grid_in_order()
    {
        string text = "a<|image_pad|>b<|image_pad|>";
        var got = PromptExpansion.ExpandImagePads(text, [(1, 2, 4), (1, 4, 4)], mergeSize: 2);
        Assert.Equal("a" + Pads(2) + "b" + Pads(4), got);
        // a batch consumes the grids across prompts
        var batch = PromptExpansion.ExpandImagePads(["<|image_pad|>", "x", "<|image_pad|><|image_pad|>"], [(1, 2, 2), (2, 2, 2), (1, 4, 2)], 2);
        Assert.Equal([Pads(1), "x", Pads(2) + Pads(2)], batch);
    }

    [Fact]
    public void Image_count_mismatch_is_an_error_naming_both_counts()
    {
        var e = Assert.Throws<ArgumentException>(() => PromptExpansion.ExpandImagePads("<|image_pad|><|image_pad|>", [(1, 2, 2)]));
        Assert.Contains("2 <|image_pad|>", e.Message);
        Assert.Contains("1 image grid", e.Message);
        Assert.Throws<ArgumentException>(() => PromptExpansion.ExpandImagePads("no image", [(1, 2, 2)]));
        Assert.Throws<ArgumentException>(() => PromptExpansion.ImageTokenCount((1, 3, 2), 2));
    }

    [Fact]
    public void Training_placeholders_expand_and_gen_grids_are_dropped()
    {
        LlamaFactoryMessage[] msgs = [new("user", "edit <image> please"), new("assistant", "done: <image_gen>")];
        string gen = SpecialTokens.ImageGenStart + string.Concat(Enumerable.Repeat(SpecialTokens.ImageGenPad, 3)) + SpecialTokens.ImageGenEnd;
        string image = SpecialTokens.VisionStart + Pads(6) + SpecialTokens.VisionEnd;
        // grids for all placeholders (official: the <image_gen> target's grid is dropped) or for the inputs only
        foreach (var grids in new List<(int, int, int)>[] { [(1, 4, 6), (1, 32, 32)], [(1, 4, 6)] })
        {
            var got = PromptExpansion.ExpandTrainingPlaceholders(msgs, grids, mergeSize: 2, imageGenTokenCount: 3);
            Assert.Equal($"edit {image} please", got[0].Content);
            Assert.Equal($"done: {gen}", got[1].Content);
        }
        // the gen target's grid sits at its placeholder position among all images
        LlamaFactoryMessage[] two = [new("user", "<image_gen> then <image>"), new("assistant", "ok")];
        var g2 = PromptExpansion.ExpandTrainingPlaceholders(two, [(1, 32, 32), (1, 2, 2)], 2, 3);
        Assert.Equal($"{gen} then {SpecialTokens.VisionStart}{Pads(1)}{SpecialTokens.VisionEnd}", g2[0].Content);
        var e = Assert.Throws<ArgumentException>(() => PromptExpansion.ExpandTrainingPlaceholders(msgs, [], 2, 3));
        Assert.Contains("1 <image> and 1 <image_gen>", e.Message);
    }

    [Fact]
    public void LlamaFactory_multi_turn_uses_separator_and_eos_id()
    {
        var tok = TextTestData.Qwen();
        LlamaFactoryMessage[] msgs = [new("user", "q1"), new("assistant", "a1"), new("user", "q2"), new("assistant", "a2")];
        var text = LlamaFactoryTemplate.RenderMultiTurn(msgs);
        Assert.Equal("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\n", text[0].Prompt);
        Assert.Equal("a1<|im_end|>", text[0].Answer);
        Assert.Equal("\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n", text[1].Prompt);
        var ids = LlamaFactoryTemplate.EncodeMultiTurn(tok, msgs);
        Assert.Equal(tok.EosTokenId, ids[1].Answer[^1]);
        for (int k = 0; k < 2; k++)
        {
            Assert.Equal(text[k].Prompt, tok.Decode(ids[k].Prompt, false));
            Assert.Equal(text[k].Answer, tok.Decode(ids[k].Answer, false));
        }
        Assert.Throws<ArgumentException>(() => LlamaFactoryTemplate.RenderMultiTurn([new("user", "only a prompt")]));
    }

    static string Pads(int n) => string.Concat(Enumerable.Repeat(SpecialTokens.ImagePad, n));
}
