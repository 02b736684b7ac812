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
public static class CliRunner
{
    public static int Run(RootCommand root, string[] args, TextWriter output, TextWriter error)
    {
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) error.WriteLine($"error: {e.Message}");
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
        catch (Exception e)
        {
            error.WriteLine($"internal error (please report): {e}");
            return ExitCodes.InternalError;
        }
    }

    static IEnumerable<string> CommandPath(Command c)
    {
        var names = new List<string>();
        for (Symbol? s = c; s is Command cmd && s is not RootCommand; s = s.Parents.FirstOrDefault()) names.Insert(0, cmd.Name);
        return names;
    }

}
