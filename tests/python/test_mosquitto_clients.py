"""The same behaviours through Debian's mosquitto_pub / mosquitto_sub (an independent client
implementation), MQTT 3.1.1 and 5.0."""
import shutil
import subprocess
import time

import pytest

if not shutil.which("mosquitto_sub"):
    pytest.fail("mosquitto_sub not found: apt-get install mosquitto-clients (tests/run does this)",
                pytrace=False)

VERSIONS = pytest.mark.parametrize("v", ["mqttv311", "mqttv5"])


def sub(port, *args, count=1, timeout=5):
    return subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-C", str(count),
                             "-W", str(timeout), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def pub(port, *args):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *args], check=True, timeout=10)


@VERSIONS
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_pub_sub(broker, v, qos):
    s = sub(broker.port, "-V", v, "-t", "m/#", "-q", qos, "-v", count=3)
    time.sleep(0.3)
    for i in range(3):
        pub(broker.port, "-V", v, "-t", f"m/{i}", "-m", f"hello {i}", "-q", qos)
    out, err = s.communicate(timeout=10)
    assert out.splitlines() == [f"m/{i} hello {i}" for i in range(3)], err


@VERSIONS
def test_retained(broker, v):
    pub(broker.port, "-V", v, "-t", "ret/a", "-m", "kept", "-r", "-q", "1")
    s = sub(broker.port, "-V", v, "-t", "ret/#", "-v", "-R")  # -R would skip stale (retained) ones
    out, _ = s.communicate(timeout=10)
    assert out == "", "-R filters retained messages, so they were flagged retained"
    s = sub(broker.port, "-V", v, "-t", "ret/#", "-v")
    out, _ = s.communicate(timeout=10)
    assert out.strip() == "ret/a kept"
    pub(broker.port, "-V", v, "-t", "ret/a", "-n", "-r")  # clear
    s = sub(broker.port, "-V", v, "-t", "ret/#", "-v", timeout=1)
    out, _ = s.communicate(timeout=10)
    assert out == ""


@VERSIONS
def test_persistent_session_fixed_id(broker, v):
    args = ["-V", v, "-t", "ps/#", "-q", "1", "-i", f"fixed-{v}", "-c"]
    if v == "mqttv5":
        args += ["-x", "300"]
    s = sub(broker.port, *args, count=1, timeout=2)
    pub(broker.port, "-V", v, "-t", "ps/warm", "-m", "w", "-q", "1")
    s.communicate(timeout=10)
    pub(broker.port, "-V", v, "-t", "ps/x", "-m", "while-offline", "-q", "1")
    s = sub(broker.port, *args, "-v", count=1)
    out, err = s.communicate(timeout=10)
    assert out.strip() == "ps/x while-offline", err


def test_will_v5_properties_and_user_props(broker):
    s = sub(broker.port, "-V", "mqttv5", "-t", "up/#", "-F", "%t %p %P")
    time.sleep(0.3)
    pub(broker.port, "-V", "mqttv5", "-t", "up/1", "-m", "body", "-D", "publish", "user-property", "k", "v")
    out, _ = s.communicate(timeout=10)
    assert out.strip() == "up/1 body k:v"
