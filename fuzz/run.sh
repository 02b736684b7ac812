#!/usr/bin/env bash
# fuzz/run.sh [MINUTES] [TARGET...] — builds the fuzz targets, instruments the product assemblies with SharpFuzz and runs
# afl-fuzz on each target for MINUTES (default 10) of wall time, one target at a time, under `nice -n 10`.
# Needs Debian's afl++ (apt-get install afl++); the SharpFuzz instrumenter is restored from fuzz/.config (dotnet tool).
# Output: $FUZZ_OUT (default ${TMPDIR:-/tmp}/vargpt-fuzz): plain/ and bin/ (the build, bin/ instrumented), seeds/, TARGET/ (afl's
# output: queue, crashes, hangs, fuzzer_stats) and summary.tsv (appended, one line per target run: when, execs, time, execs/s,
# corpus, crashes, hangs, load average before → after).
# Exit code 1 when any target recorded a crash or a hang: replay them with
#   dotnet $FUZZ_OUT/plain/VarGpt.Fuzz.dll TARGET $FUZZ_OUT/TARGET/default/crashes
# and keep each (minimised) input as fuzz/regressions/TARGET/NAME once fixed (the test suite replays that folder).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here=$PWD
minutes=${1:-10}
shift || true
out=${FUZZ_OUT:-${TMPDIR:-/tmp}/vargpt-fuzz}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# the build runs outside the repository: tell it where the repository, the shipped model and ../shared are
export VARGPT_REPO=${VARGPT_REPO:-$(cd .. && pwd)}
export VARGPT_MODEL=${VARGPT_MODEL:-$VARGPT_REPO/models/shapesworld}
[[ -n "${VARGPT_SHARED:-}" || ! -d "$VARGPT_REPO/../shared" ]] || export VARGPT_SHARED=$(cd "$VARGPT_REPO/../shared" && pwd)

command -v afl-fuzz >/dev/null || { echo "fuzz/run.sh: afl-fuzz not found; install Debian's afl++ (apt-get install afl++)" >&2; exit 2; }

echo "== build ($out/plain: seeds and replays; $out/bin: instrumented for afl)"
rm -rf "$out/bin" "$out/plain"
dotnet build VarGpt.Fuzz/VarGpt.Fuzz.csproj -c Release -o "$out/plain" -v q -nologo >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 2; }
# instrumented code runs only under SharpFuzz's fork server, so seeds and replays use the plain copy
cp -al "$out/plain" "$out/bin"

echo "== instrument (SharpFuzz)"
dotnet tool restore >/dev/null
# The build hard-links copy-local files to the other projects' outputs: give each instrumented assembly its own copy
# first, so instrumenting never rewrites the product's normal build.
for dll in VarGpt.dll VarGpt.Training.dll VarGpt.Server.dll YamlDotNet.dll Microsoft.ML.Tokenizers.dll; do
    f="$out/bin/$dll"
    cp "$f" "$f.copy" && mv "$f.copy" "$f"
    dotnet sharpfuzz "$f" >/dev/null
done

echo "== seeds"
rm -rf "$out/seeds"
dotnet "$out/plain/VarGpt.Fuzz.dll" --seeds "$out/seeds" "$here/corpus"

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || mapfile -t targets < <(dotnet "$out/plain/VarGpt.Fuzz.dll" --list | awk '{print $1}')

export AFL_SKIP_BIN_CHECK=1               # the fuzzed binary is dotnet; SharpFuzz instruments the managed code
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
export AFL_MAP_SIZE=65536                 # SharpFuzz's fixed coverage map
export DOTNET_TieredPGO=0 DOTNET_gcServer=0
# Bounded memory: the managed heap is capped (an allocation past it is an OutOfMemoryException = a crash), and afl's -m
# limits the whole address space (libtorch and SkiaSharp natives included; .NET reserves address space up front, so
# the limit is generous in virtual terms while the heap cap does the real work).
export DOTNET_GCHeapHardLimit=0x40000000  # 1 GiB
mem_limit=${FUZZ_MEM_MB:-16384}
timeout_ms=${FUZZ_TIMEOUT_MS:-5000}

status=0
[[ -f "$out/summary.tsv" ]] || printf "finished_utc\ttarget\texecs\tseconds\texecs_per_s\tcorpus\tcrashes\thangs\tload_avg\n" >"$out/summary.tsv"
for t in "${targets[@]}"; do
    echo "== $t: ${minutes} min"
    rm -rf "${out:?}/$t"
    load0=$(cut -d' ' -f1 /proc/loadavg)
    nice -n 10 afl-fuzz -i "$out/seeds/$t" -o "$out/$t" -m "$mem_limit" -t "$timeout_ms" -V $((minutes * 60)) \
        -- dotnet "$out/bin/VarGpt.Fuzz.dll" "$t" >"$out/$t.log" 2>&1 || { echo "afl-fuzz failed for $t:"; tail -20 "$out/$t.log"; status=1; continue; }
    load1=$(cut -d' ' -f1 /proc/loadavg)
    stats="$out/$t/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1 == k {print $2}' "$stats"; }
    execs=$(get execs_done) secs=$(( $(get last_update) - $(get start_time) )) crashes=$(get saved_crashes) hangs=$(get saved_hangs)
    [[ -n "$crashes" ]] || crashes=$(get unique_crashes)
    [[ -n "$hangs" ]] || hangs=$(get unique_hangs)
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s→%s\n" "$(date -u +%FT%H:%M)" "$t" "$execs" "$secs" "$(get execs_per_sec)" "$(get corpus_count)" "$crashes" "$hangs" "$load0" "$load1" >>"$out/summary.tsv"
    [[ "$crashes" == 0 && "$hangs" == 0 ]] || status=1
done
# scratch folders of fuzz processes that afl killed (those of live processes stay)
for d in /dev/shm/vargpt-fuzz-*; do
    [[ -d "$d" ]] && ! kill -0 "${d##*-}" 2>/dev/null && rm -rf "$d"
done
column -t -s $'\t' "$out/summary.tsv"
exit $status
