using VarGpt.Inference;
using VarGpt.Server;
using VarGpt.Server.Backend;
using VarGpt.Server.Scheduling;
using VarGpt.Text;

namespace VarGpt.Tests.Server;

/// <summary>The chat scheduler over a scripted engine: cancellation within one step, the bounded queue.</summary>
[Collection(nameof(TorchDefaultsCollection))]
public class ChatSchedulerTests
{
    /// <summary>An engine whose rows never end on their own: only cancellation removes them.</summary>
    sealed class EndlessEngine : IChatBatchEngine
    {
        readonly List<ChatRow> _rows = [];
        public int Steps;
        public List<int> StepsAtRelease { get; } = [];
        public int Running => _rows.Count;
        public IReadOnlyList<ChatAdmission> Admit(IReadOnlyList<(ChatBatchRequest Request, CancellationToken Cancellation)> requests) => requests.Select(r =>
        {
            var row = new ChatRow(r.Request, 3, int.MaxValue, Tokenizer.Value.CreateStreamingDecoder(skipSpecialTokens: true), []);
            _rows.Add(row);
            return new ChatAdmission(row, null);
        }).ToList();
        public void Step() { Steps++; Thread.Sleep(2); }
        public void Release(ChatRow row) { _rows.Remove(row); StepsAtRelease.Add(Steps); }
    }

    static readonly Lazy<QwenTokenizer> Tokenizer = new(() => QwenTokenizer.FromDirectory(ShippedModel.Resolve()));

    [Fact]
    public async Task A_cancelled_request_leaves_the_batch_before_the_next_step()
    {
        var engine = new EndlessEngine();
        using var scheduler = new ChatScheduler(engine, maxBatch: 4, maxQueue: 1, new ServerMetrics());
        using var cts = new CancellationTokenSource();
        var ticket = scheduler.TryEnqueue(new ChatJob([ChatMessage.User("hi")], new VargptChatOptions()), cts.Token)!;
        Assert.NotNull(ticket);
        while (engine.Steps < 5) await Task.Delay(1, TestContext.Current.CancellationToken);
        int stepsAtCancel = engine.Steps;
        cts.Cancel();
        var events = new List<ChatEvent>();
        await foreach (var e in ticket.Events.ReadAllAsync(TestContext.Current.CancellationToken)) events.Add(e);
        Assert.IsAssignableFrom<OperationCanceledException>(events[^1].Error);
        Assert.InRange(Assert.Single(engine.StepsAtRelease) - stepsAtCancel, 0, 1);
        Assert.Equal(0, engine.Running);
    }

    [Fact]
    public void The_queue_refuses_requests_beyond_free_rows_plus_its_capacity()
    {
        var engine = new EndlessEngine();
        using var scheduler = new ChatScheduler(engine, maxBatch: 1, maxQueue: 1, new ServerMetrics());
        var job = new ChatJob([ChatMessage.User("hi")], new VargptChatOptions());
        Assert.NotNull(scheduler.TryEnqueue(job, TestContext.Current.CancellationToken));
        Assert.True(SpinWait.SpinUntil(() => scheduler.Running == 1, 2000));
        Assert.NotNull(scheduler.TryEnqueue(job, TestContext.Current.CancellationToken));   // waits for the row
        Assert.Null(scheduler.TryEnqueue(job, TestContext.Current.CancellationToken));      // the queue is full
    }
}
