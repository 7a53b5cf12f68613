"""Connected persistent subscribers across kill -9 (issue 8): what is in flight to a subscriber
that is online when the broker dies (QoS 1 unacknowledged, QoS 2 waiting for PUBREC or
PUBCOMP) and what is queued behind its receive window is stored, and after a restart it is
resent with the original packet ids [MQTT-4.4.0-1] (PUBREL for a released QoS 2 message).
Sessions that move between shards (a takeover) survive a crash at any point, and a session that
ended is not brought back by the copy its old shard held. A byte-level subscriber (it must not
acknowledge), paho-mqtt publishers."""
import random
import time

from conftest import Broker, Client, Raw, V5, enc_len, persistent, raw_connect, s16


def killed_and_restarted(b):
    time.sleep(0.3)  # past any group commit: everything acknowledged so far is on disk
    b.proc.kill()  # SIGKILL: no shutdown, no flush
    b.proc.wait()
    b.start()


def raw_session(port, cid, level=5, receive_max=None, clean=False, expiry=3600):
    """A raw connection resuming (or creating) a persistent session; returns (conn, present)."""
    props = b""
    if level == 5:
        props = b"\x11" + expiry.to_bytes(4, "big")  # Session Expiry Interval
        if receive_max:
            props += b"\x21" + receive_max.to_bytes(2, "big")
    r = Raw(port)
    r.send(raw_connect(level, cid, clean=clean, props=props))
    t, body = r.read_packet()
    assert t == 0x20 and body[1] == 0, (t, body)
    return r, body[0] & 1 == 1


def subscribe(r, topic, qos, level=5):
    body = b"\x00\x01" + (b"\x00" if level == 5 else b"") + s16(topic) + bytes([qos])
    r.send(b"\x82" + enc_len(len(body)) + body)
    t, body = r.read_packet()
    assert t == 0x90 and body[-1] == qos, (t, body)


def read_publish(r, level=5, timeout=5):
    """The next packet, which must be a PUBLISH: (dup, qos, packet id, payload)."""
    return parse_publish(r.read_packet(timeout), level)


def parse_publish(p, level=5):
    assert p is not None, "connection closed"
    t, body = p
    assert t >> 4 == 3, f"expected PUBLISH, got {t:#x} {body!r}"
    qos = (t >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    i = 2 + n
    pid = int.from_bytes(body[i:i + 2], "big") if qos else None
    i += 2 if qos else 0
    if level == 5:
        plen, shift = 0, 0
        while True:
            b = body[i]
            i += 1
            plen |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        i += plen
    return bool(t & 0x08), qos, pid, body[i:].decode()


def ack(r, kind, pid, level=5):
    """PUBACK (0x40), PUBREC (0x50), PUBCOMP (0x70) or PUBREL (0x62) for `pid`."""
    body = pid.to_bytes(2, "big") + (b"\x00" if level == 5 else b"")
    r.send(bytes([kind, len(body)]) + body)


def quiet(r, seconds=0.6):
    try:
        p = r.read_packet(seconds)
    except OSError:
        return True
    return p is None


def publish_all(port, topic, payloads, qos):
    p = Client(port, "", protocol=V5)
    for m in payloads:
        p.publish(topic, m, qos=qos)  # waits for PUBACK / PUBCOMP
    p.disconnect()


def test_unacknowledged_qos1_is_resent_with_its_packet_ids_and_the_queue_follows():
    b = Broker(shards=1)
    try:
        r, _ = raw_session(b.port, b"inf-1", receive_max=4)
        subscribe(r, b"inf/1", 1)
        publish_all(b.port, "inf/1", [f"m{i}" for i in range(10)], qos=1)
        first = [read_publish(r) for _ in range(4)]  # the receive window: 4 in flight
        assert [p[3] for p in first] == ["m0", "m1", "m2", "m3"] and not any(p[0] for p in first)
        ack(r, 0x40, first[0][2])  # m0 done; m4 goes in flight
        m4 = read_publish(r)
        assert m4[3] == "m4"
        assert quiet(r)
        killed_and_restarted(b)
        r, present = raw_session(b.port, b"inf-1", receive_max=4)
        assert present
        again = [read_publish(r) for _ in range(4)]
        # m1..m4 again, flagged DUP, under the packet ids they had; m0 (acknowledged) is gone.
        assert again == [(True, 1, p[2], p[3]) for p in first[1:] + [m4]], again
        for p in again:
            ack(r, 0x40, p[2])
        rest = []
        for _ in range(5):
            p = read_publish(r)
            assert not p[0]
            rest.append(p[3])
            ack(r, 0x40, p[2])
        assert rest == ["m5", "m6", "m7", "m8", "m9"]
        assert quiet(r)
        r.close()
        # Everything was acknowledged: after another crash nothing comes back.
        killed_and_restarted(b)
        r, present = raw_session(b.port, b"inf-1", receive_max=4)
        assert present and quiet(r)
        r.close()
    finally:
        b.stop()


def test_qos1_in_flight_to_a_311_subscriber_survives_kill_9():
    b = Broker(shards=2)
    try:
        r, _ = raw_session(b.port, b"inf-311", level=4)
        subscribe(r, b"inf/311", 1, level=4)
        publish_all(b.port, "inf/311", ["a", "b", "c"], qos=1)
        got = [read_publish(r, level=4) for _ in range(3)]
        ack(r, 0x40, got[0][2], level=4)
        killed_and_restarted(b)
        r, present = raw_session(b.port, b"inf-311", level=4)
        assert present
        again = [read_publish(r, level=4) for _ in range(2)]
        assert again == [(True, 1, p[2], p[3]) for p in got[1:]], again
        r.close()
    finally:
        b.stop()


def test_qos2_resends_pubrel_once_released_and_the_publish_before():
    b = Broker(shards=1)
    try:
        r, _ = raw_session(b.port, b"inf-2")
        subscribe(r, b"inf/2", 2)
        publish_all(b.port, "inf/2", ["x", "y"], qos=2)
        x = read_publish(r)
        ack(r, 0x50, x[2])  # PUBREC x
        pkts = [r.read_packet(), r.read_packet()]  # PUBREL x and PUBLISH y, in either order
        rel = [p for p in pkts if p[0] == 0x62]
        assert len(rel) == 1 and int.from_bytes(rel[0][1][:2], "big") == x[2], pkts
        y = parse_publish([p for p in pkts if p[0] != 0x62][0])
        assert y[3] == "y"
        killed_and_restarted(b)
        r, present = raw_session(b.port, b"inf-2")
        assert present
        # x was released (PUBREC came): only its PUBREL is resent, never the message again.
        t, body = r.read_packet()
        assert t == 0x62 and int.from_bytes(body[:2], "big") == x[2], (t, body)
        # y waited for its PUBREC: resent as a duplicate under its packet id.
        assert read_publish(r) == (True, 2, y[2], "y")
        ack(r, 0x70, x[2])  # PUBCOMP x
        ack(r, 0x50, y[2])  # PUBREC y
        t, body = r.read_packet()
        assert t == 0x62 and int.from_bytes(body[:2], "big") == y[2]
        ack(r, 0x70, y[2])
        assert quiet(r)
        r.close()
        killed_and_restarted(b)
        r, present = raw_session(b.port, b"inf-2")
        assert present and quiet(r), "completed QoS 2 messages stay completed"
        r.close()
    finally:
        b.stop()


def test_a_session_moved_to_another_shard_is_kept_and_its_old_copy_forgotten():
    b = Broker(shards=2, pinned=True)
    try:
        # On shard 0: two messages in flight, unacknowledged.
        r, _ = raw_session(b.ports[0], b"mover", receive_max=2)
        subscribe(r, b"mv/t", 1)
        publish_all(b.port, "mv/t", ["a", "b", "c"], qos=1)
        got = [read_publish(r) for _ in range(2)]
        r.close()
        # Resumed on shard 1: the session moves with what it holds.
        r, present = raw_session(b.ports[1], b"mover", receive_max=2)
        assert present
        again = [read_publish(r) for _ in range(2)]
        assert [p[2:] for p in again] == [p[2:] for p in got]
        killed_and_restarted(b)
        # The copy on shard 1 is the live one: same messages, same ids, then c.
        r, present = raw_session(b.ports[0], b"mover", receive_max=2)
        assert present
        again = [read_publish(r) for _ in range(2)]
        assert [p[2:] for p in again] == [p[2:] for p in got], again
        for p in again:
            ack(r, 0x40, p[2])
        c = read_publish(r)
        assert c[3] == "c"
        ack(r, 0x40, c[2])
        r.close()
        # It moves once more (to shard 1) and then ends there (clean start, expiry 0).
        r, present = raw_session(b.ports[1], b"mover")
        assert present and quiet(r)
        r.close()
        r, _ = raw_session(b.ports[1], b"mover", clean=True, expiry=0)
        r.send(b"\xe0\x00")  # DISCONNECT
        r.close()
        killed_and_restarted(b)
        # Neither shard brings the ended session back.
        r, present = raw_session(b.ports[0], b"mover")
        assert not present
        r.close()
    finally:
        b.stop()


def test_takeovers_across_shards_interrupted_by_kill_9_never_lose_the_session():
    b = Broker(shards=2, pinned=True)
    rng = random.Random(11)
    try:
        s = persistent(b.ports[0], "hopper", expiry=3600)
        s.subscribe("hop/t", qos=1)
        s.disconnect()
        for i in range(8):
            publish_all(b.port, "hop/t", [f"h{i}"], qos=1)
            port = b.ports[(i + 1) % 2]
            r = Raw(port)
            r.send(raw_connect(5, b"hopper", clean=False, props=b"\x11" + (3600).to_bytes(4, "big")))
            time.sleep(rng.uniform(0, 0.02))  # somewhere in the move between shards
            b.proc.kill()
            b.proc.wait()
            r.close()
            b.start()
            s = persistent(b.ports[i % 2], "hopper", expiry=3600)
            assert s.connack[0] == 1, f"round {i}: session lost"
            got = [m.payload.decode() for m in s.expect(1)]
            assert got == [f"h{i}"], (i, got)
            s.quiet(0.3)
            assert [m.payload.decode() for m in s.messages] == [f"h{i}"], (i, s.messages)
            s.disconnect()
    finally:
        b.stop()
