"""TLS, WebSocket and secure WebSocket with independent clients (mosquitto_pub/sub, paho-mqtt),
PROXY protocol v2, certificate reload, and bad input on every transport."""
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import BIN, V5, V311, Broker, Client, Raw, free_port, raw_connect


def make_certs(d):
    subprocess.run([BIN, "certs", "dev", d], check=True, capture_output=True)


class TBroker(Broker):
    """A broker with tcp, tls, tls+mTLS, tls 1.3-only, ws, wss and tcp+PROXY listeners."""

    def __init__(self):
        names = ["tls", "mtls", "tls13", "ws", "wss", "proxy"]
        self.p = {n: free_port() for n in names}

        def setup(b):
            make_certs(os.path.join(b.dir, "certs"))
            make_certs(os.path.join(b.dir, "certs2"))  # another CA, for the reload test

        lst = ""
        common = 'anonymous_org = "local"\ncert = "certs/server.pem"\nkey = "certs/server.key"\n'
        lst += f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:{self.p["tls"]}"\n{common}'
        lst += (f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:{self.p["mtls"]}"\n{common}'
                'client_ca = "certs/ca.pem"\nclient_auth = "required"\n')
        lst += f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:{self.p["tls13"]}"\n{common}min_tls = "1.3"\n'
        lst += f'[[listener]]\nkind = "ws"\nbind = "127.0.0.1:{self.p["ws"]}"\nanonymous_org = "local"\n'
        lst += f'[[listener]]\nkind = "wss"\nbind = "127.0.0.1:{self.p["wss"]}"\n{common}'
        lst += (f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{self.p["proxy"]}"\nanonymous_org = "local"\n'
                'proxy_protocol = true\n')
        self.extra_ports = list(self.p.values())
        super().__init__(shards=2, listeners=lst, env={"COREMQ_LOG": "coremq=debug"}, setup=setup)
        self.ca = os.path.join(self.dir, "certs", "ca.pem")
        self.certs = os.path.join(self.dir, "certs")


@pytest.fixture
def tb():
    b = TBroker()
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


class TClient(Client):
    """A paho client over tls / ws / wss."""

    def __init__(self, port, client_id, protocol, transport="tcp", ca=None, cert=None, key=None, **kw):
        self._transport, self._ca, self._cert, self._key = transport, ca, cert, key
        super().__init__(port, client_id, protocol, connect=False, **kw)
        self.connect()

    def connect(self, expect_rc=0):
        # Rebuild the paho client with the transport (paho fixes it at construction).
        kwargs = {"client_id": self.c._client_id.decode(), "protocol": self.protocol,
                  "transport": "websockets" if self._transport in ("ws", "wss") else "tcp"}
        old = self.c
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        for cb in ("on_message", "on_connect", "on_disconnect", "on_subscribe", "on_publish"):
            setattr(self.c, cb, getattr(old, cb))
        if old._username:
            self.c.username_pw_set(old._username.decode(), old._password.decode() if old._password else None)
        if self._transport in ("ws", "wss"):
            self.c.ws_set_options(path="/mqtt")
        if self._ca:
            self.c.tls_set(ca_certs=self._ca, certfile=self._cert, keyfile=self._key)
        self.connack = None
        self.c.connect("localhost", self.port, keepalive=60)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, what="CONNACK")
        return self


@pytest.mark.parametrize("proto", [V311, V5], ids=["v311", "v5"])
def test_paho_on_every_transport(tb, proto):
    """Subscribers on tcp, tls, ws, wss each receive what publishers on every transport send."""
    subs = {
        "tcp": Client(tb.port, "s-tcp", proto),
        "tls": TClient(tb.p["tls"], "s-tls", proto, "tls", ca=tb.ca),
        "ws": TClient(tb.p["ws"], "s-ws", proto, "ws"),
        "wss": TClient(tb.p["wss"], "s-wss", proto, "wss", ca=tb.ca),
    }
    for s in subs.values():
        s.subscribe("x/#", 1)
    pubs = {
        "tcp": Client(tb.port, "p-tcp", proto),
        "tls": TClient(tb.p["tls"], "p-tls", proto, "tls", ca=tb.ca),
        "ws": TClient(tb.p["ws"], "p-ws", proto, "ws"),
        "wss": TClient(tb.p["wss"], "p-wss", proto, "wss", ca=tb.ca),
    }
    for name, p in pubs.items():
        p.publish(f"x/{name}", f"from {name}", qos=1)
    for name, s in subs.items():
        got = sorted(m.payload.decode() for m in s.expect(4))
        assert got == sorted(f"from {n}" for n in pubs), name


def test_large_message_over_ws_spans_frames(tb):
    s = TClient(tb.p["wss"], "big-sub", V5, "wss", ca=tb.ca)
    s.subscribe("big", 1)
    p = TClient(tb.p["ws"], "big-pub", V311, "ws")
    payload = os.urandom(300_000)
    p.publish("big", payload, qos=1)
    assert s.expect(1)[0].payload == payload


@pytest.mark.parametrize("v", ["mqttv311", "mqttv5"])
def test_mosquitto_over_tls_with_cafile(tb, v):
    s = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(tb.p["tls"]), "--cafile", tb.ca,
                          "-V", v, "-t", "m/#", "-C", "1", "-W", "5", "-v"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.4)
    subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(tb.p["tls"]), "--cafile", tb.ca, "-V", v,
                    "-t", "m/1", "-m", "secret", "-q", "1"], check=True, timeout=10)
    out, _ = s.communicate(timeout=10)
    assert out.strip() == "m/1 secret"


def test_mosquitto_client_certificate_required(tb):
    c = tb.certs
    ok = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(tb.p["mtls"]), "--cafile", tb.ca,
                         "--cert", f"{c}/client.pem", "--key", f"{c}/client.key", "-t", "a", "-m", "x", "-q", "1"],
                        capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(tb.p["mtls"]), "--cafile", tb.ca,
                         "-t", "a", "-m", "x", "-q", "1"], capture_output=True, text=True, timeout=10)
    assert no.returncode != 0
    # The verified client certificate's CN reaches the identity layer.
    deadline = time.time() + 3
    while "client_cn=Some(\"dev-client\")" not in tb.logs() and time.time() < deadline:
        time.sleep(0.1)
    assert 'client_cn=Some("dev-client")' in tb.logs()


def test_tls13_only_listener_refuses_tls12(tb):
    ctx = ssl.create_default_context(cafile=tb.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tb.p["tls13"])) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")
    ctx = ssl.create_default_context(cafile=tb.ca)
    with socket.create_connection(("127.0.0.1", tb.p["tls13"])) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            assert t.version() == "TLSv1.3"
    ctx = ssl.create_default_context(cafile=tb.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tb.p["tls"])) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            assert t.version() == "TLSv1.2", "the default tls listener accepts 1.2"


def tls11_client_hello():
    """A ClientHello that offers only TLS 1.1 (record and hello version 0x0302)."""
    body = b"\x03\x02" + os.urandom(32) + b"\x00" + b"\x00\x04\xc0\x13\x00\x2f" + b"\x01\x00"
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


BAD_TLS = [
    ("plain MQTT to the TLS port", raw_connect(level=4)),
    ("TLS 1.1 ClientHello", tls11_client_hello()),
    ("garbage instead of a ClientHello", os.urandom(512)),
]


@pytest.mark.parametrize("name,data", BAD_TLS, ids=[b[0] for b in BAD_TLS])
def test_bad_tls_input_refused(tb, name, data):
    bystander = TClient(tb.p["tls"], f"by-{hash(name) % 1000}", V5, "tls", ca=tb.ca)
    bystander.subscribe("by", 0)
    r = Raw(tb.p["tls"])
    r.send(data)
    assert r.closed(timeout=5), name
    bystander.publish("by", "alive", qos=1)
    assert bystander.expect(1)[0].payload == b"alive"


def test_stalled_handshakes_are_bounded(tb):
    """Many connections that never finish a handshake are closed by the deadline, while a
    normal TLS client works meanwhile."""
    rss0 = tb.rss_kb()
    stalled = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", tb.p["tls" if i % 2 else "wss"]))
        s.send(tls11_client_hello()[:20])  # half a ClientHello
        stalled.append(s)
    c = TClient(tb.p["tls"], "meanwhile", V5, "tls", ca=tb.ca)
    c.subscribe("m", 0)
    c.publish("m", "ok", qos=1)
    assert c.expect(1)
    assert tb.rss_kb() - rss0 < 30_000
    time.sleep(11)
    closed = 0
    for s in stalled:
        s.settimeout(2)
        try:
            if s.recv(100) == b"":
                closed += 1
        except (ConnectionResetError, socket.timeout):
            closed += 1 if isinstance(s, socket.socket) else 0
        s.close()
    assert closed == len(stalled)


def http(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                return data
            data += d


def test_ws_http_errors(tb):
    r = http(tb.p["ws"], b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 426") and b"Upgrade" in r
    r = http(tb.p["ws"], b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 404") and b"/mqtt" in r
    r = http(tb.p["ws"], b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Protocol: chat\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 400")
    r = http(tb.p["ws"], b"\x16\x03\x01garbage\r\n\r\n")
    assert r.startswith(b"HTTP/1.1 400")


def ws_open(port, protocol=b"mqtt"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Protocol: " + protocol + b"\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-protocol: " + protocol in head.lower()
    return s


def frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_closed(s, timeout=5):
    s.settimeout(timeout)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
            if d[0] & 0x0F == 0x08:  # close frame
                return True
    except (ConnectionResetError, socket.timeout):
        return False


def test_ws_packets_split_across_frames_and_several_per_frame(tb):
    s = ws_open(tb.p["ws"], b"mqttv3.1")
    connect = raw_connect(level=4, client_id=b"frag")
    for i in range(len(connect)):  # one byte per frame
        s.sendall(frame(0x2, connect[i:i + 1]))
    d = s.recv(100)
    assert d[0] == 0x82 and d[2:6] == b"\x20\x02\x00\x00", d
    s.sendall(frame(0x2, b"\xc0\x00\xc0\x00"))  # two PINGREQs in one frame
    got = b""
    while got.count(b"\xd0\x00") < 2:
        got += s.recv(100)
    s.close()


def test_ws_text_frame_closes(tb):
    s = ws_open(tb.p["ws"])
    s.sendall(frame(0x1, raw_connect(level=4, client_id=b"text")))
    assert ws_closed(s)


def test_ws_2gib_frame_header_refused(tb):
    rss0 = tb.rss_kb()
    s = ws_open(tb.p["ws"])
    s.sendall(bytes([0x82, 0x80 | 127]) + (2 ** 31).to_bytes(8, "big") + os.urandom(4) + b"x" * 100)
    assert ws_closed(s)
    assert tb.rss_kb() - rss0 < 20_000
    c = TClient(tb.p["ws"], "after-2g", V311, "ws")
    c.subscribe("z", 0)


def proxy_v2(src, sport, dst="127.0.0.1", dport=1883):
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(addr)) + addr


def test_proxy_protocol_v2_reports_client_address(tb):
    r = Raw(tb.p["proxy"])
    r.send(proxy_v2("203.0.113.7", 4242) + raw_connect(level=4, client_id=b"behind-lb"))
    assert r.read_packet() == (0x20, b"\x00\x00")
    r.send(b"\xe0\x00")
    assert r.closed()
    deadline = time.time() + 3
    while "203.0.113.7:4242" not in tb.logs() and time.time() < deadline:
        time.sleep(0.1)
    assert "203.0.113.7:4242" in tb.logs()
    r2 = Raw(tb.p["proxy"])
    r2.send(raw_connect(level=4, client_id=b"no-header") + b"\x00" * 16)
    assert r2.closed(), "a PROXY listener refuses connections without the header"


def test_certificate_reload_on_sighup(tb):
    ctx_old = ssl.create_default_context(cafile=tb.ca)
    new_ca = os.path.join(tb.dir, "certs2", "ca.pem")
    ctx_new = ssl.create_default_context(cafile=new_ca)
    for f in ("server.pem", "server.key"):
        shutil.copy(os.path.join(tb.dir, "certs2", f), os.path.join(tb.certs, f))
    tb.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 3
    while "certificate reloaded" not in tb.logs() and time.time() < deadline:
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", tb.p["tls"])) as raw:
        with ctx_new.wrap_socket(raw, server_hostname="localhost") as t:
            assert t.version()
    with socket.create_connection(("127.0.0.1", tb.p["tls"])) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx_old.wrap_socket(raw, server_hostname="localhost")
    assert tb.alive()


BROWSER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "browser")


@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_mqttjs_in_headless_chromium_over_wss(tb, version):
    """A page served on 127.0.0.1 runs MQTT.js in headless Chromium against the wss listener;
    paho on plain TCP sees what the page publishes and the page sees what paho publishes."""
    import json
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")):
        pytest.fail("run `npm ci` in tests/browser (tests/run does this)", pytrace=False)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(chromium), "apt-get install chromium (tests/run does this)"
    watcher = Client(tb.port, f"watch-{version}", V5)
    watcher.subscribe("browser/from-page", 1)
    node = subprocess.Popen(["node", os.path.join(BROWSER_DIR, "wss.mjs"), str(tb.p["wss"]), str(version)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = node.stdout.readline()
    assert line.strip() == "READY", line + node.stderr.read()
    assert watcher.expect(1, timeout=10)[0].payload == b"hello from chromium"
    Client(tb.port, f"paho-pub-{version}", V311).publish("browser/from-paho", "hello from paho", qos=1)
    out, err = node.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["ok"], (result, err)
    assert "browser/from-paho hello from paho" in result["log"]
    assert "browser/from-page hello from chromium" in result["log"], "the page receives its own publish"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def rsa_chain(d):
    """An RSA root CA -> intermediate -> leaf (localhost) chain written with openssl."""
    os.makedirs(d, exist_ok=True)
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n"
                "[leaf]\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "root.key", "-out", "root.pem",
            "-subj", "/CN=test root", "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "int.key", "-out", "int.csr", "-subj", "/CN=test intermediate", cwd=d)
    openssl("x509", "-req", "-in", "int.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
            "-out", "int.pem", "-days", "2", "-extfile", ext, "-extensions", "ca", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "int.pem", "-CAkey", "int.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "2", "-extfile", ext, "-extensions", "leaf", cwd=d)
    with open(os.path.join(d, "chain.pem"), "w") as out:
        for f in ("leaf.pem", "int.pem"):
            out.write(open(os.path.join(d, f)).read())


def test_rsa_certificate_chain_optional_client_auth_and_alpn():
    p_chain, p_opt = free_port(), free_port()

    def setup(b):
        rsa_chain(os.path.join(b.dir, "rsa"))
        make_certs(os.path.join(b.dir, "certs"))

    lst = (f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:{p_chain}"\nanonymous_org = "local"\n'
           'cert = "rsa/chain.pem"\nkey = "rsa/leaf.key"\n'
           f'[[listener]]\nkind = "tls"\nbind = "127.0.0.1:{p_opt}"\nanonymous_org = "local"\n'
           'cert = "certs/server.pem"\nkey = "certs/server.key"\nclient_ca = "certs/ca.pem"\nclient_auth = "optional"\n')
    b = Broker(shards=1, listeners=lst, setup=setup)
    b.extra_ports = [p_chain, p_opt]
    try:
        # RSA leaf served with its intermediate; the client trusts only the root.
        ctx = ssl.create_default_context(cafile=os.path.join(b.dir, "rsa", "root.pem"))
        ctx.set_alpn_protocols(["mqtt"])
        with socket.create_connection(("127.0.0.1", p_chain)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                assert t.selected_alpn_protocol() == "mqtt", "ALPN mqtt accepted"
                t.sendall(raw_connect(level=4, client_id=b"rsa"))
                assert t.recv(4) == b"\x20\x02\x00\x00"
        c = TClient(p_chain, "rsa-paho", V5, "tls", ca=os.path.join(b.dir, "rsa", "root.pem"))
        c.subscribe("r", 0)
        # Optional client auth: admitted without a certificate, and with one.
        ca = os.path.join(b.dir, "certs", "ca.pem")
        TClient(p_opt, "no-cert", V311, "tls", ca=ca)
        TClient(p_opt, "with-cert", V311, "tls", ca=ca, cert=os.path.join(b.dir, "certs", "client.pem"),
                key=os.path.join(b.dir, "certs", "client.key"))
    finally:
        assert b.stop() == 0, b.logs()


def test_ws_ping_pong_and_close(tb):
    s = ws_open(tb.p["ws"])
    s.sendall(frame(0x2, raw_connect(level=5, client_id=b"pinger")))
    assert s.recv(100)[0] == 0x82
    s.sendall(frame(0x9, b"are you there"))
    d = s.recv(100)
    assert d[0] == 0x8A and d[2:] == b"are you there", d  # pong echoes the ping payload
    s.sendall(frame(0x8, b"\x03\xe8"))  # close 1000
    assert ws_closed(s)
