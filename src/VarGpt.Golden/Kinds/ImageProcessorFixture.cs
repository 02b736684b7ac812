using VarGpt.Checkpoint;
using System.Text.Json;
using VarGpt.Vision;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Golden.Kinds;

/// <summary>
/// Fixture "image_processor": official VARGPTQwen2VLImageProcessor on synthetic uint8 images. Checks the PIL-bicubic
/// resize (uint8), pixel_values / grids of a two-image call, the max_pixels branch on a large image (stored row subset),
/// and that rescale/normalise/patchify fed with the fixture's own resized uint8 reproduce the expected rows exactly.
/// </summary>
public sealed class ImageProcessorFixture : IFixtureKind
{
    public string Kind => "image_processor";

    public void Run(Fixture f, FixtureComparer cmp)
    {
        double atol = f.Atol("atol"), u8Atol = f.Atol("u8_atol", 0);
        var settings = PreprocessorConfig.Parse(f.Config, $"{f.Id} config");
        var proc = new ImageProcessor(settings);
        var a = RgbImage.FromTensor(f.In("image_a"));
        var b = RgbImage.FromTensor(f.In("image_b"));
        var c = RgbImage.FromTensor(f.In("image_c"));
        var resizedHw = f.Params.GetProperty("resized_hw");

        // Call 1: [a, b] with the checkpoint settings.
        using (var ab = proc.Preprocess([a, b]))
        {
            cmp.Close("pixel_values_ab", ab.PixelValues, f.Out("pixel_values_ab"), atol, 0);
            cmp.Exact("image_grid_thw_ab", ab.ImageGridThw, f.Out("image_grid_thw_ab"));
            cmp.Check("shrunk_for_max_pixels_ab", !ab.AnyShrunkForMaxPixels, $"flags [{string.Join(",", ab.ShrunkForMaxPixels)}]");
            var expTokens = Grid(f.Out("image_grid_thw_ab")).Select(g => g.T * g.H * g.W / (settings.MergeSize * settings.MergeSize)).ToArray();
            cmp.ExactList("token_counts_ab", ab.TokenCounts.Select(x => (long)x).ToArray(), expTokens);
        }

        // Call 2: c with max_pixels lowered so that smart_resize shrinks it.
        var cSettings = settings with { MaxPixels = f.Params.GetProperty("c_max_pixels_override").GetInt32() };
        var cProc = new ImageProcessor(cSettings);
        using var rowIndex = f.In("c_row_index");
        using (var pc = cProc.Preprocess([c]))
        {
            cmp.ExactList("c_num_rows", [pc.PixelValues.shape[0]], [f.Params.GetProperty("c_num_rows").GetInt64()]);
            using var rows = pc.PixelValues.index_select(0, rowIndex);
            cmp.Close("pixel_values_c_rows", rows, f.Out("pixel_values_c_rows"), atol, 0);
            cmp.Exact("image_grid_thw_c", pc.ImageGridThw, f.Out("image_grid_thw_c"));
            cmp.Check("shrunk_for_max_pixels_c", pc.ShrunkForMaxPixels[0], "max_pixels branch not reported");
        }

        foreach (var (name, img, s) in new[] { ("a", a, settings), ("b", b, settings), ("c", c, cSettings) })
        {
            // smart_resize target
            var (h, w, _) = ImageProcessor.SmartResize(img.Height, img.Width, s.Factor, s.MinPixels, s.MaxPixels);
            var hw = resizedHw.GetProperty(name);
            cmp.ExactList($"smart_resize_{name}", [h, w], [hw[0].GetInt64(), hw[1].GetInt64()]);

            // PIL bicubic uint8 resize: the fixture allows u8_atol levels; a faithful port is bit-exact, so report both.
            using var expU8 = f.Out($"resized_{name}_u8");
            var resized = PilResize.Resize(img, w, h, PilFilter.Bicubic);
            using var gotU8 = resized.ToTensor();
            cmp.Close($"resized_{name}_u8", gotU8, expU8, u8Atol, 0);
            using (var ne = gotU8.ne(expU8))
                cmp.Check($"resized_{name}_u8_bit_exact", ne.sum().item<long>() == 0, $"{ne.sum().item<long>()} of {ne.numel()} bytes differ from PIL");

            // Rescale/normalise/patchify alone, fed with PIL's own uint8 result: exact.
            using var fromExp = proc.Patchify(RgbImage.FromTensor(expU8), out _);
            if (name == "c")
            {
                using var sub = fromExp.index_select(0, rowIndex);
                cmp.Close("patchify_c_rows_exact", sub, f.Out("pixel_values_c_rows"), 0, 0);
            }
            else
            {
                using var all = f.Out("pixel_values_ab");
                long off = name == "a" ? 0 : all.shape[0] - fromExp.shape[0];
                using var exp = all.narrow(0, off, fromExp.shape[0]);
                cmp.Close($"patchify_{name}_exact", fromExp, exp, 0, 0);
            }
        }
    }

    static (long T, long H, long W)[] Grid(Tensor g)
    {
        using (g)
        {
            var v = g.to(ScalarType.Int64).data<long>().ToArray();
            return Enumerable.Range(0, v.Length / 3).Select(i => (v[3 * i], v[3 * i + 1], v[3 * i + 2])).ToArray();
        }
    }
}
