"""Durable messaging state (issue 8): persistent sessions, their offline queues and retained
messages survive a restart of the real broker process; paho-mqtt (3.1.1 and 5.0) and
mosquitto_sub -c as independent clients."""
import os
import re
import subprocess
import time

import pytest

from conftest import Broker, Client, V311, V5, connect_props, persistent, publish_props


@pytest.fixture
def db():
    b = Broker(shards=2)
    yield b
    assert b.stop() == 0, b.logs()


def restart(b, shards=None):
    assert b.stop() == 0, b.logs()
    if shards is not None:
        with open(b.config) as f:
            text = f.read()
        with open(b.config, "w") as f:
            f.write(re.sub(r"(?m)^shards = \d+$", f"shards = {shards}", text))
    b.start()


def payloads(msgs):
    return [m.payload.decode() for m in msgs]


@pytest.mark.parametrize("protocol", [V311, V5])
def test_an_offline_sessions_queue_survives_a_restart_in_order(db, protocol):
    props = connect_props(SessionExpiryInterval=600) if protocol == V5 else None
    sub = Client(db.port, "keeper", protocol=protocol, clean=False, props=props)
    sub.subscribe("d/#", qos=1)
    sub.disconnect()
    pub = Client(db.port, "pub", protocol=protocol)
    for i in range(20):
        pub.publish("d/x", f"m{i}", qos=1)
    pub.disconnect()
    restart(db)
    assert "stores loaded" in db.logs() and "sessions=1 queued=20" in db.logs(), db.logs()[-2000:]
    sub = Client(db.port, "keeper", protocol=protocol, clean=False, props=props)
    assert sub.connack[0] == 1, "session present after the restart"
    assert payloads(sub.expect(20)) == [f"m{i}" for i in range(20)]
    # Its subscription came back too: new messages still arrive.
    pub = Client(db.port, "pub2", protocol=protocol)
    pub.publish("d/y", "after", qos=1)
    assert payloads(sub.expect(21))[-1] == "after"
    assert sub.quiet(0.3) == [], "nothing delivered twice"
    sub.disconnect()
    pub.disconnect()


def test_mosquitto_sub_with_a_fixed_client_id_resumes_across_a_restart(db):
    base = ["mosquitto_sub", "-p", str(db.port), "-c", "-i", "msub", "-q", "1", "-t", "s/#", "-v"]
    subprocess.run(base + ["-W", "1"], capture_output=True, timeout=10)  # subscribe, go offline
    for i in range(3):
        subprocess.run(["mosquitto_pub", "-p", str(db.port), "-q", "1", "-t", f"s/{i}", "-m", f"v{i}"],
                       check=True, timeout=10)
    restart(db)
    r = subprocess.run(base + ["-C", "3", "-W", "5"], capture_output=True, text=True, timeout=15)
    assert r.stdout.split("\n")[:3] == ["s/0 v0", "s/1 v1", "s/2 v2"], r.stdout + r.stderr


def test_retained_messages_survive_and_deletes_stay_deleted(db):
    pub = Client(db.port, "rpub", protocol=V5)
    pub.publish("r/kept", "k1", qos=1, retain=True)
    pub.publish("r/kept", "k2", qos=1, retain=True)  # replaces k1
    pub.publish("r/gone", "g", qos=1, retain=True)
    pub.publish("r/gone", b"", qos=1, retain=True)  # deletes it
    pub.publish("r/expiring", "e", qos=1, retain=True, props=publish_props(MessageExpiryInterval=1))
    pub.disconnect()
    restart(db)
    time.sleep(1.2)  # the expiring one's interval passes (downtime counts)
    sub = Client(db.port, "rsub", protocol=V5)
    sub.subscribe("r/#", qos=1)
    got = sub.quiet(0.5) + sub.messages
    assert sorted({(m.topic, m.payload.decode()) for m in got}) == [("r/kept", "k2")]
    # New retained writes after the restart win over what was stored before it.
    pub = Client(db.port, "rpub2")
    pub.publish("r/kept", "k3", qos=1, retain=True)
    restart(db)
    sub = Client(db.port, "rsub2")
    sub.subscribe("r/kept", qos=1)
    assert payloads(sub.expect(1)) == ["k3"]


def test_session_expiry_counts_the_time_the_broker_was_down(db):
    sub = Client(db.port, "short", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=2))
    sub.subscribe("x/#", qos=1)
    sub.disconnect()
    assert db.stop() == 0
    time.sleep(2.5)
    db.start()
    again = Client(db.port, "short", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=2))
    assert again.connack[0] == 0, "expired while the broker was down"
    again.disconnect()


def test_a_session_is_found_after_the_shard_count_changes(db):
    ids = [f"move-{i}" for i in range(8)]  # some land on a different home shard with 3 shards
    for cid in ids:
        c = Client(db.port, cid, clean=False)
        c.subscribe(f"m/{cid}", qos=1)
        c.disconnect()
    pub = Client(db.port, "mpub")
    for cid in ids:
        pub.publish(f"m/{cid}", f"for {cid}", qos=1)
    pub.disconnect()
    restart(db, shards=3)
    for cid in ids:
        c = Client(db.port, cid, clean=False)
        assert c.connack[0] == 1, cid
        assert payloads(c.expect(1)) == [f"for {cid}"]
        c.disconnect()
    restart(db, shards=2)  # and back
    assert "shards=2" in db.logs().rsplit("stores loaded", 1)[1]
    for cid in ids:
        c = Client(db.port, cid, clean=False)
        assert c.connack[0] == 1, cid
        c.disconnect()


def test_a_clean_session_leaves_nothing_stored(db):
    c = Client(db.port, "temp", clean=False)
    c.subscribe("t/#", qos=1)
    c.disconnect()
    Client(db.port, "temp", clean=True).disconnect()  # discards the session
    restart(db)
    assert "sessions=0" in db.logs(), db.logs()[-1500:]


def test_a_full_disk_refuses_new_persistent_writes_with_a_reason_code(tmp_path):
    """The data directory on a small tmpfs: once the store cannot write, QoS 1 publishes that
    need it get PUBACK 0x80 with a reason string (5.0), the broker keeps serving, and nothing
    is acknowledged as stored that was not."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.decode())
    try:
        b = Broker(shards=1, setup=lambda b: os.symlink(str(mnt), os.path.join(b.dir, "data")))
        try:
            sub = Client(b.port, "full-sub", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=600))
            sub.subscribe("full/#", qos=1)
            sub.disconnect()
            pub = Client(b.port, "full-pub", protocol=V5)
            payload = os.urandom(8192)  # incompressible: the journal compresses
            codes = []
            for i in range(2000):
                rc = pub.publish("full/t", payload, qos=1)
                codes.append(int(rc.value if hasattr(rc, "value") else rc))
                if codes[-1] != 0:
                    break
            assert codes[-1] == 0x80, f"no refusal after {len(codes)} publishes: " + b.logs()[-3000:]
            ok = codes.count(0)
            assert "acknowledgements that need the store are refused" in b.logs()
            # The broker still serves: a live QoS 0 exchange works.
            live = Client(b.port, "live", protocol=V5)
            live.subscribe("live/t", qos=0)
            live.publish("live/t", "still here", qos=0)
            assert payloads(live.expect(1)) == ["still here"]
            # Every message acknowledged as stored reaches the subscriber.
            sub = Client(b.port, "full-sub", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=600))
            got = sub.expect(ok, timeout=15)
            assert len(got) >= ok
            for c in (sub, live, pub):
                c.disconnect()
        finally:
            b.proc.kill()
            b.proc.wait()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


RETENTION = """
[[org]]
id = "local"
policy = "preset:permit-all"
[org.retention]
queued_max_age = "2s"
retained_max_age = "2s"
"""


def test_org_retention_drops_queued_and_retained_messages_past_their_age_also_across_a_restart():
    b = Broker(shards=2, extra=RETENTION)
    sub = persistent(b.port, "aged")
    sub.subscribe("q/#", qos=1)
    sub.disconnect()
    pub = Client(b.port, "pub", protocol=V5)
    for i in range(3):
        pub.publish("q/x", f"old{i}", qos=1)
    pub.publish("r/old", "old-retained", qos=1, retain=True)
    time.sleep(2.6)
    pub.publish("q/x", "fresh", qos=1)
    pub.publish("r/fresh", "fresh-retained", qos=1, retain=True)
    sub = persistent(b.port, "aged")
    assert payloads(sub.expect(1)) == ["fresh"]
    assert sub.quiet(0.5) == [], "messages past queued_max_age are not delivered"
    sub.disconnect()
    r = Client(b.port, "rsub", protocol=V5)
    r.subscribe("r/#", qos=1)
    assert payloads(r.expect(1)) == ["fresh-retained"]
    assert r.quiet(0.3) == []
    r.disconnect()
    # Downtime counts: stored while the broker is down, past the age at the restart.
    pub.publish("q/x", "before-restart", qos=1)
    pub.disconnect()
    assert b.stop() == 0, b.logs()
    time.sleep(2.2)
    b.start()
    sub = persistent(b.port, "aged")
    assert sub.connack[0] == 1, "the session itself is kept"
    assert sub.quiet(0.5) == [], "aged while the broker was down"
    r = Client(b.port, "rsub2", protocol=V5)
    r.subscribe("r/#", qos=1)
    assert r.quiet(0.5) == []
    r.disconnect()
    sub.disconnect()
    assert b.stop() == 0, b.logs()
    # And the store no longer holds them (swept, not only hidden).
    b.start()
    assert "retained=0" in b.logs().split("stores loaded")[-1].split("\n")[0], b.logs()[-1500:]
    assert b.stop() == 0, b.logs()


def coremq(*args):
    from conftest import BIN
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)


def test_data_export_and_import_move_everything_to_a_new_data_dir_shard_count_and_key(db):
    import json
    sub = persistent(db.port, "mover", expiry=900)
    sub.subscribe("m/#", qos=2)
    sub.disconnect()
    pub = Client(db.port, "pub", protocol=V5)
    for i in range(10):
        pub.publish("m/x", f"e{i}", qos=1, props=publish_props(UserProperty=[("k", f"v{i}")]))
    pub.publish("r/moved", "kept", qos=1, retain=True)
    pub.disconnect()
    out = os.path.join(db.dir, "export")
    r = coremq("data", "export", out, "--config", db.config)
    assert r.returncode == 1 and "stop it first" in r.stderr, "the stores are locked while it runs"
    assert db.stop() == 0, db.logs()
    r = coremq("data", "export", out, "--config", db.config)
    assert r.returncode == 0, r.stderr
    assert "1 sessions, 10 queued messages, 1 retained messages" in r.stdout, r.stdout
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert (manifest["format"], manifest["version"]) == ("coremq-data", 1)
    assert oct(os.stat(os.path.join(out, "sessions.jsonl")).st_mode & 0o777) == "0o600"
    # A new data_dir, 3 shards, sealed with a new key.
    key = coremq("data", "keygen").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    with open(db.config) as f:
        conf = f.read().replace('data_dir = "data"', 'data_dir = "data2"').replace("shards = 2", "shards = 3")
    conf += '[encryption]\n[[encryption.key]]\nid = "new"\nenv = "COREMQ_TEST_IMPORT_KEY"\n'
    with open(db.config, "w") as f:
        f.write(conf)
    db.env["COREMQ_TEST_IMPORT_KEY"] = key
    os.environ["COREMQ_TEST_IMPORT_KEY"] = key
    try:
        r = coremq("data", "import", out, "--config", db.config)
        assert r.returncode == 0, r.stderr
        assert "1 sessions, 10 queued messages, 1 retained messages" in r.stdout, r.stdout
        r = coremq("data", "import", out, "--config", db.config)
        assert r.returncode == 1 and "already holds data" in r.stderr, "never imported over data"
    finally:
        del os.environ["COREMQ_TEST_IMPORT_KEY"]
    db.start()
    sub = persistent(db.port, "mover", expiry=900)
    assert sub.connack[0] == 1
    got = sub.expect(10)
    assert payloads(got) == [f"e{i}" for i in range(10)]
    assert got[3].properties.UserProperty == [("k", "v3")], "properties survive the move"
    rs = Client(db.port, "rs", protocol=V5)
    rs.subscribe("r/#", qos=1)
    assert payloads(rs.expect(1)) == ["kept"]
    rs.disconnect()
    sub.disconnect()


def test_data_import_refuses_a_newer_or_truncated_export(tmp_path):
    import json
    out = tmp_path / "exp"
    out.mkdir()
    (out / "control.jsonl").write_text("")
    (out / "sessions.jsonl").write_text('{"org":"local"}\n')
    (out / "retained.jsonl").write_text("")
    manifest = {"format": "coremq-data", "version": 2, "exported_unix_ms": 0, "coremq_version": "9",
                "control_rows": 0, "sessions": 2, "queued": 0, "retained": 0}
    (out / "manifest.json").write_text(json.dumps(manifest))
    conf = tmp_path / "c.toml"
    conf.write_text('data_dir = "d"\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:1"\n')
    r = coremq("data", "import", str(out), "--config", str(conf))
    assert r.returncode == 1 and "export format version 2 (this build reads version 1)" in r.stderr, r.stderr
    manifest["version"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = coremq("data", "import", str(out), "--config", str(conf))
    assert r.returncode == 1 and "1 lines, the manifest says 2" in r.stderr, r.stderr
    manifest["sessions"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = coremq("data", "import", str(out), "--config", str(conf))
    assert r.returncode == 1 and "sessions.jsonl:1:" in r.stderr and "missing field" in r.stderr, r.stderr
