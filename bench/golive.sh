#!/usr/bin/env bash
# Go-live precision (SPEC §6: every target of a wave switches within 100 ms
# of the planned time). Starts a server and N agents on loopback, deploys a
# small release with --at, and prints each target's lag behind the plan
# (golive_lag_ms, measured by the agent after stop + symlink switch),
# beside the lag of a plain `sleep`-until-time on the same machine as the
# baseline for what the clock and scheduler alone cost.
# Usage: bench/golive.sh [AGENTS] [ROUNDS]     (defaults: 10, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-10}
rounds=${2:-3}
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
for i in $(seq 1 "$agents"); do
  CONVOY_TOKEN=bench-enrol-token-0123456789 "$convoy" agent --root "$work/a$i" --name "t$i" --labels role=bench \
    >"$work/a$i.log" 2>&1 &
  pids+=($!)
done
until [ "$("$convoy" targets -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = "$agents" ]; do sleep 0.2; done

lags=()
for r in $(seq 1 "$rounds"); do
  mkdir -p "$work/app$r"
  echo "round $r" >"$work/app$r/index.html"
  printf '[hooks]\nstart = "true"\nstop = "true"\n' >"$work/app$r/convoy.toml"
  "$convoy" publish "$work/app$r" --app bench --version "$r" >/dev/null
  lags+=("$("$convoy" deploy "bench@$r" --selector role=bench --at +5s --wait -o json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(i["metrics"].get("golive_lag_ms","nan") for i in d["instructions"]))')")
done

baseline=$(python3 - "$rounds" <<'PY'
import sys, time
lags = []
for _ in range(int(sys.argv[1]) * 10):
    at = time.time() + 0.2
    time.sleep(max(0, at - time.time()))
    lags.append((time.time() - at) * 1000)
lags.sort()
print(f"{lags[len(lags)//2]:.1f} {lags[-1]:.1f}")
PY
)
python3 - "$agents" "$rounds" "$baseline" "${lags[@]}" <<'PY'
import sys, statistics
agents, rounds = int(sys.argv[1]), int(sys.argv[2])
base_p50, base_max = map(float, sys.argv[3].split())
lags = sorted(float(x) for line in sys.argv[4:] for x in line.split())
p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
print(f"{agents} agents x {rounds} rounds = {len(lags)} switches")
print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
print(f"{'convoy go-live lag':28} {p(0.5):8.1f} {p(0.99):8.1f} {lags[-1]:8.1f}")
print(f"{'baseline: sleep until time':28} {base_p50:8.1f} {'':>8} {base_max:8.1f}")
print(f"goal: max <= 100 ms -> {'met' if lags[-1] <= 100 else 'NOT met'}")
PY
