"""Encryption at rest (issue 8): stored payloads and credentials are sealed, a restart with the
right key gets everything back, a wrong or missing key stops the start with a clear error, keys
rotate, and deleting an org's own key destroys that org's data only. Real broker process,
paho-mqtt clients, raw bytes of the data directory inspected."""
import os
import re

import pytest

from conftest import Broker, Client, V5, free_port, persistent

SECRET = b"SECRET-PAYLOAD-7f3a9c"
RETAINED = b"SECRET-RETAINED-51bd02"


def key_file(b, name, byte):
    path = os.path.join(b.dir, name)
    with open(path, "w") as f:
        f.write(f"{byte:02x}" * 32 + "\n")
    os.chmod(path, 0o600)
    return name


def on_disk(b, needle):
    """Whether `needle` appears in any file under the broker's data directory."""
    for root, _, files in os.walk(os.path.join(b.dir, "data")):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                if needle in f.read():
                    return True
    return False


def set_encryption(b, text):
    with open(b.config) as f:
        conf = f.read()
    conf = re.sub(r"(?s)# enc-begin.*# enc-end\n", "", conf)
    with open(b.config, "w") as f:
        f.write(conf + "# enc-begin\n" + text + "\n# enc-end\n")


def keys_setup(b):
    key_file(b, "main.key", 0x11)
    key_file(b, "other.key", 0x22)
    key_file(b, "acme.key", 0x33)


def store_some_state(b):
    sub = persistent(b.port, "keeper")
    sub.subscribe("d/#", qos=1)
    sub.disconnect()
    pub = Client(b.port, "pub", protocol=V5)
    for i in range(5):
        pub.publish("d/x", SECRET + b"-%d" % i, qos=1)
    pub.publish("r/kept", RETAINED, qos=1, retain=True)
    pub.disconnect()


def check_state_back(b):
    sub = persistent(b.port, "keeper")
    assert sub.connack[0] == 1, "session present"
    got = [m.payload for m in sub.expect(5)]
    assert got == [SECRET + b"-%d" % i for i in range(5)]
    sub.disconnect()
    r = Client(b.port, "rsub", protocol=V5)
    r.subscribe("r/kept", qos=1)
    assert [m.payload for m in r.expect(1)] == [RETAINED]
    r.disconnect()


def new_broker(encryption):
    b = Broker(shards=2, setup=keys_setup)
    assert b.stop() == 0
    set_encryption(b, encryption)
    b.start()
    return b


def test_without_encryption_payloads_are_readable_on_disk():
    """The control for the test below: the byte search does find plain values."""
    b = Broker(shards=2)
    store_some_state(b)
    assert b.stop() == 0, b.logs()
    assert on_disk(b, SECRET) and on_disk(b, RETAINED)


def test_sealed_payloads_are_not_on_disk_and_come_back_with_the_key():
    b = new_broker('[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"')
    store_some_state(b)
    assert b.stop() == 0, b.logs()
    assert not on_disk(b, SECRET) and not on_disk(b, RETAINED), "a payload is stored in clear"
    assert os.path.exists(os.path.join(b.dir, "data", "keys.check"))
    b.start()
    check_state_back(b)
    assert b.stop() == 0, b.logs()


def test_a_wrong_or_missing_key_stops_the_start_with_a_clear_error():
    b = new_broker('[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"')
    store_some_state(b)
    assert b.stop() == 0, b.logs()
    # Same id, other key material.
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "main"\nfile = "other.key"')
    with pytest.raises(RuntimeError):
        b.start()
    assert b.proc.wait(5) != 0
    assert "encryption key 'main' is not the key this data directory was written with" in b.logs()
    # No key at all.
    set_encryption(b, "")
    with pytest.raises(RuntimeError):
        b.start()
    assert "sealed with encryption key 'main', which is not configured" in b.logs()
    # The key from an environment variable instead of a file: everything is back.
    b.env["COREMQ_TEST_KEY"] = "11" * 32
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "main"\nenv = "COREMQ_TEST_KEY"')
    b.start()
    check_state_back(b)
    assert b.stop() == 0, b.logs()


def test_a_key_rotates_by_adding_a_newer_one():
    b = new_broker('[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"')
    store_some_state(b)
    assert b.stop() == 0, b.logs()
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"\n'
                      '[[encryption.key]]\nid = "next"\nfile = "other.key"')
    b.start()
    pub = Client(b.port, "pub", protocol=V5)
    pub.publish("r/new", b"after-rotation", qos=1, retain=True)
    pub.disconnect()
    check_state_back(b)  # old values open with the old key
    assert b.stop() == 0, b.logs()
    # Without the old key, the old data is refused by name; the new key alone is not enough.
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "next"\nfile = "other.key"')
    with pytest.raises(RuntimeError):
        b.start()
    assert "encryption key 'main', which is not configured" in b.logs()


def test_destroying_an_orgs_key_destroys_that_orgs_data_only():
    b = Broker(shards=2, setup=keys_setup)
    acme_port = free_port()
    b.extra_ports = [acme_port]
    with open(b.config, "a") as f:
        f.write(f'[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{acme_port}"\nanonymous_org = "acme"\n')
    assert b.stop() == 0
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"\n'
                      '[[encryption.key]]\nid = "acme-1"\norg = "acme"\nfile = "acme.key"')
    b.start()
    store_some_state(b)  # org local, sealed with "main"
    a = persistent(acme_port, "acme-keeper")
    a.subscribe("d/#", qos=1)
    a.disconnect()
    ap = Client(acme_port, "acme-pub", protocol=V5)
    ap.publish("d/x", b"acme-secret", qos=1)
    ap.publish("r/acme", b"acme-retained", qos=1, retain=True)
    ap.disconnect()
    assert b.stop() == 0, b.logs()
    os.remove(os.path.join(b.dir, "acme.key"))
    set_encryption(b, '[encryption]\ndestroyed_keys = ["acme-1"]\n'
                      '[[encryption.key]]\nid = "main"\nfile = "main.key"')
    b.start()
    assert "dropped stored state sealed with destroyed keys" in b.logs()
    check_state_back(b)  # the other org keeps everything
    a = persistent(acme_port, "acme-keeper")
    assert a.connack[0] == 0, "acme's session is gone with its key"
    assert a.quiet(0.5) == []
    r = Client(acme_port, "acme-rsub", protocol=V5)
    r.subscribe("r/#", qos=1)
    assert r.quiet(0.5) == [], "acme's retained message is gone with its key"
    assert b.stop() == 0, b.logs()


def test_turning_encryption_on_seals_what_was_stored_plain():
    """Issue 15.9: with encryption on, plain values are refused as planted; the first start
    with a key seals what was stored before it, so the state comes back."""
    b = Broker(shards=2, setup=keys_setup)
    store_some_state(b)
    assert b.stop() == 0, b.logs()
    assert on_disk(b, SECRET)
    set_encryption(b, '[encryption]\n[[encryption.key]]\nid = "main"\nfile = "main.key"')
    b.start()
    assert "plain values sealed with the new encryption key" in b.logs()
    check_state_back(b)
    assert b.stop() == 0, b.logs()
