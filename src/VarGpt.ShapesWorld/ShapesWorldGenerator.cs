using System.Text.Json.Serialization;

namespace VarGpt.ShapesWorld;

[JsonConverter(typeof(JsonStringEnumConverter<ShapesTaskKind>))]
public enum ShapesTaskKind { Understanding, Description, TextToImage, Edit }

[JsonConverter(typeof(JsonStringEnumConverter<QuestionKind>))]
public enum QuestionKind { Count, Exists, ShapeOf, ColorOf, PositionOf, SizeOf }

[JsonConverter(typeof(JsonStringEnumConverter<EditKind>))]
public enum EditKind { ChangeColor, ChangeShape, Move, Resize, Add, Remove }

[JsonConverter(typeof(JsonStringEnumConverter<ShapesSplit>))]
public enum ShapesSplit { Train, Eval }

/// <summary>An edit: Expected is what the scorer checks (an added object may leave its size open).
/// SourceIndex: edited/removed object in Source (-1 for Add); TargetIndex: edited/added object in Target/Expected (-1 for Remove).</summary>
public sealed record ShapesEdit(EditKind Kind, Scene Source, Scene Target, SceneSpec Expected, int SourceIndex, int TargetIndex, string Instruction);

/// <summary>
/// One LLaMA-Factory sharegpt sample plus its ground truth. User/Assistant hold the &lt;image&gt; / &lt;image_gen&gt;
/// placeholders; Images are the scenes to render in placeholder order (understanding: [shown]; text-to-image: [target];
/// edit: [source, target]). Requested: what a generated image must show (text-to-image and edit); Answer: the exact
/// expected answer (understanding and description).
/// </summary>
public sealed record ShapesSample(long Index, ShapesSplit Split, ShapesTaskKind Kind, string User, string Assistant,
    IReadOnlyList<Scene> Images, SceneSpec? Requested, ShapesEdit? Edit, QuestionKind? Question, string? Answer);

public sealed record ShapesWorldOptions
{
    public int Seed { get; init; }
    public int ImageSize { get; init; } = 128;
    public double TwoObjectProbability { get; init; } = 0.5;
    /// <summary>Probability that a text-to-image prompt leaves the size (and, for one object, the position) unsaid.</summary>
    public double OmitAttributeProbability { get; init; } = 0.2;
    /// <summary>Uniform box-centre jitter, fraction of the image side (≤ ShapesPalette.MaxJitter so objects never touch).</summary>
    public float PositionJitter { get; init; }
    /// <summary>Fraction of shape×colour×position triples held out of training (at most one position per shape×colour pair).</summary>
    public double HeldOutFraction { get; init; } = 0.1;
    public double UnderstandingWeight { get; init; } = 0.3;
    public double DescriptionWeight { get; init; } = 0.1;
    public double TextToImageWeight { get; init; } = 0.35;
    public double EditWeight { get; init; } = 0.25;
}

/// <summary>Small deterministic PRNG (SplitMix64) so samples are identical across runtimes and platforms.</summary>
public sealed class ShapesRng(ulong state)
{
    ulong _s = state;
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
    public ulong NextU64() => Mix(_s += 0x9E3779B97F4A7C15UL);
    public int Next(int n) => (int)(NextU64() % (ulong)n);
    public double NextDouble() => (NextU64() >> 11) * (1.0 / (1UL << 53));
    public bool Chance(double p) => NextDouble() < p;
    public T Pick<T>(IReadOnlyList<T> xs) => xs[Next(xs.Count)];
}

/// <summary>
/// ShapesWorld: synthetic understanding / text-to-image / editing tasks over 1–2 coloured shapes, deterministic from
/// (options, split, index). The held-out split: a set of shape×colour×position triples never appears in any training
/// image (source or target); every Eval sample shows one of them (text-to-image: as a requested object with its
/// position stated).
/// </summary>
public sealed class ShapesWorldGenerator
{
    public ShapesWorldOptions Options { get; }
    public IReadOnlySet<(Shape, ShapeColor, Position)> HeldOut { get; }

    public ShapesWorldGenerator(ShapesWorldOptions? options = null)
    {
        Options = options ?? new ShapesWorldOptions();
        if (Options.PositionJitter < 0 || Options.PositionJitter > ShapesPalette.MaxJitter)
            throw new InvalidOptionException($"PositionJitter must be in [0, {ShapesPalette.MaxJitter}], got {Options.PositionJitter}", nameof(options));
        if (Options.HeldOutFraction < 0 || Options.HeldOutFraction > 0.2)
            throw new InvalidOptionException($"HeldOutFraction must be in [0, 0.2] (one position per shape×colour pair at most), got {Options.HeldOutFraction}", nameof(options));
        HeldOut = ChooseHeldOut(Options.Seed, Options.HeldOutFraction);
    }

    /// <summary>round(fraction·#triples) shape×colour pairs (in seeded order) each lose one seeded position, so every
    /// pair, shape×position and colour×position combination still occurs in training.</summary>
    static HashSet<(Shape, ShapeColor, Position)> ChooseHeldOut(int seed, double fraction)
    {
        var rng = new ShapesRng(ShapesRng.Mix((ulong)seed ^ 0x48454C444F5554UL));
        var pairs = ShapesPalette.Shapes.SelectMany(s => ShapesPalette.Colors.Select(c => (s, c))).ToList();
        for (int i = pairs.Count - 1; i > 0; i--) { int j = rng.Next(i + 1); (pairs[i], pairs[j]) = (pairs[j], pairs[i]); }
        int count = (int)Math.Round(fraction * pairs.Count * ShapesPalette.Positions.Length);
        return pairs.Take(count).Select(p => (p.s, p.c, rng.Pick(ShapesPalette.Positions))).ToHashSet();
    }

    public bool IsHeldOut(ShapeObject o) => HeldOut.Contains((o.Shape, o.Color, o.Position));
    public bool IsHeldOut(ObjectSpec o) => o.Position is { } p && HeldOut.Contains((o.Shape, o.Color, p));

    public IEnumerable<ShapesSample> Samples(ShapesSplit split, int count, ShapesTaskKind? kind = null, long start = 0)
    {
        for (long i = start; i < start + count; i++) yield return Sample(split, i, kind);
    }

    /// <summary>Sample number index of a split; depends only on (options, split, index, kind).</summary>
    public ShapesSample Sample(ShapesSplit split, long index, ShapesTaskKind? kind = null)
    {
        var rng = new ShapesRng(ShapesRng.Mix(ShapesRng.Mix((ulong)Options.Seed) ^ ShapesRng.Mix((ulong)split + 1) * 31 ^ (ulong)index));
        var k = kind ?? PickKind(rng);
        for (int attempt = 0; attempt < 10000; attempt++)
        {
            var s = k switch
            {
                ShapesTaskKind.Understanding => Understanding(rng, split, index),
                ShapesTaskKind.Description => Description(rng, split, index),
                ShapesTaskKind.TextToImage => TextToImage(rng, split, index),
                ShapesTaskKind.Edit => Edit(rng, split, index),
                _ => throw new ArgumentOutOfRangeException(nameof(kind)),
            };
            if (Admissible(s)) return s;
        }
        throw new InvalidOperationException($"no admissible {k} sample for {split} #{index} after 10000 draws (HeldOutFraction={Options.HeldOutFraction})");
    }

    ShapesTaskKind PickKind(ShapesRng rng)
    {
        var o = Options;
        double[] w = [o.UnderstandingWeight, o.DescriptionWeight, o.TextToImageWeight, o.EditWeight];
        double u = rng.NextDouble() * w.Sum();
        for (int i = 0; i < w.Length; i++) { if (u < w[i]) return (ShapesTaskKind)i; u -= w[i]; }
        return ShapesTaskKind.Edit;
    }

    bool Admissible(ShapesSample s)
    {
        bool anyHeld = s.Images.Any(im => im.Objects.Any(IsHeldOut));
        if (s.Split == ShapesSplit.Train) return !anyHeld;
        // Eval: a held-out triple must be shown, and for text-to-image it must be what the prompt asks for.
        return s.Kind == ShapesTaskKind.TextToImage ? s.Requested!.Objects.Any(IsHeldOut) : anyHeld;
    }

    // ---- scenes ----

    ShapeObject RandomObject(ShapesRng rng, Position p) => new(rng.Pick(ShapesPalette.Shapes), rng.Pick(ShapesPalette.Colors),
        rng.Pick(ShapesPalette.Sizes), p, Jitter(rng), Jitter(rng));

    float Jitter(ShapesRng rng) => Options.PositionJitter == 0 ? 0 : (float)((rng.NextDouble() * 2 - 1) * Options.PositionJitter);

    /// <summary>1 or 2 objects at distinct positions with distinct colour+shape pairs (so "the red circle" is unique).</summary>
    public Scene RandomScene(ShapesRng rng, int? objects = null)
    {
        int n = objects ?? (rng.Chance(Options.TwoObjectProbability) ? 2 : 1);
        var positions = ShapesPalette.Positions.ToList();
        var objs = new List<ShapeObject>();
        while (objs.Count < n)
        {
            var p = positions[rng.Next(positions.Count)];
            var o = RandomObject(rng, p);
            if (objs.Any(q => q.Shape == o.Shape && q.Color == o.Color)) continue;
            objs.Add(o); positions.Remove(p);
        }
        return new Scene(objs.ToArray());
    }

    /// <summary>A <see cref="RandomScene"/> with no held-out triple: what image-only training (the VAE, the vision
    /// tower's pretraining) may see, so held-out combinations stay unseen by every stage.</summary>
    public Scene RandomTrainingScene(ShapesRng rng, int? objects = null)
    {
        for (int attempt = 0; attempt < 10000; attempt++)
        {
            var s = RandomScene(rng, objects);
            if (!s.Objects.Any(IsHeldOut)) return s;
        }
        throw new InvalidOperationException($"no scene of {objects} objects without a held-out triple after 10000 draws (HeldOutFraction={Options.HeldOutFraction})");
    }

    // ---- understanding ----

    static readonly string[] CountQ = ["How many shapes are in the image?", "How many objects are there?", "Count the shapes in the picture."];
    static readonly string[] DescribeQ = ["Describe the image.", "What is in this image?", "Describe the picture briefly.", "What do you see?"];

    ShapesSample Understanding(ShapesRng rng, ShapesSplit split, long index)
    {
        var scene = RandomScene(rng);
        var objs = scene.Objects;
        var o = rng.Pick(objs);
        var q = (QuestionKind)rng.Next(Enum.GetValues<QuestionKind>().Length);
        string question, answer;
        switch (q)
        {
            case QuestionKind.Count:
                question = rng.Pick(CountQ); answer = ShapesText.Count(objs.Count); break;
            case QuestionKind.Exists:
                {
                    bool yes = rng.Chance(0.5);
                    var (s, c) = (o.Shape, o.Color);
                    while (!yes && objs.Any(x => x.Shape == s && x.Color == c)) (s, c) = (rng.Pick(ShapesPalette.Shapes), rng.Pick(ShapesPalette.Colors));
                    var r = ShapesText.Word(c) + " " + ShapesText.Word(s);
                    question = rng.Next(2) == 0 ? $"Is there {ShapesText.A(r)} in the image?" : $"Does the image contain {ShapesText.A(r)}?";
                    answer = yes ? "yes" : "no"; break;
                }
            case QuestionKind.ShapeOf:
                question = objs.Count(x => x.Color == o.Color) == 1 && rng.Chance(0.5)
                    ? $"What shape is the {ShapesText.Word(o.Color)} object?"
                    : rng.Next(2) == 0 ? $"What shape is {ShapesText.Where(o.Position)}?" : $"What is the shape of the object {ShapesText.Where(o.Position)}?";
                answer = ShapesText.Word(o.Shape); break;
            case QuestionKind.ColorOf:
                question = objs.Count(x => x.Shape == o.Shape) == 1 && rng.Chance(0.5)
                    ? (rng.Next(2) == 0 ? $"What color is the {ShapesText.Word(o.Shape)}?" : $"What is the color of the {ShapesText.Word(o.Shape)}?")
                    : $"What color is the shape {ShapesText.Where(o.Position)}?";
                answer = ShapesText.Word(o.Color); break;
            case QuestionKind.PositionOf:
                question = rng.Next(2) == 0 ? $"Where is the {ShapesText.Ref(o)}?" : $"Where is the {ShapesText.Ref(o)} located?";
                answer = ShapesText.Word(o.Position); break;
            default:
                question = rng.Next(2) == 0 ? $"Is the {ShapesText.Ref(o)} small or large?" : $"What size is the {ShapesText.Ref(o)}?";
                answer = ShapesText.Word(o.Size); break;
        }
        return new ShapesSample(index, split, ShapesTaskKind.Understanding, "<image>" + question, answer, [scene], null, null, q, answer);
    }

    ShapesSample Description(ShapesRng rng, ShapesSplit split, long index)
    {
        var scene = RandomScene(rng);
        var answer = scene.Describe();
        return new ShapesSample(index, split, ShapesTaskKind.Description, "<image>" + rng.Pick(DescribeQ), answer, [scene], null, null, null, answer);
    }

    // ---- text-to-image ----

    static readonly string[] T2IUser =
    [
        "Draw {0}.", "Generate an image of {0}.", "Please create a picture of {0}.", "I need an image of {0}.",
        "Can you draw {0}?", "Make a picture showing {0}.", "Show me {0}.", "Paint {0} on a white background.",
    ];
    static readonly string[] T2IAssistant = ["Here is {0}.", "Here is an image of {0}.", "I have drawn {0}.", "Sure, here is a picture of {0}."];

    ShapesSample TextToImage(ShapesRng rng, ShapesSplit split, long index)
    {
        var scene = RandomScene(rng);
        bool omitSize = rng.Chance(Options.OmitAttributeProbability);
        bool omitPos = scene.Objects.Count == 1 && rng.Chance(Options.OmitAttributeProbability);
        var spec = new SceneSpec(scene.Objects.Select(o => o.ToSpec(!omitSize, !omitPos)).ToArray());
        var phrase = ShapesText.Phrase(spec);
        var user = string.Format(rng.Pick(T2IUser), phrase);
        var assistant = string.Format(rng.Pick(T2IAssistant), phrase) + "<image_gen>";
        return new ShapesSample(index, split, ShapesTaskKind.TextToImage, user, assistant, [scene], spec, null, null, null);
    }

    // ---- editing ----

    static readonly string[] EditUser = ["<image>{0}", "{0} <image>", "Edit this image <image> as follows: {0}"];

    ShapesSample Edit(ShapesRng rng, ShapesSplit split, long index)
    {
        var src = RandomScene(rng);
        var objs = src.Objects;
        var kinds = Enum.GetValues<EditKind>().Where(k => k switch
        {
            EditKind.Add => objs.Count == 1,
            EditKind.Remove => objs.Count == 2,
            _ => true,
        }).ToArray();
        var kind = rng.Pick(kinds);
        int si = kind == EditKind.Add ? -1 : rng.Next(objs.Count);
        var tgtObjs = objs.ToList();
        string instr;
        bool addSizeSaid = true;
        bool PairFree(Shape s, ShapeColor c) => !objs.Where((_, i) => i != si).Any(x => x.Shape == s && x.Color == c);
        switch (kind)
        {
            case EditKind.ChangeColor:
                {
                    var o = objs[si];
                    var c = rng.Pick(ShapesPalette.Colors.Where(c => c != o.Color && PairFree(o.Shape, c)).ToArray());
                    tgtObjs[si] = o with { Color = c };
                    var w = ShapesText.Word(c);
                    instr = rng.Next(3) switch
                    {
                        0 => $"Change the color of the {ShapesText.Ref(o)} to {w}.",
                        1 => $"Make the {ShapesText.Ref(o)} {w}.",
                        _ => $"Paint the {ShapesText.Ref(o)} {w}.",
                    };
                    break;
                }
            case EditKind.ChangeShape:
                {
                    var o = objs[si];
                    var s = rng.Pick(ShapesPalette.Shapes.Where(s => s != o.Shape && PairFree(s, o.Color)).ToArray());
                    tgtObjs[si] = o with { Shape = s };
                    instr = rng.Next(2) == 0 ? $"Turn the {ShapesText.Ref(o)} into a {ShapesText.Word(s)}." : $"Change the {ShapesText.Ref(o)} into a {ShapesText.Word(s)}.";
                    break;
                }
            case EditKind.Move:
                {
                    var o = objs[si];
                    var p = rng.Pick(ShapesPalette.Positions.Where(p => !objs.Any(x => x.Position == p)).ToArray());
                    tgtObjs[si] = o with { Position = p, Dx = Jitter(rng), Dy = Jitter(rng) };
                    instr = rng.Next(2) == 0 ? $"Move the {ShapesText.Ref(o)} {ShapesText.To(p)}." : $"Put the {ShapesText.Ref(o)} {ShapesText.Where(p)}.";
                    break;
                }
            case EditKind.Resize:
                {
                    var o = objs[si];
                    bool grow = o.Size == ObjectSize.Small;
                    tgtObjs[si] = o with { Size = grow ? ObjectSize.Large : ObjectSize.Small };
                    instr = grow ? $"Make the {ShapesText.Ref(o)} larger." : $"Make the {ShapesText.Ref(o)} smaller.";
                    break;
                }
            case EditKind.Add:
                {
                    var p = rng.Pick(ShapesPalette.Positions.Where(p => !objs.Any(x => x.Position == p)).ToArray());
                    ShapeObject o;
                    do o = RandomObject(rng, p); while (!PairFree(o.Shape, o.Color));
                    tgtObjs.Add(o);
                    addSizeSaid = !rng.Chance(Options.OmitAttributeProbability);
                    instr = $"Add {ShapesText.Describe(o.ToSpec(addSizeSaid))}.";
                    break;
                }
            default:
                {
                    var o = objs[si];
                    tgtObjs.RemoveAt(si);
                    instr = rng.Next(2) == 0 ? $"Remove the {ShapesText.Ref(o)}." : $"Delete the {ShapesText.Ref(o)}.";
                    break;
                }
        }
        var tgt = new Scene(tgtObjs.ToArray());
        int ti = kind switch { EditKind.Add => tgtObjs.Count - 1, EditKind.Remove => -1, _ => si };
        var expected = new SceneSpec(tgtObjs.Select((o, i) => o.ToSpec(withSize: i != ti || kind != EditKind.Add || addSizeSaid)).ToArray());
        var edit = new ShapesEdit(kind, src, tgt, expected, si, ti, instr);
        var user = string.Format(rng.Pick(EditUser), instr);
        return new ShapesSample(index, split, ShapesTaskKind.Edit, user, "The output image is: <image_gen>", [src, tgt], expected, edit, null, null);
    }
}
