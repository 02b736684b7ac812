using System.Diagnostics;

namespace VarGpt.Fuzz;

/// <summary>What a short in-process run did: executions, inputs accepted / rejected with an input error, and the first finding.</summary>
public sealed record MutationRunResult(long Executions, long Accepted, long Rejected, TimeSpan Elapsed, byte[]? FindingInput, Exception? Finding);

/// <summary>
/// A short, deterministic, coverage-blind mutation run in-process (no afl): havoc-style byte mutations of the seeds
/// (bit flips, interesting values, deletions, duplications, splices, truncations). The CI tests use it for a few
/// seconds per target on top of replaying the corpus and regressions; the real search is afl's (fuzz/run.sh).
/// </summary>
public static class MutationRun
{
    static readonly byte[] Interesting = [0, 1, 0x7F, 0x80, 0xFF, (byte)'-', (byte)'9', (byte)'"', (byte)'{', (byte)'}', (byte)'[', (byte)']', (byte)',', (byte)':', (byte)'\n', (byte)'e'];

    /// <summary>
    /// Runs up to <paramref name="maxExecutions"/> mutated inputs (the same sequence for the same <paramref name="seed"/>, so a
    /// CI failure reproduces), stopping early at <paramref name="budget"/> on a slow or loaded machine.
    /// </summary>
    public static MutationRunResult Run(FuzzTarget target, IReadOnlyList<byte[]> seeds, TimeSpan budget, int seed = 1, int maxLength = 1 << 20, long maxExecutions = long.MaxValue)
    {
        if (seeds.Count == 0) throw new ArgumentException("no seeds", nameof(seeds));
        var rng = new Random(seed);
        var clock = Stopwatch.StartNew();
        long runs = 0, accepted = 0, rejected = 0;
        while (runs < maxExecutions && clock.Elapsed < budget)
        {
            var input = Mutate(seeds[rng.Next(seeds.Count)], seeds, rng, maxLength);
            runs++;
            try
            {
                if (target.Execute(input) is null) accepted++;
                else rejected++;
            }
            catch (Exception e) { return new(runs, accepted, rejected, clock.Elapsed, input, e); }
        }
        return new(runs, accepted, rejected, clock.Elapsed, null, null);
    }

    public static byte[] Mutate(byte[] seed, IReadOnlyList<byte[]> all, Random rng, int maxLength)
    {
        var b = new List<byte>(seed);
        int steps = 1 << rng.Next(0, 4);
        for (int s = 0; s < steps; s++)
        {
            int pos = b.Count == 0 ? 0 : rng.Next(b.Count);
            switch (rng.Next(8))
            {
                case 0 when b.Count > 0: b[pos] ^= (byte)(1 << rng.Next(8)); break;
                case 1 when b.Count > 0: b[pos] = Interesting[rng.Next(Interesting.Length)]; break;
                case 2 when b.Count > 0: b.RemoveRange(pos, Math.Min(b.Count - pos, 1 + rng.Next(16))); break;
                case 3 when b.Count > 0:
                    int len = Math.Min(b.Count - pos, 1 + rng.Next(32));
                    b.InsertRange(rng.Next(b.Count + 1), b.GetRange(pos, len));
                    break;
                case 4: b.Insert(pos, Interesting[rng.Next(Interesting.Length)]); break;
                case 5 when b.Count > 0: b.RemoveRange(pos, b.Count - pos); break;   // truncate
                case 6:
                    var other = all[rng.Next(all.Count)];
                    if (other.Length > 0)
                    {
                        int at = rng.Next(other.Length);
                        b.InsertRange(pos, other.AsSpan(at, Math.Min(other.Length - at, 1 + rng.Next(64))).ToArray());
                    }
                    break;
                case 7 when b.Count >= 4:
                    // a digit run made long (sizes, ids, offsets)
                    b.InsertRange(pos, "99999999999"u8.ToArray());
                    break;
            }
        }
        return b.Count > maxLength ? b.GetRange(0, maxLength).ToArray() : b.ToArray();
    }
}
