"""Deleting an org removes everything it owns (issue 15.1): persistent sessions (3.1.1 and 5.0)
with queued QoS 1/2 messages, retained messages and live connections, on every shard, in
memory and on disk. An org created later with the same id finds nothing: at once, after a
restart, and after a kill -9 right after the deletion. The new org's own state survives."""
import time

import pytest

from conftest import V5, V311, Broker, Client, admin_api, connect_props, free_port

OPERATOR = "operator-key-for-org-delete-0001"
PERMIT = {"version": "2.0", "default_action": "allow", "rules": []}
# Client ids whose sessions land on both shards of a 2-shard broker.
SUBS = [(f"sub-{i}", V5 if i % 2 else V311) for i in range(6)]


class OBroker(Broker):
    def __init__(self, shards):
        self.admin_port = free_port()
        self.extra_ports = [self.admin_port]
        extra = f'[admin]\nbind = "127.0.0.1:{self.admin_port}"\noperator_key_env = "OPK"\n'
        super().__init__(shards=shards, extra=extra, env={"OPK": OPERATOR})

    def api(self, method, path, key=OPERATOR, body=None):
        return admin_api(self.admin_port, method, path, key, body)

    def make_org(self, org="beta"):
        """Creates `org` with a permit-all policy and user `u`; returns its API key."""
        st, o = self.api("POST", "/v2/orgs", body={"id": org})
        assert st == 201, o
        key = o["api_key"]
        assert self.api("PUT", "/v2/acl", key=key, body=PERMIT)[0] == 200
        assert self.api("POST", "/v2/users", key=key, body={"name": "u", "password": "u-pw"})[0] == 201
        return key

    def client(self, cid, proto=V5, persistent_session=False, **kw):
        props = None
        if persistent_session and proto == V5:
            props = connect_props(SessionExpiryInterval=3600)
        return Client(self.port, cid, proto, clean=not persistent_session, props=props,
                      username="u@beta", password="u-pw", **kw)


@pytest.fixture(params=[1, 2], ids=["1shard", "2shards"])
def ob(request):
    b = OBroker(request.param)
    yield b
    b.stop()


def fill_old_org(ob):
    """Persistent subscribers with queued messages, a retained message, a live client."""
    ob.make_org()
    for cid, proto in SUBS:
        c = ob.client(cid, proto, persistent_session=True)
        c.subscribe("t/#", qos=2)
        c.disconnect()
    pub = ob.client("pub")
    for i in range(3):
        pub.publish(f"t/{i}", f"old-{i}", qos=1 + i % 2)
    pub.publish("r/1", "old-retained", qos=1, retain=True)
    pub.disconnect()
    live = ob.client("live", will={"topic": "will/live", "payload": "old-will", "qos": 1})
    return live


def assert_nothing_left(ob):
    """The org `beta` now in place sees none of the old state."""
    watcher = ob.client("watcher")
    assert watcher.subscribe("#", qos=1)
    for cid, proto in SUBS:
        c = ob.client(cid, proto, persistent_session=True)
        assert not c.connack[0], f"{cid}: the deleted org's session was resumed"
        assert c.quiet(0.3) == [], f"{cid}: got the deleted org's queued messages"
        c.disconnect()
        ob.client(cid, proto).disconnect()  # a clean start: the probe leaves no session behind
    got = watcher.quiet(0.5)
    assert [m.payload for m in got] == [], "the deleted org's retained message or will was delivered"
    watcher.disconnect()


def test_deleted_org_leaves_nothing_to_its_successor(ob):
    live = fill_old_org(ob)
    assert ob.api("DELETE", "/v2/orgs/beta")[0] == 204
    live.wait(lambda: live.disconnect_rc is not None, what="the live client closed")
    assert ob.api("DELETE", "/v2/orgs/beta")[0] == 404
    ob.make_org()
    assert_nothing_left(ob)
    # The successor's own state is kept across a restart; the old one is still gone.
    c = ob.client("new-sub", persistent_session=True)
    c.subscribe("n/#", qos=1)
    c.disconnect()
    ob.client("p2").publish("n/1", "new", qos=1)
    assert ob.stop() == 0
    ob.start()
    assert_nothing_left(ob)
    c = ob.client("new-sub", persistent_session=True)
    assert c.connack[0], "the new org's session was lost"
    assert [m.payload for m in c.expect(1)] == [b"new"]
    c.disconnect()


def test_deletion_is_on_disk_before_the_answer(ob):
    fill_old_org(ob)
    assert ob.api("DELETE", "/v2/orgs/beta")[0] == 204
    ob.proc.kill()  # kill -9 right after the answer
    ob.proc.wait()
    ob.start()
    ob.make_org()
    assert_nothing_left(ob)


def test_org_id_is_usable_only_after_deletion():
    b = OBroker(1)
    try:
        assert b.api("DELETE", "/v2/orgs/nope")[0] == 404
        b.make_org()
        st, body = b.api("DELETE", "/v2/orgs/beta")
        assert st == 204, body
        time.sleep(0.1)
        st, o = b.api("POST", "/v2/orgs", body={"id": "beta"})
        assert st == 201, o
    finally:
        b.stop()


def test_persistent_fixture_sanity(ob):
    # The helper used above really makes persistent sessions (so the test can fail).
    ob.make_org()
    c = ob.client("probe", V311, persistent_session=True)
    c.subscribe("x/#", qos=1)
    c.disconnect()
    ob.client("p").publish("x/1", "kept", qos=1)
    c = ob.client("probe", V311, persistent_session=True)
    assert c.connack[0]
    assert [m.payload for m in c.expect(1)] == [b"kept"]
