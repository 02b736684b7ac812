namespace VarGpt.Cli.Runner;

/// <summary>
/// The library names a bad setting by its property (<see cref="InvalidOptionException.Option"/>, e.g. "Cfg"); the CLI
/// says the flag the user typed ("--cfg must be ..."). Commands run these checks before the model loads.
/// </summary>
public static class OptionErrors
{
    /// <summary>Runs <paramref name="check"/>; an <see cref="InvalidOptionException"/> naming a property in <paramref name="flags"/> is rethrown naming the flag.</summary>
    public static T Check<T>(Func<T> check, IReadOnlyDictionary<string, string> flags)
    {
        try { return check(); }
        catch (InvalidOptionException e) when (e.Option is { } name && flags.TryGetValue(name, out var flag))
        {
            int i = e.Message.IndexOf(" must ", StringComparison.Ordinal);
            throw new InvalidOptionException(i > 0 ? flag + e.Message[i..] : $"{flag}: {e.Message}", flag);
        }
    }
}
