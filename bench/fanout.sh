#!/usr/bin/env bash
# Fan-out through site relays (SPEC §6, P-hierarchy): an origin and SITES
# sites of PER_SITE machines plus one relay each, in network namespaces
# joined by rate-shaped links; prints origin egress and per-link bytes as
# multiples of the release delta, and the time until every machine holds
# the release against the slowest link's bound. Needs root for `ip netns`;
# falls back to loopback (and says so) without it.
# Usage: bench/fanout.sh [SITES] [PER_SITE] [RATE]    (defaults: 3 5 1mbit)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p convoy
exec python3 bench/fanout.py "$PWD/target/release/convoy" "${1:-3}" "${2:-5}" "${3:-1mbit}"
