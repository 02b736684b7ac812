using TorchSharp;
using static TorchSharp.torch;

namespace VarGpt.Tests;

/// <summary>
/// Tests that change libtorch's process-wide default device/dtype (<see cref="TorchDefaults.Scope"/>) or run code that
/// must see the usual defaults while others might change them must not run in parallel with tests that create tensors
/// or modules: those would silently pick up META/bfloat16 ("mat1 and mat2 must have the same dtype").
/// </summary>
[CollectionDefinition(nameof(TorchDefaultsCollection), DisableParallelization = true)]
public sealed class TorchDefaultsCollection;

/// <summary>Test-only: libtorch's process-wide defaults changed for a scope (the library never changes them).</summary>
public static class TorchDefaults
{
    /// <summary>Sets the default device and/or dtype until disposed, then restores the previous ones.</summary>
    public static IDisposable Scope(Device? device = null, ScalarType? dtype = null) => new Defaults(device, dtype);

    sealed class Defaults : IDisposable
    {
        readonly Device _device;
        readonly ScalarType _dtype;
        public Defaults(Device? device, ScalarType? dtype)
        {
            _device = get_default_device();
            _dtype = get_default_dtype();
            if (device != null) set_default_device(device);
            if (dtype != null) set_default_dtype(dtype.Value);
        }
        public void Dispose()
        {
            set_default_device(_device);
            set_default_dtype(_dtype);
        }
    }
}
