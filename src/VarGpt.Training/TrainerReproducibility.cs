using System.Runtime.InteropServices;

namespace VarGpt.Training;

/// <summary>
/// Bitwise run-to-run reproducibility of fp32 CPU math. libtorch's CPU sgemm is Intel MKL, whose results depend on
/// buffer alignment unless Conditional Numerical Reproducibility is on: measured here, two identical fp32 toy runs in one
/// process differed by 1 ulp in the loss from step 2 on, and matched exactly with MKL_CBWR=AUTO,STRICT (bf16 runs were
/// already exact). MKL reads MKL_CBWR once, at its first call, so this must run before any tensor math in the process
/// (the CLI calls it first thing; tests call it from TorchTestSetup.Init). An explicit user setting is kept.
/// </summary>
public static class TrainerReproducibility
{
    public const string Variable = "MKL_CBWR";
    public const string StrictValue = "AUTO,STRICT";

    [DllImport("libc", EntryPoint = "setenv")] static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>Sets MKL_CBWR=AUTO,STRICT in the native environment unless already set. Returns the effective value.</summary>
    public static string? RequestStrictBlas()
    {
        var current = Environment.GetEnvironmentVariable(Variable);
        if (current != null) return current;
        if (OperatingSystem.IsWindows()) Environment.SetEnvironmentVariable(Variable, StrictValue);
        else SetEnv(Variable, StrictValue, 0);
        Environment.SetEnvironmentVariable(Variable, StrictValue);
        return StrictValue;
    }
}
