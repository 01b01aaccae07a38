#!/usr/bin/env bash
# Packing throughput (SPEC §6: chunking + hashing ≥ 1 GB/s per core).
# Prints convoy's figure beside baselines measured in the same run on the
# same tree: reading it (cat), hashing it whole (b3sum single-threaded,
# sha256sum), and compressing it (zstd -3 on all cores).
# Usage: bench/pack.sh [SIZE_MIB] [RUNS]      (defaults: 512, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-512}
runs=${2:-5}

need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get install -y -qq "$2" >/dev/null; }; }
need zstd zstd
need b3sum b3sum

cargo build --release -q -p convoy
convoy=$PWD/target/release/convoy
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT

# Half incompressible bytes, half text, in files of 1 to 64 MiB.
python3 - "$tree" "$size_mib" <<'PY'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(7)
n = 0
while n < total:
    size = min(rnd.choice([1, 4, 16, 64]) << 20, total - n)
    d = os.path.join(root, f"d{n % 7}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{n}.bin"), "wb") as f:
        if (n >> 20) % 2:
            f.write(os.urandom(size))
        else:
            line = b"".join(b"function f%d(x) { return x * %d; }\n" % (i, i % 97) for i in range(2000))
            f.write((line * (size // len(line) + 1))[:size])
    n += size
PY
bytes=$(du -sb "$tree" | cut -f1)
cat "$tree"/*/* > /dev/null  # warm the page cache

# median wall seconds and median CPU (user+sys) seconds of a command
measure() {
  python3 - "$runs" "$@" <<'PY'
import os, subprocess, sys, time, statistics
runs, cmd = int(sys.argv[1]), sys.argv[2]
walls, cpus = [], []
for _ in range(runs):
    t0, r0 = time.perf_counter(), os.times()
    subprocess.run(["bash", "-c", cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t1, r1 = time.perf_counter(), os.times()
    walls.append(t1 - t0)
    cpus.append((r1.children_user - r0.children_user) + (r1.children_system - r0.children_system))
print(f"{statistics.median(walls):.4f} {statistics.median(cpus):.4f}")
PY
}

printf '%s MiB in %s files, %s runs each, median\n\n' "$((bytes >> 20))" "$(find "$tree" -type f | wc -l)" "$runs"
printf '%-34s %12s %14s %10s\n' "what" "MB/s (wall)" "MB/s per core" "vs convoy"
row() {
  read -r wall cpu < <(measure "$2")
  local mbs per
  mbs=$(python3 -c "print(f'{$bytes/1e6/$wall:.0f}')")
  per=$(python3 -c "print(f'{$bytes/1e6/max($cpu,1e-9):.0f}')")
  [ -z "${base:-}" ] && base=$per
  printf '%-34s %12s %14s %9sx\n' "$1" "$mbs" "$per" "$(python3 -c "print(f'{$per/$base:.2f}')")"
}
base=
row "convoy pack (FastCDC + BLAKE3)" "$convoy pack $tree --app bench --version 1"
row "cat (read only)" "cat $tree/*/* > /dev/null"
row "b3sum --num-threads 1 (hash only)" "b3sum --num-threads 1 $tree/*/*"
row "sha256sum (hash only)" "sha256sum $tree/*/*"
row "zstd -3 -T0 (compress only)" "zstd -q -3 -T0 -c $tree/*/* > /dev/null"
echo
echo "goal: convoy pack >= 1000 MB/s per core"
