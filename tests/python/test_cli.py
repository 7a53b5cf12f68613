"""The command line: `coremq config check` and start-up refusals, as an operator sees them."""
import os
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, V311, Client


def check(text):
    d = tempfile.mkdtemp()
    p = os.path.join(d, "coremq.toml")
    with open(p, "w") as f:
        f.write(text)
    r = subprocess.run([BIN, "config", "check", p], capture_output=True, text=True, timeout=10)
    return r.returncode, r.stdout + r.stderr


INTEROP = 'data_dir = "./d"\nshards = 1\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:1999"\nanonymous_org = "local"\n'


def test_config_check_accepts_interop_config():
    rc, out = check(INTEROP)
    assert rc == 0 and "ok" in out, out


@pytest.mark.parametrize("text,needle", [
    ("shardz = 2\n" + INTEROP, "unknown field `shardz`"),
    (INTEROP + "bnd = \"x\"\n", "bnd"),
    ("shards = 0\n[[listener]]\nkind = \"tcp\"\n", "shards"),
    ("[[listener]]\nkind = \"tcp\"\nbind = \"0.0.0.0:1883\"\nanonymous_org = \"local\"\n", "non-loopback"),
    ("[[listener]]\nkind = \"carrier-pigeon\"\n", "listener[0].kind"),
    ("this is not toml", "line 1"),
])
def test_config_check_names_the_problem(text, needle):
    rc, out = check(text)
    assert rc == 2, out
    assert needle in out, out
    assert "panicked" not in out


def test_unknown_key_error_has_line_number():
    rc, out = check(INTEROP + "\n\nmystery = 1\n")
    assert rc == 2 and "line 9" in out and "mystery" in out, out


def test_serve_refuses_broken_config_with_exit_2():
    d = tempfile.mkdtemp()
    p = os.path.join(d, "c.toml")
    with open(p, "w") as f:
        f.write("shards = \"lots\"\n")
    r = subprocess.run([BIN, "serve", "--config", p], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "shards" in r.stderr


def test_missing_config_file():
    r = subprocess.run([BIN, "config", "check", "/nonexistent/coremq.toml"], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read" in r.stderr


def port_free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


def test_embedded_default_serves_anonymous_on_1883():
    if not port_free(1883):
        pytest.skip("127.0.0.1:1883 is in use on this machine")
    proc = subprocess.Popen([BIN, "serve"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            if not port_free(1883):
                break
            time.sleep(0.05)
        c = Client(1883, "first-run", V311)
        c.subscribe("hello/#", 1)
        c.publish("hello/world", "hi", qos=1)
        assert c.expect(1)[0].payload == b"hi"
        c.disconnect()
        # Loopback only: not reachable on other addresses of this host.
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "127.0.0.1:1883" in out and "shards=" in out, out


def test_a_second_broker_is_refused_on_the_same_data_dir_or_address(broker):
    """Issue 14.9: SO_REUSEPORT let a second broker join the port silently; two brokers on one
    data_dir would corrupt it. Both are refused at start, naming what is taken."""
    r = subprocess.run([BIN, "serve", "--config", broker.config], capture_output=True, text=True, timeout=20,
                       cwd=broker.dir)
    assert r.returncode == 1 and "in use by another coremq" in r.stderr, r.stderr
    assert f"pid {broker.proc.pid}" in r.stderr, r.stderr
    other = os.path.join(tempfile.mkdtemp(), "c.toml")
    with open(other, "w") as f:
        f.write(f'data_dir = "d"\nshards = 1\n[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:{broker.port}"\n')
    r = subprocess.run([BIN, "serve", "--config", other], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and f"127.0.0.1:{broker.port}: already served" in r.stderr, r.stderr
    c = Client(broker.port, "still-served", V311)  # the first broker is untouched
    c.disconnect()


def test_config_check_warns_about_key_variables_serve_would_refuse():
    rc, out = check('[admin]\nbind = "127.0.0.1:0"\noperator_key_env = "COREMQ_TEST_UNSET_VAR"\n'
                    '[[listener]]\nkind = "tcp"\n')
    assert rc == 0 and "warning" in out and "COREMQ_TEST_UNSET_VAR is not set" in out, out


def test_certs_dev_writes_private_keys_owner_only(tmp_path):
    r = subprocess.run([BIN, "certs", "dev", str(tmp_path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    for name in ["ca.key", "server.key", "client.key"]:
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o600", name
