namespace VarGpt.Text;

/// <summary>
/// Token strings the Qwen2-VL chat template and the VARGPT processors write into prompts. Only strings live here: ids
/// are always looked up in the checkpoint's tokenizer files (<see cref="QwenTokenizer.TokenToId"/>).
/// </summary>
public static class SpecialTokens
{
    public const string ImStart = "<|im_start|>";
    public const string ImEnd = "<|im_end|>";
    public const string EndOfText = "<|endoftext|>";
    public const string VisionStart = "<|vision_start|>";
    public const string VisionEnd = "<|vision_end|>";
    public const string ImagePad = "<|image_pad|>";
    public const string VideoPad = "<|video_pad|>";
    /// <summary>The three tokens prepare_vargpt_v1_1.py adds for image generation.</summary>
    public const string ImageGenStart = "<|image_gen_start|>";
    public const string ImageGenEnd = "<|image_gen_end|>";
    public const string ImageGenPad = "<|image_gen_pad|>";
}
