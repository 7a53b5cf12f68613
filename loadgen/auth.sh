#!/usr/bin/env bash
# CONNECT + CONNACK + close per second and per broker CPU-second over plain TCP, by
# authentication method: anonymous, permanent user (Argon2id, served from the verified-credential
# cache after the first connect), temporary token (one HMAC), and an ES256 IdP JWT (signature
# verify on the shard). One coremq (shards = 1, pinned to CPU 0), loadgen on CPU 1.
# Needs python3 with PyJWT and cryptography (tests/run installs them).
# Usage: loadgen/auth.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
cargo build --release -q -p coremq --bin coremq && cargo build --release -q -p coremq-loadgen
LG=target/release/coremq-loadgen
TMP=$(mktemp -d)
B=$((20000 + RANDOM % 10000))
A=$((B + 1))
HASH=$(echo "bench-password" | target/release/coremq passwd)
# An ES256 key as a JWKS file, and a token signed with it.
python3 - "$TMP" <<'PY'
import json, sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
k = ec.generate_private_key(ec.SECP256R1())
pub = json.loads(ECAlgorithm.to_jwk(k.public_key())); pub["kid"] = "bench"
json.dump({"keys": [pub]}, open(f"{sys.argv[1]}/jwks.json", "w"))
now = int(time.time())
tok = jwt.encode({"iss": "https://bench.example", "aud": "mqtt", "sub": "bench", "exp": now + 3600}, k,
                 algorithm="ES256", headers={"kid": "bench"})
open(f"{sys.argv[1]}/jwt", "w").write(tok)
PY
cat > "$TMP/c.toml" <<TOML
shards = 1
sys_interval = "0s"
data_dir = "data"
[[listener]]
kind = "tcp"
bind = "127.0.0.1:$B"
anonymous_org = "local"
[admin]
bind = "127.0.0.1:$A"
[[org]]
id = "bench"
api_key_env = "BENCH_KEY"
[[org.user]]
name = "alice"
password_hash = "$HASH"
[[org.jwt]]
preset = "custom"
issuer = "https://bench.example"
audience = "mqtt"
jwks_file = "jwks.json"
TOML
BENCH_KEY=bench-api-key-0123456789 taskset -c 0 target/release/coremq serve --config "$TMP/c.toml" > "$TMP/coremq.log" 2>&1 &
BPID=$!
trap 'kill $BPID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$A) 2>/dev/null && break; sleep 0.1; done
TOK=$(curl -s -XPOST -H "Authorization: Bearer bench-api-key-0123456789" "http://127.0.0.1:$A/v2/tokens" -d '{"ttl": 3600}')
TU=$(echo "$TOK" | python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])')
TP=$(echo "$TOK" | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
run() {
    local label=$1; shift
    taskset -c 1 $LG handshake --port $B --transport tcp --mqtt --threads 2 --duration "$DUR" \
        --broker-pid $BPID --label "$label" "$@" | tail -1
}
run auth-anonymous
run auth-password-cached --username alice@bench --password bench-password
run auth-token --username "$TU" --password "$TP"
run auth-jwt-es256 --username agent@bench --password "$(cat "$TMP/jwt")"
