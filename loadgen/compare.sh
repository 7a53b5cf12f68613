#!/usr/bin/env bash
# coremq vs Mosquitto vs rumqttd in one command: installs the peers when missing (Mosquitto from
# Debian packages, rumqttd with cargo install), starts each on loopback with equivalent limits
# (TCP_NODELAY, QoS 1 window 100, deep queues), the broker pinned to CPU 0 and the load generator
# to CPU 1, runs the same scenarios against each, and prints every JSON line followed by a table
# of figures and ratios (per second and per broker CPU-second).
#
# Usage: loadgen/compare.sh [seconds-per-run] [report-dir]
#   BROKERS="coremq mosquitto rumqttd"   which brokers
#   SCENARIOS="p2p fanout qos1 latency conn"   which scenarios (also: fanin qos2)
#   NO_INSTALL=1   never install anything
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
REPORT=${2:-}
BROKERS=${BROKERS:-"coremq mosquitto rumqttd"}
SCENARIOS=${SCENARIOS:-"p2p fanout qos1 latency conn"}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [ -z "${NO_INSTALL:-}" ]; then
    if [[ " $BROKERS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
        echo "== installing mosquitto (apt)" >&2
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
    fi
    if [[ " $BROKERS " == *" rumqttd "* ]] && ! command -v rumqttd >/dev/null; then
        echo "== installing rumqttd 0.20.0 (cargo install)" >&2
        cargo install -q rumqttd --version 0.20.0
    fi
fi
export PATH="$PATH:$HOME/.cargo/bin"
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
RESULTS="$TMP/results.jsonl"
PORT=$((20000 + RANDOM % 10000))
BPID=""
cleanup() { [ -n "$BPID" ] && kill "$BPID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start_broker() {
    mkdir -p "$TMP/$1"
    case "$1" in
    coremq)
        printf 'shards = 1\nsys_interval = "0s"\ndata_dir = "%s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' \
            "$TMP/coremq" "$PORT" > "$TMP/coremq.toml"
        taskset -c 0 target/release/coremq serve --config "$TMP/coremq.toml" > "$TMP/coremq.log" 2>&1 &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nmax_inflight_messages 100\n' \
            "$PORT" > "$TMP/mosquitto.conf"
        (ulimit -n 65536 2>/dev/null || true; exec taskset -c 0 mosquitto -c "$TMP/mosquitto.conf") > "$TMP/mosquitto.log" 2>&1 &
        ;;
    rumqttd)
        sed "s/1883/$PORT/" loadgen/rumqttd.toml > "$TMP/rumqttd.toml"
        (ulimit -n 65536 2>/dev/null || true; exec taskset -c 0 rumqttd --config "$TMP/rumqttd.toml") > "$TMP/rumqttd.log" 2>&1 &
        ;;
    esac
    BPID=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done
    echo "$1 did not start" >&2; return 1
}

args_for() {
    case "$1" in
    p2p) echo "p2p --pairs 1 --size 64" ;;
    fanin) echo "fanin --publishers 8 --size 64" ;;
    fanout) echo "fanout --subscribers 16 --size 64" ;;
    qos1) echo "qos1 --pairs 1 --size 64" ;;
    qos2) echo "qos2 --pairs 1 --size 64" ;;
    latency) echo "latency --rate 50000 --size 64" ;;
    conn) echo "conn --connections 5000 --rate 5000" ;;
    esac
}

for s in $SCENARIOS; do
    for b in $BROKERS; do
        start_broker "$b"
        rep=()
        [ -n "$REPORT" ] && rep=(--report "$REPORT/$s-$b")
        dur=$DUR
        [ "$s" = conn ] && dur=4
        # shellcheck disable=SC2046
        if ! taskset -c 1 "$LG" $(args_for "$s") --port "$PORT" --duration "$dur" \
            --broker-pid "$BPID" --label "$b" "${rep[@]}" > "$TMP/out" 2>"$TMP/err"; then
            echo "{\"label\":\"$b\",\"scenario\":\"$s\",\"error\":$(python3 -c 'import json,sys;print(json.dumps(open(sys.argv[1]).read()[-300:]))' "$TMP/err")}" >> "$RESULTS"
        else
            tail -1 "$TMP/out" >> "$RESULTS"
        fi
        tail -1 "$RESULTS"
        kill "$BPID"; wait "$BPID" 2>/dev/null || true
        BPID=""
        PORT=$((PORT + 1))
    done
done

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["scenario"], {})[r["label"]] = r
metrics = {
    "conn": [("connect_per_s", "conn/s"), ("connect_per_broker_cpu_s", "conn/CPU-s"), ("rss_per_conn_bytes", "B/conn")],
    "latency": [("p50_us", "p50 us"), ("p99_us", "p99 us"), ("p999_us", "p99.9 us"), ("msg_per_broker_cpu_s", "msg/CPU-s")],
}
default = [("msg_per_s", "msg/s"), ("msg_per_broker_cpu_s", "msg/CPU-s"), ("lost", "lost")]
print()
print(f"{'scenario':10} {'metric':11} " + " ".join(f"{b:>12}" for b in ["coremq", "mosquitto", "rumqttd"]) + "   coremq/mosq  coremq/rumq")
for s, res in by.items():
    for key, name in metrics.get(s, default):
        vals = {}
        for b in ["coremq", "mosquitto", "rumqttd"]:
            r = res.get(b)
            vals[b] = None if r is None or "error" in r else r.get(key)
        def fmt(v):
            return "error" if v is None else (f"{v:.0f}" if isinstance(v, (int, float)) else str(v))
        def ratio(o):
            a, b = vals["coremq"], vals[o]
            return f"{a / b:10.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "         -"
        print(f"{s:10} {name:11} " + " ".join(f"{fmt(vals[b]):>12}" for b in ["coremq", "mosquitto", "rumqttd"])
              + f"  {ratio('mosquitto')}  {ratio('rumqttd')}")
for r in rows:
    if "error" in r:
        print(f"! {r['label']} {r['scenario']}: {r['error'].strip()}")
PY
