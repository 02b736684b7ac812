using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// torch.nn.Embedding (forward = F.embedding: rows of <c>weight</c> gathered by index; init N(0, 1)) whose weight is
/// allocated directly on the requested device in the requested dtype. TorchSharp's nn.Embedding builds its weight in
/// float32 on the CPU and casts/moves it afterwards, so Embedding(152064, 3584, bf16) briefly held 2.2 GB of float32
/// (3.43 GB peak) and even a META build allocated it. State-dict key: <c>weight</c>, as torch's.
/// </summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // state-dict name
    public readonly Parameter weight; // [num_embeddings, embedding_dim]
#pragma warning restore IDE1006

    public long NumEmbeddings => weight.shape[0];
    public long EmbeddingDim => weight.shape[1];

    /// <summary>null device/dtype = libtorch's current defaults, as torch's factory kwargs.</summary>
    public Embedding(long numEmbeddings, long embeddingDim, Device? device = null, ScalarType? dtype = null) : base(nameof(Embedding))
    {
        var w = empty([numEmbeddings, embeddingDim], dtype: dtype, device: device);
        using (no_grad()) w.normal_(); // torch reset_parameters: init.normal_(weight)
        weight = new Parameter(w);
        RegisterComponents();
    }

    /// <summary>ids (any shape, int64) → [*ids.shape, embedding_dim]; index_select then view, as at::embedding.</summary>
    public override Tensor forward(Tensor ids)
    {
        using var flat = ids.reshape(-1);
        using var rows = weight.index_select(0, flat);
        return rows.view([.. ids.shape, weight.shape[1]]);
    }
}
