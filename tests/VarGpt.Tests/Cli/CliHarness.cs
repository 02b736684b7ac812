using VarGpt.Cli;

using VarGpt.Cli.Runner;

namespace VarGpt.Tests.Cli;

/// <summary>Runs a vargpt command line in-process with captured output.</summary>
public static class CliHarness
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CliRunner.Run(Program.BuildRoot(), args, o, e);
        return (code, o.ToString(), e.ToString());
    }
}
