#!/usr/bin/env python3
"""Control-plane isolation probe (issue 15.4): one org mints N temporary tokens one after the
other while another org lists its users; prints the median latency of the last 100 mints and
the median and p99 of the other org's GET /v2/users during the run.

    COREMQ_BIN=target/release/coremq loadgen/admin/mint_load.py 3250

Starts its own broker (one shard, admin API on a free loopback port, a scratch data_dir) and
stops it at the end. Every loop is bounded by N."""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BIN = os.environ.get("COREMQ_BIN", "target/debug/coremq")
OPK = "operator-key-for-the-mint-load-probe"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.loads(r.read() or b"null")
    return time.perf_counter() - t0, out


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3250
    d = tempfile.mkdtemp(prefix="coremq-mint-")
    port, mport = free_port(), free_port()
    with open(os.path.join(d, "c.toml"), "w") as f:
        f.write(f'data_dir = "data"\nshards = 1\n[admin]\nbind = "127.0.0.1:{port}"\noperator_key_env = "OPK"\n'
                f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{mport}"\n')
    proc = subprocess.Popen([BIN, "serve", "--config", os.path.join(d, "c.toml")], env={**os.environ, "OPK": OPK},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        _, a = call(port, "POST", "/v2/orgs", OPK, {"id": "minter"})
        _, b = call(port, "POST", "/v2/orgs", OPK, {"id": "victim"})
        call(port, "POST", "/v2/users", b["api_key"], {"name": "v", "password": "victim-password"})
        try:
            call(port, "PUT", "/v2/quotas", OPK, {"org": "minter", "max_live_tokens": n + 1})
        except urllib.error.HTTPError:
            pass  # a build without the live-token quota
        victim, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                victim.append(call(port, "GET", "/v2/users", b["api_key"])[0])
                time.sleep(0.01)

        t = threading.Thread(target=watch)
        t.start()
        mints = [call(port, "POST", "/v2/tokens", a["api_key"], {"ttl": 3600})[0] for _ in range(n)]
        stop.set()
        t.join()
        victim.sort()
        print(f"tokens minted: {n}")
        print(f"last 100 mints, median: {statistics.median(mints[-100:]) * 1000:.1f} ms")
        print(f"other org's GET /v2/users during the run: median {statistics.median(victim) * 1000:.1f} ms, "
              f"p99 {victim[int(len(victim) * 0.99)] * 1000:.1f} ms ({len(victim)} requests)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
