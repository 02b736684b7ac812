using static TorchSharp.torch;

namespace VarGpt.LanguageModel;

/// <summary>
/// Per-layer key/value cache of the language model (the official code uses transformers' DynamicCache). Keys are
/// stored after the rotary embedding, as [B, num_key_value_heads, T, head_dim], in growable storage. Length counts
/// every cached slot including left padding (it is HF's cache_position of the next token). Truncate rolls back.
/// The image-generation loop appends to the same cache (its positions are then the raw cache indices).
/// </summary>
public sealed class KVCache : IDisposable
{
    readonly GrowableBuffer[] _keys, _values;

    public KVCache(int numLayers, long initialCapacity = 0)
    {
        _keys = new GrowableBuffer[numLayers];
        _values = new GrowableBuffer[numLayers];
        for (int i = 0; i < numLayers; i++)
        {
            _keys[i] = new GrowableBuffer(2, initialCapacity);
            _values[i] = new GrowableBuffer(2, initialCapacity);
        }
    }

    public int NumLayers => _keys.Length;

    /// <summary>Cached tokens (layer 0, like DynamicCache.get_seq_length). Read it before a forward: layers update in turn.</summary>
    public long Length => _keys[0].Length;

    /// <summary>Preallocates room for <paramref name="capacity"/> tokens in every layer.</summary>
    public void Reserve(long capacity)
    {
        foreach (var b in _keys) b.Reserve(capacity);
        foreach (var b in _values) b.Reserve(capacity);
    }

    /// <summary>Appends this step's K/V [B, Hkv, q, D] of one layer; returns all cached K/V of that layer [B, Hkv, T, D].</summary>
    public (Tensor Keys, Tensor Values) Update(int layer, Tensor keys, Tensor values) =>
        (_keys[layer].Append(keys), _values[layer].Append(values));

    /// <summary>Drops cached tokens beyond <paramref name="length"/> in every layer.</summary>
    public void Truncate(long length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), $"cannot truncate a KV cache of length {Length} to {length}");
        foreach (var b in _keys) b.Truncate(Math.Min(length, b.Length));
        foreach (var b in _values) b.Truncate(Math.Min(length, b.Length));
    }

    public void Dispose()
    {
        foreach (var b in _keys) b.Dispose();
        foreach (var b in _values) b.Dispose();
    }
}
