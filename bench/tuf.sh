#!/usr/bin/env bash
# What TUF verification costs an agent (issue: signed releases; goal: nothing
# on a poll with no work, at most 5 ms per staging). Starts a server and one
# agent on loopback, publishes and deploys ROUNDS releases one after the
# other, and prints the agent's `tuf_check_us` (updating its trusted
# metadata from the server and finding the release in it, before staging)
# beside the baseline measured in the same run: the staging it precedes
# (`stage_ms`: fetching and assembling a 1 MB release).
# Polls never run the check: `/agent/work` answers without any TUF code on
# the agent or the server.
# Usage: bench/tuf.sh [ROUNDS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
cargo build --release -q -p convoy
convoy=$PWD/target/release/convoy
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export CONVOY_SERVER=http://127.0.0.1:$port CONVOY_TOKEN=bench-admin-token-0123456789
"$convoy" server --listen 127.0.0.1:$port --data-dir "$work/server" --admin-token "$CONVOY_TOKEN" \
  --enrol-token bench-enrol-token-0123456789 >"$work/server.log" 2>&1 &
pids+=($!)
until "$convoy" releases >/dev/null 2>&1; do sleep 0.1; done
CONVOY_TOKEN=bench-enrol-token-0123456789 "$convoy" agent --root "$work/a" --name t1 --labels role=bench \
  >"$work/a.log" 2>&1 &
pids+=($!)
until [ "$("$convoy" targets -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 1 ]; do sleep 0.2; done

rows=()
for r in $(seq 1 "$rounds"); do
  mkdir -p "$work/app$r"
  head -c 1000000 /dev/urandom >"$work/app$r/data.bin"
  printf '[hooks]\nstart = "true"\nstop = "true"\n' >"$work/app$r/convoy.toml"
  "$convoy" publish "$work/app$r" --app bench --version "$r" >/dev/null
  rows+=("$("$convoy" deploy "bench@$r" --selector role=bench --wait -o json |
    python3 -c 'import json,sys; m=json.load(sys.stdin)["instructions"][0]["metrics"]; print(m.get("tuf_check_us","nan"), m.get("stage_ms","nan"))')")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
tuf = sorted(float(a) / 1000 for a, _ in rows)
stage = sorted(float(b) for _, b in rows)
print(f"stagings: {len(rows)}")
print(f"TUF check before staging  median {statistics.median(tuf):.2f} ms  max {max(tuf):.2f} ms   (goal <= 5 ms)")
print(f"baseline: the staging     median {statistics.median(stage):.1f} ms  max {max(stage):.1f} ms")
print(f"ratio: check / staging    {statistics.median(tuf) / statistics.median(stage):.3f}")
'
