namespace VarGpt.Training.Data;

/// <summary>What a record trains (decided from its placeholders, see <see cref="DatasetLoader"/>).</summary>
public enum RecordKind
{
    /// <summary>Dialogue without images.</summary>
    Text,
    /// <summary><c>&lt;image&gt;</c> inputs in user turns, text answers.</summary>
    Understanding,
    /// <summary>An assistant turn contains <c>&lt;image_gen&gt;</c>; its image is the generation target.</summary>
    Generation,
    /// <summary>User <c>&lt;image&gt;</c> source + instruction, assistant <c>&lt;image_gen&gt;</c>; images = [source, target].</summary>
    Editing,
    /// <summary>Ranking record: prompt + chosen/rejected assistant turns, images = [chosen_target, rejected_target].</summary>
    Preference,
}

/// <summary>A chat turn after tag mapping; Role is "user" or "assistant".</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>One image of a record: its resolved path and whether it is a generation target (vs an input to understand).</summary>
public sealed record ImageSlot(string Path, bool IsTarget);

/// <summary>
/// A validated record in LLaMA-Factory's aligned form (aligner.convert_sharegpt): <see cref="Prompt"/> = all turns before the
/// answer (odd count, starts and ends with user), <see cref="Response"/> = [answer] for SFT or [chosen, rejected] for
/// preference data. <see cref="Images"/> are in placeholder order over the whole conversation (prompt then response), which
/// is the order mm_plugin assigns them; for preference records they are [chosen_target, rejected_target] (pairwise.py).
/// </summary>
public sealed record TrainingRecord(
    string Dataset, string File, int Index, RecordKind Kind, string System,
    IReadOnlyList<ChatTurn> Prompt, IReadOnlyList<ChatTurn> Response, IReadOnlyList<ImageSlot> Images)
{
    public string Where => $"{File}: record {Index}";
}

/// <summary>One problem found while validating a dataset: file, record index, field and reason.</summary>
public sealed record DatasetIssue(string File, int Index, string Field, string Reason)
{
    public override string ToString() => Index < 0 ? $"{File}: {Field}: {Reason}" : $"{File}: record {Index}: field '{Field}': {Reason}";
}

/// <summary>All validation problems of the requested datasets, reported at once.</summary>
public sealed class DatasetValidationException(IReadOnlyList<DatasetIssue> issues)
    : VargptInputException(Format(issues))
{
    public IReadOnlyList<DatasetIssue> Issues { get; } = issues;
    const int MaxListed = 100;
    static string Format(IReadOnlyList<DatasetIssue> issues) =>
        $"{issues.Count} invalid record field(s):\n  " + string.Join("\n  ", issues.Take(MaxListed)) +
        (issues.Count > MaxListed ? $"\n  ... and {issues.Count - MaxListed} more" : "");
}

/// <summary>Every image file that could not be found, listed at once before training starts.</summary>
public sealed class MissingImagesException(IReadOnlyList<(string Where, string Image, IReadOnlyList<string> Tried)> missing)
    : VargptInputException($"{missing.Count} image file(s) not found:\n  " +
        string.Join("\n  ", missing.Select(m => $"{m.Where}: '{m.Image}' (tried {string.Join(", ", m.Tried)})")))
{
    public IReadOnlyList<(string Where, string Image, IReadOnlyList<string> Tried)> Missing { get; } = missing;
}
