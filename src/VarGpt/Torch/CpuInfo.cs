using System.Runtime.Intrinsics.X86;
using System.Text;

namespace VarGpt.Torch;

/// <summary>
/// What the processor says about itself through CPUID (x86-64; elsewhere only the architecture is known): vendor,
/// brand, family/model/stepping as Linux's /proc/cpuinfo prints them, the instruction-set flags libtorch's kernels
/// choose by, and the cache hierarchy as CPUID describes it (what oneDNN sizes its blocking by). Machines differ in
/// exactly these, so <c>vargpt doctor</c> prints them next to every kernel check.
/// </summary>
public sealed record CpuInfo(string Vendor, string Brand, int Family, int Model, int Stepping, bool Hypervisor,
    IReadOnlyList<string> Flags, IReadOnlyList<CpuInfo.Cache> Caches, int LogicalProcessors)
{
    /// <summary>One CPUID cache descriptor (leaf 4 on Intel, 0x8000001D on AMD): level, "data"/"instruction"/"unified", bytes.</summary>
    public sealed record Cache(int Level, string Type, long Bytes);

    /// <summary>"AMD EPYC (family 25, model 17, stepping 1)".</summary>
    public string Summary => Vendor == "" ? System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString()
        : $"{(Brand == "" ? Vendor : Brand)} (family {Family}, model {Model}, stepping {Stepping}{(Hypervisor ? ", virtual machine" : "")})";

    public bool Has(string flag) => Flags.Contains(flag);

    // (leaf, subleaf, register index 0=eax 1=ebx 2=ecx 3=edx, bit, Linux /proc/cpuinfo name)
    static readonly (int Leaf, int Sub, int Reg, int Bit, string Name)[] FlagBits =
    [
        (1, 0, 2, 20, "sse4_2"), (1, 0, 2, 28, "avx"), (1, 0, 2, 12, "fma"), (1, 0, 2, 29, "f16c"),
        (7, 0, 1, 5, "avx2"), (7, 0, 1, 16, "avx512f"), (7, 0, 1, 17, "avx512dq"), (7, 0, 1, 28, "avx512cd"),
        (7, 0, 1, 30, "avx512bw"), (7, 0, 1, 31, "avx512vl"), (7, 0, 2, 11, "avx512_vnni"), (7, 0, 2, 1, "avx512vbmi"),
        (7, 0, 3, 8, "avx512_vp2intersect"), (7, 0, 3, 23, "avx512_fp16"), (7, 0, 3, 22, "amx_bf16"),
        (7, 0, 3, 24, "amx_tile"), (7, 0, 3, 25, "amx_int8"), (7, 1, 0, 5, "avx512_bf16"), (7, 1, 0, 4, "avx_vnni"),
        (7, 1, 3, 19, "avx10"),
    ];

    /// <summary>Reads CPUID of the processor this runs on.</summary>
    public static CpuInfo Detect()
    {
        int logical = Environment.ProcessorCount;
        if (!X86Base.IsSupported) return new CpuInfo("", "", 0, 0, 0, false, [], [], logical);
        var (max, b0, c0, d0) = X86Base.CpuId(0, 0);
        var vendor = Ascii(b0, d0, c0);
        var (maxExt, _, _, _) = X86Base.CpuId(unchecked((int)0x80000000), 0);
        var brand = new StringBuilder();
        if ((uint)maxExt >= 0x80000004)
            for (uint leaf = 0x80000002; leaf <= 0x80000004; leaf++)
            {
                var (a, b, c, d) = X86Base.CpuId(unchecked((int)leaf), 0);
                brand.Append(Ascii(a, b, c, d));
            }
        var (sig, _, ecx1, _) = X86Base.CpuId(1, 0);
        int baseFamily = (sig >> 8) & 0xF, baseModel = (sig >> 4) & 0xF;
        int family = baseFamily == 0xF ? baseFamily + ((sig >> 20) & 0xFF) : baseFamily;
        int model = baseFamily is 0x6 or 0xF ? (((sig >> 16) & 0xF) << 4) + baseModel : baseModel;
        var flags = new List<string>();
        foreach (var (leaf, sub, reg, bit, name) in FlagBits)
        {
            if (leaf > max) continue;
            if (leaf == 7 && sub > 0 && X86Base.CpuId(7, 0).Eax < sub) continue;
            var r = X86Base.CpuId(leaf, sub);
            int v = reg switch { 0 => r.Eax, 1 => r.Ebx, 2 => r.Ecx, _ => r.Edx };
            if (((v >> bit) & 1) != 0) flags.Add(name);
        }
        return new CpuInfo(vendor, brand.ToString().Trim('\0', ' '), family, model, sig & 0xF, ((ecx1 >> 31) & 1) != 0,
            flags, ReadCaches(vendor, max, (uint)maxExt), logical);
    }

    static IReadOnlyList<Cache> ReadCaches(string vendor, int maxLeaf, uint maxExt)
    {
        int leaf = vendor == "AuthenticAMD" ? (maxExt >= 0x8000001D ? unchecked((int)0x8000001D) : 0) : (maxLeaf >= 4 ? 4 : 0);
        if (leaf == 0) return [];
        var list = new List<Cache>();
        for (int i = 0; i < 16; i++)
        {
            var (a, b, c, _) = X86Base.CpuId(leaf, i);
            int type = a & 0x1F;
            if (type == 0) break;
            long bytes = (long)(((b >> 22) & 0x3FF) + 1) * (((b >> 12) & 0x3FF) + 1) * ((b & 0xFFF) + 1) * ((long)(uint)c + 1);
            list.Add(new Cache((a >> 5) & 7, type switch { 1 => "data", 2 => "instruction", _ => "unified" }, bytes));
        }
        return list;
    }

    static string Ascii(params int[] regs)
    {
        var bytes = new byte[regs.Length * 4];
        for (int i = 0; i < regs.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(i * 4), regs[i]);
        return Encoding.ASCII.GetString(bytes).TrimEnd('\0');
    }
}
