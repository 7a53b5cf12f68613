"""Security findings of issue 15, probed over real sockets and HTTP against a real broker:
audit flooding (3), admin API head/body timeouts, connection cap and JSON errors (5), Argon2
memory through the API (6), refusal timing (7)."""
import concurrent.futures
import socket
import statistics
import threading
import time

import jwt
import pytest

from conftest import Broker, Raw, admin_api, enc_len, free_port, s16

OPERATOR = "operator-key-for-security-tests1"
ACME_KEY = "acme-key-for-security-tests-0001"
HS = "hs256-secret-for-security-tests-0123456789"


class SBroker(Broker):
    """One shard, admin API, org `acme` (from the API) with user alice and a JWT provider."""

    def __init__(self):
        self.admin_port = free_port()
        self.extra_ports = [self.admin_port]
        extra = (f'[admin]\nbind = "127.0.0.1:{self.admin_port}"\noperator_key_env = "OPK"\n'
                 '[[org]]\nid = "acme"\napi_key_env = "ACME_KEY"\npolicy = "preset:permit-all"\n'
                 '[[org.jwt]]\npreset = "custom"\nissuer = "https://idp.test"\naudience = "mqtt"\n'
                 'hs256_secret_env = "HS"\n')
        super().__init__(shards=1, extra=extra, env={"OPK": OPERATOR, "ACME_KEY": ACME_KEY, "HS": HS})
        st, body = self.api("POST", "/v2/users", body={"name": "alice", "password": "alice-pw"})
        assert st == 201, body

    def api(self, method, path, key=None, body=None):
        return admin_api(self.admin_port, method, path, key or ACME_KEY, body)


@pytest.fixture(scope="module")
def sb():
    b = SBroker()
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


def connect_as(port, client_id, username, password, level=5):
    """A raw CONNECT with credentials; returns the CONNACK reason code."""
    body = s16(b"MQTT") + bytes([level, 0xC2]) + (30).to_bytes(2, "big")
    if level == 5:
        body += b"\x00"
    body += s16(client_id.encode()) + s16(username.encode()) + s16(password)
    r = Raw(port)
    r.send(b"\x10" + enc_len(len(body)) + body)
    t, b = r.read_packet(timeout=10)
    r.s.close()
    assert t == 0x20
    return b[1]


def auth_failures(sb):
    st, body = sb.api("GET", "/v2/audit?type=auth_failure&limit=1000")
    assert st == 200, body
    return body["events"]


def test_failed_logins_with_fresh_names_fold_into_one_entry(sb):
    n = 80
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda i: connect_as(sb.port, f"flood-{i}", f"nobody{i}@acme", b"pw"), range(n)))
    assert set(codes) <= {0x86, 0x89}, codes
    deadline = time.time() + 10
    while time.time() < deadline:
        ev = [e for e in auth_failures(sb) if (e["username"] or "").startswith("nobody")
              or e["detail"].get("folded")]
        if sum(e["count"] for e in ev) >= n:
            break
        time.sleep(0.2)
    assert sum(e["count"] for e in ev) == n, ev
    assert len(ev) <= 2, f"{len(ev)} audit rows for {n} failures from one network"


def http_raw(port, data, wait):
    """Sends `data` and waits up to `wait` s for the server to answer or close: (seconds, bytes)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    s.settimeout(wait)
    t0 = time.time()
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except socket.timeout:
        pass
    finally:
        s.close()
    return time.time() - t0, got


def test_admin_api_closes_slow_heads_and_bodies(sb):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        head = ex.submit(http_raw, sb.admin_port, b"GET /v2/orgs HTTP/1.1\r\nHost: x\r\n", 20)
        body = ex.submit(http_raw, sb.admin_port,
                         b"PUT /v2/acl HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                         b"Authorization: Bearer " + ACME_KEY.encode() + b"\r\n\r\n{\"vers", 20)
        (t_head, _), (t_body, got) = head.result(), body.result()
    assert t_head < 15, f"half-sent head kept open {t_head:.1f} s"
    assert t_body < 15, f"stalled body kept open {t_body:.1f} s"
    assert b" 408 " in got.split(b"\r\n")[0] and b"request_timeout" in got, got


def test_admin_api_caps_connections_and_answers_json(sb):
    socks = []
    try:
        for _ in range(140):
            socks.append(socket.create_connection(("127.0.0.1", sb.admin_port)))
        time.sleep(0.5)
        closed = 0
        for s in socks:
            s.settimeout(0.05)
            try:
                closed += s.recv(1) == b""  # closed by the broker at accept
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass  # still open
        assert closed >= 10, f"only {closed} of 140 idle connections were refused"
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    st, body = admin_api(sb.admin_port, "PATCH", "/v2/orgs", OPERATOR)
    assert st == 405 and body["error"]["code"], (st, body)
    st, body = sb.api("PUT", "/v2/acl", body={"pad": "x" * 70_000})
    assert st == 413 and body["error"]["code"] == "payload_too_large", (st, body)


def test_password_changes_share_the_bounded_hashing_pool(sb):
    rss0 = sb.rss_kb()
    peak = [rss0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], sb.rss_kb())
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(64) as ex:
        codes = list(ex.map(lambda i: sb.api("PATCH", "/v2/users/alice", body={"password": f"pw-{i}"})[0],
                            range(64)))
    done.set()
    t.join()
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1
    grown_mb = (peak[0] - rss0) / 1024
    assert grown_mb < 300, f"RSS grew {grown_mb:.0f} MB during 64 concurrent password changes"
    assert sb.api("PATCH", "/v2/users/alice", body={"password": "alice-pw"})[0] == 200


def test_refusals_take_the_same_time_for_users_and_unknown_names(sb):
    def timed(username, password):
        t0 = time.perf_counter()
        code = connect_as(sb.port, f"t{time.time_ns()}", username, password)
        return time.perf_counter() - t0, code

    bad_jwt = jwt.encode({"iss": "https://idp.test", "aud": "mqtt", "sub": "s", "exp": 1}, HS,
                         algorithm="HS256").encode()
    known, unknown = [], []
    for i in range(7):
        t, code = timed("alice@acme", f"wrong-{i}".encode())
        assert code == 0x86
        known.append(t)
        t, code = timed(f"ghost{i}@acme", bad_jwt)
        assert code == 0x86
        unknown.append(t)
    k, u = statistics.median(known), statistics.median(unknown)
    assert u > 0.5 * k, f"unknown name refused in {u * 1000:.1f} ms, known user in {k * 1000:.1f} ms"


def test_live_tokens_are_capped_per_org_and_one_key_cannot_hog_the_api(sb):
    st, body = admin_api(sb.admin_port, "PUT", "/v2/quotas", OPERATOR, {"org": "acme", "max_live_tokens": 3})
    assert st == 200, body
    minted = []
    for _ in range(3):
        st, t = sb.api("POST", "/v2/tokens", body={"ttl": 600})
        assert st == 201, t
        minted.append(t["username"])
    st, body = sb.api("POST", "/v2/tokens", body={"ttl": 600})
    assert st == 409 and body["error"]["code"] == "quota_exceeded", (st, body)
    assert "max_live_tokens" in body["error"]["message"]
    assert sb.api("DELETE", f"/v2/tokens/{minted[0]}")[0] == 204
    st, t = sb.api("POST", "/v2/tokens", body={"ttl": 600})
    assert st == 201, t
    # The revoked token is gone from what shards read; the new one connects.
    assert connect_as(sb.port, "t-old", minted[0], b"whatever") == 0x86
    assert connect_as(sb.port, "t-new", t["username"], t["password"].encode()) == 0
    st, body = admin_api(sb.admin_port, "PUT", "/v2/quotas", OPERATOR, {"org": "acme", "max_live_tokens": None})
    assert st == 200, body
    # One key with many slow requests at once gets 429 busy beyond its share, not a queue.
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        codes = list(ex.map(lambda i: sb.api("PATCH", "/v2/users/alice", body={"password": f"alice-pw-{i}"})[0],
                            range(16)))
    assert codes.count(429) >= 1 and codes.count(200) >= 1, codes
    assert sb.api("PATCH", "/v2/users/alice", body={"password": "alice-pw"})[0] == 200
