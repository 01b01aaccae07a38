#!/usr/bin/env bash
# Bytes over the wire for real upgrades (SPEC §6, P-incremental): pairs of
# successive releases of public packages, unpacked, sent by convoy (delta
# mode; chunk mode from a cold cache with the old release installed) beside
# rsync, casync, xdelta3 and `zstd --patch-from` on the same pair, in one run.
# Usage: bench/bytes.sh [PAIR ...]    (default: every pair in bench/bytes.py)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in rsync casync xdelta3 zstd curl; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get install -y -q "${need[@]}" >/dev/null
fi
cargo build --release -q -p convoy
exec python3 bench/bytes.py "$PWD/target/release/convoy" "$@"
