#!/usr/bin/env bash
# The control plane at scale (SPEC §6, §8): N simulated targets (default
# 100,000) enrol, poll with no work (wrk, beside /health of the same server
# in the same run), hold long polls (memory each), are woken by a new
# deployment, report, and the deployment's status is read; on SQLite and on
# the PostgreSQL named by CONVOY_BENCH_DATABASE_URL (default: this
# machine's). Loopback only.
# Usage: bench/control-plane.sh [N] [HELD]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y -q wrk >/dev/null; }
cargo build --release -q -p convoy
N="${1:-100000}"
HELD="${2:-10000}"
python3 bench/control-plane.py "$PWD/target/release/convoy" "$N" sqlite "$HELD"
python3 bench/control-plane.py "$PWD/target/release/convoy" "$N" \
  "${CONVOY_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}" "$HELD"
