using VarGpt.Configuration;
using VarGpt.LanguageModel;
using VarGpt.Vision;

namespace VarGpt.Inference;

/// <summary>One generated image and the seed that reproduces it (with the same prompt and options).</summary>
public sealed record GeneratedImage(RgbImage Image, long Seed, ScaleSchedule Schedule);

/// <summary>What one text-to-image or edit request produced: the images, the text the model wrote before &lt;|image_gen_start|&gt;, and facts about the run.</summary>
/// <param name="Text">generated text (special tokens skipped); empty when the image start was forced</param>
/// <param name="ContextTokens">tokens before &lt;|image_gen_start|&gt; = rows of the cross-attention context (≤ text_maxlen with CFG)</param>
public sealed record ImageResult(IReadOnlyList<GeneratedImage> Images, string Text, bool ImageStartForced, int PromptTokens, int ContextTokens)
{
    public long Seed => Images[0].Seed;
}

/// <summary>The model answered without starting an image (no &lt;|image_gen_start|&gt;); <see cref="Text"/> is what it wrote.</summary>
public sealed class NoImageGeneratedException(string text, StopReason stopReason, int tokens)
    : VargptInputException($"the model did not start an image (no <|image_gen_start|>): it stopped ({(stopReason == StopReason.MaxLength ? "max new tokens reached" : stopReason.ToString())}) " +
                $"after {tokens} text token(s): \"{Shorten(text)}\". Rephrase the prompt as an image request, or force the image start " +
                "(ImageOptions.ForceImageStart / --force-image-start; not an official option).")
{
    public string Text { get; } = text;
    public StopReason StopReason { get; } = stopReason;

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";
}
