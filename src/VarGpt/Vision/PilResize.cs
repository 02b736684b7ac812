namespace VarGpt.Vision;

/// <summary>PIL's resampling filters (Image.Resampling values in the comments).</summary>
public enum PilFilter
{
    Nearest = 0,
    Lanczos = 1,
    Bilinear = 2,
    Bicubic = 3,
    Box = 4,
    Hamming = 5,
}

/// <summary>
/// A bit-exact port of Pillow's Image.resize for 8-bit RGB images (libImaging/Resample.c and, for NEAREST,
/// Geometry.c ImagingScaleAffine; unchanged between Pillow 7 and 11). Hugging Face image processors resize through
/// PIL, so matching the processor's pixel values needs PIL's arithmetic, not a float bicubic: coefficients are
/// computed in double, normalised, converted to fixed point with 22 fractional bits, and applied as a horizontal
/// pass followed by a vertical pass with uint8 rounding and clipping in between.
/// </summary>
public static class PilResize
{
    /// <summary>Image.resize((width, height), filter) on the whole image (box = the full image).</summary>
    public static RgbImage Resize(RgbImage image, int width, int height, PilFilter filter)
    {
        if (width <= 0 || height <= 0)
            throw new ArgumentException($"resize target must be positive, got {width}x{height} (PIL: height and width must be > 0)");
        if (width == image.Width && height == image.Height) return new RgbImage(width, height, (byte[])image.Data.Clone());
        return filter == PilFilter.Nearest ? ScaleNearest(image, width, height) : Resample(image, width, height, filter);
    }

    // ---------------------------------------------------------------- filters (Resample.c)

    static double Support(PilFilter f) => f switch
    {
        PilFilter.Box => 0.5,
        PilFilter.Bilinear => 1.0,
        PilFilter.Hamming => 1.0,
        PilFilter.Bicubic => 2.0,
        PilFilter.Lanczos => 3.0,
        _ => throw new ArgumentException($"filter {f} is not a convolution filter"),
    };

    static double Filter(PilFilter f, double x)
    {
        switch (f)
        {
            case PilFilter.Box:
                return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
            case PilFilter.Bilinear:
                if (x < 0.0) x = -x;
                return x < 1.0 ? 1.0 - x : 0.0;
            case PilFilter.Hamming:
                if (x < 0.0) x = -x;
                if (x == 0.0) return 1.0;
                if (x >= 1.0) return 0.0;
                x *= Math.PI;
                // the C source uses float literals 0.54f/0.46f promoted to double
                return Math.Sin(x) / x * ((double)0.54f + (double)0.46f * Math.Cos(x));
            case PilFilter.Bicubic:
                {
                    const double a = -0.5;
                    if (x < 0.0) x = -x;
                    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
                    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
                    return 0.0;
                }
            case PilFilter.Lanczos:
                return -3.0 <= x && x < 3.0 ? Sinc(x) * Sinc(x / 3) : 0.0;
            default:
                throw new ArgumentException($"filter {f} is not a convolution filter");
        }
    }

    static double Sinc(double x)
    {
        if (x == 0.0) return 1.0;
        x *= Math.PI;
        return Math.Sin(x) / x;
    }

    const int PrecisionBits = 32 - 8 - 2;

    /// <summary>precompute_coeffs + normalize_coeffs_8bpc: per output pixel the first input index, the tap count and
    /// ksize fixed-point weights.</summary>
    static (int[] Bounds, int[] Weights, int KSize) PrecomputeCoeffs(int inSize, float in0, float in1, int outSize, PilFilter f)
    {
        double scale = (double)(in1 - in0) / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = Support(f) * filterscale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var bounds = new int[outSize * 2];
        var kk = new double[outSize * ksize];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = in0 + (xx + 0.5) * scale;
            double ww = 0.0;
            double ss = 1.0 / filterscale;
            int xmin = (int)(center - support + 0.5); // C truncation
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            int k = xx * ksize;
            for (int x = 0; x < xmax; x++)
            {
                double w = Filter(f, (x + xmin - center + 0.5) * ss);
                kk[k + x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++)
                if (ww != 0.0) kk[k + x] /= ww;
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        var fixedK = new int[kk.Length];
        for (int i = 0; i < kk.Length; i++)
            fixedK[i] = kk[i] < 0 ? (int)(-0.5 + kk[i] * (1 << PrecisionBits)) : (int)(0.5 + kk[i] * (1 << PrecisionBits));
        return (bounds, fixedK, ksize);
    }

    static byte Clip8(int v)
    {
        v >>= PrecisionBits; // arithmetic shift, as in C for int
        return v < 0 ? (byte)0 : v > 255 ? (byte)255 : (byte)v;
    }

    /// <summary>ImagingResampleInner for an RGB image with box (0, 0, w, h).</summary>
    static RgbImage Resample(RgbImage im, int xsize, int ysize, PilFilter f)
    {
        bool needHorizontal = xsize != im.Width;
        bool needVertical = ysize != im.Height;
        var (boundsH, kH, ksizeH) = PrecomputeCoeffs(im.Width, 0, im.Width, xsize, f);
        var (boundsV, kV, ksizeV) = PrecomputeCoeffs(im.Height, 0, im.Height, ysize, f);
        int yboxFirst = boundsV[0];
        int yboxLast = boundsV[ysize * 2 - 2] + boundsV[ysize * 2 - 1];

        byte[] src = im.Data;
        int srcW = im.Width, srcH = im.Height;
        if (needHorizontal)
        {
            // only the rows the vertical pass will read are resampled horizontally
            for (int i = 0; i < ysize; i++) boundsV[i * 2] -= yboxFirst;
            int rows = yboxLast - yboxFirst;
            var tmp = new byte[rows * xsize * 3];
            var input = src;
            int inW = srcW;
            Parallel.For(0, rows, yy =>
            {
                int inRow = (yy + yboxFirst) * inW * 3;
                int outRow = yy * xsize * 3;
                for (int xx = 0; xx < xsize; xx++)
                {
                    int xmin = boundsH[xx * 2], xmax = boundsH[xx * 2 + 1], k = xx * ksizeH;
                    int ss0 = 1 << (PrecisionBits - 1), ss1 = ss0, ss2 = ss0;
                    int p = inRow + xmin * 3;
                    for (int x = 0; x < xmax; x++, p += 3)
                    {
                        int w = kH[k + x];
                        ss0 += input[p] * w;
                        ss1 += input[p + 1] * w;
                        ss2 += input[p + 2] * w;
                    }
                    tmp[outRow + xx * 3] = Clip8(ss0);
                    tmp[outRow + xx * 3 + 1] = Clip8(ss1);
                    tmp[outRow + xx * 3 + 2] = Clip8(ss2);
                }
            });
            src = tmp;
            srcW = xsize;
            srcH = rows;
        }
        if (!needVertical) return new RgbImage(srcW, srcH, needHorizontal ? src : (byte[])src.Clone());

        var output = new byte[ysize * srcW * 3];
        var vin = src;
        int w3 = srcW * 3;
        Parallel.For(0, ysize, yy =>
        {
            int ymin = boundsV[yy * 2], ymax = boundsV[yy * 2 + 1], k = yy * ksizeV;
            int outRow = yy * w3;
            for (int xc = 0; xc < w3; xc++)
            {
                int ss = 1 << (PrecisionBits - 1);
                int p = ymin * w3 + xc;
                for (int y = 0; y < ymax; y++, p += w3) ss += vin[p] * kV[k + y];
                output[outRow + xc] = Clip8(ss);
            }
        });
        return new RgbImage(srcW, ysize, output);
    }

    /// <summary>NEAREST: Pillow routes it through an affine scale (Geometry.c ImagingScaleAffine) whose source
    /// coordinate is accumulated by repeated addition, not recomputed, so the rounding matches only this way.</summary>
    static RgbImage ScaleNearest(RgbImage im, int xsize, int ysize)
    {
        double a0 = (double)((float)im.Width - 0f) / xsize;
        double a4 = (double)((float)im.Height - 0f) / ysize;
        var xintab = new int[xsize];
        int xmin = xsize, xmax = 0;
        double xo = 0 + a0 * 0.5;
        for (int x = 0; x < xsize; x++)
        {
            int xin = xo < 0.0 ? -1 : (int)xo;
            if (xin >= 0 && xin < im.Width)
            {
                xmax = x + 1;
                if (x < xmin) xmin = x;
                xintab[x] = xin;
            }
            xo += a0;
        }
        var output = new byte[xsize * ysize * 3]; // fill = 1: rows/columns outside the source stay 0
        double yo = 0 + a4 * 0.5;
        for (int y = 0; y < ysize; y++)
        {
            int yi = yo < 0.0 ? -1 : (int)yo;
            if (yi >= 0 && yi < im.Height)
            {
                int inRow = yi * im.Width * 3, outRow = y * xsize * 3;
                for (int x = xmin; x < xmax; x++)
                {
                    int s = inRow + xintab[x] * 3, d = outRow + x * 3;
                    output[d] = im.Data[s];
                    output[d + 1] = im.Data[s + 1];
                    output[d + 2] = im.Data[s + 2];
                }
            }
            yo += a4;
        }
        return new RgbImage(xsize, ysize, output);
    }
}
