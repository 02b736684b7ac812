using System.CommandLine;
using System.Text.Json;
using VarGpt.Checkpoint;
using VarGpt.Inference;

namespace VarGpt.Cli.Runner;

/// <summary>
/// Exit codes: 0 success, 1 the command's own failure verdict (e.g. a fixture failed), 2 usage or input error (a
/// <see cref="VargptInputException"/>: one line, no stack), 3 internal error (a bug: the stack is printed).
/// </summary>
public static class ExitCodes
{
    public const int Ok = 0, Failed = 1, UserError = 2, InternalError = 3;
}

/// <summary>Parses and invokes with the given writers (tests pass StringWriters), turning errors into messages and exit codes.</summary>
public static partial class CliRunner
{
    public static int Run(RootCommand root, string[] args, TextWriter output, TextWriter error)
    {
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) error.WriteLine($"error: {Plain(e.Message)}");
            var cmd = string.Join(' ', new[] { "vargpt" }.Concat(parse.CommandResult.Command.Parents.Count() == 0 ? [] : CommandPath(parse.CommandResult.Command)));
            error.WriteLine($"Run '{cmd} --help' for usage.");
            return ExitCodes.UserError;
        }
        if (HelpText.IsHelp(parse)) return HelpText.Write(parse, output);
        try
        {
            return parse.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (VargptInputException e)
        {
            error.WriteLine($"error: {e.Message}");
            return ExitCodes.UserError;
        }
        catch (Exception e) when (AtomicFile.IsEnvironmentError(e))
        {
            // an I/O error the writers did not name themselves (a read-only folder, a full disk, a path in the way):
            // the environment, not a bug; .NET's message names the path
            error.WriteLine($"error: {AtomicFile.Cause(e)}{PathOf(e)}");
            return ExitCodes.UserError;
        }
        catch (Exception e)
        {
            error.WriteLine($"internal error (please report): {e}");
            return ExitCodes.InternalError;
        }
    }

    /// <summary>" : '/the/path'" as .NET appends it to I/O messages, or "".</summary>
    static string PathOf(Exception e)
    {
        int i = e.Message.IndexOf(" : '", StringComparison.Ordinal);
        if (i >= 0) return e.Message[i..].TrimEnd('.');
        int q = e.Message.IndexOf('\'');
        return q >= 0 && AtomicFile.Cause(e) != e.Message.TrimEnd('.') ? $" ({e.Message.TrimEnd('.')})" : "";
    }

    /// <summary>
    /// System.CommandLine's "Cannot parse argument 'abc' for option '--seed' as expected type 'System.Nullable`1[System.Int64]'"
    /// in the CLI's words: "--seed expects a whole number, got 'abc'" (.NET type names mean nothing to a user).
    /// </summary>
    public static string Plain(string message)
    {
        var m = ParseError().Match(message);
        if (!m.Success) return message;
        var type = m.Groups["type"].Value;
        var inner = NullableType().Match(type) is { Success: true } n ? n.Groups[1].Value : type;
        string expects = inner switch
        {
            "System.Int32" or "System.Int64" or "System.Int16" or "System.UInt32" or "System.UInt64" => "a whole number",
            "System.Double" or "System.Single" or "System.Decimal" => "a number",
            "System.Boolean" => "true or false",
            _ => "a value of another form (see --help)",
        };
        return $"{m.Groups["what"].Value} expects {expects}, got '{m.Groups["value"].Value}'";
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^Cannot parse argument '(?<value>.*)' for (option|command|argument) '(?<what>[^']+)' as expected type '(?<type>[^']+)'\.?$")]
    private static partial System.Text.RegularExpressions.Regex ParseError();
    [System.Text.RegularExpressions.GeneratedRegex(@"^System\.Nullable`1\[(.+)\]$")]
    private static partial System.Text.RegularExpressions.Regex NullableType();

    static IEnumerable<string> CommandPath(Command c)
    {
        var names = new List<string>();
        for (Symbol? s = c; s is Command cmd && s is not RootCommand; s = s.Parents.FirstOrDefault()) names.Insert(0, cmd.Name);
        return names;
    }

}
