"""IdP JWTs verified by the broker (SPEC §2.3): presets supabase, firebase, auth0, clerk, oidc
(discovery) and custom (key file, HS256 secret), against a real JWKS HTTP server on 127.0.0.1
serving keys generated here (RS256, ES256, EdDSA); rotation, unknown-kid floods, hostile
tokens, expiry, MQTT 5 re-authentication with AUTH, and token exchange."""
import base64
import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import V5, V311, Broker, Client, Raw, admin_api, enc_len, free_port, s16

ACME_KEY = "acme-key-from-env-0000000001"
HS_SECRET = "legacy-supabase-secret-0123456789abcdef"


def jwk_of(alg, key, kid):
    pub = key.public_key()
    cls = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    d = json.loads(cls.to_jwk(pub))
    d.update({"kid": kid, "use": "sig"})
    return d


def new_key(alg):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


class Jwks:
    """A JWKS server: path -> (body, max-age); counts requests per path."""

    def __init__(self):
        self.docs = {}
        self.hits = {}
        self.max_age = {}  # path -> Cache-Control max-age (default 3600)
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                doc = outer.docs.get(self.path)
                if doc is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={outer.max_age.get(self.path, 3600)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()


class Provider:
    def __init__(self, jwks, path, alg, kid, issuer, aud):
        self.jwks, self.path, self.alg, self.issuer, self.aud = jwks, path, alg, issuer, aud
        self.keys = {kid: new_key(alg)}
        self.kid = kid
        self.publish()

    def publish(self):
        if self.path:
            self.jwks.docs[self.path] = {"keys": [jwk_of(self.alg, k, kid) for kid, k in self.keys.items()]}

    def rotate(self, kid, keep_old=False):
        old = self.keys
        self.keys = {kid: new_key(self.alg)}
        if keep_old:
            self.keys.update(old)
        self.kid = kid
        self.publish()
        return old

    def token(self, sub="user-1", exp_in=300, kid=None, key=None, headers=None, **claims):
        now = int(time.time())
        body = {"iss": self.issuer, "aud": self.aud, "sub": sub, "iat": now, "exp": now + exp_in, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        kid = kid or self.kid
        h = {"kid": kid, **(headers or {})}
        return jwt.encode(body, key or self.keys.get(kid) or next(iter(self.keys.values())), algorithm=self.alg,
                          headers=h)


class JBroker(Broker):
    def __init__(self, tmp_keys_dir=None):
        self.jwks = Jwks()
        # Supabase's keys are served with a 10 s cache lifetime (the refresh schedule follows it).
        self.jwks.max_age["/supabase/auth/v1/.well-known/jwks.json"] = 10
        b = self.jwks.base
        self.p = {
            "auth0": Provider(self.jwks, "/auth0/.well-known/jwks.json", "RS256", "a1", f"{b}/auth0/", "mqtt"),
            "supabase": Provider(self.jwks, "/supabase/auth/v1/.well-known/jwks.json", "ES256", "s1",
                                 f"{b}/supabase/auth/v1", "authenticated"),
            "firebase": Provider(self.jwks, "/firebase/jwks", "RS256", "f1",
                                 "https://securetoken.google.com/demo-proj", "demo-proj"),
            "clerk": Provider(self.jwks, "/clerk/.well-known/jwks.json", "RS256", "c1", f"{b}/clerk", "mqtt"),
            "oidc": Provider(self.jwks, "/oidc/keys", "EdDSA", "o1", f"{b}/oidc", "mqtt"),
            "custom": Provider(self.jwks, None, "ES256", "file1", "https://issuer.example/custom", "mqtt"),
        }
        self.jwks.docs["/oidc/.well-known/openid-configuration"] = {"issuer": f"{b}/oidc", "jwks_uri": f"{b}/oidc/keys"}
        self.admin_port = free_port()

        def setup(broker):
            keyfile = os.path.join(broker.dir, "custom-jwks.json")
            c = self.p["custom"]
            with open(keyfile, "w") as f:
                json.dump({"keys": [jwk_of("ES256", k, kid) for kid, k in c.keys.items()]}, f)

        extra = (f'[admin]\nbind = "127.0.0.1:{self.admin_port}"\n'
                 '[[org]]\nid = "acme"\napi_key_env = "ACME_KEY"\npolicy = "preset:permit-all"\n'
                 f'[[org.jwt]]\npreset = "auth0"\nissuer = "{b}/auth0/"\naudience = "mqtt"\n'
                 'refresh_min = "1s"\nkey_grace = "3s"\n'
                 '[org.jwt.claims]\nagent_id = "https://acme.io/agent_id"\nteam = "app.team"\n'
                 f'[[org.jwt]]\npreset = "supabase"\nissuer = "{b}/supabase/auth/v1"\n'
                 '[org.jwt.claims]\nrole = "app_metadata.role"\n'
                 f'[[org.jwt]]\npreset = "firebase"\nproject_id = "demo-proj"\njwks_url = "{b}/firebase/jwks"\n'
                 f'[[org.jwt]]\npreset = "clerk"\nissuer = "{b}/clerk"\naudience = ["mqtt", "other"]\n'
                 f'[[org.jwt]]\npreset = "oidc"\nissuer = "{b}/oidc"\naudience = "mqtt"\n'
                 '[[org.jwt]]\npreset = "custom"\nissuer = "https://issuer.example/custom"\naudience = "mqtt"\n'
                 'jwks_file = "custom-jwks.json"\n'
                 '[[org.jwt]]\npreset = "custom"\nname = "legacy"\nissuer = "https://legacy.example"\n'
                 'audience = "authenticated"\nhs256_secret_env = "HS_SECRET"\n')
        self.extra_ports = [self.admin_port]
        super().__init__(shards=2, extra=extra, setup=setup, env={"ACME_KEY": ACME_KEY, "HS_SECRET": HS_SECRET})

    def api(self, method, path, body=None, raw=None):
        return admin_api(self.admin_port, method, path, ACME_KEY, body, raw)

    def failures(self):
        st, b = self.api("GET", "/v2/audit?type=auth_failure&limit=1000")
        return b["events"]


@pytest.fixture
def jb():
    b = JBroker()
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()
    b.jwks.close()


def connect_jwt(jb, token, cid=None, proto=V5, expect_rc=0, user="anyone@acme"):
    return Client(jb.port, cid or f"j-{uuid.uuid4().hex[:8]}", proto, username=user, password=token,
                  expect_rc=expect_rc)


def session(jb, cid):
    st, b = jb.api("GET", "/v2/sessions")
    return [s for s in b["sessions"] if s["client_id"] == cid]


@pytest.mark.parametrize("name", ["auth0", "supabase", "firebase", "clerk", "oidc", "custom"])
def test_each_preset_accepts_its_tokens(jb, name):
    p = jb.p[name]
    c = connect_jwt(jb, p.token(sub=f"{name}-user"), cid=f"c-{name}")
    s = session(jb, f"c-{name}")
    assert [(x["identity"], x["method"]) for x in s] == [(f"{name}-user", "jwt")]
    c.subscribe("x/#", 0)
    c.publish("x/1", "ok", qos=1)
    assert c.expect(1)[0].payload == b"ok"
    # 3.1.1 clients send the JWT as their password too.
    connect_jwt(jb, p.token(sub=f"{name}-user"), proto=V311)


def test_hs256_only_with_a_configured_secret(jb):
    now = int(time.time())
    claims = {"iss": "https://legacy.example", "aud": "authenticated", "sub": "legacy-1", "exp": now + 60}
    connect_jwt(jb, jwt.encode(claims, HS_SECRET, algorithm="HS256"))
    connect_jwt(jb, jwt.encode(claims, "a-different-secret-0123456789abcdef", algorithm="HS256"), expect_rc=0x86)


def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_hostile_tokens_are_refused_and_audited(jb):
    a = jb.p["auth0"]
    now = int(time.time())
    good = {"iss": a.issuer, "aud": "mqtt", "sub": "mallory", "exp": now + 60}
    pem = a.keys["a1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'a1'})}.{b64(good)}.",
        "expired": a.token(exp_in=-120),
        "not yet valid": a.token(nbf=now + 3600),
        "wrong iss": a.token(iss=f"{jb.jwks.base}/evil/"),
        "wrong aud": a.token(aud="not-mqtt"),
        "no aud": a.token(aud=None),
        "bad signature": a.token()[:-6] + "AAAAAA",
        "jku header": a.token(headers={"jku": f"{jb.jwks.base}/evil.json"}),
        "embedded jwk": a.token(headers={"jwk": jwk_of("RS256", a.keys["a1"], "a1")}),
        "signed by another key": a.token(key=new_key("RS256")),
        "other org's issuer": jb.p["clerk"].token(iss="https://someone-else.example"),
    }
    # HS/RS confusion: HMAC over the header and payload with the public key PEM as the secret.
    import hashlib
    import hmac as _hmac
    head = b64({"alg": "HS256", "typ": "JWT", "kid": "a1"})
    body = b64(good)
    sig = base64.urlsafe_b64encode(_hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=")
    cases["HS256 with the RSA public key"] = f"{head}.{body}.{sig.decode()}"
    for what, tok in cases.items():
        connect_jwt(jb, tok, cid="hostile", expect_rc=0x86)
    # A big token (MQTT passwords stop at 64 KiB) and through the API (1 MB: refused by size).
    connect_jwt(jb, a.token(pad="x" * 40_000), cid="hostile", expect_rc=0x86)
    st, b = jb.api("POST", "/v2/token-exchange", raw=json.dumps({"provider": "auth0", "token": "e" * 1_000_000}).encode())
    assert st == 413
    expected = ["jwt_malformed", "jwt_algorithm_refused", "jwt_expired", "jwt_not_yet_valid", "jwt_unknown_issuer",
                "jwt_wrong_audience", "jwt_bad_signature", "jwt_header_key_refused", "jwt_too_large",
                "jwt_missing_claim"]
    deadline = time.time() + 5
    while True:  # shards hand audit events over once per tick
        reasons = {e["detail"]["reason"] for e in jb.failures() if e["client_id"] == "hostile"}
        if set(expected) <= reasons or time.time() > deadline:
            break
        time.sleep(0.1)
    for r in ["jwt_malformed", "jwt_algorithm_refused", "jwt_expired", "jwt_not_yet_valid", "jwt_unknown_issuer",
              "jwt_wrong_audience", "jwt_bad_signature", "jwt_header_key_refused", "jwt_too_large",
              "jwt_missing_claim"]:
        assert r in reasons, (r, reasons)
    logs = jb.logs()
    assert a.token()[:40] not in logs and "eyJ" not in logs


def test_unknown_kid_flood_fetches_a_bounded_number_of_times(jb):
    c = jb.p["clerk"]
    path = "/clerk/.well-known/jwks.json"
    time.sleep(1.5)  # the start-up fetch
    before = jb.jwks.hits.get(path, 0)
    t0 = time.time()
    for i in range(40):
        connect_jwt(jb, c.token(kid=f"unknown-{i}", key=new_key("RS256") if i == 0 else None), expect_rc=0x86)
    spent = time.time() - t0
    fetched = jb.jwks.hits.get(path, 0) - before
    # refresh_min defaults to 10 s: one on-demand fetch per window, however many kids.
    assert fetched <= 1 + int(spent / 10) + 1, (fetched, spent)
    connect_jwt(jb, c.token())  # the known key still works


def test_key_rotation_and_grace(jb):
    a = jb.p["auth0"]
    old_token = a.token(sub="rot")
    connect_jwt(jb, old_token)
    a.rotate("a2")  # the IdP drops a1 and signs with a2
    time.sleep(1.1)  # refresh_min = 1s
    connect_jwt(jb, a.token(sub="rot"))  # unknown kid a2: fetched, accepted
    connect_jwt(jb, old_token)  # a1 left the set: honoured for key_grace (3 s)
    time.sleep(3.5)
    a.rotate("a3", keep_old=True)  # any refresh after the grace forgets a1
    time.sleep(1.1)
    connect_jwt(jb, a.token(sub="rot"))  # a3: fetch
    connect_jwt(jb, old_token, expect_rc=0x86)


def test_expiry_closes_the_connection(jb):
    c = connect_jwt(jb, jb.p["supabase"].token(exp_in=2))
    c.wait(lambda: c.disconnect_rc is not None, timeout=5, what="disconnect at exp")
    assert int(c.disconnect_rc.value) == 0xA0


def props(*items):
    out = b""
    for ident, val in items:
        out += bytes([ident]) + (s16(val) if ident in (0x15, 0x16) else val)
    return enc_len(len(out)) + out


def read_props(body, at):
    n, mult, i = 0, 1, at
    while True:
        b = body[i]
        n += (b & 0x7F) * mult
        i += 1
        if b < 0x80:
            break
        mult *= 128
    return body[i:i + n]


def test_reauthentication_with_auth_keeps_the_connection(jb):
    a = jb.p["auth0"]
    r = Raw(jb.port)
    first = a.token(sub="agent", exp_in=3).encode()
    connect = lambda flags, user: (s16(b"MQTT") + bytes([5, flags]) + b"\x00\x3c" +
                                   props((0x15, b"jwt"), (0x16, first)) + s16(b"reauth") + user)
    # A JWT always needs local@org (the org); it never lands in the listener's anonymous org.
    n = Raw(jb.port)
    body = connect(0x02, b"")
    n.send(b"\x10" + enc_len(len(body)) + body)
    assert n.read_packet()[1][1] == 0x86
    body = connect(0x82, s16(b"agent@acme"))
    r.send(b"\x10" + enc_len(len(body)) + body)
    t, ack = r.read_packet()
    assert t == 0x20 and ack[1] == 0, ack
    assert b"\x15\x00\x03jwt" in read_props(ack, 2)
    fresh = a.token(sub="agent", exp_in=60).encode()
    pk = b"\x19" + props((0x15, b"jwt"), (0x16, fresh))
    r.send(b"\xf0" + enc_len(len(pk)) + pk)
    t, auth = r.read_packet()
    assert t == 0xF0 and auth[0] == 0x00, auth
    time.sleep(4)  # past the first token's exp
    r.send(b"\xc0\x00")
    assert r.read_packet() == (0xD0, b"")
    # Another subject may not take over the connection.
    other = a.token(sub="someone-else", exp_in=60).encode()
    pk = b"\x19" + props((0x15, b"jwt"), (0x16, other))
    r.send(b"\xf0" + enc_len(len(pk)) + pk)
    t, d = r.read_packet()
    assert t == 0xE0 and d[0] == 0x87, d
    assert r.closed()
    # AUTH without an authentication method at CONNECT is a protocol error.
    c = Raw(jb.port)
    tok = a.token().encode()
    body = s16(b"MQTT") + bytes([5, 0xC2]) + b"\x00\x3c\x00" + s16(b"plain") + s16(b"x@acme") + s16(tok)
    c.send(b"\x10" + enc_len(len(body)) + body)
    assert c.read_packet()[0] == 0x20
    c.send(b"\xf0" + enc_len(len(pk)) + pk)
    t, d = c.read_packet()
    assert t == 0xE0 and d[0] == 0x82


def test_token_exchange(jb):
    a = jb.p["auth0"]
    idp = a.token(sub="u-42", **{"https://acme.io/agent_id": "agent-9", "app": {"team": "blue"}})
    st, creds = jb.api("POST", "/v2/token-exchange", body={"provider": "auth0", "token": idp, "ttl": 600})
    assert st == 201 and creds["username"].startswith("tok_"), creds
    Client(jb.port, "ex", V311, username=creds["username"], password=creds["password"])
    st, toks = jb.api("GET", "/v2/tokens")
    attrs = [t["attrs"] for t in toks if t["username"] == creds["username"]][0]
    assert attrs == {"user_id": "u-42", "agent_id": "agent-9", "claims": {"team": "blue"}}, attrs
    st, b = jb.api("POST", "/v2/token-exchange", body={"provider": "auth0", "token": a.token(exp_in=-100)})
    assert st == 401 and b["error"] == {"code": "invalid_token", "message": "jwt_expired"}
    assert jb.api("POST", "/v2/token-exchange", body={"provider": "nope", "token": idp})[0] == 404
    # Supabase: app_metadata feeds the role; user_metadata (user-editable) never does.
    s = jb.p["supabase"]
    st, creds = jb.api("POST", "/v2/token-exchange", body={
        "provider": "supabase", "token": s.token(sub="sb-1", role="authenticated", app_metadata={"role": "admin"},
                                                 user_metadata={"role": "superuser"})})
    st, toks = jb.api("GET", "/v2/tokens")
    attrs = [t["attrs"] for t in toks if t["username"] == creds["username"]][0]
    assert attrs["role"] == "admin", attrs


def test_a_removed_key_stops_working_once_the_jwks_max_age_passed(jb):
    """Issue 14.10: without key_grace (default 0), a key the IdP removed from its JWKS (served
    with max-age=10) is refused once that lifetime has passed; before, it was honoured 1 h."""
    s = jb.p["supabase"]
    old_token = s.token(sub="leaver")
    connect_jwt(jb, old_token)
    s.rotate("s2")  # the IdP drops s1
    t0 = time.time()
    deadline = t0 + 25
    while time.time() < deadline:
        r = Raw(jb.port)
        body = s16(b"MQTT") + bytes([5, 0xC2]) + (30).to_bytes(2, "big") + b"\x00" + s16(b"leaver") \
            + s16(b"x@acme") + s16(old_token.encode())
        r.send(b"\x10" + enc_len(len(body)) + body)
        t, b = r.read_packet()
        r.s.close()
        if b[1] == 0x86:
            break
        time.sleep(0.5)
    refused_after = time.time() - t0
    assert refused_after < 10 + 3, f"the removed key was still accepted {refused_after:.1f} s later"
    connect_jwt(jb, s.token(sub="stayer"))  # the new key works
