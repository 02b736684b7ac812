using System.Diagnostics;
using System.Threading.Channels;
using VarGpt.Inference;
using VarGpt.Server.Backend;

namespace VarGpt.Server.Scheduling;

/// <summary>What a chat ticket receives: text pieces, then the ended row (or the error that ended it).</summary>
public sealed record ChatEvent(string Text, ChatRow? Ended = null, Exception? Error = null);

/// <summary>One admitted chat request: its events, and the token that cancels it (client gone, timeout).</summary>
public sealed class ChatTicket
{
    internal ChatTicket(ChatJob job, CancellationToken cancellation)
    {
        Job = job;
        Cancellation = cancellation;
    }

    public ChatJob Job { get; }
    public CancellationToken Cancellation { get; }
    internal Channel<ChatEvent> Channel { get; } = System.Threading.Channels.Channel.CreateUnbounded<ChatEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    public ChannelReader<ChatEvent> Events => Channel.Reader;
    internal ChatRow? Row { get; set; }
    /// <summary>The first event after admission was sent (it goes out even when empty: the caller then knows the prompt was accepted).</summary>
    internal bool Announced { get; set; }
    internal Stopwatch Clock { get; } = Stopwatch.StartNew();
    /// <summary>Request accepted → first token chosen (queue wait + prefill).</summary>
    public TimeSpan? TimeToFirstToken { get; internal set; }
}

/// <summary>
/// The chat step loop (continuous batching): one thread owns the engine; between two decode steps it admits waiting
/// requests (FIFO, at most <see cref="AdmitPerStep"/> per step, prefilled as one batch, so running streams keep flowing during a burst),
/// drops cancelled rows (a disconnect or timeout is honoured within one decode step), steps the whole running batch
/// once, and hands every row its new text. A bounded queue in front: <see cref="TryEnqueue"/> says no when it is full.
/// </summary>
public sealed class ChatScheduler : IDisposable
{
    /// <summary>Requests admitted (prefilled together) between two decode steps.</summary>
    public const int AdmitPerStep = 8;

    readonly IChatBatchEngine _engine;
    readonly int _maxBatch, _maxQueue;
    readonly ServerMetrics _metrics;
    readonly Queue<ChatTicket> _waiting = new();
    readonly List<ChatTicket> _running = [];
    readonly object _gate = new();
    readonly SemaphoreSlim _signal = new(0);
    readonly Thread _thread;
    readonly CancellationTokenSource _stop = new();
    // decode throughput over the last second of decoding (for the gauge)
    long _windowTokens;
    readonly Stopwatch _window = new();

    public ChatScheduler(IChatBatchEngine engine, int maxBatch, int maxQueue, ServerMetrics metrics)
    {
        _engine = engine;
        _maxBatch = maxBatch;
        _maxQueue = maxQueue;
        _metrics = metrics;
        _thread = new Thread(Loop) { IsBackground = true, Name = "vargpt-chat-scheduler" };
        _thread.Start();
    }

    /// <summary>Requests waiting for a row.</summary>
    public int Waiting { get { lock (_gate) return _waiting.Count; } }
    /// <summary>Rows decoding.</summary>
    public int Running { get { lock (_gate) return _running.Count; } }

    /// <summary>Queues a request, or returns null when the queue is full (answer 429).</summary>
    public ChatTicket? TryEnqueue(ChatJob job, CancellationToken cancellation)
    {
        ChatTicket ticket;
        lock (_gate)
        {
            // free rows take a request at once; beyond them, at most _maxQueue wait
            if (_waiting.Count >= _maxQueue + Math.Max(0, _maxBatch - _running.Count)) return null;
            ticket = new ChatTicket(job, cancellation);
            _waiting.Enqueue(ticket);
            _metrics.QueueDepth.WithLabels("chat").Set(_waiting.Count);
        }
        _signal.Release();
        return ticket;
    }

    void Loop()
    {
        var stop = _stop.Token;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                Admit();
                Deliver();          // first pieces (time to first token), and rows that ended at their first token
                DropCancelled();
                if (_engine.Running == 0)
                {
                    _window.Reset();
                    _signal.Wait(stop);
                    continue;
                }
                if (!_window.IsRunning) { _window.Restart(); _windowTokens = 0; }
                int rows = _engine.Running;
                _engine.Step();
                _metrics.DecodeSteps.Inc();
                _metrics.CompletionTokens.Inc(rows);
                _windowTokens += rows;
                if (_window.Elapsed.TotalSeconds >= 1)
                {
                    _metrics.DecodeTokensPerSecond.Set(_windowTokens / _window.Elapsed.TotalSeconds);
                    _window.Restart(); _windowTokens = 0;
                }
                Deliver();
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { break; }
            catch (Exception e)
            {
                // an engine failure mid-step ends every running row with that error; the loop goes on for new requests
                List<ChatTicket> failed;
                lock (_gate) { failed = [.. _running]; _running.Clear(); }
                foreach (var t in failed)
                {
                    if (t.Row is { } r) { try { _engine.Release(r); } catch { /* the batch is being dropped anyway */ } }
                    t.Channel.Writer.TryWrite(new ChatEvent("", Error: e));
                    t.Channel.Writer.TryComplete();
                }
            }
            finally { _metrics.RunningChats.Set(_engine.Running); }
        }
    }

    /// <summary>Takes up to <see cref="AdmitPerStep"/> waiting requests (as many rows as are free) and prefills them as one batch.</summary>
    void Admit()
    {
        var tickets = new List<ChatTicket>();
        lock (_gate)
        {
            while (tickets.Count < AdmitPerStep && _waiting.Count > 0 && _running.Count + tickets.Count < _maxBatch)
            {
                var ticket = _waiting.Dequeue();
                if (ticket.Cancellation.IsCancellationRequested) { Cancel(ticket); continue; }
                tickets.Add(ticket);
            }
            _metrics.QueueDepth.WithLabels("chat").Set(_waiting.Count);
        }
        if (tickets.Count == 0) return;
        IReadOnlyList<ChatAdmission> admitted;
        try { admitted = _engine.Admit(tickets.Select(t => (t.Job.Chat, t.Cancellation)).ToList()); }
        catch (Exception e) { admitted = tickets.Select(_ => new ChatAdmission(null, e)).ToList(); }
        for (int i = 0; i < tickets.Count; i++)
        {
            var ticket = tickets[i];
            if (admitted[i].Row is not { } row)
            {
                if (admitted[i].Error is OperationCanceledException && ticket.Cancellation.IsCancellationRequested) { Cancel(ticket); continue; }
                ticket.Channel.Writer.TryWrite(new ChatEvent("", Error: admitted[i].Error));
                ticket.Channel.Writer.TryComplete();
                continue;
            }
            ticket.Row = row;
            ticket.TimeToFirstToken = ticket.Clock.Elapsed;
            _metrics.TimeToFirstToken.Observe(ticket.Clock.Elapsed.TotalSeconds);
            _metrics.PromptTokens.Inc(row.PromptTokens);
            _metrics.CompletionTokens.Inc(1);
            lock (_gate) _running.Add(ticket);
        }
    }

    void DropCancelled()
    {
        List<ChatTicket> gone;
        lock (_gate)
        {
            gone = _running.Where(t => t.Cancellation.IsCancellationRequested).ToList();
            foreach (var t in gone) _running.Remove(t);
        }
        foreach (var t in gone)
        {
            _engine.Release(t.Row!);
            Cancel(t);
        }
    }

    void Cancel(ChatTicket t)
    {
        _metrics.Cancelled.WithLabels("chat").Inc();
        t.Channel.Writer.TryWrite(new ChatEvent("", Error: new OperationCanceledException(t.Cancellation)));
        t.Channel.Writer.TryComplete();
    }

    /// <summary>New text to every running ticket; ended rows complete theirs.</summary>
    void Deliver()
    {
        List<ChatTicket> snapshot;
        lock (_gate) snapshot = [.. _running];
        foreach (var t in snapshot)
        {
            var row = t.Row!;
            var text = row.TakeNewText();
            if (row.Finish is null)
            {
                if (text.Length > 0 || !t.Announced) t.Channel.Writer.TryWrite(new ChatEvent(text));
                t.Announced = true;
                continue;
            }
            t.Channel.Writer.TryWrite(new ChatEvent(text, Ended: row));
            t.Channel.Writer.TryComplete();
            lock (_gate) _running.Remove(t);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _signal.Release();
        _thread.Join(TimeSpan.FromSeconds(10));
        _stop.Dispose();
    }
}
