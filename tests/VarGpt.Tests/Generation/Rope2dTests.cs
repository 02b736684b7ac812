using VarGpt.Generation;
using static TorchSharp.torch;
using VarGpt.Configuration;

namespace VarGpt.Tests.Generation;

public class Rope2dTests
{
    static int[] RowSet(int h) => Rope2d.Positions(h, h, 64, 64).Select(p => p.Row).Distinct().ToArray();

    [Fact]
    public void Positions_of_025M_square_schedule_are_normalised_to_the_64x64_grid()
    {
        var s = ScaleSchedules.Official.Get(1.0, "0.25M");
        Assert.Equal([1, 2, 4, 6, 8, 12, 16, 20, 24, 32], s.Scales.Select(x => x.H));
        Assert.Equal([0], RowSet(1));
        Assert.Equal([0, 32], RowSet(2));
        Assert.Equal([0, 11, 21, 32, 43, 53], RowSet(6));
        Assert.Equal([0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59], RowSet(12));
        Assert.Equal(Enumerable.Range(0, 32).Select(i => 2 * i), RowSet(32));
        // columns follow the same rule, row-major order
        var p = Rope2d.Positions(6, 6, 64, 64);
        Assert.Equal((11, 21), p[1 * 6 + 2]);
        Assert.Equal((53, 0), p[5 * 6]);
    }

    [Fact]
    public void Positions_round_half_to_even()
    {
        // template 1.25: '1M' final scale is 70x56; scale (20,16) → column j uses j*3.5: 3.5 → 4, 10.5 → 10 (not 11)
        var cols = Rope2d.Positions(20, 16, 70, 56).Take(16).Select(x => x.Col).ToArray();
        Assert.Equal(4, cols[1]);
        Assert.Equal(10, cols[3]);
        Assert.Equal(18, cols[5]);   // 17.5 → 18
        Assert.Equal(24, cols[7]);   // 24.5 → 24
    }

    [Fact]
    public void Table_covers_all_1M_scales_padded_and_uses_row_then_column_frequencies()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        const int hd = 8; // 4 pairs: pairs 0,1 rotate with the row angle, pairs 2,3 with the column angle
        var (cos, sin) = Rope2d.Table(1.0, hd, 128);
        Assert.Equal(new long[] { 10624, hd / 2 }, cos.shape); // 10521 '1M' tokens padded to a multiple of 128
        Assert.Equal(0.0, cos.narrow(0, 10521, 103).abs().max().item<float>());
        // 0.25M scale 3 (6x6) starts at 1+4+16 = 21; its cell (1, 2) sits at grid (11, 21)
        int r = 21 + 1 * 6 + 2;
        double f1 = 1 / Math.Pow(10000, 2.0 / 4); // hd/2 = 4 → freqs 1, 1/100
        Assert.Equal(Math.Cos(11), cos[r, 0].item<float>(), 1e-5);
        Assert.Equal(Math.Sin(11 * f1), sin[r, 1].item<float>(), 1e-5);
        Assert.Equal(Math.Cos(21), cos[r, 2].item<float>(), 1e-5);
        Assert.Equal(Math.Sin(21 * f1), sin[r, 3].item<float>(), 1e-5);
    }

    [Fact]
    public void Apply_rotates_adjacent_pairs()
    {
        TorchTestSetup.Init();
        using var scope = NewDisposeScope();
        var x = tensor(new float[] { 1, 2, 3, 4 }).reshape(1, 1, 1, 4);
        var cos = tensor(new float[] { MathF.Cos(0.5f), MathF.Cos(1.5f) }).reshape(1, 2);
        var sin = tensor(new float[] { MathF.Sin(0.5f), MathF.Sin(1.5f) }).reshape(1, 2);
        var y = Rope2d.Apply(x, cos, sin).flatten().data<float>().ToArray();
        Assert.Equal(1 * Math.Cos(0.5) - 2 * Math.Sin(0.5), y[0], 1e-5);
        Assert.Equal(1 * Math.Sin(0.5) + 2 * Math.Cos(0.5), y[1], 1e-5);
        Assert.Equal(3 * Math.Cos(1.5) - 4 * Math.Sin(1.5), y[2], 1e-5);
        Assert.Equal(3 * Math.Sin(1.5) + 4 * Math.Cos(1.5), y[3], 1e-5);
    }
}
