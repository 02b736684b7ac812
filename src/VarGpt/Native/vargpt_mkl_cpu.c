/*
 * libvargpt_mkl_cpu.so: lets the oneMKL inside libtorch_cpu.so use the kernels of the instruction sets the CPU has,
 * whoever made it. MKL's CPU detection (__detect_real_cpu, called once at the first MKL call) asks
 * mkl_serv_intel_cpu_true() whether the CPU is a genuine Intel one and, if not, dispatches every BLAS call to its
 * generic "def" kernels, whatever AVX2/AVX-512 the CPU has. libtorch links MKL statically but exports this symbol and
 * calls it through the PLT, so a definition loaded RTLD_GLOBAL before libtorch's first MKL call takes its place; MKL
 * then still checks the CPUID feature bits itself and picks the widest kernel set the CPU supports
 * (docs/notes/cpu-kernels.md, "MKL on AMD"). Loaded by VarGpt.Torch.MklDispatch; built by src/VarGpt/VarGpt.csproj when
 * a C compiler is found (without it MKL keeps its generic kernels: slower on AMD, same results within rounding).
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
