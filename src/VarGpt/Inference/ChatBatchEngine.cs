using VarGpt.Text;

namespace VarGpt.Inference;

/// <summary>One chat for the batch engine: the conversation (image items carry their pixels), the options, and whether EOS and image starts are ignored (fixed-length decoding for benchmarks).</summary>
public sealed record ChatBatchRequest(IReadOnlyList<ChatMessage> Messages, VargptChatOptions Options, bool IgnoreEos = false);

/// <summary>
/// Continuous batching of chat decodes (what vLLM and llama.cpp's slots do): rows join a running batch after their
/// prefill (the rows admitted together share one) and leave it as soon as they end, and every <see cref="Step"/> is one forward pass for all running rows.
/// Driven by one thread (the server's chat scheduler).
/// </summary>
public interface IChatBatchEngine
{
    /// <summary>
    /// Prepares each conversation (template, images, vision tower), prefills them together as one left-padded batch and
    /// chooses their first tokens; the rows then run in the batch until they end (a row can end at once: first token EOS,
    /// max_new_tokens 1). A request that is cancelled or that the model cannot take (<see cref="InvalidPromptException"/>,
    /// <see cref="ArgumentException"/>) gets its error and does not hold up the others.
    /// </summary>
    IReadOnlyList<ChatAdmission> Admit(IReadOnlyList<(ChatBatchRequest Request, CancellationToken Cancellation)> requests);

    /// <summary>One decode step for every running row admitted and not released (one forward pass); rows that end leave the batch.</summary>
    void Step();

    /// <summary>Removes a row from the batch (a cancelled request); ended rows leave by themselves.</summary>
    void Release(ChatRow row);

    /// <summary>Rows in the running batch.</summary>
    int Running { get; }
}

/// <summary>What admission gave one request: its row, or the error that refused it.</summary>
public readonly record struct ChatAdmission(ChatRow? Row, Exception? Error);

public static class ChatBatchEngineExtensions
{
    /// <summary>Admits one request; throws what refused it.</summary>
    public static ChatRow Admit(this IChatBatchEngine engine, ChatBatchRequest request, CancellationToken cancellationToken)
    {
        var admitted = engine.Admit([(request, cancellationToken)])[0];
        if (admitted.Error is { } e) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e);
        return admitted.Row!;
    }
}

/// <summary>
/// One chat row: the text it produced so far (cut before a stop sequence), its ids and, once it ended, why. The engine
/// writes; the scheduler thread reads between steps.
/// </summary>
public sealed class ChatRow
{
    readonly StreamingDecoder _decoder;
    readonly StopSequenceFilter _stops;
    readonly List<int> _ids = [];
    readonly System.Text.StringBuilder _pending = new();

    internal ChatRow(ChatBatchRequest request, int promptTokens, int maxNewTokens, StreamingDecoder decoder, IReadOnlyList<string> stops)
    {
        Request = request;
        PromptTokens = promptTokens;
        MaxNewTokens = maxNewTokens;
        _decoder = decoder;
        _stops = new StopSequenceFilter(stops);
    }

    public ChatBatchRequest Request { get; }
    public int PromptTokens { get; }
    public int MaxNewTokens { get; }
    /// <summary>Generated ids (EOS included when emitted; &lt;|image_gen_start|&gt; included when the row started an image).</summary>
    public IReadOnlyList<int> TokenIds => _ids;
    public int CompletionTokens => _ids.Count;
    public string Text => _stops.Text;
    /// <summary>Null while running.</summary>
    public VargptChatFinish? Finish { get; private set; }
    /// <summary>Engine-private per-row state (KV slot, sampler).</summary>
    internal object? State { get; set; }

    /// <summary>The text completed since the last call.</summary>
    public string TakeNewText()
    {
        var s = _pending.ToString();
        _pending.Clear();
        return s;
    }

    /// <summary>Adds one chosen token: EOS, image start and max_new_tokens end the row; stop sequences cut the text.</summary>
    internal void Add(int id, long[] eos, int imageStartId)
    {
        _ids.Add(id);
        if (Array.IndexOf(eos, (long)id) >= 0) { End(VargptChatFinish.EndOfTurn); return; }
        // official vargpt_sample: no text follows <|image_gen_start|>; the image is drawn at batch size 1 (DrawChatImage)
        if (imageStartId > 0 && id == imageStartId) { End(VargptChatFinish.Image); return; }
        _pending.Append(_stops.Push(_decoder.Push(id), out bool stopped));
        if (stopped) { Finish = VargptChatFinish.StopSequence; return; }
        if (_ids.Count >= MaxNewTokens) End(VargptChatFinish.MaxNewTokens);
    }

    void End(VargptChatFinish finish)
    {
        var rest = _stops.Push(_decoder.Flush(), out bool stopped);
        if (!stopped) rest += _stops.Flush();
        _pending.Append(rest);
        Finish = stopped ? VargptChatFinish.StopSequence : finish;
    }
}
