#!/usr/bin/env bash
# What TUF verification costs an agent (issue: signed releases; goal: nothing
# on a poll with no work, at most 5 ms per staging). Starts a server and one
# agent on loopback, publishes and deploys ROUNDS releases one after the
# other, and prints the agent's `tuf_check_us` (updating its trusted
# metadata from the server and finding the release in it, before staging)
# beside the baseline measured in the same run: the staging it precedes
# (`stage_ms`: fetching and assembling a 1 MB release).
# A second series signs the same way a guarded production environment does:
# the app delegated to a publisher key (the agent also fetches and checks
# the app's role) and every deployment approved with a signed approval
# (the agent checks the approver's signature over the statement).
# Polls never run the check: `/agent/work` answers without any TUF code on
# the agent or the server.
# Usage: bench/tuf.sh [ROUNDS]     (default 10 per series)
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

measure() { # app version -> "tuf_check_us stage_ms"
  python3 -c 'import json,sys; m=json.load(sys.stdin)["instructions"][0]["metrics"]; print(m.get("tuf_check_us","nan"), m.get("stage_ms","nan"))'
}
write_release() {
  mkdir -p "$work/$1"
  head -c 1000000 /dev/urandom >"$work/$1/data.bin"
  printf '[hooks]\nstart = "true"\nstop = "true"\n' >"$work/$1/convoy.toml"
}

rows=()
for r in $(seq 1 "$rounds"); do
  write_release "app$r"
  "$convoy" publish "$work/app$r" --app bench --version "$r" >/dev/null
  rows+=("$("$convoy" deploy "bench@$r" --selector role=bench --wait -o json | measure)")
done

# signed series: publisher key, signed approvals by an approver
"$convoy" keys generate "$work/ci.key" >/dev/null
"$convoy" keys generate "$work/ann.key" >/dev/null
"$convoy" trust delegate signed --key "$work/ci.key.pub" >/dev/null
ann=$("$convoy" users add ann --role approver)
"$convoy" users key ann --add "$work/ann.key.pub" >/dev/null
"$convoy" env set guarded --approvals 1 --signed-approvals >/dev/null
"$convoy" trust approvers guarded >/dev/null 2>&1
signed=()
for r in $(seq 1 "$rounds"); do
  write_release "signed$r"
  "$convoy" publish "$work/signed$r" --app signed --version "$r" --sign-key "$work/ci.key" >/dev/null
  id=$("$convoy" deploy "signed@$r" --env guarded --selector role=bench -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  CONVOY_TOKEN=$ann "$convoy" approve "$id" --sign-key "$work/ann.key" >/dev/null 2>&1
  "$convoy" watch "$id" >/dev/null 2>&1 || true
  signed+=("$("$convoy" status "$id" -o json | measure)")
done

{ printf 'plain %s\n' "${rows[@]}"; printf 'signed %s\n' "${signed[@]}"; } | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin if l.strip()]
def series(kind):
    r = [x for x in rows if x[0] == kind]
    return sorted(float(a) / 1000 for _, a, _ in r), sorted(float(b) for _, _, b in r)
tuf, stage = series("plain")
stuf, sstage = series("signed")
print(f"stagings: {len(tuf)} + {len(stuf)}")
print(f"TUF check before staging                   median {statistics.median(tuf):.2f} ms  max {max(tuf):.2f} ms   (goal <= 5 ms)")
print(f"  with a publisher role and signed approval median {statistics.median(stuf):.2f} ms  max {max(stuf):.2f} ms")
print(f"baseline: the staging                      median {statistics.median(stage):.1f} ms  max {max(stage):.1f} ms")
print(f"ratio: check / staging                     {statistics.median(tuf) / statistics.median(stage):.3f} (signed: {statistics.median(stuf) / statistics.median(sstage):.3f})")
'
