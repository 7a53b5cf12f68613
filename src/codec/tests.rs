//! Codec tests: round trips (property-based), the malformed-packet table, and the fuzz seed
//! corpus replay (`tests/fuzz/corpus/codec`).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::encode::to_bytes;
use super::props::Properties;
use super::*;

use super::fuzz_body::{decode_all, roundtrip_check};

fn s(x: &str) -> MqStr {
    MqStr::copy_from(x).unwrap()
}

fn arb_str() -> impl Strategy<Value = MqStr> {
    "[a-z/é]{0,12}".prop_map(|x| s(&x))
}

fn arb_topic() -> impl Strategy<Value = MqStr> {
    "[a-z]{1,5}(/[a-z]{0,5}){0,3}".prop_map(|x| s(&x))
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn arb_pid() -> impl Strategy<Value = PacketId> {
    (1u16..).prop_map(|v| PacketId::new(v).unwrap())
}

fn arb_publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..2),
        proptest::option::of(any::<u32>()),
        proptest::option::of(arb_str()),
        proptest::option::of(arb_topic()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        proptest::collection::vec((arb_str(), arb_str()), 0..3),
    )
        .prop_map(|(pfi, exp, ct, rt, cd, up)| Properties {
            payload_format_indicator: pfi,
            message_expiry_interval: exp,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            user_properties: up,
            ..Properties::default()
        })
}

fn arb_packet(v5: bool) -> impl Strategy<Value = Packet> {
    let props = move |p: Properties| if v5 { p } else { Properties::default() };
    let publish =
        (arb_qos(), any::<bool>(), any::<bool>(), arb_topic(), arb_pid(), arb_publish_props(), "[ -~]{0,40}")
            .prop_map(move |(qos, dup, retain, topic, pid, pr, payload)| {
                let mut pr = props(pr);
                // A payload format of 1 requires UTF-8 payloads; ours are ASCII.
                pr.payload_format_indicator = pr.payload_format_indicator.filter(|_| v5);
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id: (qos != QoS::AtMostOnce).then_some(pid),
                    props: pr,
                    payload: Bytes::from(payload),
                })
            });
    let resp = (arb_pid(), 0usize..4, 0usize..3).prop_map(move |(pid, kind, r)| {
        // Reason codes valid for each type (MQTT 5.0 table 2-6).
        let reason = match kind {
            0 | 1 => [0x00, 0x10, 0x87][r],
            _ => [0x00, 0x92, 0x00][r],
        };
        let r = PubResp {
            packet_id: pid,
            reason: ReasonCode(if v5 { reason } else { 0 }),
            props: Properties::default(),
        };
        match kind {
            0 => Packet::PubAck(r),
            1 => Packet::PubRec(r),
            2 => Packet::PubRel(r),
            _ => Packet::PubComp(r),
        }
    });
    let sub = (
        arb_pid(),
        proptest::collection::vec((arb_topic(), arb_qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..4),
        proptest::option::of(1u32..268_435_455),
    )
        .prop_map(move |(pid, fs, id)| {
            let mut p = Properties::default();
            if v5 {
                p.subscription_identifiers.extend(id);
            }
            Packet::Subscribe(Subscribe {
                packet_id: pid,
                props: p,
                filters: fs
                    .into_iter()
                    .map(|(f, qos, nl, rap, rh)| {
                        let o = if v5 {
                            SubOptions {
                                qos,
                                no_local: nl,
                                retain_as_published: rap,
                                retain_handling: [
                                    RetainHandling::SendAlways,
                                    RetainHandling::SendIfNew,
                                    RetainHandling::DoNotSend,
                                ][rh as usize],
                            }
                        } else {
                            SubOptions { qos, ..Default::default() }
                        };
                        (f, o)
                    })
                    .collect(),
            })
        });
    let unsub = (arb_pid(), proptest::collection::vec(arb_topic(), 1..4)).prop_map(|(pid, filters)| {
        Packet::Unsubscribe(Unsubscribe { packet_id: pid, props: Properties::default(), filters })
    });
    let suback =
        (arb_pid(), proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..4))
            .prop_map(|(pid, r)| {
                Packet::SubAck(SubAck {
                    packet_id: pid,
                    props: Properties::default(),
                    reasons: r.into_iter().map(ReasonCode).collect(),
                })
            });
    let unsuback = (arb_pid(), proptest::collection::vec(prop_oneof![Just(0u8), Just(0x11)], 1..4)).prop_map(
        move |(pid, r)| {
            Packet::UnsubAck(UnsubAck {
                packet_id: pid,
                props: Properties::default(),
                reasons: if v5 { r.into_iter().map(ReasonCode).collect() } else { vec![] },
            })
        },
    );
    let simple = prop_oneof![
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (0u8..2).prop_map(move |r| Packet::Disconnect(Disconnect {
            reason: ReasonCode(if v5 && r == 1 { 0x04 } else { 0 }),
            props: Properties::default()
        })),
        any::<bool>().prop_map(move |sp| Packet::ConnAck(ConnAck {
            session_present: sp,
            reason: ReasonCode::SUCCESS,
            props: props(Properties {
                receive_maximum: Some(10),
                topic_alias_maximum: Some(5),
                ..Default::default()
            })
        })),
    ];
    prop_oneof![publish, resp, sub, unsub, suback, unsuback, simple]
}

fn arb_connect() -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        "[a-z0-9]{0,23}",
        proptest::option::of((arb_topic(), arb_qos(), any::<bool>(), "[ -~]{0,10}")),
        proptest::option::of(arb_str()),
        proptest::option::of("[ -~]{0,10}"),
        any::<bool>(),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(clean, ka, id, will, user, pass, v5, expiry)| {
            let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
            let user = if v5 { user } else { user.or_else(|| pass.as_ref().map(|_| s("u"))) };
            Connect {
                protocol,
                clean_start: clean,
                keep_alive: ka,
                props: Properties { session_expiry_interval: expiry.filter(|_| v5), ..Default::default() },
                client_id: s(&id),
                will: will.map(|(t, qos, retain, p)| Will {
                    topic: t,
                    payload: Bytes::from(p),
                    qos,
                    retain,
                    props: Properties { will_delay_interval: Some(5).filter(|_| v5), ..Default::default() },
                }),
                username: user,
                password: pass.map(Bytes::from),
            }
        })
}

proptest! {
    #[test]
    fn roundtrip_v5(p in arb_packet(true)) {
        let enc = to_bytes(Protocol::V5, &p);
        prop_assert_eq!(decode_all(Some(Protocol::V5), &enc).unwrap(), p);
    }

    #[test]
    fn roundtrip_v311(p in arb_packet(false)) {
        let enc = to_bytes(Protocol::V311, &p);
        prop_assert_eq!(decode_all(Some(Protocol::V311), &enc).unwrap(), p);
    }

    #[test]
    fn roundtrip_connect(c in arb_connect()) {
        let p = Packet::Connect(Box::new(c.clone()));
        let enc = to_bytes(c.protocol, &p);
        prop_assert_eq!(decode_all(None, &enc).unwrap(), p);
    }

    /// Arbitrary bytes never panic the decoder, and rejections carry an error reason.
    #[test]
    fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        roundtrip_check(&data);
    }
}

#[test]
fn auth_roundtrip() {
    let p = Packet::Auth(Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        props: Properties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(b"x")),
            ..Default::default()
        },
    });
    let enc = to_bytes(Protocol::V5, &p);
    assert_eq!(decode_all(Some(Protocol::V5), &enc).unwrap(), p);
    assert_eq!(decode_all(Some(Protocol::V311), &enc).unwrap_err().reason, ReasonCode::MALFORMED_PACKET);
}

/// The malformed-packet table: each input, the protocol state, and the reason code expected.
#[test]
fn malformed_table() {
    use Protocol::*;
    const M: u8 = 0x81;
    const P: u8 = 0x82;
    let cases: &[(&str, Option<Protocol>, &[u8], u8)] = &[
        ("first packet not CONNECT", None, &[0xC0, 0x00], P),
        ("CONNECT reserved header flags", None, &[0x11, 0x00], M),
        ("CONNECT reserved flag bit 0", None, b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", M),
        ("will QoS without will flag", None, b"\x10\x0c\x00\x04MQTT\x04\x0a\x00\x3c\x00\x00", M),
        ("will QoS 3", None, b"\x10\x0c\x00\x04MQTT\x04\x1e\x00\x3c\x00\x00", M),
        ("3.1.1 password without user name", None, b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x3c\x00\x00", M),
        ("unknown protocol name", None, b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x3c\x00\x00", P),
        ("unsupported level", None, b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00", 0x84),
        ("client id with U+0000", None, b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01\x00", 0x85),
        ("client id not UTF-8", None, b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01\xff", 0x85),
        ("truncated CONNECT", None, b"\x10\x08\x00\x04MQTT\x04\x02", M),
        ("CONNACK v5 reason 0x40", Some(V5), b"\x20\x03\x01\x40\x00", M),
        ("PUBCOMP v5 reason 0x10", Some(V5), b"\x70\x03\x00\x01\x10", M),
        ("DISCONNECT v5 reason 0x10", Some(V5), b"\xe0\x01\x10", M),
        ("SUBACK 3.1.1 bad return code", Some(V311), b"\x90\x03\x00\x01\x81", M),
        ("UNSUBACK 3.1.1 with a payload", Some(V311), b"\xb0\x04\x00\x01\x00\x00", M),
        (
            "CONNECT v5 duplicate session expiry",
            None,
            b"\x10\x17\x00\x04MQTT\x05\x02\x00\x3c\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02\x00\x00",
            P,
        ),
        (
            "CONNECT v5 receive maximum 0",
            None,
            b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00",
            P,
        ),
        (
            "CONNECT v5 misplaced property (topic alias)",
            None,
            b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\x03\x23\x00\x01\x00\x00",
            P,
        ),
        ("CONNECT v5 unknown property", None, b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x01\x7f\x00\x00", M),
        (
            "CONNECT v5 request problem info 2",
            None,
            b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x02\x17\x02\x00\x00",
            P,
        ),
        ("second CONNECT", Some(V311), b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", P),
        ("PUBLISH QoS 3", Some(V311), b"\x36\x05\x00\x01a\x00\x01", M),
        ("PUBLISH DUP on QoS 0", Some(V311), b"\x38\x03\x00\x01a", M),
        ("PUBLISH wildcard topic +", Some(V311), b"\x30\x03\x00\x01+", 0x90),
        ("PUBLISH wildcard topic #", Some(V5), b"\x30\x06\x00\x03a/#\x00", 0x90),
        ("PUBLISH packet id 0", Some(V311), b"\x32\x05\x00\x01a\x00\x00", M),
        ("PUBLISH empty topic without alias", Some(V5), b"\x30\x03\x00\x00\x00", P),
        ("PUBLISH topic alias 0", Some(V5), b"\x30\x07\x00\x01a\x03\x23\x00\x00", P),
        ("PUBLISH topic not UTF-8", Some(V311), b"\x30\x03\x00\x01\xc3", M),
        ("PUBLISH topic with U+0000", Some(V311), b"\x30\x03\x00\x01\x00", M),
        ("PUBLISH surrogate (CESU) in topic", Some(V311), b"\x30\x05\x00\x03\xed\xa0\x80", M),
        ("PUBLISH payload format UTF-8 violated", Some(V5), b"\x30\x08\x00\x01a\x02\x01\x01\xff", 0x99),
        ("PUBLISH subscription id 0", Some(V5), b"\x30\x06\x00\x01a\x02\x0b\x00", P),
        ("PUBLISH property length past end", Some(V5), b"\x30\x05\x00\x01a\x09\x01", M),
        ("PUBACK reserved flags", Some(V311), b"\x41\x02\x00\x01", M),
        ("PUBREL wrong flags", Some(V311), b"\x60\x02\x00\x01", M),
        ("PUBACK truncated", Some(V311), b"\x40\x01\x00", M),
        ("PUBACK trailing bytes 3.1.1", Some(V311), b"\x40\x03\x00\x01\x00", M),
        ("SUBSCRIBE wrong flags", Some(V311), b"\x80\x06\x00\x01\x00\x01a\x00", M),
        ("SUBSCRIBE no filters", Some(V311), b"\x82\x02\x00\x01", P),
        ("SUBSCRIBE QoS 3", Some(V311), b"\x82\x06\x00\x01\x00\x01a\x03", M),
        ("SUBSCRIBE 3.1.1 reserved option bits", Some(V311), b"\x82\x06\x00\x01\x00\x01a\x04", M),
        ("SUBSCRIBE v5 retain handling 3", Some(V5), b"\x82\x07\x00\x01\x00\x00\x01a\x30", P),
        ("SUBSCRIBE v5 reserved option bits", Some(V5), b"\x82\x07\x00\x01\x00\x00\x01a\x40", M),
        (
            "SUBSCRIBE v5 two subscription ids",
            Some(V5),
            b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
            P,
        ),
        ("UNSUBSCRIBE no filters", Some(V311), b"\xa2\x02\x00\x01", P),
        ("UNSUBSCRIBE wrong flags", Some(V311), b"\xa0\x05\x00\x01\x00\x01a", M),
        ("PINGREQ with body", Some(V311), b"\xc0\x01\x00", M),
        ("PINGREQ reserved flags", Some(V311), b"\xc1\x00", M),
        ("DISCONNECT reserved flags", Some(V311), b"\xe1\x00", M),
        ("AUTH on 3.1.1", Some(V311), b"\xf0\x00", M),
        ("AUTH bad reason", Some(V5), b"\xf0\x02\x05\x00", P),
        ("reserved packet type 0", Some(V311), b"\x00\x00", M),
        ("DISCONNECT v5 misplaced property", Some(V5), b"\xe0\x05\x00\x03\x23\x00\x01", P),
    ];
    for (name, v, raw, want) in cases {
        // Lengths are computed, so each case tests exactly the flaw it names.
        let mut raw = raw.to_vec();
        if raw.len() >= 2 && raw[1] < 0x80 {
            raw[1] = (raw.len() - 2) as u8;
        }
        match decode_all(*v, &raw) {
            Ok(p) => panic!("{name}: accepted as {p:?}"),
            Err(e) => assert_eq!(e.reason.0, *want, "{name}: {e}"),
        }
    }
}

#[test]
fn topic_depth_is_bounded() {
    use crate::codec::topic::{valid_filter, valid_name};
    use crate::limits::TOPIC_LEVELS_MAX;
    let deep = |n: usize| vec!["a"; n].join("/");
    assert!(valid_name(&deep(TOPIC_LEVELS_MAX)) && valid_filter(&deep(TOPIC_LEVELS_MAX)));
    assert!(!valid_name(&deep(TOPIC_LEVELS_MAX + 1)) && !valid_filter(&deep(TOPIC_LEVELS_MAX + 1)));
    assert!(!valid_filter(&"/".repeat(64_999)), "the 65,000-level filter of issue 14.5");
    // A PUBLISH one level too deep: Topic Name invalid.
    let topic = deep(TOPIC_LEVELS_MAX + 1);
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic.as_bytes());
    body.push(0); // no properties
    let mut raw = vec![0x30, 0x80 | (body.len() % 128) as u8, (body.len() / 128) as u8];
    raw.extend_from_slice(&body);
    assert_eq!(decode_all(Some(Protocol::V5), &raw).unwrap_err().reason, ReasonCode::TOPIC_NAME_INVALID);
}

#[test]
fn framing_limits() {
    // 5-byte remaining length.
    let e = frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], u32::MAX).unwrap_err();
    assert_eq!(e.reason, ReasonCode::MALFORMED_PACKET);
    // A declared 256 MiB packet is refused from its header alone.
    let e = frame(&[0x30, 0xff, 0xff, 0xff, 0x7f], 1 << 20).unwrap_err();
    assert_eq!(e.reason, ReasonCode::PACKET_TOO_LARGE);
    // Non-minimal length encoding.
    assert!(frame(&[0x30, 0x80, 0x00], u32::MAX).is_err());
    // Partial headers ask for more.
    assert_eq!(frame(&[0x30], 100).unwrap(), None);
    assert_eq!(frame(&[0x30, 0x80], 100).unwrap(), None);
    assert_eq!(frame(&[0x30, 0x05, 0], 100).unwrap().unwrap().total(), 7);
}

#[test]
fn zero_copy_slices() {
    let raw = to_bytes(
        Protocol::V311,
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t/x"),
            packet_id: None,
            props: Properties::default(),
            payload: Bytes::from_static(b"payload"),
        }),
    );
    let buf = BytesMut::from(&raw[..]).freeze();
    let f = frame(&buf, 1024).unwrap().unwrap();
    let Packet::Publish(p) = decode_packet(buf.clone(), &f, Some(Protocol::V311)).unwrap() else { panic!() };
    let base = buf.as_ptr() as usize;
    let within = |b: &[u8]| (b.as_ptr() as usize) >= base && (b.as_ptr() as usize) < base + buf.len();
    assert!(within(p.payload.as_ref()) && within(p.topic.as_bytes()), "topic and payload borrow the frame");
}

/// Replays the committed fuzz seed corpus through the fuzz body on every `cargo test`.
#[test]
fn fuzz_corpus_replay() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/codec");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("seed corpus present") {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        roundtrip_check(&data);
        n += 1;
    }
    assert!(n >= 20, "seed corpus has {n} files");
}
