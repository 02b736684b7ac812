using System.Diagnostics;

namespace VarGpt.Fuzz;

/// <summary>
/// VarGpt.Fuzz TARGET                 under afl-fuzz (fuzz/run.sh): SharpFuzz's fork server feeds inputs until afl stops it
/// VarGpt.Fuzz TARGET FILE|DIR...     replays files once each: "ok", "rejected: MESSAGE" or the finding (exit 1)
/// VarGpt.Fuzz --list                 the targets and what they cover
/// VarGpt.Fuzz --seeds DIR [CORPUS]   writes each target's seed corpus (plus CORPUS/TARGET files) to DIR/TARGET
/// </summary>
static class FuzzProgram
{
    static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.WriteLine("usage: VarGpt.Fuzz TARGET [FILE|DIR...]   (no files: run under afl-fuzz; see fuzz/README.md)\n       VarGpt.Fuzz --list");
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] == "--seeds")
        {
            // VarGpt.Fuzz --seeds DIR [CORPUS]: every target's seeds (and CORPUS/TARGET files) into DIR/TARGET
            FuzzSeeds.WriteAll(args[1], args.Length > 2 ? args[2] : null);
            return 0;
        }
        if (args[0] == "--list")
        {
            foreach (var t in FuzzTargets.All) Console.WriteLine($"{t.Name,-14} {t.Covers}");
            return 0;
        }
        FuzzTarget target;
        try { target = FuzzTargets.Get(args[0]); }
        catch (ArgumentException e) { Console.Error.WriteLine(e.Message); return 2; }

        if (args.Length == 1)
        {
            // In-process (persistent) mode: an exception escaping Run is reported to afl as a crash, a timeout as a hang.
            SharpFuzz.Fuzzer.Run(stream =>
            {
                using var ms = new MemoryStream();
                stream.CopyTo(ms);
                target.Execute(ms.ToArray());   // input errors are answers, not crashes
            });
            return 0;
        }

        int findings = 0;
        var files = args.Skip(1).SelectMany<string, string>(a => Directory.Exists(a) ? Directory.EnumerateFiles(a, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal) : [a]);
        foreach (var file in files)
        {
            var clock = Stopwatch.StartNew();
            try
            {
                var rejected = target.Execute(File.ReadAllBytes(file));
                Console.WriteLine($"{file}: {(rejected is null ? "ok" : "rejected: " + rejected.ReplaceLineEndings(" ")[..Math.Min(200, rejected.Length)])} ({clock.ElapsedMilliseconds} ms)");
            }
            catch (Exception e)
            {
                findings++;
                Console.WriteLine($"{file}: FINDING {e.GetType().FullName}: {e.Message}\n{e.StackTrace}");
            }
        }
        return findings == 0 ? 0 : 1;
    }
}
