//! Goal: cross-check our codec against an independent implementation, `rmqtt-codec` (a
//! dev-dependency oracle only). Method: (1) every packet our encoder produces, of every type
//! and both protocol versions, must decode in rmqtt to the same packet type and, for PUBLISH,
//! the same topic, payload, QoS, packet id and flags; (2) thousands of mutated packets are fed
//! to both decoders: where both accept a PUBLISH the fields must agree, and the verdict
//! disagreements are counted and printed (we are deliberately stricter).

use bytes::{Bytes, BytesMut};
use coremq::codec::encode::to_bytes;
use coremq::codec::*;
use tokio_util::codec::Decoder;

fn s(x: &str) -> MqStr {
    MqStr::copy_from(x).unwrap()
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

/// A PUBLISH as both sides see it: (qos, retain, dup, topic, packet id, payload).
type PubView = (u8, bool, bool, String, Option<u16>, Vec<u8>);

/// (packet type, PUBLISH fields) from rmqtt's v3 packet.
fn rm_v3(p: &rmqtt_codec::v3::Packet) -> (u8, Option<PubView>) {
    use rmqtt_codec::v3::Packet as P;
    match p {
        P::Connect(_) => (1, None),
        P::ConnectAck(_) => (2, None),
        P::Publish(p) => (3, Some(pv_rm(p))),
        P::PublishAck { .. } => (4, None),
        P::PublishReceived { .. } => (5, None),
        P::PublishRelease { .. } => (6, None),
        P::PublishComplete { .. } => (7, None),
        P::Subscribe { .. } => (8, None),
        P::SubscribeAck { .. } => (9, None),
        P::Unsubscribe { .. } => (10, None),
        P::UnsubscribeAck { .. } => (11, None),
        P::PingRequest => (12, None),
        P::PingResponse => (13, None),
        P::Disconnect => (14, None),
    }
}

fn rm_v5(p: &rmqtt_codec::v5::Packet) -> (u8, Option<PubView>) {
    use rmqtt_codec::v5::Packet as P;
    match p {
        P::Connect(_) => (1, None),
        P::ConnectAck(_) => (2, None),
        P::Publish(p) => (3, Some(pv_rm(p))),
        P::PublishAck(_) => (4, None),
        P::PublishReceived(_) => (5, None),
        P::PublishRelease(_) => (6, None),
        P::PublishComplete(_) => (7, None),
        P::Subscribe(_) => (8, None),
        P::SubscribeAck(_) => (9, None),
        P::Unsubscribe(_) => (10, None),
        P::UnsubscribeAck(_) => (11, None),
        P::PingRequest => (12, None),
        P::PingResponse => (13, None),
        P::Disconnect(_) => (14, None),
        P::Auth(_) => (15, None),
    }
}

fn pv_rm(p: &rmqtt_codec::types::Publish) -> PubView {
    (p.qos as u8, p.retain, p.dup, p.topic.to_string(), p.packet_id.map(|v| v.get()), p.payload.to_vec())
}

fn pv_ours(p: &Publish) -> PubView {
    (p.qos as u8, p.retain, p.dup, p.topic.to_string(), p.packet_id.map(|v| v.get()), p.payload.to_vec())
}

fn rm_decode(v: Protocol, raw: &[u8]) -> Option<(u8, Option<PubView>)> {
    let mut b = BytesMut::from(raw);
    match v {
        Protocol::V311 => {
            let mut c = rmqtt_codec::v3::Codec::new(1 << 20);
            match c.decode(&mut b) {
                Ok(Some((p, _))) if b.is_empty() => Some(rm_v3(&p)),
                _ => None,
            }
        }
        Protocol::V5 => {
            let mut c = rmqtt_codec::v5::Codec::new(1 << 20, 1 << 20);
            match c.decode(&mut b) {
                Ok(Some((p, _))) if b.is_empty() => Some(rm_v5(&p)),
                _ => None,
            }
        }
    }
}

fn ours_decode(v: Protocol, raw: &[u8], connected: bool) -> Option<Packet> {
    let f = frame(raw, 1 << 20).ok()??;
    if f.total() != raw.len() {
        return None;
    }
    decode_packet(Bytes::copy_from_slice(raw), &f, connected.then_some(v)).ok()
}

fn corpus() -> Vec<(Protocol, Packet)> {
    let mut out = Vec::new();
    for v in [Protocol::V311, Protocol::V5] {
        let v5 = v == Protocol::V5;
        let props = |p: Properties| if v5 { p } else { Properties::default() };
        out.push((
            v,
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start: true,
                keep_alive: 30,
                props: props(Properties { session_expiry_interval: Some(60), ..Default::default() }),
                client_id: s("dev-1"),
                will: Some(Will {
                    topic: s("w/t"),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    props: Properties::default(),
                }),
                username: Some(s("alice@acme")),
                password: Some(Bytes::from_static(b"pw")),
            })),
        ));
        out.push((
            v,
            Packet::ConnAck(ConnAck {
                session_present: true,
                reason: ReasonCode::SUCCESS,
                props: Properties::default(),
            }),
        ));
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            for size in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
                out.push((
                    v,
                    Packet::Publish(Publish {
                        dup: qos != QoS::AtMostOnce && size % 2 == 0,
                        qos,
                        retain: i % 2 == 0,
                        topic: s("fleet/dév/€/temp"),
                        packet_id: (qos != QoS::AtMostOnce).then(|| pid(size as u16 | 1)),
                        props: props(Properties {
                            message_expiry_interval: Some(9),
                            user_properties: vec![(s("k"), s("v"))],
                            response_topic: Some(s("r/t")),
                            correlation_data: Some(Bytes::from_static(b"c")),
                            ..Default::default()
                        }),
                        payload: Bytes::from(vec![0x5A; size]),
                    }),
                ));
            }
        }
        let r = |p| PubResp { packet_id: pid(p), reason: ReasonCode::SUCCESS, props: Properties::default() };
        out.push((v, Packet::PubAck(r(1))));
        out.push((v, Packet::PubRec(r(2))));
        out.push((v, Packet::PubRel(r(3))));
        out.push((v, Packet::PubComp(r(4))));
        out.push((
            v,
            Packet::Subscribe(Subscribe {
                packet_id: pid(5),
                props: Properties::default(),
                filters: vec![
                    (s("a/+/c"), SubOptions { qos: QoS::AtLeastOnce, ..Default::default() }),
                    (s("$share/g/x/#"), SubOptions { qos: QoS::ExactlyOnce, ..Default::default() }),
                ],
            }),
        ));
        out.push((
            v,
            Packet::SubAck(SubAck {
                packet_id: pid(5),
                props: Properties::default(),
                reasons: vec![ReasonCode(1), ReasonCode(0x80)],
            }),
        ));
        out.push((
            v,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(6),
                props: Properties::default(),
                filters: vec![s("a/#")],
            }),
        ));
        out.push((
            v,
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(6),
                props: Properties::default(),
                reasons: if v5 { vec![ReasonCode::SUCCESS] } else { vec![] },
            }),
        ));
        out.push((v, Packet::PingReq));
        out.push((v, Packet::PingResp));
        out.push((v, Packet::Disconnect(Disconnect::default())));
        if v5 {
            out.push((
                v,
                Packet::Auth(Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    props: Properties { authentication_method: Some(s("SCRAM-SHA-1")), ..Default::default() },
                }),
            ));
        }
    }
    out
}

#[test]
fn rmqtt_accepts_everything_we_encode() {
    let mut checked = 0;
    for (v, p) in corpus() {
        let raw = to_bytes(v, &p);
        let (kind, pubv) = rm_decode(v, &raw).unwrap_or_else(|| panic!("rmqtt refused our {v:?} {p:?}"));
        assert_eq!(kind, p.kind(), "{p:?}");
        if let Packet::Publish(ours) = &p {
            assert_eq!(pubv.unwrap(), pv_ours(ours));
        }
        checked += 1;
    }
    assert!(checked >= 50);
}

/// xorshift: deterministic mutations, no extra dependency.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_packets_agree_where_both_accept() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let (mut both, mut only_rmqtt, mut only_ours, mut neither) = (0, 0, 0, 0);
    for (v, p) in corpus() {
        let raw = to_bytes(v, &p).to_vec();
        if raw.len() > 4096 {
            continue;
        }
        let connected = !matches!(p, Packet::Connect(_));
        for _ in 0..200 {
            let mut m = raw.clone();
            let flips = 1 + rng(&mut seed) % 3;
            for _ in 0..flips {
                let i = (rng(&mut seed) as usize) % m.len();
                m[i] ^= 1 << (rng(&mut seed) % 8);
            }
            let ours = ours_decode(v, &m, connected);
            let theirs = rm_decode(v, &m);
            match (&ours, &theirs) {
                (Some(o), Some((kind, pubv))) => {
                    both += 1;
                    if let (Packet::Publish(op), Some(tp)) = (o, pubv) {
                        assert_eq!(&pv_ours(op), tp, "both accept {m:02x?} but disagree");
                    } else if !matches!(o, Packet::Connect(_)) {
                        assert_eq!(o.kind(), *kind, "type differs for {m:02x?}");
                    }
                }
                (None, Some(_)) => only_rmqtt += 1,
                (Some(o), None) => {
                    if only_ours < 6 {
                        println!(
                            "only coremq accepts {v:?} {m:02x?}: {}",
                            format!("{o:?}").chars().take(160).collect::<String>()
                        );
                    }
                    only_ours += 1
                }
                (None, None) => neither += 1,
            }
        }
    }
    println!(
        "mutations: both accept {both}, only rmqtt accepts {only_rmqtt}, only coremq accepts {only_ours}, both reject {neither}"
    );
    assert!(both > 0 && neither > 0);
}
