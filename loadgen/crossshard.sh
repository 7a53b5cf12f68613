#!/usr/bin/env bash
# Cross-shard efficiency on two cores: what a message that crosses shards costs against one
# that stays on its shard. The broker is pinned to CPU 0 and the load generator to CPU 1.
#   one      shards = 1, one listener: publishers and subscribers on the same shard
#   cross    shards = 2, a listener pinned to each shard (`shards = [0]`, `shards = [1]`):
#            publishers on shard 0's port, subscribers on shard 1's port, so every message
#            crosses shards
# for p2p (10 pairs, QoS 0, 64 B) and fan-out (1 -> 16), interleaved one, cross, one, cross...;
# prints each JSON line, the medians of msg per broker CPU-second, and cross / one (the
# efficiency; issue 16's target is >= 0.7).
#
# Usage: loadgen/crossshard.sh [seconds-per-run] [rounds]
#   BIN=dir with coremq and coremq-loadgen (default: build them with cargo)
#   SCENARIOS="p2p fanout"   which scenarios
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
ROUNDS=${2:-3}
SCENARIOS=${SCENARIOS:-"p2p fanout"}
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
    BIN=target/release
fi
TMP=$(mktemp -d)
RESULTS="$TMP/results.jsonl"
PORT=$((30000 + RANDOM % 10000))
BPID=""
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

args_for() {
    case "$1" in
    p2p) echo "p2p --pairs 10 --size 64" ;;
    fanout) echo "fanout --subscribers 16 --size 64" ;;
    qos1) echo "qos1 --pairs 10 --size 64" ;;
    esac
}

listener() { # port [shard]
    printf '[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' "$1"
    [ $# -gt 1 ] && printf 'shards = [%s]\n' "$2"
    return 0
}

for round in $(seq "$ROUNDS"); do
    for s in $SCENARIOS; do
        for mode in one cross; do
            P0=$PORT; P1=$((PORT + 1)); PORT=$((PORT + 2))
            if [ "$mode" = one ]; then
                { printf 'shards = 1\nsys_interval = "0s"\ndurability = "none"\n'; listener "$P0"; } > "$TMP/c.toml"
                SUB=$P0
            else
                { printf 'shards = 2\nsys_interval = "0s"\ndurability = "none"\n'; listener "$P0" 0; listener "$P1" 1; } > "$TMP/c.toml"
                SUB=$P1
            fi
            rm -rf "$TMP/data" # data_dir defaults to ./data beside the config
            taskset -c 0 "$BIN/coremq" serve --config "$TMP/c.toml" > "$TMP/broker.log" 2>&1 &
            BPID=$!
            for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SUB) 2>/dev/null && break; sleep 0.1; done
            # shellcheck disable=SC2046
            taskset -c 1 "$BIN/coremq-loadgen" $(args_for "$s") --port "$P0" --sub-port "$SUB" --duration "$DUR" \
                --broker-pid "$BPID" --label "$mode" > "$TMP/out" 2>/dev/null \
                || echo "{\"label\":\"$mode\",\"scenario\":\"$s\",\"error\":true}" > "$TMP/out"
            tail -1 "$TMP/out" | tee -a "$RESULTS"
            kill "$BPID"; wait "$BPID" 2>/dev/null || true
            BPID=""
        done
    done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{'scenario':8} {'metric':22} {'one':>12} {'cross':>12} {'cross/one':>9}")
for s in dict.fromkeys(r["scenario"] for r in rows):
    for key in ["msg_per_s", "msg_per_broker_cpu_s"]:
        med = {}
        for m in ["one", "cross"]:
            v = [r[key] for r in rows if r["scenario"] == s and r["label"] == m and not r.get("error")]
            med[m] = statistics.median(v) if v else float("nan")
        print(f"{s:8} {key:22} {med['one']:12.0f} {med['cross']:12.0f} {med['cross'] / med['one']:9.2f}")
PY
