"""Stored messages follow the rights of whoever holds the session (issues 15.2 and 14.2).

- A takeover inside an org is allowed (as in MQTT), but a session taken over by another
  identity delivers only what that identity may read: mallory resuming alice's client id gets
  none of alice's queued or in-flight messages.
- Messages queued before a policy change that stops their reader are not delivered after it,
  also across a restart.
- Control cases: the same identity gets everything back (nothing is dropped needlessly).
- Assigned client ids are unguessable."""
import re
import time

import pytest

from conftest import V5, V311, Broker, Client, Raw, admin_api, connect_props, enc_len, free_port, s16

OPERATOR = "operator-key-for-rights-tests-01"
BOTH = pytest.mark.parametrize("proto", [V311, V5], ids=["v311", "v5"])
# Everyone publishes anywhere; each user reads only their own subtree and reports/.
POLICY = {"version": "2.0", "default_action": "deny", "rules": [
    {"topic": "#", "action": "publish", "effect": "allow"},
    {"topic": "{username}/#", "action": "subscribe", "effect": "allow"},
    {"topic": "reports/#", "action": "subscribe", "effect": "allow"},
]}


class RBroker(Broker):
    def __init__(self, shards):
        self.admin_port = free_port()
        self.extra_ports = [self.admin_port]
        extra = f'[admin]\nbind = "127.0.0.1:{self.admin_port}"\noperator_key_env = "OPK"\n'
        super().__init__(shards=shards, extra=extra, env={"OPK": OPERATOR})
        st, o = self.api("POST", "/v2/orgs", key=OPERATOR, body={"id": "acme"})
        assert st == 201, o
        self.key = o["api_key"]
        self.set_policy(POLICY)
        for name in ["alice", "mallory", "pub"]:
            assert self.api("POST", "/v2/users", body={"name": name, "password": name + "-pw"})[0] == 201

    def api(self, method, path, key=None, body=None):
        return admin_api(self.admin_port, method, path, key or self.key, body)

    def set_policy(self, doc):
        assert self.api("PUT", "/v2/acl", body=doc)[0] == 200
        time.sleep(0.3)  # the policy reaches the shards

    def session(self, user, cid, proto, clean=False):
        props = connect_props(SessionExpiryInterval=3600) if proto == V5 and not clean else None
        return Client(self.port, cid, proto, clean=clean, props=props, username=f"{user}@acme",
                      password=f"{user}-pw")

    def publish(self, topics):
        p = self.session("pub", f"pub-{time.time_ns()}", V5, clean=True)
        for t in topics:
            p.publish(t, t, qos=1)
        p.disconnect()


@pytest.fixture(params=[1, 2], ids=["1shard", "2shards"])
def rb(request):
    b = RBroker(request.param)
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


def payloads(msgs):
    return sorted(m.payload.decode() for m in msgs)


@BOTH
def test_takeover_by_another_identity_gets_no_queued_messages(rb, proto):
    a = rb.session("alice", "alice-dev", proto)
    a.subscribe("alice/#", qos=1)
    a.disconnect()
    rb.publish(["alice/1", "alice/2"])
    m = rb.session("mallory", "alice-dev", proto)
    assert m.connack[0], "the takeover resumes the session (allowed inside an org)"
    assert m.quiet(0.7) == [], "mallory received alice's queued messages"
    m.disconnect()
    ev = rb.api("GET", "/v2/audit?type=acl_denied&limit=100")[1]["events"]
    assert any(e["detail"].get("action") == "deliver" and e["detail"].get("dropped") == 2 for e in ev), ev


@BOTH
def test_same_identity_gets_its_queued_messages(rb, proto):
    a = rb.session("alice", "alice-dev", proto)
    a.subscribe("alice/#", qos=1)
    a.disconnect()
    rb.publish(["alice/1", "alice/2"])
    a = rb.session("alice", "alice-dev", proto)
    assert payloads(a.expect(2)) == ["alice/1", "alice/2"]
    a.disconnect()


def raw_subscriber(port, cid, user, level):
    """A byte-level persistent subscriber that never acknowledges (its deliveries stay in
    flight)."""
    r = Raw(port)
    props = b"\x11\x00\x00\x0e\x10" if level == 5 else b""  # Session Expiry 3600 s
    body = s16(b"MQTT") + bytes([level, 0xC0]) + (60).to_bytes(2, "big")
    if level == 5:
        body += enc_len(len(props)) + props
    body += s16(cid.encode()) + s16(f"{user}@acme".encode()) + s16(f"{user}-pw".encode())
    r.send(b"\x10" + enc_len(len(body)) + body)
    assert r.read_packet()[0] >> 4 == 2
    return r


def subscribe_raw(r, level, topic):
    body = (1).to_bytes(2, "big") + (b"\x00" if level == 5 else b"") + s16(topic.encode()) + b"\x01"
    r.send(b"\x82" + enc_len(len(body)) + body)
    assert r.read_packet()[0] >> 4 == 9


@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
def test_takeover_by_another_identity_gets_no_inflight_messages(rb, level):
    r = raw_subscriber(rb.port, "alice-raw", "alice", level)
    subscribe_raw(r, level, "alice/#")
    rb.publish(["alice/secret"])
    first, _ = r.read_packet()
    assert first >> 4 == 3, "delivered (and left unacknowledged)"
    r.s.close()
    time.sleep(0.3)
    m = rb.session("mallory", "alice-raw", V5 if level == 5 else V311)
    assert m.connack[0]
    assert m.quiet(0.7) == [], "mallory received alice's in-flight message"
    m.disconnect()
    # Control: alice resuming her own session gets the in-flight message again (DUP).
    r = raw_subscriber(rb.port, "alice-raw2", "alice", level)
    subscribe_raw(r, level, "alice/#")
    rb.publish(["alice/again"])
    assert r.read_packet()[0] >> 4 == 3
    r.s.close()
    time.sleep(0.3)
    a = rb.session("alice", "alice-raw2", V5 if level == 5 else V311)
    assert payloads(a.expect(1)) == ["alice/again"]
    a.disconnect()


@BOTH
def test_messages_queued_before_a_policy_change_are_not_delivered_after_it(rb, proto):
    a = rb.session("alice", "alice-rep", proto)
    a.subscribe("reports/#", qos=1)
    a.disconnect()
    rb.publish(["reports/a", "reports/b", "reports/b/deep"])
    doc = dict(POLICY, rules=POLICY["rules"] + [
        {"topic": "reports/b/#", "action": "subscribe", "effect": "deny"}])
    rb.set_policy(doc)
    a = rb.session("alice", "alice-rep", proto)
    assert payloads(a.expect(1)) == ["reports/a"]
    assert a.quiet(0.5) == []
    a.disconnect()


def test_policy_change_applies_to_what_was_stored_before_a_restart(rb):
    a = rb.session("alice", "alice-rs", V5)
    a.subscribe("reports/#", qos=1)
    a.disconnect()
    rb.publish(["reports/a", "reports/b"])
    assert rb.stop() == 0
    rb.start()
    doc = dict(POLICY, rules=POLICY["rules"] + [
        {"topic": "reports/b", "action": "subscribe", "effect": "deny"}])
    rb.set_policy(doc)
    a = rb.session("alice", "alice-rs", V5)
    assert payloads(a.expect(1)) == ["reports/a"]
    assert a.quiet(0.5) == []
    a.disconnect()


def test_assigned_client_ids_are_unguessable(rb):
    ids = []
    for _ in range(3):
        c = Client(rb.port, "", V5, username="alice@acme", password="alice-pw")
        ids.append(c.connack[2].AssignedClientIdentifier)
        c.disconnect()
    for i in ids:
        assert re.fullmatch(r"auto-[a-z2-7]{26}", i), i
    assert len(set(ids)) == 3
