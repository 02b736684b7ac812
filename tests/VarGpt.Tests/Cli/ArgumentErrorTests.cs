using System.Text;
using VarGpt.Cli.Commands;
using VarGpt.Tests.Inference;
using VarGpt.Tests.Reliability;
using VarGpt.Tests.TestModels;
using VarGpt.Training;

namespace VarGpt.Tests.Cli;

/// <summary>
/// Issue 18 findings 2, 3, 8 and 9: argument and output-path errors are found before the model loads, speak the CLI's
/// language (flags, not .NET types or property names) and exit 2 with one line; chat writes images only where told.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))] // runs CLI commands in-process that load whole models: apart from the parallel tests
public class ArgumentErrorTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => CliHarness.Run(args);

    static void AssertEarlyUserError((int Code, string Out, string Err) r, string expect, string what)
    {
        Assert.True(r.Code == 2, $"{what}: exit {r.Code}\n{r.Err}");
        var errors = r.Err.Split('\n').Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToList();
        Assert.True(errors.Count == 1, $"{what}: {r.Err}");
        Assert.Contains(expect, errors[0]);
        Assert.DoesNotContain("System.", r.Err);
        Assert.DoesNotContain("(Parameter", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
        Assert.DoesNotContain("loading ", r.Err);   // found before the model loads
        Assert.DoesNotContain("seed ", r.Out);
    }

    [Fact]
    public void Bad_numbers_are_named_by_flag_in_plain_words()
    {
        AssertEarlyUserError(Run("generate", "x", "--seed", "abc"), "--seed expects a whole number, got 'abc'", "--seed abc");
        AssertEarlyUserError(Run("generate", "x", "--cfg", "lots"), "--cfg expects a number, got 'lots'", "--cfg lots");
        AssertEarlyUserError(Run("chat", "--max-new-tokens", "1e9", "hi"), "--max-new-tokens expects a whole number, got '1e9'", "chat --max-new-tokens");
    }

    [Fact]
    public void Bad_quantize_values_name_the_option_before_the_model_loads()
    {
        AssertEarlyUserError(Run("chat", "--quantize", "int4", "hi"), "--quantize: unknown value 'int4'; expected none or int8", "chat --quantize int4");
        AssertEarlyUserError(Run("generate", "x", "--quantize", ""), "--quantize: unknown value ''", "generate --quantize ''");
        AssertEarlyUserError(Run("chat", "--quantize", "int8", "--dtype", "float16", "hi"), "quantize int8 computes in float32 or bfloat16, not Float16", "chat --quantize int8 --dtype float16");
        AssertEarlyUserError(Run("bench", "chat", "--quantize", "q4"), "--quantize: unknown value 'q4'", "bench chat --quantize q4");
    }

    [Fact]
    public void Generate_and_edit_check_every_argument_before_the_model_loads()
    {
        var model = TinyImageModel.Folder();
        using var d = TestPaths.Temp();
        string[] Gen(params string[] extra) => ["generate", "--model", model, "A red circle.", "-o", d["x.png"], .. extra];
        AssertEarlyUserError(Run(Gen("--cfg", "-1")), "--cfg must be a finite number ≥ 1", "--cfg -1");
        AssertEarlyUserError(Run(Gen("--top-p", "1.5")), "--top-p must be in [0, 1]", "--top-p 1.5");
        AssertEarlyUserError(Run(Gen("--count", "0")), "--count must be ≥ 1", "--count 0");
        AssertEarlyUserError(Run("generate", "--model", model, "  ", "-o", d["x.png"]), "PROMPT is empty", "empty prompt");
        File.WriteAllBytes(d["in.png"], VargptChatTests.Picture(32, 32).EncodePng());
        AssertEarlyUserError(Run("edit", "--model", model, "-i", d["in.png"], "", "-o", d["x.png"]), "INSTRUCTION is empty", "empty instruction");
        AssertEarlyUserError(Run("edit", "--model", model, "-i", d["in.png"], "make it blue", "--tau", "0", "-o", d["x.png"]), "--tau must be", "edit --tau 0");
        // an aspect listed in the help that this checkpoint has no schedule for at its pixel budget: said in flags, before loading
        var shipped = Path.Combine(TestPaths.RepoRoot, "models", "shapesworld");
        var r = Run("generate", "--model", shipped, "A red circle.", "--aspect", "4:3", "-o", d["x.png"]);
        AssertEarlyUserError(r, "--aspect 4:3 has no scale schedule at pixel budget", "--aspect 4:3 on the shipped model");
        Assert.Contains("aspects at", r.Err);
        Assert.False(File.Exists(d["x.png"]));
    }

    [Fact]
    public void Output_paths_are_checked_before_the_work_and_io_errors_name_the_path_and_cause()
    {
        var model = TinyImageModel.Folder();
        using var d = TestPaths.Temp();
        AssertEarlyUserError(Run("generate", "--model", model, "A red circle.", "-o", d["missing/x.png"]), "the folder " + d["missing"] + " does not exist", "-o in a missing folder");
        Directory.CreateDirectory(d["adir"]);
        AssertEarlyUserError(Run("generate", "--model", model, "A red circle.", "-o", d["adir"]), "it is a folder", "-o naming a folder");
        Directory.CreateDirectory(d["out-2.png"]);
        AssertEarlyUserError(Run("generate", "--model", model, "A red circle.", "--count", "2", "-o", d["out.png"]), "it is a folder", "--count 2 with a folder named like the second image");
        using (var ro = FaultFolder.ReadOnly())
        {
            AssertEarlyUserError(Run("generate", "--model", model, "A red circle.", "-o", ro["x.png"]), $"cannot write -o {ro["x.png"]}: ", "read-only -o");
            AssertEarlyUserError(Run("chat", "--model", model, "--image-out", ro["x.png"], "hi"), "--image-out", "read-only --image-out");
            AssertEarlyUserError(Run("shapes", "eval", "--fast", "--report", ro["r.html"]), "--report", "read-only --report");
            AssertEarlyUserError(Run("shapes", "data", "--out", ro["data"], "--train", "2", "--eval", "1"), "--out", "read-only shapes data --out");
            AssertEarlyUserError(Run("init", "--preset", "tiny", "--out", ro["m"]), ro["m"], "read-only init --out");
            Assert.Empty(Directory.EnumerateFileSystemEntries(ro.Path));
        }
        // shapes eval: a report into a missing folder fails in well under a second, not after the evaluation
        var sw = System.Diagnostics.Stopwatch.StartNew();
        AssertEarlyUserError(Run("shapes", "eval", "--fast", "--report", d["nowhere/r.html"]), "does not exist", "--report in a missing folder");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(20), $"took {sw.Elapsed}");
        File.WriteAllText(d["afile"], "x");
        AssertEarlyUserError(Run("shapes", "data", "--out", d["afile"], "--train", "2", "--eval", "1"), "it is a file, not a folder", "shapes data --out naming a file");
    }

    [Fact]
    public void Chat_writes_images_only_where_told_or_to_a_new_file_it_never_reuses()
    {
        using var d = TestPaths.Temp();
        File.WriteAllText(d["vargpt-image-1.png"], "a user's earlier file");
        var first = ChatCommand.ClaimNewImagePath(d.Path);
        var second = ChatCommand.ClaimNewImagePath(d.Path);
        Assert.Equal(d["vargpt-image-2.png"], first);
        Assert.Equal(d["vargpt-image-3.png"], second);
        Assert.Equal("a user's earlier file", File.ReadAllText(d["vargpt-image-1.png"]));
        Assert.False(File.Exists(d["vargpt-image.png"]));
        // the old default name is not written by a chat that draws nothing (the working directory stays untouched)
        var r = CliProcess.Run(["chat", "--model", TinyCheckpoint.Dir, "--max-new-tokens", "3", "--no-image-generation", "Write a haiku about the sea."], workingDir: d.Path);
        Assert.True(r.Code == 0, r.Err);
        Assert.Equal(["vargpt-image-1.png", "vargpt-image-2.png", "vargpt-image-3.png"], Directory.GetFiles(d.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Chat_refuses_an_image_placeholder_without_an_image_notes_a_question_about_a_missing_image_and_rejects_invalid_utf8()
    {
        AssertEarlyUserError(Run("chat", "--model", TinyCheckpoint.Dir, "What is in <image>?"), "no image is attached", "<image> without --image");
        var (code, _, e) = Run("chat", "--model", TinyCheckpoint.Dir, "--max-new-tokens", "2", "What colour is the circle in this picture?");
        Assert.True(code == 0, e);
        Assert.Contains("note: no image is attached", e);
        (code, _, e) = Run("chat", "--model", TinyCheckpoint.Dir, "--max-new-tokens", "2", "Write a haiku about the sea.");
        Assert.True(code == 0, e);
        Assert.DoesNotContain("no image is attached", e);
        var bad = Encoding.UTF8.GetBytes("hello ").Concat(new byte[] { 0xC3, 0x28, 0xFF }).ToArray();
        var r = CliProcess.Run(["chat", "--model", TinyCheckpoint.Dir, "--max-new-tokens", "2", "-"], stdin: bad);
        Assert.True(r.Code == 2, $"exit {r.Code}: {r.Err}");
        Assert.Contains("stdin is not valid UTF-8", r.Err);
    }

    [Fact]
    public void The_example_yamls_train_help_points_to_exist_and_load()
    {
        var dir = Path.Combine(TestPaths.RepoRoot, TrainCommand.ExamplesDir);
        var (code, help, _) = Run("train", "--help");
        Assert.Equal(0, code);
        var mentioned = System.Text.RegularExpressions.Regex.Matches(help + Run("train", "sft", "--help").Out + Run("train", "dpo", "--help").Out, TrainCommand.ExamplesDir + @"/[\w.]+\.yaml")
            .Select(m => m.Value).Distinct().ToList();
        Assert.True(mentioned.Count >= 3, help);
        foreach (var m in mentioned) Assert.True(File.Exists(Path.Combine(TestPaths.RepoRoot, m)), $"help names {m}, which does not exist");
        var yamls = Directory.GetFiles(dir, "*.yaml");
        var kinds = new HashSet<string>();
        foreach (var y in yamls)
        {
            var cfg = TrainingConfig.Load(y);
            kinds.Add($"{cfg.Stage}/{cfg.FinetuningType}");
            Assert.True(cfg.Notes.All(n => !n.Contains("unknown", StringComparison.OrdinalIgnoreCase)), $"{y}: {string.Join("; ", cfg.Notes)}");
            if (Path.GetFileName(y).StartsWith("shapesworld", StringComparison.Ordinal))
                Assert.True(File.Exists(Path.Combine(VargptFineTuning.ResolvePath(cfg.ModelNameOrPath, dir), "config.json")), $"{y}: model_name_or_path does not reach the shipped model");
        }
        Assert.Contains("Sft/Full", kinds);
        Assert.Contains("Sft/Lora", kinds);
        Assert.Contains("Dpo/Lora", kinds);
    }
}
