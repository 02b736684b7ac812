namespace VarGpt.Tests;

/// <summary>
/// Tests that compare runs bit for bit use libtorch's global generator (dropout, manual_seed); they must not run in
/// parallel with other tests that draw from it.
/// </summary>
[CollectionDefinition(nameof(GlobalRngCollection), DisableParallelization = true)]
public sealed class GlobalRngCollection;
