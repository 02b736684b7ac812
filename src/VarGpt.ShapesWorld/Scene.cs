using System.Text.Json.Serialization;

namespace VarGpt.ShapesWorld;

// The ShapesWorld vocabulary: a closed set of attributes so that prompts, answers and images can be checked exactly.

[JsonConverter(typeof(JsonStringEnumConverter<Shape>))]
public enum Shape { Circle, Square, Triangle, Star, Diamond }

[JsonConverter(typeof(JsonStringEnumConverter<ShapeColor>))]
public enum ShapeColor { Red, Orange, Yellow, Green, Cyan, Blue, Purple }

[JsonConverter(typeof(JsonStringEnumConverter<ObjectSize>))]
public enum ObjectSize { Small, Large }

[JsonConverter(typeof(JsonStringEnumConverter<Position>))]
public enum Position { Left, Right, Top, Bottom, Center }

/// <summary>One rendered object. Dx/Dy: jitter of the box centre in fractions of the image side (0 by default).</summary>
public sealed record ShapeObject(Shape Shape, ShapeColor Color, ObjectSize Size, Position Position, float Dx = 0, float Dy = 0)
{
    public ObjectSpec ToSpec(bool withSize = true, bool withPosition = true) =>
        new(Shape, Color, withSize ? Size : null, withPosition ? Position : null);
    public override string ToString() => ShapesText.Describe(ToSpec());
}

/// <summary>A fully specified scene: 1..2 objects on the fixed background, at distinct positions.</summary>
public sealed record Scene(IReadOnlyList<ShapeObject> Objects)
{
    public bool Equals(Scene? other) => other is not null && Objects.SequenceEqual(other.Objects);
    public override int GetHashCode() => Objects.Aggregate(17, (h, o) => h * 31 + o.GetHashCode());
    public SceneSpec ToSpec() => new(Objects.Select(o => o.ToSpec()).ToArray());
    /// <summary>Canonical sentence, e.g. "A large red circle on the left and a small blue star at the top."</summary>
    public string Describe() => ShapesText.Sentence(ToSpec());
    public override string ToString() => Describe();
}

/// <summary>A requested object: shape and colour are always requested; size and position may be left open (null).</summary>
public sealed record ObjectSpec(Shape Shape, ShapeColor Color, ObjectSize? Size, Position? Position)
{
    public override string ToString() => ShapesText.Describe(this);
}

/// <summary>A requested scene (text-to-image prompt or expected edit result): what the scorer checks.</summary>
public sealed record SceneSpec(IReadOnlyList<ObjectSpec> Objects)
{
    public bool Equals(SceneSpec? other) => other is not null && Objects.SequenceEqual(other.Objects);
    public override int GetHashCode() => Objects.Aggregate(17, (h, o) => h * 31 + o.GetHashCode());
    public override string ToString() => ShapesText.Sentence(this);
}

/// <summary>Fixed geometry and palette shared by the renderer, the generator and the scorer.</summary>
public static class ShapesPalette
{
    /// <summary>Background colour (white).</summary>
    public static readonly (byte R, byte G, byte B) Background = (255, 255, 255);

    /// <summary>sRGB of each colour; pairwise RGB distances ≥ 94 and each ≥ 237 away from the background.</summary>
    public static (byte R, byte G, byte B) Rgb(ShapeColor c) => c switch
    {
        ShapeColor.Red => (220, 30, 30),
        ShapeColor.Orange => (255, 128, 0),
        ShapeColor.Yellow => (250, 220, 20),
        ShapeColor.Green => (30, 160, 60),
        ShapeColor.Cyan => (0, 190, 230),
        ShapeColor.Blue => (30, 80, 220),
        ShapeColor.Purple => (140, 50, 190),
        _ => throw new ArgumentOutOfRangeException(nameof(c)),
    };

    /// <summary>Half side of an object's square box, as a fraction of the image side.</summary>
    public static float HalfExtent(ObjectSize s) => s == ObjectSize.Small ? 0.07f : 0.12f;

    /// <summary>Anchor (box centre) of a position, as fractions of the image side. Anchors are 0.29 apart along an
    /// axis, so two large boxes (0.24) keep a 0.05 gap; with jitter ≤ MaxJitter they still never touch.</summary>
    public static (float X, float Y) Anchor(Position p) => p switch
    {
        Position.Left => (0.21f, 0.5f),
        Position.Right => (0.79f, 0.5f),
        Position.Top => (0.5f, 0.21f),
        Position.Bottom => (0.5f, 0.79f),
        Position.Center => (0.5f, 0.5f),
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    public const float MaxJitter = 0.02f;

    public static readonly Shape[] Shapes = Enum.GetValues<Shape>();
    public static readonly ShapeColor[] Colors = Enum.GetValues<ShapeColor>();
    public static readonly ObjectSize[] Sizes = Enum.GetValues<ObjectSize>();
    public static readonly Position[] Positions = Enum.GetValues<Position>();
}

/// <summary>Words and phrases. All answers are these lowercase words, so exact-match scoring is well defined.</summary>
public static class ShapesText
{
    public static string Word(Shape s) => s.ToString().ToLowerInvariant();
    public static string Word(ShapeColor c) => c.ToString().ToLowerInvariant();
    public static string Word(ObjectSize s) => s == ObjectSize.Small ? "small" : "large";
    public static string Word(Position p) => p.ToString().ToLowerInvariant();
    public static string Count(int n) => n switch { 0 => "zero", 1 => "one", 2 => "two", 3 => "three", _ => n.ToString() };

    /// <summary>"on the left", "at the top", "in the center".</summary>
    public static string Where(Position p) => p switch
    {
        Position.Left or Position.Right => "on the " + Word(p),
        Position.Top or Position.Bottom => "at the " + Word(p),
        _ => "in the center",
    };

    /// <summary>"to the left", "to the top", "to the center".</summary>
    public static string To(Position p) => "to the " + Word(p);

    /// <summary>"red circle": the reference used in questions and edit instructions (unique within a scene).</summary>
    public static string Ref(ObjectSpec o) => Word(o.Color) + " " + Word(o.Shape);
    public static string Ref(ShapeObject o) => Word(o.Color) + " " + Word(o.Shape);

    /// <summary>Indefinite article: "a red circle", "an orange star".</summary>
    public static string A(string phrase) => ("aeiou".Contains(phrase[0]) ? "an " : "a ") + phrase;

    /// <summary>"a large red circle on the left" (omitting unrequested attributes).</summary>
    public static string Describe(ObjectSpec o)
    {
        var s = o.Size is { } size ? Word(size) + " " : "";
        var where = o.Position is { } p ? " " + Where(p) : "";
        return A(s + Ref(o)) + where;
    }

    /// <summary>Objects joined with "and", without capital or period: "a red circle and a small blue star at the top".</summary>
    public static string Phrase(SceneSpec s) => string.Join(" and ", s.Objects.Select(Describe));

    /// <summary>Capitalised sentence with period.</summary>
    public static string Sentence(SceneSpec s)
    {
        var p = Phrase(s);
        return p.Length == 0 ? "An empty image." : char.ToUpperInvariant(p[0]) + p[1..] + ".";
    }
}
