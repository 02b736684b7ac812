using static TorchSharp.torch;

namespace VarGpt.LanguageModel;

/// <summary>
/// A tensor that grows along one dimension by appends into preallocated storage (capacity doubles when full), so
/// appending n rows costs O(n) instead of the O(length) copy of the official torch.cat growth (DynamicCache.update,
/// past_hidden_states). The storage is detached from dispose scopes and owned by this object; the views it returns
/// belong to the caller's current scope.
/// </summary>
public sealed class GrowableBuffer : IDisposable
{
    readonly int _dim;
    long _reserved;
    Tensor? _storage;

    public GrowableBuffer(int dim, long initialCapacity = 0)
    {
        if (dim < 0) throw new ArgumentOutOfRangeException(nameof(dim), "use a non-negative dimension index");
        _dim = dim;
        _reserved = initialCapacity;
    }

    /// <summary>Number of valid rows along the growth dimension.</summary>
    public long Length { get; private set; }
    public long Capacity => _storage?.shape[_dim] ?? _reserved;
    public bool IsEmpty => _storage is null;
    public ScalarType? DType => _storage?.dtype;

    /// <summary>Makes room for at least <paramref name="capacity"/> rows without reallocating later.</summary>
    public void Reserve(long capacity)
    {
        if (_storage is null) { _reserved = Math.Max(_reserved, capacity); return; }
        if (capacity > _storage.shape[_dim]) Reallocate(capacity);
    }

    /// <summary>Appends <paramref name="x"/> along the growth dimension and returns a view of all valid rows.</summary>
    public Tensor Append(Tensor x)
    {
        if (x.dim() <= _dim) throw new ArgumentException($"GrowableBuffer: appended tensor has {x.dim()} dims, growth dim is {_dim}");
        long n = x.shape[_dim];
        if (_storage is null)
        {
            var shape = x.shape.ToArray();
            shape[_dim] = Math.Max(Math.Max(_reserved, n), 16);
            _storage = empty(shape, x.dtype, x.device).DetachFromDisposeScope();
        }
        else
        {
            for (int d = 0; d < x.dim(); d++)
                if (d != _dim && x.shape[d] != _storage.shape[d])
                    throw new ArgumentException($"GrowableBuffer: appended shape [{string.Join(",", x.shape)}] does not match stored [{string.Join(",", _storage.shape)}] outside dim {_dim}");
            if (x.dtype != _storage.dtype) throw new ArgumentException($"GrowableBuffer: appended dtype {x.dtype} differs from stored {_storage.dtype}");
            if (Length + n > _storage.shape[_dim]) Reallocate(Math.Max(Length + n, 2 * _storage.shape[_dim]));
        }
        using (var dst = _storage.narrow(_dim, Length, n)) dst.copy_(x);
        Length += n;
        return View();
    }

    /// <summary>View of the valid rows (null before the first append).</summary>
    public Tensor View() => _storage is null
        ? throw new InvalidOperationException("GrowableBuffer is empty")
        : _storage.narrow(_dim, 0, Length);

    /// <summary>Forgets rows beyond <paramref name="length"/> (roll back); their storage is reused by later appends.</summary>
    public void Truncate(long length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"cannot truncate a buffer of length {Length} to {length}");
        Length = length;
    }

    void Reallocate(long capacity)
    {
        var shape = _storage!.shape.ToArray();
        shape[_dim] = capacity;
        var bigger = empty(shape, _storage.dtype, _storage.device).DetachFromDisposeScope();
        if (Length > 0)
            using (var dst = bigger.narrow(_dim, 0, Length))
            using (var src = _storage.narrow(_dim, 0, Length))
                dst.copy_(src);
        _storage.Dispose();
        _storage = bigger;
    }

    public void Dispose()
    {
        _storage?.Dispose();
        _storage = null;
        Length = 0;
    }
}
