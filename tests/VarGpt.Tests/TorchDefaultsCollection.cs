namespace VarGpt.Tests;

/// <summary>
/// Tests that change libtorch's process-wide default device/dtype (TorchRuntime.DefaultsScope, e.g. building a model on
/// META through ModelArchitecture, `vargpt init`, `vargpt info`) must not run in parallel with tests that create
/// tensors or modules: those would silently pick up META/bfloat16 ("mat1 and mat2 must have the same dtype").
/// </summary>
[CollectionDefinition(nameof(TorchDefaultsCollection), DisableParallelization = true)]
public sealed class TorchDefaultsCollection;
