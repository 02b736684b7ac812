using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using Microsoft.Extensions.AI;
using VarGpt.Configuration;
using VarGpt.Vision;
using VarGpt.Model;
using MeaiOptions = Microsoft.Extensions.AI.ImageGenerationOptions;

namespace VarGpt.Inference;

/// <summary>
/// <see cref="IImageGenerator"/> (Microsoft.Extensions.AI, experimental MEAI001) over <see cref="VargptModel"/> (<see cref="VargptModel.AsImageGenerator"/>; it does not own the model).
/// A request without original images is text-to-image; with one original image (DataContent) it is an edit.
/// Options: Count; ImageSize → the closest template / pixel budget (as the interface specifies); MediaType image/png only;
/// ResponseFormat Data only. AdditionalProperties: "seed" (long), "cfg", "tau", "top_p" (double), "top_k" (int),
/// "pn" (string), "force_image_start" (bool), "edit_max_pixels" (long). Each returned DataContent carries its "seed"
/// in AdditionalProperties; the model's text (if any) is a TextContent; RawRepresentation is the <see cref="ImageResult"/>.
/// </summary>
[Experimental("MEAI001")]
public sealed class VargptImageGenerator(VargptModel model, ImageOptions? defaults = null) : IImageGenerator
{
    readonly ImageOptions _defaults = defaults ?? new ImageOptions();

    public VargptModel Model { get; } = model;

    public async Task<ImageGenerationResponse> GenerateAsync(ImageGenerationRequest request, MeaiOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var prompt = request.Prompt;
        if (string.IsNullOrWhiteSpace(prompt)) throw new InvalidOptionException("the request has no prompt", nameof(request));
        var o = ToImageOptions(options);
        var originals = request.OriginalImages?.ToList() ?? [];
        if (originals.Count > 1) throw new NotSupportedException($"VARGPT edits one image at a time; the request has {originals.Count} original images");
        RgbImage? source = null;
        if (originals.Count == 1)
        {
            if (originals[0] is not DataContent data || !data.HasTopLevelMediaType("image"))
                throw new NotSupportedException($"the original image must be image DataContent (got {originals[0].GetType().Name}); URIs are not fetched");
            source = RgbImage.Decode(data.Data.ToArray(), data.Name ?? "original image");
        }
        var result = await Task.Run(() => source is null
            ? Model.GenerateImage(prompt, o, null, cancellationToken)
            : Model.EditImage(source, prompt, o, null, cancellationToken), cancellationToken).ConfigureAwait(false);
        var contents = new List<AIContent>();
        foreach (var p in result.Images)
            contents.Add(new DataContent(p.Image.EncodePng(), "image/png")
            {
                AdditionalProperties = new() { ["seed"] = p.Seed, ["width"] = p.Image.Width, ["height"] = p.Image.Height },
            });
        if (result.Text.Length > 0) contents.Add(new TextContent(result.Text));
        return new ImageGenerationResponse(contents) { RawRepresentation = result };
    }

    /// <summary>MEAI options → ours (defaults from the constructor).</summary>
    public ImageOptions ToImageOptions(MeaiOptions? options)
    {
        var o = _defaults;
        if (options is null) return o;
        if (options.MediaType is string mt && !string.Equals(mt, "image/png", StringComparison.OrdinalIgnoreCase))
            throw new NotSupportedException($"media type '{mt}' is not supported; VarGpt returns image/png");
        if (options.ResponseFormat is ImageGenerationResponseFormat rf && rf != ImageGenerationResponseFormat.Data)
            throw new NotSupportedException($"response format {rf} is not supported; VarGpt returns the image data");
        if (options.Count is int n) o = o with { Count = n };
        if (options.ImageSize is { } size)
        {
            if (size.Width <= 0 || size.Height <= 0) throw new InvalidOptionException($"image size {size.Width}x{size.Height} must be positive");
            double template = ScaleSchedules.NearestTemplate(size.Height / (double)size.Width);
            long want = (long)size.Width * size.Height;
            var table = Model.Config.Schedules;
            var pn = table.PnsOf(template)
                .OrderBy(p => Math.Abs(Math.Log(table.Get(template, p).Pixels.H * (double)table.Get(template, p).Pixels.W / want))).First();
            o = o with { AspectRatio = template, Pn = pn };
        }
        if (options.AdditionalProperties is { } props)
        {
            foreach (var (key, value) in props)
            {
                o = key switch
                {
                    "seed" => o with { Seed = Convert.ToInt64(value, CultureInfo.InvariantCulture) },
                    "cfg" => o with { Cfg = Convert.ToDouble(value, CultureInfo.InvariantCulture) },
                    "tau" => o with { Tau = Convert.ToDouble(value, CultureInfo.InvariantCulture) },
                    "top_k" => o with { TopK = Convert.ToInt32(value, CultureInfo.InvariantCulture) },
                    "top_p" => o with { TopP = Convert.ToDouble(value, CultureInfo.InvariantCulture) },
                    "pn" => o with { Pn = Convert.ToString(value, CultureInfo.InvariantCulture) },
                    "force_image_start" => o with { ForceImageStart = Convert.ToBoolean(value, CultureInfo.InvariantCulture) },
                    "edit_max_pixels" => o with { EditMaxPixels = value is null ? null : Convert.ToInt64(value, CultureInfo.InvariantCulture) },
                    _ => throw new InvalidOptionException($"unknown additional property '{key}'; known: seed, cfg, tau, top_k, top_p, pn, force_image_start, edit_max_pixels"),
                };
            }
        }
        return o;
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ImageGeneratorMetadata))
            return new ImageGeneratorMetadata("VarGpt.NET", null, Path.GetFileName(Model.Directory.TrimEnd('/', '\\')));
        if (serviceType.IsInstanceOfType(this)) return this;
        if (serviceType.IsInstanceOfType(Model)) return Model;
        return null;
    }

    /// <summary>Nothing to release: the model belongs to the caller.</summary>
    public void Dispose() { }
}
