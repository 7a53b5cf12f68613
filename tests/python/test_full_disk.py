"""Issue 14.8: a full disk is recovered from. The data directory lives on a small tmpfs; QoS 1
publishes fill it until the store fails and they are refused (PUBACK 0x80 with a reason
string); /healthz and /metrics say so. Once space is freed (the tmpfs grows), the broker
reopens its stores, applies the writes that were not durable, and acknowledges again without
a restart. Every message acknowledged before and after the failure survives a kill -9."""
import os
import re
import subprocess
import time

import pytest

from conftest import Broker, Client, V5, admin_api, connect_props, free_port

OPERATOR = "operator-key-for-full-disk-tests"
ORG_KEY = "org-key-for-full-disk-tests-0001"


def rc_of(rc):
    return int(rc.value if hasattr(rc, "value") else rc)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.decode())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_recovered_from_once_space_is_freed(small_disk):
    admin = free_port()
    extra = (f'[admin]\nbind = "127.0.0.1:{admin}"\noperator_key_env = "OPK"\n'
             '[[org]]\nid = "local"\napi_key_env = "LKEY"\npolicy = "preset:permit-all"\n')

    class B(Broker):
        extra_ports = [admin]

    b = B(shards=2, extra=extra, env={"OPK": OPERATOR, "LKEY": ORG_KEY},
          setup=lambda b: os.symlink(str(small_disk), os.path.join(b.dir, "data")))
    try:
        sub = Client(b.port, "disk-sub", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=3600))
        sub.subscribe("disk/#", qos=1)
        sub.disconnect()
        pub = Client(b.port, "disk-pub", protocol=V5)
        acked, n = set(), 0

        def publish():
            nonlocal n
            n += 1
            rc = rc_of(pub.publish("disk/t", f"{n}:".encode() + os.urandom(8192), qos=1))
            if rc == 0:
                acked.add(n)
            return rc

        for _ in range(2000):
            if publish() != 0:
                break
        assert rc_of(pub.pubacks[max(pub.pubacks)]) == 0x80, "no refusal: " + b.logs()[-2000:]
        assert len(acked) > 10
        status, body = admin_api(admin, "GET", "/healthz")
        assert status == 503 and body["store"] == "failing", (status, body)
        _, metrics = 0, None
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics")
        req.add_header("Authorization", f"Bearer {OPERATOR}")
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        assert re.search(r'coremq_store_healthy\{shard="\d"\} 0', text), text[:2000]
        assert re.search(r"coremq_store_failures_total [1-9]", text), text[:2000]
        assert "acknowledgements that need the store are refused" in b.logs()

        # Space comes back: the broker recovers by itself (retries 1 s, 2 s, 4 s, ...).
        subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
        deadline = time.time() + 40
        while publish() != 0:
            assert time.time() < deadline, "still refused 40 s after space came back: " + b.logs()[-3000:]
            time.sleep(0.5)
        for _ in range(20):
            assert publish() == 0
        assert "store recovered" in b.logs()
        assert admin_api(admin, "GET", "/healthz") == (200, {"status": "ok", "store": "ok"})
        status, page = admin_api(admin, "GET", "/v2/audit?type=admin", key=ORG_KEY)
        actions = [e.get("detail", {}).get("action") for e in page["events"]]
        assert "store_recovered" in actions, page
        pub.disconnect()

        # Nothing acknowledged is lost, before or after the failure, across a kill -9.
        b.proc.kill()
        b.proc.wait()
        b.start()
        sub = Client(b.port, "disk-sub", protocol=V5, clean=False, props=connect_props(SessionExpiryInterval=3600))
        while sub.quiet(1.0):
            pass
        got = {int(m.payload.split(b":")[0]) for m in sub.messages}
        assert acked <= got, f"lost {sorted(acked - got)[:10]} of {len(acked)}"
        sub.disconnect()
    finally:
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()
