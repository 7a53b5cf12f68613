"""Bad input gets a clear answer and loses nothing: each case is answered per the spec, the
broker stays alive and a bystander client keeps flowing."""
import signal
import socket
import time

import pytest

from conftest import V5, V311, Client, Raw, connect_props, enc_len, raw_connect, s16


@pytest.fixture
def bystander(broker):
    sub = Client(broker.port, "bystander-sub", V311)
    sub.subscribe("by/#", 1)
    pub = Client(broker.port, "bystander-pub", V311)

    def check():
        n = len(sub.messages)
        pub.publish("by/x", "still here", qos=1)
        sub.expect(n + 1)
        assert broker.alive()
    check()
    return check


MALFORMED = [
    ("publish before connect", b"\x30\x03\x00\x01a"),
    ("reserved connect flag", b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00"),
    ("bad protocol name", b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00"),
    ("will qos 3", b"\x10\x0c\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00"),
    ("truncated connect", b"\x10\x04\x00\x04MQ"),
    ("5-byte remaining length", b"\x10\xff\xff\xff\xff\x01"),
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("reserved type 0", b"\x00\x00"),
]


@pytest.mark.parametrize("name,raw", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_before_connect_closes(broker, bystander, name, raw):
    r = Raw(broker.port)
    r.send(raw)
    assert r.closed(), name
    bystander()


def test_unsupported_protocol_level_gets_connack_1(broker, bystander):
    r = Raw(broker.port)
    r.send(b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00")
    assert r.read_packet() == (0x20, b"\x00\x01")
    assert r.closed()
    bystander()


def connected(broker, level):
    r = Raw(broker.port)
    r.send(raw_connect(level=level, client_id=b"raw-%d" % level))
    first, body = r.read_packet()
    assert first == 0x20 and body[1] == 0
    return r


DEEP_129 = "/".join(["a"] * 129).encode()  # one level over limits::TOPIC_LEVELS_MAX

AFTER_CONNECT = [
    ("publish qos 3", b"\x36\x05\x00\x01a\x00\x01", 0x81),
    ("wildcard in topic", b"\x30\x03\x00\x01#", 0x90),
    ("second connect", raw_connect(level=5), 0x82),
    ("subscribe bad flags", b"\x80\x06\x00\x01\x00\x01a\x00", 0x81),
    ("subscribe without filters", b"\x82\x03\x00\x01\x00", 0x82),
    ("invalid utf-8 topic", b"\x30\x04\x00\x02\xc3\x28", 0x81),
    ("topic alias never set", b"\x30\x06\x00\x00\x03\x23\x00\x07", 0x82),
    ("auth without method", b"\xf0\x00", 0x82),
    ("empty topic without alias", b"\x30\x03\x00\x00\x00", 0x82),
    ("topic name 129 levels deep", b"\x30" + enc_len(2 + 257 + 1) + s16(DEEP_129) + b"\x00", 0x90),
]


@pytest.mark.parametrize("name,raw,reason", AFTER_CONNECT, ids=[a[0] for a in AFTER_CONNECT])
def test_malformed_after_connect_v5_gets_disconnect_reason(broker, bystander, name, raw, reason):
    r = connected(broker, 5)
    r.send(raw)
    pkt = r.read_packet()
    assert pkt is not None and pkt[0] == 0xE0 and pkt[1][0] == reason, (name, pkt)
    assert r.closed()
    bystander()


def test_malformed_after_connect_v311_closes(broker, bystander):
    r = connected(broker, 4)
    r.send(b"\x36\x05\x00\x01a\x00\x01")
    assert r.closed()
    bystander()


def test_declared_256mib_packet_refused_without_buffering(broker, bystander):
    rss0 = broker.rss_kb()
    r = connected(broker, 5)
    r.send(b"\x30\xff\xff\xff\x7f")  # 256 MiB PUBLISH header, no body
    pkt = r.read_packet()
    assert pkt[0] == 0xE0 and pkt[1][0] == 0x95, "Packet Too Large"
    assert r.closed()
    r2 = Raw(broker.port)
    r2.send(b"\x10\xff\xff\xff\x7f")  # as a CONNECT: closed before CONNECT completes
    assert r2.closed()
    assert broker.rss_kb() - rss0 < 20_000, "nothing reserved for the declared size"
    bystander()


def test_connect_one_byte_at_a_time(broker, bystander):
    r = Raw(broker.port)
    r.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in raw_connect(level=5, client_id=b"slow-typer"):
        r.send(bytes([b]))
        time.sleep(0.01)
    first, body = r.read_packet()
    assert first == 0x20 and body[:2] == b"\x00\x00"
    r.send(b"\xc0\x00")
    assert r.read_packet() == (0xD0, b"")
    bystander()


def test_connect_timeout_for_silent_sockets(broker):
    r = Raw(broker.port)
    r.send(b"\x10")  # a start, then nothing: closed after the CONNECT deadline
    assert r.closed(timeout=15)


def test_keep_alive_timeout(broker, bystander):
    r = Raw(broker.port)
    r.send(raw_connect(level=5, client_id=b"ka", keepalive=1))
    assert r.read_packet()[0] == 0x20
    t0 = time.time()
    pkt = r.read_packet(timeout=5)
    assert pkt[0] == 0xE0 and pkt[1][0] == 0x8D, "Keep Alive timeout"
    assert 1.4 <= time.time() - t0 <= 3.5
    bystander()


def test_receive_maximum_window_v5(broker):
    r = Raw(broker.port)
    r.send(raw_connect(level=5, client_id=b"rm", props=b"\x21\x00\x02"))  # Receive Maximum 2
    assert r.read_packet()[0] == 0x20
    r.send(b"\x82" + enc_len(2 + 1 + 2 + 4 + 1) + b"\x00\x01\x00" + s16(b"rm/#") + b"\x01")
    assert r.read_packet()[0] == 0x90
    pub = Client(broker.port, "pub", V5)
    for i in range(5):
        pub.publish("rm/x", str(i), qos=1)
    got = [r.read_packet(timeout=2) for _ in range(2)]
    assert all(p[0] & 0xF0 == 0x30 for p in got)
    r.s.settimeout(0.5)
    try:
        extra = r.s.recv(100)
    except socket.timeout:
        extra = b""
    assert extra == b"", "no third PUBLISH before an ack"
    pid = got[0][1][2 + 4:2 + 4 + 2]
    r.send(b"\x40\x02" + pid)
    third = r.read_packet(timeout=2)
    assert third[0] & 0xF0 == 0x30 and third[1].endswith(b"2")


def test_qos2_duplicate_publish_delivered_once(broker):
    sub = Client(broker.port, "sub", V311)
    sub.subscribe("dup/#", 2)
    r = connected(broker, 4)
    pub = b"\x34" + enc_len(2 + 5 + 2 + 3) + s16(b"dup/x") + b"\x00\x07" + b"one"
    r.send(pub)
    assert r.read_packet() == (0x50, b"\x00\x07")
    r.send(b"\x3c" + pub[1:])  # DUP resend before PUBREL
    assert r.read_packet() == (0x50, b"\x00\x07")
    r.send(b"\x62\x02\x00\x07")
    assert r.read_packet() == (0x70, b"\x00\x07")
    sub.expect(1)
    assert sub.quiet(0.5) == [], "exactly once"


def test_subscriber_that_never_reads(broker, bystander):
    """A subscriber that never reads must not grow broker memory without bound, and others keep
    flowing."""
    r = Raw(broker.port)
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r.send(raw_connect(level=4, client_id=b"sleeper"))
    assert r.read_packet()[0] == 0x20
    r.send(b"\x82" + enc_len(2 + 2 + 6 + 1) + b"\x00\x01" + s16(b"flood/") + b"\x00")
    r.send(b"\x82" + enc_len(2 + 2 + 7 + 1) + b"\x00\x02" + s16(b"flood/#") + b"\x00")
    time.sleep(0.2)
    pub = Client(broker.port, "flooder", V311)
    payload = b"x" * 1000
    rss0 = broker.rss_kb()
    for _ in range(30):
        for _ in range(1000):
            pub.publish("flood/x", payload, qos=0, wait=False)
        pub.publish("flood/x", payload, qos=1)  # paces the publisher
    growth = broker.rss_kb() - rss0
    assert growth < 64_000, f"RSS grew {growth} KiB for 30 MB sent to a sleeper"
    bystander()
    r.close()


def test_sigterm_disconnects_v5_and_exits_zero(broker):
    c = Client(broker.port, "bye", V5)
    t0 = time.time()
    broker.proc.send_signal(signal.SIGTERM)
    c.wait(lambda: c.disconnect_rc is not None, what="DISCONNECT on shutdown")
    assert int(c.disconnect_rc.value) == 0x8B, c.disconnect_rc
    assert broker.proc.wait(timeout=10) == 0
    assert time.time() - t0 < 10


def test_many_connections_and_churn(broker, bystander):
    socks = []
    for i in range(300):
        r = Raw(broker.port)
        r.send(raw_connect(level=4, client_id=b"churn-%d" % i))
        socks.append(r)
    for r in socks:
        assert r.read_packet()[0] == 0x20
    for r in socks[::2]:
        r.close()
    bystander()
    for r in socks[1::2]:
        r.send(b"\xe0\x00")
        assert r.closed()
    bystander()


@pytest.mark.parametrize("level,refused", [(5, 0x8F), (4, 0x80)], ids=["v5", "v311"])
def test_filters_deeper_than_the_limit_are_refused(broker, bystander, level, refused):
    """Issue 14.5: a 65,000-level filter was granted; now SUBACK 0x8F (3.1.1: 0x80), while a
    128-level one is granted; UNSUBSCRIBE of an invalid filter gets 0x8F (5.0)."""
    r = connected(broker, level)
    props = b"\x00" if level == 5 else b""
    for pid, f, want in [(1, "/" * 64_999, refused), (2, "/".join(["a"] * 128), 0x00)]:
        body = pid.to_bytes(2, "big") + props + s16(f.encode()) + b"\x00"
        r.send(b"\x82" + enc_len(len(body)) + body)
        t, b = r.read_packet()
        assert t == 0x90 and b[-1] == want, (f[:10], t, b)
    if level == 5:
        body = (3).to_bytes(2, "big") + b"\x00" + s16(b"#abc")
        r.send(b"\xa2" + enc_len(len(body)) + body)
        t, b = r.read_packet()
        assert t == 0xB0 and b[-1] == 0x8F, (t, b)
    bystander()


def test_a_3_1_1_publish_too_deep_closes(broker, bystander):
    r = connected(broker, 4)
    r.send(b"\x30" + enc_len(2 + len(DEEP_129)) + s16(DEEP_129))
    assert r.closed()
    bystander()


def test_max_keepalive_caps_what_clients_ask_for():
    """Issue 14.10: `max_keepalive` (as Mosquitto's): a 5.0 client asking for more, or for 0,
    gets Server Keep Alive = the cap and is held to it; 3.1.1 is refused with return code 2."""
    from conftest import Broker
    b = Broker(shards=1, extra="max_keepalive = 2")
    try:
        for ka, want in [(60, 2), (0, 2), (1, 1)]:
            r = Raw(b.port)
            r.send(raw_connect(level=5, client_id=b"ka%d" % ka, keepalive=ka))
            t, body = r.read_packet()
            assert t == 0x20 and body[1] == 0, body
            assert b"\x13" + want.to_bytes(2, "big") in body[2:], (ka, body)  # Server Keep Alive
            r.s.close()
        r = Raw(b.port)
        r.send(raw_connect(level=5, client_id=b"idle", keepalive=0))
        assert r.read_packet()[0] == 0x20
        t0 = time.time()
        pkt = r.read_packet(timeout=6)
        assert pkt[0] == 0xE0 and pkt[1][0] == 0x8D, pkt  # reaped at 1.5 x the cap
        assert time.time() - t0 < 5
        for ka in [60, 0]:
            r = Raw(b.port)
            r.send(raw_connect(level=4, client_id=b"old%d" % ka, keepalive=ka))
            assert r.read_packet() == (0x20, b"\x00\x02"), ka
        r = Raw(b.port)
        r.send(raw_connect(level=4, client_id=b"ok311", keepalive=2))
        assert r.read_packet() == (0x20, b"\x00\x00")
    finally:
        assert b.stop() == 0, b.logs()
