"""Fixtures: a real `coremq` process on free loopback ports, and small client helpers.

The broker binary comes from $COREMQ_BIN (tests/run sets it) or target/debug/coremq.
"""
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("COREMQ_BIN", os.path.join(ROOT, "target", "debug", "coremq"))


def admin_api(port, method, path, key=None, body=None, raw=None):
    """(status, JSON body) of one admin API call on 127.0.0.1:`port`; `raw` sends bytes as is."""
    import json
    import urllib.error
    import urllib.request
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, (json.loads(text) if text else None)


_PORTS_GIVEN = set()


def free_port():
    """A loopback port nothing listens on, never one this test process was given before: the
    kernel may hand a just-closed ephemeral port out again at once, and two listeners of one
    broker (or two brokers) on the same port fail with `Address already in use`."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


READY = "coremq::shard: ready"


class Broker:
    """A running coremq. `ports[i]` is the listener pinned to shard i when pinned=True."""

    def __init__(self, shards=1, pinned=False, extra="", listeners="", env=None, setup=None):
        self.dir = tempfile.mkdtemp(prefix="coremq-test-")
        if setup:
            setup(self)
        self.port = free_port()
        self.ports = []
        lines = [f'data_dir = "data"', f"shards = {shards}", 'sys_interval = "1s"', extra]
        lines += ["[[listener]]", 'kind = "tcp"', f'bind = "127.0.0.1:{self.port}"', 'anonymous_org = "local"']
        if pinned:
            for i in range(shards):
                p = free_port()
                self.ports.append(p)
                lines += ["[[listener]]", 'kind = "tcp"', f'bind = "127.0.0.1:{p}"',
                          'anonymous_org = "local"', f"shards = [{i}]"]
        self.config = os.path.join(self.dir, "coremq.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n" + listeners)
        self.log = open(os.path.join(self.dir, "broker.log"), "w+")
        self.env = {**os.environ, **(env or {})}
        self.start()

    def start(self):
        """Starts the process (again, after `stop`, on the same config and data) and waits
        until every listener accepts."""
        ready_before = self.logs().count(READY)
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.config], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 10
        # After a kill -9 the old process's listening sockets outlive it for a moment (io_uring
        # tears down asynchronously) and accept connections they then reset: wait for this
        # process to say it is ready before probing its ports.
        while self.logs().count(READY) == ready_before:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("broker did not start: " + self.logs())
            time.sleep(0.02)
        for p in [self.port] + self.ports + getattr(self, "extra_ports", []):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError("broker did not start: " + self.logs())
                    time.sleep(0.05)

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


@pytest.fixture
def broker():
    b = Broker(shards=1)
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


@pytest.fixture
def broker2():
    """Two shards, with one extra listener pinned to each shard (ports[0], ports[1])."""
    b = Broker(shards=2, pinned=True)
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


# Every Client made by a test, stopped when the test ends (`_stop_clients`): a paho client left
# running keeps a network thread that reconnects to its (stopped) broker with backoff for the
# rest of the session; a few hundred of them starve later tests' clients of the GIL.
_LIVE_CLIENTS = []


@pytest.fixture(autouse=True)
def _stop_clients():
    yield
    while _LIVE_CLIENTS:
        c = _LIVE_CLIENTS.pop()
        try:
            c.c.loop_stop()
            sock = c.c.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass


class Client:
    """A paho client that records what it receives, with blocking helpers."""

    def __init__(self, port, client_id="", protocol=V311, clean=True, props=None, will=None,
                 keepalive=60, username=None, connect=True, expect_rc=0, password="pw"):
        self.protocol = protocol
        kwargs = {"client_id": client_id, "protocol": protocol}
        if protocol == V311:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        _LIVE_CLIENTS.append(self)
        self.messages = []
        self.lock = threading.Condition()
        self.connack = None
        self.disconnect_rc = None
        self.subacks = {}
        self.pubacks = {}
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_publish = self._on_publish
        if will:
            self.c.will_set(**will)
        if username:
            self.c.username_pw_set(username, password)
        self.port = port
        self.clean = clean
        self.props = props
        self.keepalive = keepalive
        if connect:
            self.connect(expect_rc)

    def connect(self, expect_rc=0):
        kw = {"keepalive": self.keepalive}
        if self.protocol == V5:
            kw["clean_start"] = self.clean
            if self.props is not None:
                kw["properties"] = self.props
        self.connack = None
        self.c.connect("127.0.0.1", self.port, **kw)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, what="CONNACK")
        rc = self.connack[1]
        assert int(rc.value if hasattr(rc, "value") else rc) == expect_rc, f"CONNACK {rc}"
        return self

    def _on_connect(self, c, u, flags, rc, props):
        with self.lock:
            self.connack = (flags.session_present, rc, props)
            self.lock.notify_all()

    def _on_disconnect(self, c, u, flags, rc, props):
        with self.lock:
            self.disconnect_rc = rc
            self.lock.notify_all()

    def _on_message(self, c, u, m):
        with self.lock:
            self.messages.append(m)
            self.lock.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props):
        with self.lock:
            self.subacks[mid] = rcs
            self.lock.notify_all()

    def _on_publish(self, c, u, mid, rc, props):
        with self.lock:
            self.pubacks[mid] = rc
            self.lock.notify_all()

    def wait(self, cond, timeout=5, what="condition"):
        with self.lock:
            ok = self.lock.wait_for(cond, timeout)
        assert ok, f"timed out waiting for {what}"

    def subscribe(self, topic, qos=0, **kw):
        rc, mid = self.c.subscribe(topic, qos, **kw)
        assert rc == 0
        self.wait(lambda: mid in self.subacks, what="SUBACK")
        return self.subacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, props=None, wait=True):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos > 0 and wait:
            self.wait(lambda: info.mid in self.pubacks, what="PUBACK/PUBCOMP")
            return self.pubacks[info.mid]
        return info

    def expect(self, n, timeout=5):
        self.wait(lambda: len(self.messages) >= n, timeout, what=f"{n} messages (got {len(self.messages)})")
        return self.messages[:n]

    def quiet(self, seconds=0.5):
        n = len(self.messages)
        time.sleep(seconds)
        return self.messages[n:]

    def disconnect(self, props=None, reasoncode=None):
        if reasoncode is not None:
            self.c.disconnect(reasoncode=reasoncode, properties=props)
        else:
            self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drops the TCP connection without DISCONNECT (as a crashed client would)."""
        self.c.loop_stop()
        self.c.socket().close()


def persistent(port, client_id, expiry=600, protocol=None):
    """A client with a persistent session (5.0 Session Expiry Interval `expiry` seconds, or
    3.1.1 clean session off when `protocol` is V311)."""
    protocol = protocol or mqtt.MQTTv5
    props = connect_props(SessionExpiryInterval=expiry) if protocol == mqtt.MQTTv5 else None
    return Client(port, client_id, protocol=protocol, clean=False, props=props)


def v5props(kind, **values):
    p = Properties(kind)
    for k, v in values.items():
        setattr(p, k, v)
    return p


def connect_props(**v):
    return v5props(PacketTypes.CONNECT, **v)


def publish_props(**v):
    return v5props(PacketTypes.PUBLISH, **v)


def sub_props(**v):
    return v5props(PacketTypes.SUBSCRIBE, **v)


# ---- raw-socket helpers for byte-exact checks ----

def enc_len(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    return len(b).to_bytes(2, "big") + b


def raw_connect(level=4, client_id=b"raw", clean=True, keepalive=60, props=b""):
    flags = 0x02 if clean else 0
    body = s16(b"MQTT") + bytes([level, flags]) + keepalive.to_bytes(2, "big")
    if level == 5:
        body += enc_len(len(props)) + props
    body += s16(client_id)
    return b"\x10" + enc_len(len(body)) + body


class Raw:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, b):
        self.s.sendall(b)

    def read_packet(self, timeout=5):
        """Returns (first_byte, body) or None on EOF."""
        self.s.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                i, n, mult = 1, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        if len(self.buf) >= i + n:
                            pkt = (self.buf[0], self.buf[i:i + n])
                            self.buf = self.buf[i + n:]
                            return pkt
                        break
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def closed(self, timeout=5):
        """True if the broker closes the connection (EOF or reset) within `timeout`."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()
