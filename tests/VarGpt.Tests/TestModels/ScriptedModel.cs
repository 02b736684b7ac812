using VarGpt.Model;
using VarGpt.ShapesWorld;
using VarGpt.Text;
using static TorchSharp.torch;
using VarGpt.Inference;

namespace VarGpt.Tests.TestModels;

/// <summary>
/// Rewrites a loaded tiny model so that greedy decoding emits a chosen token sequence: attention and MLP outputs are
/// zeroed (each position's final hidden state is its own token embedding), the k-th chain token's embedding is the
/// basis vector e_k, and lm_head row of token k+1 is 10·e_k. So the last prompt token chooses chain[1], which chooses
/// chain[2], ... — a deterministic model for tests of streaming, stop sequences, EOS and image starts.
/// </summary>
internal static class ScriptedModel
{
    /// <summary>A fresh chat over the tiny checkpoint that replies with <paramref name="reply"/> tokens, then EOS (when given).</summary>
    public static VargptModel Load(IReadOnlyList<int> reply, bool endWithEos = true)
    {
        var chat = VargptModel.Load(TinyCheckpoint.Dir);
        var tok = chat.Tokenizer;
        // every chat prompt ends with the generation prompt "<|im_start|>assistant\n": its last token starts the chain
        var last = tok.Encode(ChatTemplate.Render([ChatMessage.User("x")], addGenerationPrompt: true))[^1];
        var chain = new List<int> { last };
        chain.AddRange(reply);
        if (endWithEos) chain.Add(tok.TokenToId(SpecialTokens.ImEnd));
        Script(chat.Module, chain);
        return chat;
    }

    public static void Script(VargptForConditionalGeneration m, IReadOnlyList<int> chain)
    {
        int h = m.Config.HiddenSize;
        if (chain.Count - 1 > h) throw new ArgumentException($"a chain of {chain.Count} tokens needs hidden size >= {chain.Count - 1}");
        if (chain.Take(chain.Count - 1).Distinct().Count() != chain.Count - 1) throw new ArgumentException("chain tokens (all but the last) must be distinct");
        using var _ = no_grad();
        foreach (var (name, p) in m.model.layers.named_parameters())
            if (name.EndsWith("self_attn.o_proj.weight", StringComparison.Ordinal) || name.EndsWith("mlp.down_proj.weight", StringComparison.Ordinal))
                p.zero_();
        var embed = m.model.embed_tokens.weight!;
        var head = ((TorchSharp.Modules.Linear)m.lm_head).weight!;
        head.zero_();
        for (int k = 0; k + 1 < chain.Count; k++)
        {
            embed[chain[k]].zero_();
            embed[chain[k]][k].fill_(1.0);
            head[chain[k + 1]][k].fill_(10.0);
        }
    }

    /// <summary>The byte-level token of one byte (the ShapesWorld vocabulary has all 256).</summary>
    public static int ByteToken(QwenTokenizer tok, byte b) => tok.TokenToId(ByteLevelBpeTokenizer.ByteToChar[b].ToString());

    /// <summary>One token per UTF-8 byte of <paramref name="text"/> (so multi-byte characters span several tokens).</summary>
    public static int[] BytesOf(QwenTokenizer tok, string text) => System.Text.Encoding.UTF8.GetBytes(text).Select(b => ByteToken(tok, b)).ToArray();
}
