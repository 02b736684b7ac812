namespace VarGpt.Text;

/// <summary>A LLaMA-Factory training message: role ("user", "assistant", "observation") and content with placeholders.</summary>
public sealed record LlamaFactoryMessage(string Role, string Content);

/// <summary>
/// The LLaMA-Factory chat template "vargpt_qwen2_vl" that VARGPT-family-training registers at the end of
/// prepare_vargpt_v1_1.py, with Template._encode / encode_multiturn of data/template.py:
/// turn 0 = system "&lt;|im_start|&gt;system\n{system}&lt;|im_end|&gt;\n" (default "You are a helpful assistant."), every
/// later user turn is preceded by the separator "\n"; user = "&lt;|im_start|&gt;user\n{content}&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\n";
/// assistant = "{content}" + the eos id (replace_eos: eos is &lt;|im_end|&gt;, the first stop word).
/// Each piece is tokenized on its own (tokenizer.encode(piece, add_special_tokens=False)), as the official does.
/// Placeholders must already be expanded (<see cref="PromptExpansion.ExpandTrainingPlaceholders"/>).
/// </summary>
public static class LlamaFactoryTemplate
{
    public const string DefaultSystem = ChatTemplate.DefaultSystemMessage;
    /// <summary>stop_words[0] of the template; replace_eos makes it the tokenizer's eos token.</summary>
    public const string StopWord = SpecialTokens.ImEnd;

    /// <summary>A formatted piece: text to tokenize, or null for the eos token id.</summary>
    static List<string?> Elements(IReadOnlyList<LlamaFactoryMessage> messages, int i, string? system)
    {
        var m = messages[i];
        var el = new List<string?>();
        if (i == 0)
        {
            string sys = string.IsNullOrEmpty(system) ? DefaultSystem : system;
            el.Add($"{SpecialTokens.ImStart}system\n{sys}{SpecialTokens.ImEnd}\n");
        }
        if (i > 0 && i % 2 == 0) el.Add("\n");
        switch (m.Role)
        {
            // StringFormatter.apply fills {{content}} then {{idx}} (= i // 2) once each, so a literal "{{idx}}" typed in
            // the user content is replaced too: kept for parity
            case "user":
                el.Add(ReplaceFirst($"{SpecialTokens.ImStart}user\n{m.Content}{SpecialTokens.ImEnd}\n{SpecialTokens.ImStart}assistant\n", "{{idx}}", (i / 2).ToString(System.Globalization.CultureInfo.InvariantCulture)));
                break;
            case "assistant": el.Add(m.Content); el.Add(null); break;
            case "observation": el.Add($"{SpecialTokens.ImStart}tool\n{m.Content}{SpecialTokens.ImEnd}\n{SpecialTokens.ImStart}assistant\n"); break;
            default: throw new NotSupportedException($"message {i}: role '{m.Role}' is not supported by the vargpt_qwen2_vl template (user, assistant, observation)");
        }
        return el;
    }

    /// <summary>encode_multiturn: (prompt ids, answer ids) for each (user, assistant) pair of turns.</summary>
    public static IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Answer)> EncodeMultiTurn(
        QwenTokenizer tokenizer, IReadOnlyList<LlamaFactoryMessage> messages, string? system = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        CheckTurns(messages);
        int eos = tokenizer.TokenToId(StopWord);
        var encoded = new List<IReadOnlyList<int>>();
        for (int i = 0; i < messages.Count; i++)
        {
            var ids = new List<int>();
            foreach (var e in Elements(messages, i, system))
                if (e == null) ids.Add(eos);
                else if (e.Length > 0) ids.AddRange(tokenizer.Encode(e));
            encoded.Add(ids);
        }
        return Enumerable.Range(0, messages.Count / 2).Select(k => (encoded[2 * k], encoded[2 * k + 1])).ToList();
    }

    /// <summary>The same turns as text (eos written as its token string): the prompt and answer strings of each pair.</summary>
    public static IReadOnlyList<(string Prompt, string Answer)> RenderMultiTurn(IReadOnlyList<LlamaFactoryMessage> messages, string? system = null)
    {
        CheckTurns(messages);
        string Text(int i) => string.Concat(Elements(messages, i, system).Select(e => e ?? StopWord));
        return Enumerable.Range(0, messages.Count / 2).Select(k => (Text(2 * k), Text(2 * k + 1))).ToList();
    }

    static string ReplaceFirst(string s, string what, string with)
    {
        int p = s.IndexOf(what, StringComparison.Ordinal);
        return p < 0 ? s : string.Concat(s.AsSpan(0, p), with, s.AsSpan(p + what.Length));
    }

    static void CheckTurns(IReadOnlyList<LlamaFactoryMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0 || messages.Count % 2 != 0)
            throw new ArgumentException($"expected alternating prompt/answer turns (an even, non-zero count), got {messages.Count} messages");
        for (int i = 0; i < messages.Count; i++)
            if ((i % 2 == 1) != (messages[i].Role == "assistant"))
                throw new ArgumentException($"message {i} has role '{messages[i].Role}': odd positions must be 'assistant' and even ones 'user' or 'observation'");
    }
}
