using System.CommandLine;
using VarGpt.Cli;
using VarGpt.Cli.Commands;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Torch;
using VarGpt.Inference;
using VarGpt.Benchmarks;

using VarGpt.Cli.Runner;

using VarGpt.Tests.TestModels;

using VarGpt.Tests.Inference;

namespace VarGpt.Tests.Cli;

/// <summary>`vargpt chat` in-process with redirected stdin on the tiny checkpoint.</summary>
/// <remarks>Loads whole pipelines: runs apart from the parallel tests, which it would slow.</remarks>
[Collection(nameof(TorchDefaultsCollection))]
public class ChatCommandTests
{
    static CancellationToken Ct => TestContext.Current.CancellationToken;

    static (int Code, string Out, string Err) Run(string? stdin, params string[] args)
    {
        TorchTestSetup.Init();
        var root = new RootCommand { ChatCommand.Create(stdin is null ? TextReader.Null : new StringReader(stdin)) };
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CliRunner.Run(root, ["chat", .. args], o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Fact]
    public void One_prompt_streams_the_same_answer_as_the_library_and_says_how_it_decoded()
    {
        var (code, o, e) = Run(null, "--model", TinyCheckpoint.Dir, "--dtype", "float32", "--max-new-tokens", "7", "what is this");
        Assert.Equal(0, code);
        var expected = TinyCheckpoint.Chat.Chat([ChatMessage.User("what is this")], new VargptChatOptions { MaxNewTokens = 7 }, Ct);
        Assert.Equal(expected.Text + "\n", o);
        Assert.Contains("loading ", e);
        Assert.Contains("weights", e);
        Assert.Contains("greedy decoding, repetition_penalty 1.05 (generation_config.json), max_new_tokens 7", e);
        Assert.Contains("(stopped at max_new_tokens = 7)", e);
    }

    [Fact]
    public void Sampling_flags_with_a_seed_reproduce_and_unset_values_are_attributed_to_the_file()
    {
        string[] args = ["--model", TinyCheckpoint.Dir, "--max-new-tokens", "6", "--temperature", "1.3", "--top-p", "1", "--seed", "11", "hello"];
        var a = Run(null, args);
        var b = Run(null, args);
        Assert.Equal(0, a.Code);
        Assert.Equal(a.Out, b.Out);
        Assert.Contains("sampling: temperature 1.3, top_k 1 (generation_config.json), top_p 1, repetition_penalty 1.05 (generation_config.json), max_new_tokens 6, seed 11", a.Err);
        var expected = TinyCheckpoint.Chat.Chat([ChatMessage.User("hello")], new VargptChatOptions { MaxNewTokens = 6, Temperature = 1.3, TopP = 1, Seed = 11 }, Ct);
        Assert.Equal(expected.Text + "\n", a.Out);
    }

    [Fact]
    public void Interactive_session_keeps_history_attaches_images_resets_and_exits()
    {
        using var t = TestPaths.Temp();
        VargptChatTests.Picture(200, 150).SavePng(t["big.png"]);      // above the tiny checkpoint's max_pixels
        var stdin = string.Join("\n", "hello", "", "/image " + t["big.png"], "what is it", "again", "/bogus", "/image " + t["missing.png"], "/reset", "hello", "/exit", "never read");
        var (code, o, e) = Run(stdin, "--model", TinyCheckpoint.Dir, "--max-new-tokens", "4");
        Assert.Equal(0, code);

        // replay the same conversation through the library: turn by turn, history included
        var chat = TinyCheckpoint.Chat;
        var opts = new VargptChatOptions { MaxNewTokens = 4 };
        var big = VarGpt.Vision.RgbImage.Load(t["big.png"]);
        var history = new List<ChatMessage>();
        string Say(ChatMessage user)
        {
            history.Add(user);
            var r = chat.Chat(history, opts, Ct);
            history.Add(ChatMessage.Assistant(r.Text));
            return r.Text;
        }
        var answers = new[]
        {
            Say(ChatMessage.User("hello")),
            Say(ChatMessage.User(ContentPart.FromImage(big), ContentPart.FromText("what is it"))),
            Say(ChatMessage.User("again")),
        }.ToList();
        history.Clear();
        answers.Add(Say(ChatMessage.User("hello")));
        Assert.Equal(string.Concat(answers.Select(a => a + "\n")), o);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(e, "was resized to fit max_pixels"));   // once, though the image stays in the history
        Assert.Contains($"note: {t["big.png"]} (200x150) was resized to fit max_pixels {TinyCheckpoint.MaxPixels}", e);
        Assert.Contains("error: unknown command /bogus", e);
        Assert.Contains("missing.png", e);
        Assert.Contains("(conversation reset)", e);
    }

    [Fact]
    public void Bad_input_exits_2_with_one_error_line()
    {
        using var t = TestPaths.Temp();
        File.WriteAllText(t["fake.png"], "this is not a png");
        VargptChatTests.Picture(10, 10).SavePng(t["tiny.png"]);
        var cases = new (string[] Args, string Expect)[]
        {
            (["--model", TinyCheckpoint.Dir, "--image", t["nope.jpg"], "hi"], "nope.jpg"),
            (["--model", TinyCheckpoint.Dir, "--image", t["fake.png"], "hi"], "fake.png"),
            (["--model", TinyCheckpoint.Dir, "   "], "the prompt is empty"),
            (["--model", TinyCheckpoint.Dir, "look <|image_pad|>"], "<|image_pad|>"),
            (["--model", TinyCheckpoint.Dir, "--device", "gpu", "hi"], "gpu"),
            (["--model", TinyCheckpoint.Dir, "--dtype", "fp8", "hi"], "fp8"),
            (["--model", TinyCheckpoint.Dir, "--top-p", "1.5", "hi"], "--top-p must be in (0, 1]"),
            (["--model", TinyCheckpoint.Dir, "--temperature", "-1", "hi"], "temperature"),
            (["--model", t["no-model"], "hi"], "no-model"),
            // no --model: the shipped model answers (ShippedModelTests covers the default resolution)
        };
        foreach (var (args, expect) in cases)
        {
            var (code, o, e) = Run(null, args);
            Assert.True(code == 2, $"{string.Join(' ', args)}: exit {code}\n{e}");
            var errors = e.Split('\n').Where(l => l.StartsWith("error: ", StringComparison.Ordinal)).ToList();
            Assert.True(errors.Count == 1, $"{string.Join(' ', args)}: {e}");
            Assert.Contains(expect, errors[0]);
            Assert.DoesNotContain("   at ", e);
            Assert.Equal("", o);
        }
    }

    [Fact]
    public void Prompt_dash_reads_stdin_and_a_drawn_image_is_saved()
    {
        // the registered command (Program) exists and shows help
        var help = new StringWriter();
        Assert.Equal(0, CliRunner.Run(Program.BuildRoot(), ["chat", "--help"], help, new StringWriter()));
        Assert.Contains("/image PATH", help.ToString());
        var (code, o, e) = Run("what is this\n", "--model", TinyCheckpoint.Dir, "--dtype", "float32", "--max-new-tokens", "3", "-");
        Assert.Equal(0, code);
        var expected = TinyCheckpoint.Chat.Chat([ChatMessage.User("what is this")], new VargptChatOptions { MaxNewTokens = 3 }, Ct);
        Assert.Equal(expected.Text + "\n", o);
        Assert.Contains("(float32 on cpu)", e);
        // without --dtype: auto, and the load line says what it resolved to on this CPU
        (code, _, e) = Run("what is this\n", "--model", TinyCheckpoint.Dir, "--max-new-tokens", "1", "-");
        Assert.Equal(0, code);
        Assert.Contains($"(--dtype auto: {TorchRuntime.AutoDTypeReason(TorchSharp.torch.CPU, CpuInfo.Detect())} on cpu)", e);
    }
}

/// <remarks>Loads whole pipelines: runs apart from the parallel tests, which it would slow.</remarks>
[Collection(nameof(TorchDefaultsCollection))]
public class BenchChatCommandTests
{
    [Fact]
    public void Bench_chat_on_the_tiny_preset_reports_every_figure_as_json_and_deletes_its_checkpoint()
    {
        TorchTestSetup.Init();
        using var t = TestPaths.Temp();
        var work = t["ckpt"];
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CliRunner.Run(Program.BuildRoot(), ["bench", "chat", "--preset", "tiny", "--work-dir", work, "--prompt-tokens", "24",
            "--new-tokens", "4", "--repeats", "1", "--json"], o, e);
        Assert.True(code == 0, e.ToString());
        var json = System.Text.Json.Nodes.JsonNode.Parse(o.ToString())!;
        Assert.Equal("chat", (string?)json["benchmark"]);
        var metrics = json["metrics"]!.AsObject();
        foreach (var name in new[] { "prefill", "time_to_first_token", "decode", "decode_weight_bytes", "memory_read_bandwidth", "bandwidth_bound_decode", "decode_fraction_of_bound", "peak_rss", "load" })
            Assert.True((double)metrics[name]!["value"]! > 0, name);
        Assert.InRange((int)json["settings"]!["prompt_tokens"]!, 20, 24);
        Assert.False(Directory.Exists(work));                       // written, measured, deleted
        // the weight bytes are the LM's: layers + final norm + lm_head + one embedding row (float32 here)
        var m = TinyCheckpoint.Chat.Module;
        long expected = (m.model.layers.parameters().Sum(p => p.numel()) + m.model.norm.parameters().Sum(p => p.numel()) + m.lm_head.parameters().Sum(p => p.numel()) + m.Config.HiddenSize) * 4;
        Assert.Equal(expected, VargptChatBenchmark.DecodeWeightBytes(m));
        Assert.Equal(expected / 1e6, (double)metrics["decode_weight_bytes"]!["value"]!, 6);
    }

    [Fact]
    public void Bench_chat_rejects_an_unknown_preset()
    {
        // (with neither --preset nor --model it benchmarks the shipped model)
        var e = new StringWriter();
        Assert.Equal(2, CliRunner.Run(Program.BuildRoot(), ["bench", "chat", "--preset", "huge"], new StringWriter(), e));
        Assert.Contains("huge", e.ToString());
    }
}
