using System.CommandLine;
using VarGpt.Model;
using VarGpt.Vision;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>vargpt edit --model DIR --image in.png "INSTRUCTION" -o out.png: image editing in the official edit format.</summary>
public static class EditCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var image = new ImageCommandOptions();
        var instruction = new Argument<string>("INSTRUCTION")
        {
            Description = "The edit instruction. The source image goes first in the user turn, or where the instruction says <image>.",
        };
        var input = new Option<string>("--image", "-i") { Description = "Source image (PNG, JPEG, BMP, GIF, WebP).", Required = true };
        var maxPixels = new Option<long>("--max-pixels")
        {
            Description = "Shrink the source image (NEAREST) to at most this many pixels first, as LLaMA-Factory does on the official edit path; 0 = no pre-shrink.",
            DefaultValueFactory = _ => ImageOptions.DefaultEditMaxPixels,
        };
        var cmd = new Command("edit", "Edit an image following an instruction (VARGPT-v1.1-edit checkpoint; official LLaMA-Factory edit format).") { instruction };
        cmd.Options.Add(input);
        cmd.Options.Add(maxPixels);
        model.AddTo(cmd);
        image.AddTo(cmd);
        cmd.WithDetails(ImageCommandOptions.Details + "\n" +
            """
            The prompt is the official edit format (data/eval_inference_demo_edit.json): user content "<image> INSTRUCTION",
            e.g. "Transform this image <image> to match the style of Bauhaus-Style Poster". The context before the image
            (prompt + source image tokens) must fit the checkpoint's cfg_uncond rows (vargpt_gen_config.text_maxlen):
            lower --max-pixels if it does not.
            """);
        cmd.WithExamples(
            "vargpt edit --model ~/models/VARGPT-v1.1-edit --image cat.jpg \"Transform this image <image> to match the style of Bauhaus-Style Poster\" -o poster.png",
            "vargpt edit -m DIR -i photo.png \"make the sky purple\" --seed 7 --max-pixels 200000");
        cmd.SetAction(parse =>
        {
            var o = parse.InvocationConfiguration.Output;
            var log = parse.InvocationConfiguration.Error;
            var px = parse.GetValue(maxPixels);
            if (px < 0) throw new VargptInputException("--max-pixels must be ≥ 0 (0 = no pre-shrink)");
            var options = image.Read(parse) with { EditMaxPixels = px == 0 ? null : px };
            RgbImage source;
            try { source = RgbImage.Load(Path.GetFullPath(parse.GetRequiredValue(input))); }
            catch (ImageLoadException e) { throw new VargptInputException($"cannot read the edit image {e.Message}"); }
            using var images = model.Load(parse, log);
            return ImageCommandOptions.RunAndSave(images, options, image.OutputPath(parse), o, log,
                (opts, progress) => images.EditImage(source, parse.GetRequiredValue(instruction), opts, progress));
        });
        return cmd;
    }
}
