using System.Globalization;

namespace VarGpt.Configuration;

/// <summary>One scale of a next-scale schedule: t (always 1 for images in VARGPT), h, w in latent cells.</summary>
public readonly record struct Scale(int T, int H, int W)
{
    public int Tokens => H * W;
}

/// <summary>A named resolution entry of one aspect-ratio template: its scales and output pixel size.</summary>
public sealed record ScaleSchedule(double Template, string Pn, (int H, int W) Pixels, IReadOnlyList<Scale> RawScales)
{
    /// <summary>Scales with t forced to 1, as VARGPT uses them for images (inference (1,h,w); training min(t, T//4+1) with T=1).</summary>
    public IReadOnlyList<Scale> Scales { get; } = RawScales.Select(s => s with { T = 1 }).ToArray();
    /// <summary>Number of VAR tokens (t=1): the sum of h*w.</summary>
    public int SequenceLength => Scales.Sum(s => s.Tokens);
    /// <summary>Sequence length padded to Infinity's pad_to_multiplier (128): the count of &lt;|image_gen_pad|&gt; tokens.</summary>
    public int PaddedLength(int multiple = 128) => (SequenceLength + multiple - 1) / multiple * multiple;
    public (int H, int W) Latent => (Scales[^1].H, Scales[^1].W);
}

/// <summary>
/// The dynamic-resolution table of Infinity (official var_model/infinity/utils/dynamic_resolution.py):
/// 15 h/w templates (8 ratios plus truncated inverses) x pn 0.06M/0.25M/0.60M/1M with 7/10/12/13 scales, plus a
/// model's own entries ("custom_pn_entries" of its config.json, e.g. the 128×128 schedule of the shipped model).
/// A table is immutable and belongs to the loaded config (<see cref="VargptConfig.Schedules"/>): two checkpoints that
/// give one pn name different scales coexist in a process, and no load order changes a lookup.
/// </summary>
public sealed class ScaleSchedules
{
    public const int VaeStride = 16;
    static readonly int[] PredefinedT = [1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21];
    static readonly string[] PnNames = ["0.06M", "0.25M", "0.60M", "1M"];
    static readonly int[] PnLengths = [7, 10, 12, 13];

    static readonly (double Ratio, (int H, int W)[] Hws)[] Ratio2Hws =
    [
        (1.000, [(1,1),(2,2),(4,4),(6,6),(8,8),(12,12),(16,16),(20,20),(24,24),(32,32),(40,40),(48,48),(64,64)]),
        (1.250, [(1,1),(2,2),(3,3),(5,4),(10,8),(15,12),(20,16),(25,20),(30,24),(35,28),(45,36),(55,44),(70,56)]),
        (1.333, [(1,1),(2,2),(4,3),(8,6),(12,9),(16,12),(20,15),(24,18),(28,21),(36,27),(48,36),(60,45),(72,54)]),
        (1.500, [(1,1),(2,2),(3,2),(6,4),(9,6),(15,10),(21,14),(27,18),(33,22),(39,26),(48,32),(63,42),(78,52)]),
        (1.750, [(1,1),(2,2),(3,3),(7,4),(11,6),(14,8),(21,12),(28,16),(35,20),(42,24),(56,32),(70,40),(84,48)]),
        (2.000, [(1,1),(2,2),(4,2),(6,3),(10,5),(16,8),(22,11),(30,15),(38,19),(46,23),(60,30),(74,37),(90,45)]),
        (2.500, [(1,1),(2,2),(5,2),(10,4),(15,6),(20,8),(25,10),(30,12),(40,16),(50,20),(65,26),(80,32),(100,40)]),
        (3.000, [(1,1),(2,2),(6,2),(9,3),(15,5),(21,7),(27,9),(36,12),(45,15),(54,18),(72,24),(90,30),(111,37)]),
    ];

    // template -> full list of 13 (h,w); insertion order = the official dict order (ratio, then its inverse).
    static readonly List<(double Template, (int H, int W)[] Hws)> FullRatio2Hws = BuildFull();

    /// <summary>The official table alone (what a checkpoint without custom_pn_entries uses).</summary>
    public static ScaleSchedules Official { get; } = new(BuildOfficial());

    readonly Dictionary<(double Template, string Pn), ScaleSchedule> _table;

    ScaleSchedules(Dictionary<(double, string), ScaleSchedule> table) => _table = table;

    static List<(double, (int, int)[])> BuildFull()
    {
        var list = new List<(double, (int, int)[])>();
        foreach (var (ratio, hws) in Ratio2Hws)
        {
            list.Add((ratio, hws));
            // int(1/ratio*1000)/1000: truncated, so 1/1.5 -> 0.666 and 1/1.75 -> 0.571
            if (ratio != 1.0) list.Add(((int)(1 / ratio * 1000) / 1000.0, hws.Select(x => (x.W, x.H)).ToArray()));
        }
        return list;
    }

    static Dictionary<(double, string), ScaleSchedule> BuildOfficial()
    {
        var table = new Dictionary<(double, string), ScaleSchedule>();
        foreach (var (template, hws) in FullRatio2Hws)
            for (int i = 0; i < PnNames.Length; i++)
            {
                int n = PnLengths[i];
                var last = hws[n - 1];
                var scales = Enumerable.Range(0, n).Select(k => new Scale(PredefinedT[k], hws[k].H, hws[k].W)).ToArray();
                table[(template, PnNames[i])] = new ScaleSchedule(template, PnNames[i], (last.H * VaeStride, last.W * VaeStride), scales);
            }
        return table;
    }

    /// <summary>The h/w templates in the official table order (1.0, 1.25, 0.8, 1.333, 0.75, ...).</summary>
    public static IReadOnlyList<double> Templates { get; } = FullRatio2Hws.Select(x => x.Template).ToArray();
    public static IReadOnlyList<string> StandardPns => PnNames;

    /// <summary>Nearest template: argmin |h_div_w - template| in table order, the earlier entry winning ties (numpy argmin).</summary>
    public static double NearestTemplate(double hDivW)
    {
        double best = Templates[0], bestD = Math.Abs(hDivW - best);
        foreach (var t in Templates.Skip(1))
        {
            double d = Math.Abs(hDivW - t);
            if (d < bestD) { best = t; bestD = d; }
        }
        return best;
    }

    /// <summary>
    /// This table with extra entries, as the official code extends dynamic_resolution_h_w (the rope table is still
    /// built from the template's '1M' entry). An entry equal to an existing one is a no-op; one that gives an existing
    /// template/pn other scales or pixels is an error naming it.
    /// </summary>
    public ScaleSchedules With(IEnumerable<ScaleSchedule> extra)
    {
        Dictionary<(double, string), ScaleSchedule>? table = null;
        foreach (var s in extra)
        {
            if (!Templates.Contains(s.Template))
                throw new InvalidOptionException($"pn '{s.Pn}': unknown template {s.Template.ToString(CultureInfo.InvariantCulture)}; valid templates (h/w): {TemplateList()}");
            var current = table ?? _table;
            if (current.TryGetValue((s.Template, s.Pn), out var old))
            {
                if (old.RawScales.SequenceEqual(s.RawScales) && old.Pixels == s.Pixels) continue;
                throw new InvalidOptionException($"pn '{s.Pn}' of template {s.Template.ToString(CultureInfo.InvariantCulture)} already exists with different scales");
            }
            table ??= new Dictionary<(double, string), ScaleSchedule>(_table);
            table[(s.Template, s.Pn)] = s;
        }
        return table is null ? this : new ScaleSchedules(table);
    }

    /// <summary>Looks up a schedule; unknown template/pn gives an error listing the valid ones.</summary>
    public ScaleSchedule Get(double template, string pn)
    {
        if (_table.TryGetValue((template, pn), out var s)) return s;
        var pns = PnsOf(template);
        if (pns.Count == 0)
            throw new InvalidOptionException($"unknown aspect template {template.ToString(CultureInfo.InvariantCulture)}; valid templates (h/w): {TemplateList()}");
        throw new InvalidOptionException($"unknown pixel budget '{pn}' for template {template.ToString(CultureInfo.InvariantCulture)}; valid: {string.Join(", ", pns)}");
    }

    /// <summary>All pn names of a template (the four standard ones plus this table's extras).</summary>
    public IReadOnlyList<string> PnsOf(double template) => _table.Keys.Where(k => k.Template == template).Select(k => k.Pn).ToList();

    static string TemplateList() => string.Join(", ", Templates.Select(t => t.ToString(CultureInfo.InvariantCulture)));
}
