"""coremq-loadgen against a real coremq: every scenario runs briefly and its JSON line must
show a clean run (nothing lost, duplicated or delivered across orgs). The loadgen's client
codec is mqttbytes, independent of the broker's, so these cross-check both sides."""
import json
import os
import subprocess

import pytest

from conftest import BIN, ROOT, Broker

LOADGEN = os.environ.get("COREMQ_LOADGEN_BIN", os.path.join(ROOT, "target", "debug", "coremq-loadgen"))


def loadgen(*args, timeout=60):
    r = subprocess.run([LOADGEN, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


@pytest.fixture(scope="module")
def lgbroker():
    b = Broker(shards=2)
    yield b
    assert b.stop() == 0, b.logs()


def clean(j, sent_min=1):
    assert j["sent"] >= sent_min, j
    assert j["lost"] == 0 and j["duplicated"] == 0 and j["foreign"] == 0, j


@pytest.mark.parametrize("scenario,qos", [("p2p", 0), ("qos1", 1), ("qos2", 2)])
def test_p2p_at_each_qos_is_lossless(lgbroker, scenario, qos):
    j, text = loadgen(scenario, "--port", lgbroker.port, "--pairs", 2, "--duration", 1,
                      "--rate", 2000, "--broker-pid", lgbroker.proc.pid)
    clean(j, 1000)
    assert j["received"] == j["sent"]
    assert j["qos"] == qos
    if qos:
        assert j["acked"] == j["sent"], j
    assert j["broker_cpu_s"] is not None and j["p99_us"] > 0
    assert "latency us" in text and "per broker CPU-second" in text


def test_fanout_delivers_every_message_to_every_subscriber(lgbroker):
    j, _ = loadgen("fanout", "--port", lgbroker.port, "--subscribers", 4, "--duration", 1, "--rate", 1000)
    clean(j, 500)
    assert j["received"] == 4 * j["sent"], j


def test_fanin_counts_per_publisher_order(lgbroker):
    j, _ = loadgen("fanin", "--port", lgbroker.port, "--publishers", 3, "--duration", 1, "--rate", 1500)
    clean(j, 500)
    assert j["received"] == j["sent"] and j["out_of_order"] == 0, j


def test_latency_scenario_is_open_loop_and_writes_a_report(lgbroker, tmp_path):
    j, _ = loadgen("latency", "--port", lgbroker.port, "--rate", 3000, "--duration", 1,
                   "--report", tmp_path / "r")
    clean(j, 2500)
    assert j["rate_target"] == 3000 and j["scenario"] == "latency"
    html = (tmp_path / "r" / "index.html").read_text()
    assert html.count("<svg") == 3 and "delivered/s" in html
    assert json.loads((tmp_path / "r" / "result.json").read_text())["received"] == j["received"]


def test_conn_holds_idle_connections_and_reports_rss(lgbroker):
    j, text = loadgen("conn", "--port", lgbroker.port, "--connections", 300, "--rate", 1000,
                      "--duration", 2, "--broker-pid", lgbroker.proc.pid)
    assert j["opened"] == 300 and j["failed"] == 0 and j["alive"] == 300, text
    assert j["rss_per_conn_bytes"] is not None
    assert lgbroker.alive()


def test_a_refused_login_is_a_clear_error(lgbroker):
    b = Broker(extra='[[org]]\nid = "acme"\n')
    try:
        r = subprocess.run([LOADGEN, "p2p", "--port", str(b.port), "--duration", "1",
                            "--username", "nobody@acme", "--password", "x"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1
        assert "CONNECT refused" in r.stderr, r.stderr
    finally:
        b.stop()


def passwd(pw):
    r = subprocess.run([BIN, "passwd"], input=pw + "\n", capture_output=True, text=True, check=True)
    return r.stdout.strip()


@pytest.fixture(scope="module")
def orgs_broker():
    h = passwd("lg-pass")
    orgs = "".join(f'[[org]]\nid = "org{i}"\npolicy = "preset:permit-all"\n'
                   f'[[org.user]]\nname = "lg"\npassword_hash = "{h}"\n' for i in range(3))
    b = Broker(shards=2, extra=orgs)
    yield b
    assert b.stop() == 0, b.logs()


def test_multi_tenant_same_topics_never_cross_orgs(orgs_broker):
    j, _ = loadgen("multi-tenant", "--port", orgs_broker.port, "--orgs", 3, "--pairs-per-org", 2,
                   "--password", "lg-pass", "--duration", 1, "--rate", 3000)
    clean(j, 2000)
    assert j["received"] == j["sent"], j


def test_noisy_neighbour_runs_both_phases(orgs_broker):
    j, text = loadgen("noisy-neighbour", "--port", orgs_broker.port, "--duration", 1,
                      "--victim-user", "lg@org1", "--victim-password", "lg-pass", "--victim-rate", 1000,
                      "--noisy-user", "lg@org2", "--noisy-password", "lg-pass", "--noisy-rate", 5000)
    phases = [(g["phase"], g["group"]) for g in j["groups"]]
    assert phases == [("solo", "victim"), ("shared", "victim"), ("shared", "noisy")], phases
    assert j["victim_msg_per_s_solo"] > 500 and j["noisy_sent"] > 2000
    assert "isolation" in text and isinstance(j["pass"], bool)


def test_durable_scenario_gets_back_every_acknowledged_message():
    # Two shards, four publishers: each floods a queue that may live on the other shard while
    # the next one connects (a mesh receiver that never yielded once kept such a CONNECT
    # unread for as long as the flood lasted).
    b = Broker(shards=2)
    try:
        runs = [loadgen("durable", "--port", b.port, "--publishers", 4, "--duration", 1,
                        "--broker-pid", b.proc.pid) for _ in range(2)]
    finally:
        assert b.stop() == 0, b.logs()
    assert [j["missing"] for j, _ in runs] == [0, 0], [j for j, _ in runs]
    j, text = runs[-1]
    assert j["scenario"] == "durable" and j["acked"] > 100, j
    # Every acknowledged message comes back when the subscribers reconnect, up to the session
    # queue bound (10,000 per subscriber).
    assert j["missing"] == 0, j
    assert j["ack_p99_us"] > 0 and "ack latency us" in text
