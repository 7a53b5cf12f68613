"""Behaviour of the broker core seen by paho-mqtt clients, MQTT 3.1.1 and 5.0."""
import time

import pytest
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import (V5, V311, Client, Raw, connect_props, enc_len, publish_props, raw_connect, s16,
                      sub_props)

BOTH = pytest.mark.parametrize("proto", [V311, V5], ids=["v311", "v5"])


@BOTH
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_each_qos(broker, proto, qos):
    sub = Client(broker.port, "sub", proto)
    assert [int(r.value if hasattr(r, "value") else r) for r in sub.subscribe("q/t", qos)] == [qos]
    pub = Client(broker.port, "pub", proto)
    for i in range(20):
        pub.publish("q/t", f"m{i}", qos=qos)
    msgs = sub.expect(20)
    assert [m.payload.decode() for m in msgs] == [f"m{i}" for i in range(20)], "in order, none lost"
    assert all(m.qos == qos for m in msgs)
    assert sub.quiet(0.3) == [], "no duplicates"


@BOTH
def test_granted_qos_is_minimum(broker, proto):
    sub = Client(broker.port, "sub", proto)
    sub.subscribe("g/#", 1)
    pub = Client(broker.port, "pub", proto)
    pub.publish("g/a", "x", qos=2)
    pub.publish("g/b", "y", qos=0)
    m = sub.expect(2)
    assert (m[0].qos, m[1].qos) == (1, 0)


@BOTH
def test_wildcards(broker, proto):
    sub = Client(broker.port, "sub", proto)
    sub.subscribe("w/+/c", 0)
    sub.subscribe("x/#", 0)
    pub = Client(broker.port, "pub", proto)
    for t in ["w/b/c", "w/b/d", "w/c", "x", "x/y/z", "y/x"]:
        pub.publish(t, t, qos=1)
    got = sorted(m.topic for m in sub.expect(3))
    assert got == ["w/b/c", "x", "x/y/z"]
    assert sub.quiet(0.3) == []


def test_hash_does_not_match_sys_and_sys_figures(broker):
    sub = Client(broker.port, "sub", V311)
    sub.subscribe("#", 0)
    sys = Client(broker.port, "sys", V311)
    sys.subscribe("$SYS/broker/#", 0)
    msgs = sys.expect(7, timeout=5)
    topics = {m.topic: m.payload.decode() for m in sys.messages}
    for t in ["version", "uptime", "clients/connected", "messages/received", "messages/sent",
              "subscriptions/count", "retained/count"]:
        assert f"$SYS/broker/{t}" in topics, topics
    assert topics["$SYS/broker/version"].startswith("coremq ")
    assert int(topics["$SYS/broker/clients/connected"]) >= 2
    assert all(not m.topic.startswith("$") for m in sub.messages), "# must not match $SYS [MQTT-4.7.2-1]"
    assert msgs


@BOTH
def test_clients_cannot_publish_to_sys(broker, proto):
    sub = Client(broker.port, "sub", proto)
    sub.subscribe("$SYS/#", 0)
    pub = Client(broker.port, "pub", proto)
    rc = pub.publish("$SYS/broker/version", "fake", qos=1)
    if proto == V5:
        assert rc == ReasonCode(4, "Not authorized") or int(rc.value) == 0x87
    assert not any(m.payload == b"fake" for m in sub.quiet(0.5))


@BOTH
def test_retained_set_replace_clear(broker, proto):
    pub = Client(broker.port, "pub", proto)
    pub.publish("r/a", "one", qos=1, retain=True)
    pub.publish("r/a", "two", qos=1, retain=True)
    pub.publish("r/b", "bee", qos=1, retain=True)
    s1 = Client(broker.port, "s1", proto)
    s1.subscribe("r/#", 1)
    got = {m.topic: m.payload for m in s1.expect(2)}
    assert got == {"r/a": b"two", "r/b": b"bee"}
    assert all(m.retain for m in s1.messages[:2]), "RETAIN=1 when sent because of a subscribe"
    pub.publish("r/b", "", qos=1, retain=True)  # clear
    pub.publish("r/a", "live", qos=1, retain=True)
    live = s1.expect(4)[3]
    assert live.payload == b"live" and not live.retain, "live delivery has RETAIN=0 without RAP"
    s2 = Client(broker.port, "s2", proto)
    s2.subscribe("r/#", 1)
    got = {m.topic: m.payload for m in s2.expect(1)}
    assert got == {"r/a": b"live"}
    assert s2.quiet(0.3) == []


def test_retain_handling_and_rap_v5(broker):
    pub = Client(broker.port, "pub", V5)
    pub.publish("rh/x", "kept", qos=1, retain=True)
    s = Client(broker.port, "s", V5)
    s.subscribe("rh/x", options=SubscribeOptions(qos=1, retainHandling=2))
    assert s.quiet(0.3) == [], "retain handling 2: nothing at subscribe"
    s.subscribe("rh/+", options=SubscribeOptions(qos=1, retainHandling=1))
    assert len(s.expect(1)) == 1, "retain handling 1: sent for a new subscription"
    s.subscribe("rh/+", options=SubscribeOptions(qos=1, retainHandling=1))
    assert len(s.quiet(0.3)) == 0, "retain handling 1: not sent when it already existed"
    r = Client(broker.port, "rap", V5)
    r.subscribe("rh/#", options=SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2))
    pub.publish("rh/x", "again", qos=1, retain=True)
    assert r.expect(1)[0].retain, "retain-as-published keeps RETAIN=1"


@BOTH
def test_will_on_abnormal_close_not_on_disconnect(broker, proto):
    w = Client(broker.port, "watch", proto)
    w.subscribe("will/#", 1)
    a = Client(broker.port, "a", proto, will={"topic": "will/a", "payload": "a died", "qos": 1})
    a.kill()
    assert w.expect(1)[0].payload == b"a died"
    b = Client(broker.port, "b", proto, will={"topic": "will/b", "payload": "b died", "qos": 1})
    b.disconnect()
    assert w.quiet(0.5) == [], "normal DISCONNECT discards the will"


def test_will_with_disconnect_reason_0x04_v5(broker):
    w = Client(broker.port, "watch", V5)
    w.subscribe("will/#", 0)
    a = Client(broker.port, "a", V5, will={"topic": "will/a", "payload": "bye"})
    a.disconnect(reasoncode=ReasonCode(14, "Disconnect with will message"))
    assert w.expect(1)[0].payload == b"bye"


def test_will_delay_v5(broker):
    w = Client(broker.port, "watch", V5)
    w.subscribe("wd/#", 0)
    wprops = publish_props()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    wp = Properties(PacketTypes.WILLMESSAGE)
    wp.WillDelayInterval = 2
    props = connect_props(SessionExpiryInterval=60)
    a = Client(broker.port, "delayed", V5, props=props, clean=True,
               will={"topic": "wd/a", "payload": "late", "properties": wp})
    a.kill()
    assert w.quiet(1.0) == [], "will held for its delay"
    assert w.expect(1, timeout=4)[0].payload == b"late"
    # Reconnecting within the delay cancels the will.
    b = Client(broker.port, "delayed2", V5, props=connect_props(SessionExpiryInterval=60),
               will={"topic": "wd/b", "payload": "never", "properties": wp})
    b.kill()
    time.sleep(0.3)
    Client(broker.port, "delayed2", V5, clean=False, props=connect_props(SessionExpiryInterval=60))
    assert [m for m in w.quiet(3.0) if m.payload == b"never"] == []
    assert wprops is not None


def test_persistent_session_v311(broker):
    s = Client(broker.port, "persist", V311, clean=False)
    s.subscribe("p/#", 1)
    s.disconnect()
    pub = Client(broker.port, "pub", V311)
    for i in range(5):
        pub.publish("p/x", f"off{i}", qos=1)
    pub.publish("p/x", "qos0 not queued", qos=0)
    pub.publish("sync/x", "", qos=1)  # acked after the QoS 0 one was routed (same connection)
    s2 = Client(broker.port, "persist", V311, clean=False)
    assert s2.connack[0] is True, "session present"
    assert [m.payload.decode() for m in s2.expect(5)] == [f"off{i}" for i in range(5)]
    pub.publish("p/x", "live", qos=1)
    assert s2.expect(6)[5].payload == b"live", "subscription kept"
    s2.disconnect()
    s3 = Client(broker.port, "persist", V311, clean=True)
    assert s3.connack[0] is False, "clean session discards it"


def test_session_expiry_v5(broker):
    props = connect_props(SessionExpiryInterval=1)
    s = Client(broker.port, "exp", V5, props=props)
    s.subscribe("e/#", 1)
    s.disconnect()
    s2 = Client(broker.port, "exp", V5, clean=False, props=connect_props(SessionExpiryInterval=1))
    assert s2.connack[0] is True
    s2.disconnect()
    time.sleep(2.5)
    s3 = Client(broker.port, "exp", V5, clean=False, props=connect_props(SessionExpiryInterval=1))
    assert s3.connack[0] is False, "expired"


def test_session_expiry_outlives_clean_start_v5(broker):
    """SPEC §5: a 5.0 session with expiry > 0 outlives its connection whatever Clean Start said."""
    s = Client(broker.port, "cs", V5, clean=True, props=connect_props(SessionExpiryInterval=30))
    s.subscribe("cs/#", 1)
    s.disconnect()
    Client(broker.port, "pub", V5).publish("cs/1", "queued", qos=1)
    s2 = Client(broker.port, "cs", V5, clean=False, props=connect_props(SessionExpiryInterval=30))
    assert s2.connack[0] is True
    assert s2.expect(1)[0].payload == b"queued"


def test_message_expiry_v5(broker):
    s = Client(broker.port, "mx", V5, props=connect_props(SessionExpiryInterval=60))
    s.subscribe("mx/#", 1)
    s.disconnect()
    pub = Client(broker.port, "pub", V5)
    pub.publish("mx/short", "gone", qos=1, props=publish_props(MessageExpiryInterval=1))
    pub.publish("mx/long", "kept", qos=1, props=publish_props(MessageExpiryInterval=100))
    time.sleep(2.2)
    s2 = Client(broker.port, "mx", V5, clean=False, props=connect_props(SessionExpiryInterval=60))
    msgs = s2.expect(1)
    assert [m.payload for m in msgs] == [b"kept"] and s2.quiet(0.3) == []
    left = msgs[0].properties.MessageExpiryInterval
    assert 97 <= left <= 98, f"remaining lifetime sent, got {left}"


def test_shared_subscriptions(broker):
    a = Client(broker.port, "a", V5)
    b = Client(broker.port, "b", V311)
    a.subscribe("$share/g/sh/#", 1)
    b.subscribe("$share/g/sh/#", 1)
    pub = Client(broker.port, "pub", V5)
    for i in range(20):
        pub.publish("sh/x", str(i), qos=1)
    time.sleep(0.5)
    got = sorted(int(m.payload) for m in a.messages + b.messages)
    assert got == list(range(20)), "each message to exactly one member"
    assert a.messages and b.messages, "load is spread"


def test_no_local_v5(broker):
    c = Client(broker.port, "nl", V5)
    c.subscribe("nl/t", options=SubscribeOptions(qos=0, noLocal=True))
    o = Client(broker.port, "other", V5)
    o.subscribe("nl/t", 0)
    c.publish("nl/t", "mine", qos=1)
    assert o.expect(1)
    assert c.quiet(0.3) == []


def test_subscription_identifiers_v5(broker):
    c = Client(broker.port, "sid", V5)
    c.subscribe("sid/#", 0, properties=sub_props(SubscriptionIdentifier=7))
    c.subscribe("sid/+", 0, properties=sub_props(SubscriptionIdentifier=9))
    Client(broker.port, "pub", V5).publish("sid/a", "x", qos=1)
    m = c.expect(1)[0]
    assert sorted(m.properties.SubscriptionIdentifier) == [7, 9], "one delivery, both ids"
    assert c.quiet(0.3) == []


def test_user_and_request_response_properties_v5(broker):
    s = Client(broker.port, "s", V5)
    s.subscribe("rr/#", 0)
    p = publish_props(ResponseTopic="rr/reply", CorrelationData=b"\x01\x02", ContentType="text/plain",
                      PayloadFormatIndicator=1, UserProperty=[("k", "v"), ("k", "w")])
    Client(broker.port, "pub", V5).publish("rr/req", "hi", qos=1, props=p)
    m = s.expect(1)[0]
    assert m.properties.ResponseTopic == "rr/reply"
    assert m.properties.CorrelationData == b"\x01\x02"
    assert m.properties.ContentType == "text/plain"
    assert m.properties.PayloadFormatIndicator == 1
    assert m.properties.UserProperty == [("k", "v"), ("k", "w")], "order kept"


def test_topic_alias_inbound_v5(broker):
    s = Client(broker.port, "s", V5)
    s.subscribe("alias/#", 0)
    pub = Client(broker.port, "pub", V5)
    pub.publish("alias/topic", "first", qos=1, props=publish_props(TopicAlias=3))
    pub.publish("", "second", qos=1, props=publish_props(TopicAlias=3))
    got = s.expect(2)
    assert [(m.topic, m.payload) for m in got] == [("alias/topic", b"first"), ("alias/topic", b"second")]


def test_topic_alias_outbound_v5(broker):
    """paho-python does not resolve aliases it receives, so this one reads raw bytes."""
    r = Raw(broker.port)
    r.send(raw_connect(level=5, client_id=b"alias-rx", props=b"\x22\x00\x05"))  # Topic Alias Maximum 5
    assert r.read_packet()[0] == 0x20
    r.send(b"\x82" + enc_len(2 + 1 + 2 + 4 + 1) + b"\x00\x01\x00" + s16(b"ao/#") + b"\x00")
    assert r.read_packet()[0] == 0x90
    pub = Client(broker.port, "pub", V5)
    for i in range(2):
        pub.publish("ao/long/topic/name", str(i), qos=1)
    first, second = r.read_packet()[1], r.read_packet()[1]
    assert first[:2 + 18] == s16(b"ao/long/topic/name") and b"\x23\x00\x01" in first, first
    assert second[:2] == b"\x00\x00" and b"\x23\x00\x01" in second, "alias replaces the topic"


def test_maximum_packet_size_v5(broker):
    s = Client(broker.port, "small", V5, props=connect_props(MaximumPacketSize=100))
    s.subscribe("mp/#", 1)
    pub = Client(broker.port, "pub", V5)
    pub.publish("mp/big", "x" * 200, qos=1)
    pub.publish("mp/small", "ok", qos=1)
    assert [m.payload for m in s.expect(1)] == [b"ok"], "too-large message not sent [MQTT-3.1.2-25]"
    assert s.quiet(0.3) == []


def test_connack_properties_and_assigned_id_v5(broker):
    c = Client(broker.port, "", V5)
    props = c.connack[2]
    assert props.AssignedClientIdentifier, "empty id gets one assigned"
    assert props.ReceiveMaximum >= 1 and props.TopicAliasMaximum >= 1
    assert props.MaximumPacketSize >= 1024


def test_empty_client_id_persistent_refused_v311(broker):
    """[MQTT-3.1.3-8]: CONNACK return code 2, byte-exact (paho refuses to send this itself)."""
    r = Raw(broker.port)
    r.send(raw_connect(level=4, client_id=b"", clean=False))
    assert r.read_packet() == (0x20, b"\x00\x02")
    assert r.closed()


@BOTH
def test_malformed_usernames_and_unknown_orgs_are_refused(broker, proto):
    # SPEC §2: malformed user names and unknown orgs are bad user name or password.
    # paho reports the 3.1.1 return code 4 as its 5.0 equivalent 0x86; byte check below.
    Client(broker.port, "u1", proto, username="no-at-sign", expect_rc=0x86)
    Client(broker.port, "u2", proto, username="alice@unknown-org", expect_rc=0x86)
    r = Raw(broker.port)
    user = b"a@b@c"
    body = s16(b"MQTT") + bytes([4, 0x82]) + b"\x00\x3c" + s16(b"u3") + s16(user)
    r.send(b"\x10" + enc_len(len(body)) + body)
    assert r.read_packet() == (0x20, b"\x00\x04")


def test_session_takeover_same_shard(broker):
    a = Client(broker.port, "same", V5, props=connect_props(SessionExpiryInterval=60))
    a.subscribe("to/#", 1)
    b = Client(broker.port, "same", V5, clean=False, props=connect_props(SessionExpiryInterval=60))
    assert b.connack[0] is True
    a.wait(lambda: a.disconnect_rc is not None, what="takeover DISCONNECT")
    assert int(a.disconnect_rc.value) == 0x8E, a.disconnect_rc
    Client(broker.port, "pub", V5).publish("to/x", "after", qos=1)
    assert b.expect(1)[0].payload == b"after"
