namespace VarGpt.Server.Scheduling;

/// <summary>
/// Admission of image requests: at most <c>concurrency</c> drawn at once, at most <c>maxQueue</c> waiting; one more is
/// refused at once (the caller answers 429 with <see cref="RetryAfterSeconds"/>).
/// </summary>
public sealed class ImageGate(int concurrency, int maxQueue, ServerMetrics metrics) : IDisposable
{
    readonly ServerMetrics _metrics = metrics;
    readonly SemaphoreSlim _slots = new(concurrency, concurrency);
    int _inside;   // waiting + drawing
    double _averageSeconds = 1;

    public int Waiting => Math.Max(0, Volatile.Read(ref _inside) - (concurrency - _slots.CurrentCount));

    /// <summary>A rough wait: the queue ahead times the mean time of one request, per slot.</summary>
    public int RetryAfterSeconds => Math.Max(1, (int)Math.Ceiling(Volatile.Read(ref _inside) * _averageSeconds / concurrency));

    /// <summary>A slot (dispose it when done), or null when the queue is full.</summary>
    public async Task<IDisposable?> EnterAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Increment(ref _inside) > concurrency + maxQueue)
        {
            Interlocked.Decrement(ref _inside);
            return null;
        }
        _metrics.QueueDepth.WithLabels("image").Set(Waiting);
        try { await _slots.WaitAsync(cancellationToken).ConfigureAwait(false); }
        catch
        {
            Interlocked.Decrement(ref _inside);
            _metrics.QueueDepth.WithLabels("image").Set(Waiting);
            throw;
        }
        _metrics.QueueDepth.WithLabels("image").Set(Waiting);
        _metrics.RunningImages.Inc();
        return new Slot(this);
    }

    /// <summary>Feeds the Retry-After estimate.</summary>
    public void Observe(TimeSpan requestTime) => _averageSeconds = 0.8 * _averageSeconds + 0.2 * requestTime.TotalSeconds;

    sealed class Slot(ImageGate gate) : IDisposable
    {
        int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 1) return;
            gate._slots.Release();
            Interlocked.Decrement(ref gate._inside);
            gate._metrics.RunningImages.Dec();
            gate._metrics.QueueDepth.WithLabels("image").Set(gate.Waiting);
        }
    }

    public void Dispose() => _slots.Dispose();
}
