using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace VarGpt.Torch;

/// <summary>What <see cref="ScalarGuard"/> is doing.</summary>
public enum ScalarGuardState
{
    /// <summary>The resolver is registered; LibTorchSharp was not loaded yet at its last call (the next one retries).</summary>
    Waiting,
    /// <summary>TorchSharp's P/Invokes bind through the guard library: Scalars are freed a second late.</summary>
    On,
    /// <summary>Not attempted: not Linux x86-64, or <c>VARGPT_SCALAR_GUARD=off</c>.</summary>
    Off,
    /// <summary>The library is not next to VarGpt.dll (built without a C compiler).</summary>
    NotBuilt,
    /// <summary>Could not be put in place (see <see cref="ScalarGuard.Problem"/>).</summary>
    Failed,
}

/// <summary>
/// Works around a use-after-free in TorchSharp 0.107: <c>t.add(u)</c>, <c>t * 0.5</c>, <c>t.pow(2)</c>… convert the
/// number to a <c>Scalar</c> whose finalizer deletes the native <c>at::Scalar</c>, and nothing keeps it alive once its
/// handle is passed to libtorch; a GC during the call can free it while libtorch reads it (seen twice in long training
/// runs as "Expected false to be true … toFloat at c10/core/Scalar.h:140" under <c>THSTensor_add</c>; dotnet/TorchSharp
/// #1434, #1496). TorchSharp cannot be changed here, and the call sites are thousands, so the fix is where the free
/// happens: a DllImportResolver for TorchSharp's assembly binds its "LibTorchSharp" P/Invokes to libvargpt_scalar_guard.so
/// (src/VarGpt/Native/vargpt_scalar_guard.c), which depends on libLibTorchSharp.so (every THS* function resolves to
/// the real one) and defines only <c>THSTorch_dispose_scalar</c>: it queues the pointer and frees it a second later.
/// Process-wide by nature (one TorchSharp per process; the runtime allows one resolver per assembly); registered when
/// the VarGpt assembly loads, the guard is bound at the first TorchSharp P/Invoke bound after LibTorchSharp is loaded.
/// P/Invokes bound before (a process that used TorchSharp before VarGpt loaded) keep LibTorchSharp's own function:
/// <see cref="Check"/> tells. <c>VARGPT_SCALAR_GUARD=off</c> leaves TorchSharp's binding alone (A/B, diagnostics).
/// </summary>
public static unsafe class ScalarGuard
{
    /// <summary>Set to "off" to leave TorchSharp's native binding alone.</summary>
    public const string Variable = "VARGPT_SCALAR_GUARD";
    public const string LibraryName = "libvargpt_scalar_guard.so";
    const string TorchSharpLibrary = "LibTorchSharp";

    const int RTLD_NOW = 2, RTLD_NOLOAD = 4;
    [DllImport("libc", EntryPoint = "dlopen")] static extern nint DlOpen(string path, int flags);
    [DllImport("libc", EntryPoint = "dlerror")] static extern nint DlError();
    [DllImport("libc", EntryPoint = "dlsym")] static extern nint DlSym(nint handle, string symbol);

    static readonly object Gate = new();
    static volatile ScalarGuardState _state = ScalarGuardState.Off;
    static bool _registered;
    static nint _handle;
    static delegate* unmanaged<long> _deferred, _freed, _early, _pending, _oldestMs;

    /// <summary>The guard's state now (it turns <see cref="ScalarGuardState.On"/> at TorchSharp's first binding).</summary>
    public static ScalarGuardState State { get { Register(); return _state; } }
    /// <summary>Why the guard is not on (null when on, waiting, or switched off).</summary>
    public static string? Problem { get; private set; }

#pragma warning disable CA2255 // a library module initializer on purpose: the resolver must be in place before TorchSharp binds its imports
    [ModuleInitializer]
    internal static void OnLoad() => Register();
#pragma warning restore CA2255

    /// <summary>Registers the resolver once (idempotent, thread safe). Called when the VarGpt assembly loads.</summary>
    public static void Register()
    {
        lock (Gate)
        {
            if (_registered) return;
            _registered = true;
            if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64) return;
            if (string.Equals(Environment.GetEnvironmentVariable(Variable), "off", StringComparison.OrdinalIgnoreCase)) return;
            var dir = Path.GetDirectoryName(typeof(ScalarGuard).Assembly.Location);
            var path = string.IsNullOrEmpty(dir) ? null : Path.Combine(dir, LibraryName);
            if (path is null || !File.Exists(path))
            {
                Problem = $"{LibraryName} is not next to VarGpt.dll (built without a C compiler?)";
                _state = ScalarGuardState.NotBuilt;
                return;
            }
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(TorchSharp.torch).Assembly, (name, _, _) => Resolve(name, path));
                _state = ScalarGuardState.Waiting;
            }
            catch (InvalidOperationException e)
            {
                Problem = $"another DllImportResolver is already set for TorchSharp ({e.Message})";
                _state = ScalarGuardState.Failed;
            }
        }
    }

    // Called by the runtime for each TorchSharp P/Invoke it binds; 0 means "bind as usual". Must never throw.
    static nint Resolve(string libraryName, string path)
    {
        if (libraryName != TorchSharpLibrary) return 0;
        if (_state == ScalarGuardState.Waiting)
            lock (Gate)
                if (_state == ScalarGuardState.Waiting)
                {
                    try { Load(path); }
                    catch (Exception e) { Fail($"{e.GetType().Name}: {e.Message}"); }
                }
        Interlocked.Increment(ref _handle != 0 ? ref _bindings : ref _declined);
        return _handle;
    }

    static long _bindings, _declined;
    /// <summary>TorchSharp imports bound to the guard library so far (the runtime asks once per import it binds).</summary>
    internal static long Bindings => Interlocked.Read(ref _bindings);
    /// <summary>TorchSharp imports the resolver left to the usual binding (LibTorchSharp not loaded yet, or the guard failed).</summary>
    internal static long Declined => Interlocked.Read(ref _declined);

    static void Load(string path)
    {
        // Only next to the copy TorchSharp loaded (the guard's DT_NEEDED then matches it by soname): loading the guard
        // first would let the dynamic loader pick a libLibTorchSharp.so of its own.
        nint torchSharp = DlOpen("libLibTorchSharp.so", RTLD_NOW | RTLD_NOLOAD);
        if (torchSharp == 0) return; // not loaded yet: TorchSharp binds this import as usual, the next one retries
        nint h = DlOpen(path, RTLD_NOW);
        if (h == 0) { Fail($"dlopen {path}: {LastDlError()}"); return; }
        if (((delegate* unmanaged<int>)Export(h, "vargpt_scalar_guard_ready"))() != 1)
        { Fail($"{LibraryName} did not find LibTorchSharp's THSTorch_dispose_scalar"); return; }
        nint add = DlSym(h, "THSTensor_add");
        if (add == 0 || add != DlSym(torchSharp, "THSTensor_add"))
        { Fail($"{LibraryName} is linked to another libLibTorchSharp.so than the one TorchSharp loaded"); return; }
        _deferred = (delegate* unmanaged<long>)Export(h, "vargpt_scalar_guard_deferred");
        _freed = (delegate* unmanaged<long>)Export(h, "vargpt_scalar_guard_freed");
        _early = (delegate* unmanaged<long>)Export(h, "vargpt_scalar_guard_early");
        _pending = (delegate* unmanaged<long>)Export(h, "vargpt_scalar_guard_pending");
        _oldestMs = (delegate* unmanaged<long>)Export(h, "vargpt_scalar_guard_oldest_ms");
        _handle = h;
        _state = ScalarGuardState.On;
    }

    static nint Export(nint h, string name) =>
        DlSym(h, name) is var p and not 0 ? p : throw new EntryPointNotFoundException($"{LibraryName} has no {name} (stale build? rebuild VarGpt)");

    static void Fail(string problem)
    {
        Problem = problem;
        _state = ScalarGuardState.Failed;
    }

    static string LastDlError() => DlError() is var e and not 0 ? Marshal.PtrToStringUTF8(e) ?? "unknown error" : "unknown error";

    /// <summary>Scalars whose free the guard deferred since the process started (0 when off).</summary>
    public static long Deferred => _state == ScalarGuardState.On ? _deferred() : 0;
    /// <summary>Deferred Scalars really freed so far.</summary>
    public static long Freed => _state == ScalarGuardState.On ? _freed() : 0;
    /// <summary>Scalars freed before their second because the queue was full (a quarter million waiting).</summary>
    public static long FreedEarly => _state == ScalarGuardState.On ? _early() : 0;
    /// <summary>Scalars waiting to be freed (freed at the next dispose after their second).</summary>
    public static long Pending => _state == ScalarGuardState.On ? _pending() : 0;
    /// <summary>Age of the oldest waiting Scalar in milliseconds; -1 when none waits or the guard is off.</summary>
    public static long OldestPendingMs => _state == ScalarGuardState.On ? _oldestMs() : -1;

    /// <summary>
    /// Whether disposing a Scalar goes through the guard in this process: disposes one and watches <see cref="Deferred"/>.
    /// False when the guard is not on, or when TorchSharp bound <c>THSTorch_dispose_scalar</c> before it was.
    /// </summary>
    public static bool Check()
    {
        if (State == ScalarGuardState.Waiting) { using var _ = TorchSharp.torch.zeros(1); } // loads LibTorchSharp, binds an import
        if (_state != ScalarGuardState.On) return false;
        long before = Deferred;
        TorchSharp.ScalarExtensionMethods.ToScalar(0.5).Dispose();
        return Deferred > before;
    }

    /// <summary>One line for <c>vargpt doctor</c>: whether the guard is on, and why not when it is off.</summary>
    public static string Describe()
    {
        bool bound = Check();
        return _state switch
        {
            ScalarGuardState.On when bound => $"freed a second late by {LibraryName} (TorchSharp's Scalar finalizer race, docs/reliability.md); {Deferred} deferred so far",
            ScalarGuardState.On => $"guard loaded but NOT in use: TorchSharp bound THSTorch_dispose_scalar before VarGpt loaded (the finalizer race stays possible)",
            ScalarGuardState.Off => $"guard off ({(OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 ? $"{Variable}=off" : "not Linux x86-64")}): TorchSharp's Scalar finalizer race stays possible",
            ScalarGuardState.Waiting => "guard waiting: LibTorchSharp is not loaded",
            ScalarGuardState.NotBuilt => $"guard off: {Problem}; TorchSharp's Scalar finalizer race stays possible; install a C compiler (gcc) and rebuild",
            _ => $"guard off: {Problem}; TorchSharp's Scalar finalizer race stays possible",
        };
    }
}
