using System.CommandLine;
using System.Globalization;
using VarGpt.Checkpoint;
using VarGpt.Model;
using VarGpt.Text;
using VarGpt.Vision;
using VarGpt.Inference;

using VarGpt.Cli.Runner;

namespace VarGpt.Cli.Commands;

/// <summary>
/// vargpt chat: one streamed answer to PROMPT, or (without PROMPT) an interactive multi-turn session on stdin with
/// /image PATH, /reset and /exit. The answer goes to stdout; loading progress, notes and the sampling settings to stderr.
/// </summary>
public static class ChatCommand
{
    /// <summary>The sampling/length flags shared with `bench chat`.</summary>
    internal sealed class SamplingOptions
    {
        public Option<int?> MaxNewTokens { get; } = new("--max-new-tokens") { Description = $"New tokens at most (default: generation_config.json max_new_tokens, else {VargptChatOptions.DefaultMaxNewTokens} as the official scripts)." };
        public Option<double?> Temperature { get; } = new("--temperature") { Description = "Sample with this temperature (0 = greedy). Unset sampling values come from generation_config.json, as in HF generate." };
        public Option<int?> TopK { get; } = new("--top-k") { Description = "Sample from the k most likely tokens (0 = off)." };
        public Option<double?> TopP { get; } = new("--top-p") { Description = "Nucleus sampling: the smallest set of tokens with probability >= p." };
        public Option<double?> RepetitionPenalty { get; } = new("--repetition-penalty") { Description = "Override generation_config.json's repetition_penalty (1 = off)." };
        public Option<bool> Sample { get; } = new("--sample") { Description = "Sample with generation_config.json's temperature/top-k/top-p (default: greedy, as the official scripts)." };
        public Option<long?> Seed { get; } = new("--seed") { Description = "Seed of the token and image samplers (same seed, same output). Default: random, printed." };

        public void AddTo(Command c)
        {
            foreach (var o in new Option[] { MaxNewTokens, Temperature, TopK, TopP, RepetitionPenalty, Sample, Seed }) c.Options.Add(o);
        }

        public VargptChatOptions Read(ParseResult p) => new()
        {
            MaxNewTokens = p.GetValue(MaxNewTokens), Temperature = p.GetValue(Temperature), TopK = p.GetValue(TopK), TopP = p.GetValue(TopP),
            RepetitionPenalty = p.GetValue(RepetitionPenalty), DoSample = p.GetValue(Sample) ? true : null, Seed = p.GetValue(Seed),
        };
    }

    /// <param name="stdin">The input of the interactive session (tests pass a StringReader); null = Console.In.</param>
    public static Command Create(TextReader? stdin = null)
    {
        var prompt = new Argument<string?>("PROMPT") { Description = "The message; omit it for an interactive session ('-' reads the message from stdin).", Arity = ArgumentArity.ZeroOrOne };
        var images = new Option<string[]>("--image", "-i") { Description = "Image file (PNG, JPEG, WebP, BMP, GIF) to attach to the prompt; repeat for several.", AllowMultipleArgumentsPerToken = false };
        var system = new Option<string?>("--system") { Description = "System message (default: the template's \"You are a helpful assistant.\")." };
        var stops = new Option<string[]>("--stop") { Description = "Stop the answer before this text; repeat for several." };
        var imageOut = new Option<string>("--image-out") { Description = "Where to save an image the model draws (further images get -2, -3, ... suffixes).", DefaultValueFactory = _ => "vargpt-image.png" };
        var noImages = new Option<bool>("--no-image-generation") { Description = "When the model starts an image, stop there instead of drawing it." };
        var model = new ModelOptions();
        var sampling = new SamplingOptions();
        var cmd = new Command("chat", "Chat with a model folder: stream the answer to PROMPT (with --image files), or an interactive session without PROMPT.")
        { prompt, images, system, stops, imageOut, noImages };
        model.AddTo(cmd);
        sampling.AddTo(cmd);
        cmd.WithDetails(
            """
            Decoding is greedy by default (the official inference scripts pass do_sample=False), with the
            repetition_penalty of the checkpoint's generation_config.json, as Hugging Face generate applies it.
            --temperature/--top-k/--top-p or --sample switch to sampling; unset sampling values come from
            generation_config.json (Qwen2-VL ships top_k 1, top_p 0.001: pass them to widen the choice).
            The settings in effect are printed to stderr at the start.
            Interactive session (no PROMPT): type a message and press Enter. Commands:
              /image PATH   attach an image to the next message (repeat for several)
              /reset        forget the conversation
              /exit         quit (so does end of input)
            Images larger than the processor's max_pixels are resized (a note says so once per image).
            If the model draws an image it is saved to --image-out and the path printed; no text follows an image.
            """);
        cmd.WithExamples(
            "vargpt chat -m ~/models/VARGPT-v1.1 \"Write a haiku about the sea.\"",
            "vargpt chat -m ~/models/VARGPT-v1.1 --image cat.jpg \"What is in this picture?\"",
            "vargpt chat -m ~/models/VARGPT-v1.1 --dtype bfloat16 --temperature 0.7 --top-k 50 --top-p 0.9 --seed 1",
            "echo \"Please draw a red apple.\" | vargpt chat -m ~/models/VARGPT-v1.1 --image-out apple.png -");
        cmd.SetAction(parse =>
        {
            var o = parse.InvocationConfiguration.Output;
            var e = parse.InvocationConfiguration.Error;
            var input = stdin ?? Console.In;
            var text = parse.GetValue(prompt);
            if (text == "-") text = input.ReadToEnd().TrimEnd('\r', '\n');
            if (text is not null && string.IsNullOrWhiteSpace(text)) throw new VargptInputException("the prompt is empty");
            var options = sampling.Read(parse) with
            {
                StopSequences = parse.GetValue(stops) ?? [],
                GenerateImages = !parse.GetValue(noImages),
            };
            // load the images before the model: a wrong path fails in a second, not after minutes of loading
            var firstImages = (parse.GetValue(images) ?? []).Select(p => new NamedImage(p, RgbImage.Load(p))).ToList();
            using var chat = model.Load(parse, e);
            var session = new Session(chat, options, parse.GetValue(system), parse.GetValue(imageOut)!, o, e);
            session.Describe();
            if (text is not null) return session.Turn(text, firstImages) ? ExitCodes.Ok : ExitCodes.UserError;
            return session.Interactive(input, firstImages);
        });
        return cmd;
    }

    internal sealed record NamedImage(string Path, RgbImage Image);

    /// <summary>The conversation: history, images waiting for the next message, notes already given, saved images.</summary>
    sealed class Session(VargptModel chat, VargptChatOptions options, string? system, string imageOut, TextWriter o, TextWriter e)
    {
        readonly List<ChatMessage> _history = [];
        readonly HashSet<RgbImage> _noted = new(ReferenceEqualityComparer.Instance);
        VargptChatOptions _options = Validated(chat, options);
        int _saved;

        static VargptChatOptions Validated(VargptModel chat, VargptChatOptions options)
        {
            var g = options.Resolve(chat.GenerationConfig);
            // sampling without --seed: pick one and say it, so the answer can be reproduced
            return g.DoSample && options.Seed is null ? options with { Seed = Seeds.Random() } : options;
        }

        /// <summary>One stderr line with the decoding settings in effect and where each came from.</summary>
        public void Describe()
        {
            var file = chat.GenerationConfig;
            var g = _options.Resolve(file);
            string From(bool set) => set ? "" : " (generation_config.json)";
            var parts = new List<string>();
            if (g.DoSample)
            {
                parts.Add($"sampling: temperature {F(g.Temperature)}{From(_options.Temperature is > 0)}");
                parts.Add($"top_k {g.TopK}{From(_options.TopK is not null)}");
                parts.Add($"top_p {F(g.TopP)}{From(_options.TopP is not null)}");
            }
            else parts.Add("greedy decoding");
            parts.Add($"repetition_penalty {F(g.RepetitionPenalty)}{From(_options.RepetitionPenalty is not null)}");
            parts.Add($"max_new_tokens {g.MaxNewTokens}");
            if (_options.Seed is long s) parts.Add($"seed {s}");
            e.WriteLine(string.Join(", ", parts));
        }

        /// <summary>Runs one user turn; false when it failed with a user error (already printed).</summary>
        public bool Turn(string text, IReadOnlyList<NamedImage> images)
        {
            var user = new ChatMessage("user", images.Select(i => ContentPart.FromImage(i.Image)).Append(ContentPart.FromText(text)).ToList());
            var messages = new List<ChatMessage>();
            if (system is not null) messages.Add(ChatMessage.System(system));
            messages.AddRange(_history);
            messages.Add(user);
            VargptChatReply? reply = null;
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, a) => { a.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            try
            {
                foreach (var u in chat.ChatUpdates(messages, _options, cts.Token))
                {
                    if (u.Text.Length > 0) { o.Write(u.Text); o.Flush(); }
                    if (u.ImageStarting) { o.WriteLine(); o.Flush(); e.WriteLine("drawing an image..."); }
                    reply ??= u.Reply;
                }
            }
            catch (OperationCanceledException)
            {
                o.WriteLine();
                e.WriteLine("(stopped)");
                return true;
            }
            catch (VargptInputException x)
            {
                e.WriteLine($"error: {x.Message}");
                return false;
            }
            finally { Console.CancelKeyPress -= onCancel; }
            o.WriteLine();
            // the resize note, once per image of the session
            var all = messages.SelectMany(m => m.Content).OfType<ImagePart>().Select(p => p.Pixels!).ToList();
            for (int i = 0; i < all.Count && i < reply!.ImagesResized.Count; i++)
                if (reply.ImagesResized[i] && _noted.Add(all[i]))
                    e.WriteLine($"note: {NameOf(all[i], images)} ({all[i].Width}x{all[i].Height}) was resized to fit max_pixels {chat.Preprocessor.MaxPixels}");
            if (reply!.Image is { } img)
            {
                var path = ++_saved == 1 ? imageOut : Path.Combine(Path.GetDirectoryName(imageOut) ?? "", $"{Path.GetFileNameWithoutExtension(imageOut)}-{_saved}{Path.GetExtension(imageOut)}");
                img.SavePng(path);
                e.WriteLine($"image saved to {path} ({img.Width}x{img.Height}, seed {reply.ImageSeed})");
            }
            else if (reply.Finish == VargptChatFinish.Image) e.WriteLine("(the model started an image; not drawn: --no-image-generation)");
            else if (reply.Finish == VargptChatFinish.MaxNewTokens) e.WriteLine($"(stopped at max_new_tokens = {reply.GeneratedTokens})");
            _history.Add(user);
            _history.Add(ChatMessage.Assistant(reply.Text));
            return true;
        }

        string NameOf(RgbImage image, IReadOnlyList<NamedImage> current) =>
            current.FirstOrDefault(n => ReferenceEquals(n.Image, image))?.Path ?? _names.GetValueOrDefault(image, "image");

        readonly Dictionary<RgbImage, string> _names = new(ReferenceEqualityComparer.Instance);

        public int Interactive(TextReader input, List<NamedImage> pending)
        {
            e.WriteLine("Type a message and press Enter. /image PATH attaches an image to the next message, /reset forgets the conversation, /exit quits.");
            foreach (var p in pending) e.WriteLine($"(attached {p.Path} to the next message)");
            while (true)
            {
                e.Write("> ");
                e.Flush();
                var line = input.ReadLine();
                if (line is null) { e.WriteLine(); return ExitCodes.Ok; }
                line = line.Trim();
                if (line.Length == 0) continue;
                if (line.StartsWith('/'))
                {
                    var (command, arg) = line.IndexOf(' ') is int sp and > 0 ? (line[..sp], line[(sp + 1)..].Trim()) : (line, "");
                    switch (command)
                    {
                        case "/exit" or "/quit":
                            return ExitCodes.Ok;
                        case "/reset":
                            _history.Clear();
                            pending.Clear();
                            e.WriteLine("(conversation reset)");
                            continue;
                        case "/image" when arg.Length == 0:
                            e.WriteLine("error: /image needs a file path, e.g. /image cat.jpg");
                            continue;
                        case "/image":
                            var path = arg.Trim('"');
                            try
                            {
                                var img = RgbImage.Load(path);
                                pending.Add(new NamedImage(path, img));
                                e.WriteLine($"(attached {path}, {img.Width}x{img.Height}, to the next message)");
                            }
                            catch (VargptInputException x)
                            {
                                e.WriteLine($"error: {x.Message}");
                            }
                            continue;
                        default:
                            e.WriteLine($"error: unknown command {command}; commands: /image PATH, /reset, /exit");
                            continue;
                    }
                }
                foreach (var p in pending) _names[p.Image] = p.Path;
                if (!Turn(line, pending) && pending.Count > 0) e.WriteLine("(the attached images were dropped; attach again with /image)");
                pending.Clear();
            }
        }
    }

    static string F(double x) => x.ToString("G6", CultureInfo.InvariantCulture);
}
