namespace VarGpt.Tests.TestModels;

/// <summary>The image tests' model: <see cref="TinyModels.Images"/> (pn 0.06M = 256x256, random LM: tests force the image start).</summary>
public static class TinyImageModel
{
    /// <summary>The folder of the tiny model with the given cfg_uncond rows (text_maxlen); built once per test run.</summary>
    public static string Folder(int textMaxLen = 512, bool withGeneration = true) => TinyModels.Folder(TinyModels.Images(textMaxLen, withGeneration));
}
