using System.CommandLine;
using System.CommandLine.Help;
using System.Runtime.CompilerServices;

namespace VarGpt.Cli.Runner;

/// <summary>
/// Help that teaches: System.CommandLine's help, with the program called "vargpt" (the assembly is VarGpt.Cli because
/// "vargpt" collides case-insensitively with the VarGpt library) and an Examples section per command.
/// System.CommandLine 2.0 keeps its help layout API internal, so the default text is post-processed.
/// </summary>
public static class HelpText
{
    static readonly ConditionalWeakTable<Command, string[]> _examples = new();
    static readonly ConditionalWeakTable<Command, string> _details = new();

    /// <summary>Extra paragraphs shown only in the command's own --help (its description stays short for listings).</summary>
    public static T WithDetails<T>(this T command, string text) where T : Command
    {
        _details.AddOrUpdate(command, text.TrimEnd());
        return command;
    }

    /// <summary>Attaches example lines shown under "Examples:" in the command's --help.</summary>
    public static T WithExamples<T>(this T command, params string[] lines) where T : Command
    {
        _examples.AddOrUpdate(command, lines);
        return command;
    }

    public static bool IsHelp(ParseResult parse) => parse.Action is HelpAction;

    /// <summary>Runs the help action into a buffer, then writes it renamed and with the command's examples.</summary>
    public static int Write(ParseResult parse, TextWriter output)
    {
        var sw = new StringWriter();
        int rc = parse.Invoke(new InvocationConfiguration { Output = sw, Error = sw });
        var text = sw.ToString().Replace(RootCommand.ExecutableName + " ", "vargpt ", StringComparison.Ordinal).TrimEnd();
        output.WriteLine(text);
        if (_details.TryGetValue(parse.CommandResult.Command, out var details))
        {
            output.WriteLine();
            output.WriteLine("Details:");
            foreach (var l in details.Split('\n')) output.WriteLine("  " + l);
        }
        if (_examples.TryGetValue(parse.CommandResult.Command, out var lines))
        {
            output.WriteLine();
            output.WriteLine("Examples:");
            foreach (var l in lines) output.WriteLine("  " + l);
        }
        output.WriteLine();
        return rc;
    }
}
