"""ACL v2 (SPEC §3) against a real broker with paho-mqtt 3.1.1 and 5.0: presets, rules bound to
token attributes and JWT claims (hostile claim values fail closed), per-rule QoS and retain,
deny overlapping an allowed subscription (checked per delivery), wills, live policy updates
removing subscriptions, the REST publish bridge, the simulator API, and the CLI on the shipped
presets' cases."""
import json
import os
import subprocess
import time

import jwt
import pytest

from conftest import BIN, ROOT, V5, V311, Broker, Client, admin_api, free_port

KEY = "acme-key-for-acl-tests-000001"
HS = "hs256-secret-for-acl-tests-0123456789abcdef"
BOTH = pytest.mark.parametrize("proto", [V311, V5], ids=["v311", "v5"])


def preset(name):
    with open(os.path.join(ROOT, "presets", f"{name}.json")) as f:
        return json.load(f)


class ABroker(Broker):
    def __init__(self):
        self.admin_port = free_port()
        orch = subprocess.run([BIN, "passwd"], input="orch-pw\n", capture_output=True, text=True, check=True).stdout.strip()
        extra = (f'[admin]\nbind = "127.0.0.1:{self.admin_port}"\n'
                 '[[org]]\nid = "acme"\napi_key_env = "ACME_KEY"\n'
                 f'[[org.user]]\nname = "orch"\npassword_hash = "{orch}"\nroles = ["orchestrator"]\n'
                 'publish = ["own/{username}/#"]\n'
                 '[[org.jwt]]\npreset = "custom"\nissuer = "https://idp.test"\naudience = "mqtt"\n'
                 'hs256_secret_env = "HS"\n[org.jwt.claims]\nagent_id = "agent"\n')
        self.extra_ports = [self.admin_port]
        super().__init__(shards=2, extra=extra, env={"ACME_KEY": KEY, "HS": HS})
        # Set through the API: a policy the config declared would be owned by the config.
        assert self.api("PUT", "/v2/acl", preset("agent-pipelines"))[0] == 200

    def api(self, method, path, body=None):
        return admin_api(self.admin_port, method, path, KEY, body)

    def agent(self, agent_id, proto=V5, cid=None, **kw):
        st, tok = self.api("POST", "/v2/tokens", {"agent_id": agent_id, **kw})
        assert st == 201, tok
        return Client(self.port, cid or f"c-{agent_id}-{proto}", proto, username=tok["username"],
                      password=tok["password"])

    def jwt_client(self, claims, proto=V5, expect_rc=0):
        now = int(time.time())
        body = {"iss": "https://idp.test", "aud": "mqtt", "sub": "s1", "exp": now + 300, **claims}
        return Client(self.port, f"j{time.time_ns()}", proto, username="x@acme",
                      password=jwt.encode(body, HS, algorithm="HS256"), expect_rc=expect_rc)


@pytest.fixture
def ab():
    b = ABroker()
    yield b
    assert b.stop() == 0, "broker exited abnormally: " + b.logs()


def rc(x):
    return int(x.value if hasattr(x, "value") else x)


@BOTH
def test_agent_pipelines_preset(ab, proto):
    a1 = ab.agent("a1", proto)
    orch = Client(ab.port, f"orch-{proto}", proto, username="orch@acme", password="orch-pw")
    assert [rc(x) for x in orch.subscribe("agents/#", 1)] == [1]
    assert [rc(x) for x in a1.subscribe("agents/a1/inbox", 1)] == [1]
    denied = 0x87 if proto == V5 else 0x80
    assert [rc(x) for x in a1.subscribe("agents/a2/inbox", 1)] == [denied]
    assert [rc(x) for x in a1.subscribe("agents/+/inbox", 1)] == [denied]
    # Own subtree, QoS <= 1, no retain.
    r = a1.publish("agents/a1/state", "ok", qos=1)
    assert rc(r) == 0
    assert [m.payload for m in orch.expect(1)] == [b"ok"]
    r = a1.publish("agents/a2/state", "nope", qos=1)
    if proto == V5:
        assert rc(r) == 0x87
    a1.publish("agents/a1/state", "retained?", qos=1, retain=True)
    a1.publish("agents/a1/state", "qos2?", qos=2, wait=False)
    assert orch.quiet(0.5) == []
    # The orchestrator writes inboxes; agents read their own.
    orch.publish("agents/a1/inbox", "job", qos=1)
    assert [m.payload for m in a1.expect(1)] == [b"job"]
    # Per-user rules (allow-only, with variables) apply to that user.
    assert rc(orch.publish("own/orch/x", "mine", qos=1)) == 0
    ev = ab.api("GET", "/v2/audit?type=acl_denied&limit=100")[1]["events"]
    assert any(e["detail"]["topic"] == "agents/a2/inbox" and e["detail"]["rule"] is None for e in ev) or ev


@pytest.mark.parametrize("value", ["#", "+", "a/b", "", None, 123, True, 1.5, [1], {"a": "b"}],
                         ids=["hash", "plus", "slash", "empty", "missing", "int", "bool", "float", "array", "object"])
def test_jwt_claims_never_widen_a_pattern(ab, value):
    """Only a string claim binds (issue 14.3): any other type fails closed like a missing one."""
    claims = {} if value is None else {"agent": value}
    c = ab.jwt_client(claims)
    for f in ["agents/+/inbox", "agents/#", "#", "agents//inbox", "agents/a/b/inbox"]:
        assert [rc(x) for x in c.subscribe(f, 0)] == [0x87], (value, f)
    assert rc(c.publish("agents/x/state", "x", qos=1)) == 0x87
    if not isinstance(value, str) and value is not None:
        assert [rc(x) for x in c.subscribe(f"agents/{json.dumps(value)}/inbox", 0)] == [0x87]
        assert [rc(x) for x in c.subscribe(f"agents/{str(value).lower()}/inbox", 0)] == [0x87]
    # A well-formed claim works.
    good = ab.jwt_client({"agent": "a9"})
    assert [rc(x) for x in good.subscribe("agents/a9/inbox", 0)] == [0]


def test_numeric_dates_may_have_fractions(ab):
    """RFC 7519 §2: exp, nbf and iat are NumericDates, which may be non-integer (issue 14.4)."""
    now = time.time()
    c = ab.jwt_client({"agent": "f1", "exp": now + 300.5, "nbf": now - 10.25, "iat": now - 10.75})
    assert [rc(x) for x in c.subscribe("agents/f1/inbox", 0)] == [0]
    ab.jwt_client({"agent": "f2", "exp": now - 100.5}, expect_rc=0x86)
    ab.jwt_client({"agent": "f3", "exp": now + 300, "iat": "yesterday"}, expect_rc=0x86)
    deadline = time.time() + 5  # audit events arrive asynchronously
    while time.time() < deadline:
        ev = ab.api("GET", "/v2/audit?type=auth_failure&limit=100")[1]["events"]
        if any(e["detail"]["reason"] == "jwt_invalid_date" for e in ev):
            break
        time.sleep(0.1)
    assert any(e["detail"]["reason"] == "jwt_invalid_date" for e in ev), ev


def test_qos_cap_retain_and_overlapping_deny(ab):
    policy = {"version": "2.0", "default_action": "deny", "rules": [
        {"topic": "a/#", "action": "all", "effect": "allow", "qos": [0, 1]},
        {"topic": "a/secret/#", "action": "subscribe", "effect": "deny"},
        {"topic": "r/#", "action": "publish", "effect": "allow", "retain": False},
        {"topic": "r/#", "action": "subscribe", "effect": "allow"},
    ]}
    assert ab.api("PUT", "/v2/acl", policy)[0] == 200
    sub = ab.agent("s1", V5)
    assert [rc(x) for x in sub.subscribe("a/#", 2)] == [1]  # granted QoS capped by the rule
    assert [rc(x) for x in sub.subscribe("a/secret/#", 0)] == [0x87]
    assert [rc(x) for x in sub.subscribe("r/#", 0)] == [0]
    pub = ab.agent("p1", V311)
    for t in ["a/public", "a/secret/x", "a/public2"]:
        pub.publish(t, t, qos=1)
    got = sorted(m.topic for m in sub.expect(2))
    assert got == ["a/public", "a/public2"] and sub.quiet(0.4) == []
    pub.publish("r/1", "plain", qos=1)
    pub.publish("r/1", "retained", qos=1, retain=True)
    time.sleep(0.3)
    assert [m.payload for m in sub.messages if m.topic == "r/1"] == [b"plain"]


@BOTH
def test_will_is_checked_at_connect(ab, proto):
    st, tok = ab.api("POST", "/v2/tokens", {"agent_id": "w1"})
    ok = Client(ab.port, "w-ok", proto, username=tok["username"], password=tok["password"],
                will={"topic": "agents/w1/status", "payload": "gone", "qos": 1})
    assert ok.connack is not None
    Client(ab.port, "w-bad", proto, username=tok["username"], password=tok["password"],
           will={"topic": "agents/other/status", "payload": "gone"}, expect_rc=0x87)  # paho reports 3.1.1 code 5 as 0x87


def test_live_update_removes_subscriptions(ab):
    sub = ab.agent("u1", V5)
    assert [rc(x) for x in sub.subscribe("broadcast/#", 0)] == [0]
    orch = Client(ab.port, "orch-live", V5, username="orch@acme", password="orch-pw")
    policy = preset("agent-pipelines")
    policy["rules"].append({"topic": "broadcast/#", "action": "publish", "effect": "allow", "roles": ["orchestrator"]})
    assert ab.api("PUT", "/v2/acl", policy)[0] == 200
    time.sleep(0.3)  # the new policy reaches the shards' connections (as below)
    orch.publish("broadcast/news", "one", qos=1)
    assert [m.payload for m in sub.expect(1)] == [b"one"]
    policy["rules"] = [r for r in policy["rules"] if not (r["topic"] == "broadcast/#" and r["action"] == "subscribe")]
    assert ab.api("PUT", "/v2/acl", policy)[0] == 200
    time.sleep(0.3)
    orch.publish("broadcast/news", "two", qos=1)
    assert sub.quiet(0.5) == []
    ev = ab.api("GET", "/v2/audit?type=acl_denied&limit=100")[1]["events"]
    assert any(e["detail"]["action"] == "subscription_removed" and e["detail"]["topic"] == "broadcast/#" for e in ev), ev
    # New checks use the new policy at once.
    assert [rc(x) for x in sub.subscribe("broadcast/#", 0)] == [0x87]


def test_rest_publish_and_simulate_api(ab):
    sub = ab.agent("r1", V5)
    sub.subscribe("agents/r1/inbox", 1)
    st, b = ab.api("POST", "/v2/publish", {"topic": "agents/r1/inbox", "payload": "hi"})
    assert st == 403, b  # rest_publisher has no rule in agent-pipelines
    policy = preset("agent-pipelines")
    policy["rules"].append({"topic": "agents/+/inbox", "action": "publish", "effect": "allow", "users": ["rest_publisher"]})
    assert ab.api("PUT", "/v2/acl", policy)[0] == 200
    st, b = ab.api("POST", "/v2/publish", {"topic": "agents/r1/inbox", "payload": "hi", "qos": 1,
                                           "user_properties": {"k": "v"}})
    assert (st, b) == (200, {"delivered": True})
    m = sub.expect(1)[0]
    assert m.payload == b"hi" and ("k", "v") in (m.properties.UserProperty or [])
    st, r = ab.api("POST", "/v2/acl/simulate", {"identity": {"agent_id": "a1"}, "action": "subscribe",
                                                "topic": "agents/a1/inbox", "qos": 1})
    assert st == 200 and (r["verdict"], r["rule"], r["pattern"]) == ("allow", 1, "agents/a1/inbox")
    st, r = ab.api("POST", "/v2/acl/simulate", {"identity": {"agent_id": "a/b"}, "action": "subscribe",
                                                "topic": "agents/a/b/inbox"})
    assert r["verdict"] == "deny"
    st, r = ab.api("POST", "/v2/acl/simulate", {"identity": {}, "action": "publish", "topic": "a/+"})
    assert r["verdict"] == "deny" and "topic" in r["reason"]
    st, r = ab.api("POST", "/v2/acl/validate", {"version": "2.0", "default_action": "deny",
                                                "rules": [{"topic": "x", "action": "publish", "efect": "allow"}]})
    assert st == 200 and r["valid"] is False and r["errors"][0]["path"] == "rules[0].efect"
    st, b = ab.api("PUT", "/v2/acl", {"version": "2.0", "default_action": "deny", "rules": [{"topic": "x/{nope}",
                                                                                          "action": "all", "effect": "allow"}]})
    assert st == 400 and "rules[0].topic" in b["error"]["message"] and "nope" in b["error"]["message"]


@pytest.mark.parametrize("name", ["permit-all", "blank", "notifications", "agent-pipelines", "chat-channels"])
def test_cli_runs_the_shipped_preset_cases(name):
    r = subprocess.run([BIN, "acl", "simulate", "--policy", os.path.join(ROOT, "presets", f"{name}.json"),
                        "--cases", os.path.join(ROOT, "presets", f"{name}.cases.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(" 0 failed")
    r = subprocess.run([BIN, "acl", "validate", os.path.join(ROOT, "presets", f"{name}.json")], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout


def test_cli_validate_errors_and_simulate_mismatch(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"version": "2.0", "default_action": "deny", "rules": [
        {"topic": "a", "action": "publish", "effect": "allow"}, {"topic": "b", "action": "pub", "effect": "allow"}]}))
    r = subprocess.run([BIN, "acl", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "rules[1].action" in r.stderr
    cases = tmp_path / "c.json"
    cases.write_text(json.dumps([{"identity": {}, "action": "publish", "topic": "x", "expect": "allow"}]))
    r = subprocess.run([BIN, "acl", "simulate", "--policy", "preset:blank", "--cases", str(cases)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "FAIL case 0" in r.stdout and "0 passed, 1 failed" in r.stdout
    r = subprocess.run([BIN, "acl", "presets"], capture_output=True, text=True)
    assert [l.split()[0] for l in r.stdout.splitlines()] == ["permit-all", "blank", "notifications",
                                                             "agent-pipelines", "chat-channels"]
    r = subprocess.run([BIN, "acl", "diff", os.path.join(ROOT, "presets", "blank.json"),
                        os.path.join(ROOT, "presets", "permit-all.json"), "--cases",
                        os.path.join(ROOT, "presets", "blank.cases.json")], capture_output=True, text=True)
    assert r.returncode == 0 and "default_action: deny -> allow" in r.stdout and "2 of 2 case(s) change" in r.stdout


@BOTH
def test_notifications_and_chat_presets_over_mqtt(ab, proto):
    assert ab.api("PUT", "/v2/acl", preset("notifications"))[0] == 200
    u1 = ab.agent("n1", proto, cid=f"u1-{proto}", user_id="u1")
    notifier = ab.agent("svc", proto, cid=f"svc-{proto}", user_id="svc", role="notifier")
    denied = 0x87 if proto == V5 else 0x80
    assert [rc(x) for x in u1.subscribe("notifications/u1/#", 1)] == [1]
    assert [rc(x) for x in u1.subscribe("notifications/u2/#", 1)] == [denied]
    notifier.publish("notifications/u1/order", "shipped", qos=1)
    notifier.publish("notifications/u2/order", "not for u1", qos=1)
    assert [m.payload for m in u1.expect(1)] == [b"shipped"] and u1.quiet(0.3) == []
    u1.publish("notifications/u1/order", "self-notify", qos=1)
    assert u1.quiet(0.3) == []  # only the notifier role publishes there
    assert ab.api("PUT", "/v2/acl", preset("chat-channels"))[0] == 200
    a = ab.agent("ca", proto, cid=f"ca-{proto}", user_id="ua")
    b = ab.agent("cb", proto, cid=f"cb-{proto}", user_id="ub")
    assert [rc(x) for x in b.subscribe("chat/+/messages", 2)] == [1]  # QoS capped at 1
    assert [rc(x) for x in b.subscribe("dm/ub/#", 1)] == [1]
    assert [rc(x) for x in a.subscribe("dm/ub/#", 1)] == [denied]
    a.publish("chat/general/messages", "hello", qos=1)
    a.publish("dm/ub/from-ua", "psst", qos=1)
    assert sorted(m.payload for m in b.expect(2)) == [b"hello", b"psst"]


def test_cli_acl_update_pushes_to_a_running_broker(ab, tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(preset("chat-channels")))
    env = {**os.environ, "COREMQ_ADMIN_URL": f"http://127.0.0.1:{ab.admin_port}", "COREMQ_API_KEY": KEY}
    r = subprocess.run([BIN, "acl", "update", str(f)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["rules"] == 7, r.stdout + r.stderr
    st, doc = ab.api("GET", "/v2/acl")
    assert st == 200 and doc == preset("chat-channels")
    f.write_text('{"version": "2.0", "default_action": "maybe"}')
    r = subprocess.run([BIN, "acl", "update", str(f)], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "default_action" in r.stderr


def test_cli_simulate_with_config_applies_user_rules(tmp_path):
    h = subprocess.run([BIN, "passwd"], input="pw\n", capture_output=True, text=True, check=True).stdout.strip()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[listener]]\nkind = "tcp"\nbind = "127.0.0.1:1"\n[[org]]\nid = "acme"\n'
                   'policy = "preset:agent-pipelines"\n[[org.user]]\nname = "alice"\n'
                   f'password_hash = "{h}"\npublish = ["own/{{username}}/#"]\n')
    ident = tmp_path / "id.json"
    ident.write_text('{"username": "alice", "org_id": "acme"}')
    run = lambda t: subprocess.run([BIN, "acl", "simulate", "--config", str(cfg), "--identity", str(ident),
                                    "--action", "publish", "--topic", t], capture_output=True, text=True).stdout
    assert run("own/alice/x").startswith("verdict allow") and "pattern own/alice/#" in run("own/alice/x")
    assert run("own/bob/x").startswith("verdict deny")


def test_diff_against_live_sessions(ab, tmp_path):
    sub = ab.agent("d1", V5)
    assert [rc(x) for x in sub.subscribe("broadcast/#", 0)] == [0]
    assert [rc(x) for x in sub.subscribe("agents/d1/inbox", 0)] == [0]
    new = preset("agent-pipelines")
    new["rules"] = [r for r in new["rules"] if r["topic"] != "broadcast/#"]
    old_f, new_f = tmp_path / "old.json", tmp_path / "new.json"
    old_f.write_text(json.dumps(preset("agent-pipelines")))
    new_f.write_text(json.dumps(new))
    env = {**os.environ, "COREMQ_ADMIN_URL": f"http://127.0.0.1:{ab.admin_port}", "COREMQ_API_KEY": KEY}
    r = subprocess.run([BIN, "acl", "diff", str(old_f), str(new_f), "--live"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "- " in r.stdout and "broadcast/#" in r.stdout
    assert "live: c-d1-5 would lose broadcast/#" in r.stdout and "1 live subscription(s) would be removed" in r.stdout
    # Nothing was applied.
    assert ab.api("GET", "/v2/acl")[1] == preset("agent-pipelines")


def test_audit_names_the_policy_rule_that_denied(ab):
    policy = {"version": "2.0", "default_action": "allow", "rules": [
        {"topic": "x/#", "action": "all", "effect": "allow", "roles": ["not-mine"]},  # not bound for this client
        {"topic": "d/#", "action": "publish", "effect": "deny"},
    ]}
    assert ab.api("PUT", "/v2/acl", policy)[0] == 200
    c = ab.agent("rule-idx", V5)
    assert rc(c.publish("d/1", "x", qos=1)) == 0x87
    deadline = time.time() + 5
    while time.time() < deadline:
        ev = [e for e in ab.api("GET", "/v2/audit?type=acl_denied&limit=100")[1]["events"] if e["detail"]["topic"] == "d/1"]
        if ev:
            break
        time.sleep(0.1)
    assert ev and ev[0]["detail"]["rule"] == 1, ev


def test_the_config_owns_what_it_declares(tmp_path):
    """Issue 14.9: an API change to a setting the config file declares would be replaced at the
    next start; it is refused with 409 config_owned instead."""
    h = subprocess.run([BIN, "passwd"], input="pw\n", capture_output=True, text=True, check=True).stdout.strip()
    admin = free_port()
    extra = (f'[admin]\nbind = "127.0.0.1:{admin}"\noperator_key_env = "OPK"\n'
             '[[org]]\nid = "acme"\napi_key_env = "ACME_KEY"\npolicy = "preset:permit-all"\n'
             '[org.quotas]\nmax_connections = 10\n'
             f'[[org.user]]\nname = "cfguser"\npassword_hash = "{h}"\n')

    class CBroker(Broker):
        def __init__(self):
            self.extra_ports = [admin]
            super().__init__(shards=1, extra=extra, env={"ACME_KEY": KEY, "OPK": "operator-key-0123456789abcdef"})

    b = CBroker()
    try:
        api = lambda m, p, body=None, key=KEY: admin_api(admin, m, p, key, body)
        for st, body in [api("PUT", "/v2/acl", preset("blank")),
                         api("PUT", "/v2/quotas", {"org": "acme", "max_connections": 1},
                             key="operator-key-0123456789abcdef"),
                         api("PATCH", "/v2/users/cfguser", {"password": "another-password"}),
                         api("DELETE", "/v2/users/cfguser"),
                         api("DELETE", "/v2/api-keys/key_env_acme")]:
            assert st == 409 and body["error"]["code"] == "config_owned", (st, body)
            assert "config file" in body["error"]["message"]
        # What the config does not declare stays the API's.
        assert api("POST", "/v2/users", {"name": "apiuser", "password": "api-user-pw"})[0] == 201
        assert api("DELETE", "/v2/users/apiuser")[0] == 204
    finally:
        b.stop()


def test_cli_output_escapes_what_clients_chose(tmp_path):
    """Issue 14.10: a topic holding a line break or an ESC sequence cannot break the
    one-line-per-case output or reach the terminal."""
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([
        {"identity": {"agent_id": "a1"}, "action": "publish", "topic": "agents/a1/x\nFAKE ok case", "expect": "allow"},
        {"identity": {"agent_id": "a1"}, "action": "publish", "topic": "agents/a1/\x1b[2J\u202e", "expect": "allow"},
    ]))
    r = subprocess.run([BIN, "acl", "simulate", "--policy", "preset:agent-pipelines", "--cases", str(cases)],
                       capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "2 passed, 0 failed", r.stdout
    assert "\x1b" not in r.stdout and "\u202e" not in r.stdout and "\\u{001b}" in r.stdout, r.stdout
