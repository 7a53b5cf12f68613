"""shards = 2: publishers and subscribers on different shards, cross-shard takeover,
shared groups spanning shards, retained messages replicated across shards."""
import time

from conftest import V5, V311, Client, connect_props


def test_cross_shard_pubsub_all_qos(broker2):
    p0, p1 = broker2.ports
    sub = Client(p1, "sub", V5)
    sub.subscribe("x/#", 2)
    pub = Client(p0, "pub", V5)
    for qos in (0, 1, 2):
        for i in range(10):
            pub.publish(f"x/{qos}", f"{qos}-{i}", qos=qos)
    got = [m.payload.decode() for m in sub.expect(30)]
    assert got == [f"{q}-{i}" for q in (0, 1, 2) for i in range(10)], "in order per publisher"
    assert sub.quiet(0.3) == []


def test_subscribers_on_both_shards_get_one_copy_each(broker2):
    p0, p1 = broker2.ports
    a = Client(p0, "a", V311)
    b = Client(p1, "b", V311)
    a.subscribe("f/#", 1)
    a.subscribe("f/+", 1)  # overlapping: still one delivery
    b.subscribe("f/+", 1)
    pub = Client(p1, "pub", V311)
    for i in range(50):
        pub.publish("f/t", str(i), qos=1)
    assert [int(m.payload) for m in a.expect(50)] == list(range(50))
    assert [int(m.payload) for m in b.expect(50)] == list(range(50))
    time.sleep(0.3)
    assert len(a.messages) == 50 and len(b.messages) == 50


def test_session_takeover_across_shards(broker2):
    p0, p1 = broker2.ports
    props = connect_props(SessionExpiryInterval=120)
    a = Client(p0, "roamer", V5, props=props)
    a.subscribe("roam/#", 1)
    b = Client(p1, "roamer", V5, clean=False, props=connect_props(SessionExpiryInterval=120))
    assert b.connack[0] is True, "session moved to the other shard"
    a.wait(lambda: a.disconnect_rc is not None, what="takeover DISCONNECT")
    assert int(a.disconnect_rc.value) == 0x8E
    pub = Client(p0, "pub", V5)
    pub.publish("roam/1", "follows", qos=1)
    assert b.expect(1)[0].payload == b"follows"
    # And back, with queued messages while offline.
    b.disconnect()
    pub.publish("roam/2", "queued", qos=1)
    c = Client(p0, "roamer", V5, clean=False, props=connect_props(SessionExpiryInterval=120))
    assert c.connack[0] is True
    # paho acknowledges after its on_message callback returns, so the PUBACK for "follows" may
    # queue behind our DISCONNECT: then it is redelivered first, correctly marked DUP.
    c.wait(lambda: any(m.payload == b"queued" for m in c.messages), what="the queued message")
    for m in c.messages:
        assert m.payload == b"queued" or (m.payload == b"follows" and m.dup), (m.payload, m.dup)


def test_takeover_across_shards_v311_repeated(broker2):
    """Bounces one client id between shards; every hop keeps the session."""
    ports = broker2.ports
    c = Client(ports[0], "bouncer", V311, clean=False)
    c.subscribe("b/#", 1)
    pub = Client(ports[0], "pub", V311)
    for i in range(1, 9):
        c.disconnect()
        pub.publish("b/x", str(i), qos=1)
        c = Client(ports[i % 2], "bouncer", V311, clean=False)
        assert c.connack[0] is True
        assert c.expect(1)[0].payload == str(i).encode()


def test_concurrent_takeover_storm(broker2):
    """Many connects with one id on both shards at once: the broker stays consistent, the
    last one standing has the session, and it still works."""
    ports = broker2.ports
    clients = []
    for i in range(10):
        clients.append(Client(ports[i % 2], "storm", V311, clean=False))
    last = clients[-1]
    time.sleep(0.5)
    last.subscribe("storm/#", 1)
    Client(ports[0], "pub", V311).publish("storm/x", "ok", qos=1)
    assert last.expect(1)[0].payload == b"ok"


def test_shared_group_spans_shards(broker2):
    p0, p1 = broker2.ports
    a = Client(p0, "a", V5)
    b = Client(p1, "b", V5)
    a.subscribe("$share/grp/s/#", 1)
    b.subscribe("$share/grp/s/#", 1)
    pub = Client(p0, "pub", V5)
    for i in range(40):
        pub.publish("s/x", str(i), qos=1)
    time.sleep(0.8)
    got = sorted(int(m.payload) for m in a.messages + b.messages)
    assert got == list(range(40))
    assert a.messages and b.messages


def test_retained_replicated_across_shards(broker2):
    p0, p1 = broker2.ports
    Client(p0, "pub", V311).publish("ret/x", "everywhere", qos=1, retain=True)
    time.sleep(0.1)
    s = Client(p1, "s", V311)
    s.subscribe("ret/#", 0)
    assert s.expect(1)[0].payload == b"everywhere"


def test_will_crosses_shards(broker2):
    p0, p1 = broker2.ports
    w = Client(p1, "w", V311)
    w.subscribe("lw/#", 1)
    a = Client(p0, "a", V311, will={"topic": "lw/a", "payload": "gone", "qos": 1})
    a.kill()
    assert w.expect(1)[0].payload == b"gone"


def test_backpressure_crosses_shards_lossless_qos0(broker2):
    """A fast publisher on shard 0, a slower (paho) subscriber on shard 1: the publisher is
    slowed down through the mesh instead of QoS 0 messages being dropped."""
    from conftest import Raw, enc_len, raw_connect, s16
    p0, p1 = broker2.ports
    sub = Client(p1, "slow-sub", V311)
    sub.subscribe("bp/x", 0)
    r = Raw(p0)
    r.send(raw_connect(level=4, client_id=b"blaster"))
    assert r.read_packet()[0] == 0x20
    n = 100_000
    body = s16(b"bp/x") + b"y" * 100
    one = b"\x30" + enc_len(len(body)) + body
    batch = one * 1000
    for _ in range(n // 1000):
        r.send(batch)
    r.send(b"\xc0\x00")  # PINGREQ: answered once everything before it was read
    assert r.read_packet(timeout=60) == (0xD0, b"")
    sub.wait(lambda: len(sub.messages) >= n, timeout=60, what=f"{n} messages (got {len(sub.messages)})")
    assert len(sub.messages) == n
