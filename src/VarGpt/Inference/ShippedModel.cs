namespace VarGpt.Inference;

/// <summary>No model folder was given and the shipped model was not found; the message lists where it was looked for.</summary>
public sealed class ShippedModelNotFoundException(string message) : VargptInputException(message);

/// <summary>
/// The model used when no model folder is given: the ShapesWorld VARGPT shipped with the product (docs/shapesworld.md).
/// Resolution order: the <c>VARGPT_MODEL</c> environment variable when set (it must name an existing folder); else
/// <c>models/shapesworld</c> beside the application (src/VarGpt/VarGpt.csproj copies the repository's
/// models/shapesworld/** into every output folder that references the library); else the first
/// <c>models/shapesworld/config.json</c> found walking up from <see cref="AppContext.BaseDirectory"/> (a repository
/// checkout run from its bin folders).
/// </summary>
public static class ShippedModel
{
    public const string EnvironmentVariable = "VARGPT_MODEL";
    /// <summary>Path of the shipped model relative to the repository root and to the application folder.</summary>
    public const string RelativePath = "models/shapesworld";

    /// <summary>The default model folder (full path); throws <see cref="ShippedModelNotFoundException"/> naming every place looked at.</summary>
    public static string Resolve() => TryResolve(out var searched)
        ?? throw new ShippedModelNotFoundException(
            $"no --model given and the shipped model was not found at {string.Join(", ", searched)}; pass --model DIR (or set {EnvironmentVariable})");

    /// <summary>The default model folder, or null; <paramref name="searched"/> lists the places looked at, in order.</summary>
    public static string? TryResolve(out IReadOnlyList<string> searched)
    {
        var looked = new List<string>();
        searched = looked;
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env)
        {
            var full = Path.GetFullPath(env);
            looked.Add($"{full} (from {EnvironmentVariable})");
            // an explicit setting that points nowhere is an error, not a reason to fall back silently
            if (!Directory.Exists(full))
                throw new ShippedModelNotFoundException($"{EnvironmentVariable} = {env}, but the folder {full} does not exist; fix or unset {EnvironmentVariable}, or pass --model DIR");
            return full;
        }
        var beside = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, RelativePath));
        looked.Add(beside);
        if (File.Exists(Path.Combine(beside, "config.json"))) return beside;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory).Parent; d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, RelativePath);
            if (File.Exists(Path.Combine(candidate, "config.json"))) return candidate;
        }
        looked.Add($"{RelativePath}/config.json in any folder above {Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)}");
        return null;
    }
}
