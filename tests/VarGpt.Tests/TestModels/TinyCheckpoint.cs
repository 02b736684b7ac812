using VarGpt.Inference;

namespace VarGpt.Tests.TestModels;

/// <summary>The chat tests' model: <see cref="TinyModels.Chat"/> (`vargpt init --preset tiny`, max_pixels 112x112), and one loaded instance.</summary>
internal static class TinyCheckpoint
{
    public const int MaxPixels = TinyModels.ChatMaxPixels;

    /// <summary>The shared folder (created on first use, deleted at process exit). Treat it as read-only.</summary>
    public static string Dir => TinyModels.Folder(TinyModels.Chat);

    static readonly Lazy<VargptModel> _chat = new(() => VargptModel.Load(Dir), LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>One loaded model over <see cref="Dir"/> for tests that only read it.</summary>
    public static VargptModel Chat => _chat.Value;
}
