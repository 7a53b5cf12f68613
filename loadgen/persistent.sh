# Shared by the durability benchmarks (durable.sh, online.sh); sourced, not run.
# Needs TMP (a scratch directory) and sets BPID (the running broker's pid).

# Installs Mosquitto with apt when a run needs it and it is missing (NO_INSTALL=1: never).
ensure_mosquitto() {
    if command -v mosquitto >/dev/null || [ -n "${NO_INSTALL:-}" ]; then return 0; fi
    local sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=sudo; fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >/dev/null
}

# start_persistent_broker NAME DURABILITY PORT: Mosquitto with persistence on (NAME mosquitto;
# it writes its database every second and at shutdown, never before an acknowledgement), else
# coremq with `durability = DURABILITY`; pinned to CPU 0, data under $TMP/NAME, log in
# $TMP/NAME.log. Returns once the port accepts.
start_persistent_broker() {
    local name=$1 mode=$2 port=$3
    rm -rf "${TMP:?}/$name"; mkdir -p "$TMP/$name"
    if [ "$name" = mosquitto ]; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\npersistence_location %s/\nautosave_interval 1\nmax_queued_messages 10000\nmax_inflight_messages 100\n' \
            "$port" "$TMP/$name" > "$TMP/m.conf"
        taskset -c 0 mosquitto -c "$TMP/m.conf" > "$TMP/$name.log" 2>&1 &
    else
        printf 'shards = 1\nsys_interval = "0s"\ndurability = "%s"\ndata_dir = "%s"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:%s"\nanonymous_org = "local"\n' \
            "$mode" "$TMP/$name" "$port" > "$TMP/c.toml"
        taskset -c 0 target/release/coremq serve --config "$TMP/c.toml" > "$TMP/$name.log" 2>&1 &
    fi
    BPID=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "$name did not start" >&2; return 1
}
