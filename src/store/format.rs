//! The stored value formats (version 1), documented in docs/durability.md.
//!
//! - Session record: JSON ([`StoredSession`], field `v` = 1).
//! - Queued message: `1, granted QoS, flags (bit 0: RETAIN to send), n, n × sub id (u32 BE),
//!   received (Unix ms, u64 BE)`, then the message as an MQTT 5.0 PUBLISH packet.
//! - In-flight state of a queued message (same key): `1, packet id (u16 BE), released (0/1)`.
//! - Retained message: `1, sequence (u64 BE), received (Unix ms, u64 BE)`, then the PUBLISH.
//! - Inbound QoS 2 id: empty, or while its message's copies on other shards are not all
//!   durable, that message and where it goes ([`encode_forward`]).
//!
//! Messages are stored as MQTT 5.0 PUBLISH packets so every property survives, and the codec
//! that validates clients' packets validates stored ones too: a corrupt value is an error, not
//! a panic.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::broker::exactly_once::{PendingForward, Targets};
use crate::broker::msg::Msg;
use crate::broker::persist::{stored_delivery, StoredSession};
use crate::broker::session::Delivery;
use crate::codec::decode::{decode_packet, frame};
use crate::codec::encode::{encode_publish, PublishOut};
use crate::codec::{Packet, Protocol, QoS};

const VERSION: u8 = 1;

/// Encodes a session record.
pub fn encode_session(meta: &StoredSession) -> Vec<u8> {
    serde_json::to_vec(meta).expect("session records serialize")
}

/// Decodes a session record.
pub fn decode_session(v: &[u8]) -> Result<StoredSession, String> {
    let m: StoredSession = serde_json::from_slice(v).map_err(|e| format!("corrupt session record: {e}"))?;
    if m.v != VERSION {
        return Err(format!("session record version {} (this build reads {VERSION})", m.v));
    }
    Ok(m)
}

/// Encodes the in-flight state of a stored message: `1, packet id (u16 BE), released (0/1)`.
pub fn encode_outbound(pid: u16, released: bool) -> [u8; 4] {
    let p = pid.to_be_bytes();
    [VERSION, p[0], p[1], released as u8]
}

/// Decodes an in-flight state: (packet id, released).
pub fn decode_outbound(v: &[u8]) -> Result<(u16, bool), String> {
    match v {
        [VERSION, a, b, r @ (0 | 1)] if (*a, *b) != (0, 0) => Ok((u16::from_be_bytes([*a, *b]), *r == 1)),
        [v, ..] if *v != VERSION => Err(format!("in-flight state version {v} (this build reads {VERSION})")),
        _ => Err("corrupt in-flight state".into()),
    }
}

/// Appends `msg` as an MQTT 5.0 PUBLISH packet (every property kept).
pub(crate) fn publish_bytes(out: &mut BytesMut, msg: &Msg) {
    let p = PublishOut {
        dup: false,
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.as_bytes(),
        packet_id: (msg.qos != QoS::AtMostOnce).then(|| std::num::NonZeroU16::new(1).expect("1 is non-zero")),
        props: msg.props.get(),
        sub_ids: &[],
        topic_alias: None,
        expiry_left: None,
        payload: &msg.payload,
    };
    encode_publish(out, Protocol::V5, &p);
}

/// Decodes a stored PUBLISH; `None` when its message expiry passed while stored. Its receive
/// time is moved onto the shard clock, so its expiry and retention age count the time spent
/// stored.
pub(crate) fn decode_publish(
    raw: &[u8],
    received_unix_ms: u64,
    unix_now: u64,
) -> Result<Option<Msg>, String> {
    let f = frame(raw, u32::MAX).map_err(|e| format!("corrupt message: {:?}", e.reason))?;
    let f = f.ok_or("truncated message")?;
    if f.total() != raw.len() {
        return Err("corrupt message: trailing bytes".into());
    }
    let p = match decode_packet(Bytes::copy_from_slice(raw), &f, Some(Protocol::V5)) {
        Ok(Packet::Publish(p)) => p,
        Ok(_) => return Err("corrupt message: not a PUBLISH".into()),
        Err(e) => return Err(format!("corrupt message: {:?}", e.reason)),
    };
    let age_ms = unix_now.saturating_sub(received_unix_ms);
    if p.props.message_expiry_interval.is_some_and(|secs| age_ms / 1000 >= secs as u64) {
        return Ok(None);
    }
    Ok(Some(Msg {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        props: p.props.into(),
        received_ms: crate::clock::mono_ms().saturating_sub(age_ms),
    }))
}

/// Encodes a queued delivery (`unix_at_mono_zero`: Unix time at the shard clock's zero).
pub fn encode_delivery(d: &Delivery, unix_at_mono_zero: u64) -> Vec<u8> {
    let mut publish = BytesMut::new();
    publish_bytes(&mut publish, &d.msg);
    encode_delivery_of(d, unix_at_mono_zero, &publish)
}

/// The last message encoded for the queue: a message queued for several sessions (the ops of
/// one fan-out are consecutive and share the message) is encoded once.
#[derive(Default)]
pub struct LastPublish {
    msg: Option<Arc<Msg>>,
    publish: BytesMut,
}

impl LastPublish {
    /// [`encode_delivery`], reusing the message's encoding when it is the last one's.
    pub fn delivery(&mut self, d: &Delivery, unix_at_mono_zero: u64) -> Vec<u8> {
        if !self.msg.as_ref().is_some_and(|m| Arc::ptr_eq(m, &d.msg)) {
            self.publish.clear();
            publish_bytes(&mut self.publish, &d.msg);
            self.msg = Some(d.msg.clone());
        }
        encode_delivery_of(d, unix_at_mono_zero, &self.publish)
    }
}

fn encode_delivery_of(d: &Delivery, unix_at_mono_zero: u64, publish: &[u8]) -> Vec<u8> {
    let ids = d.sub_ids.len().min(255);
    let mut out = Vec::with_capacity(4 + ids * 4 + 8 + publish.len());
    out.extend_from_slice(&[VERSION, d.qos as u8, d.retain as u8, ids as u8]);
    for id in d.sub_ids.iter().take(255) {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(&(d.msg.received_ms + unix_at_mono_zero).to_be_bytes());
    out.extend_from_slice(publish);
    out
}

/// Decodes a queued delivery stored under `seq`; `None` if it expired while stored.
pub fn decode_delivery(v: &[u8], seq: u64, unix_now: u64) -> Result<Option<Delivery>, String> {
    let [ver, qos, flags, n, rest @ ..] = v else { return Err("truncated queue entry".into()) };
    if *ver != VERSION {
        return Err(format!("queue entry version {ver} (this build reads {VERSION})"));
    }
    if *qos > 2 || *flags > 1 {
        return Err("corrupt queue entry header".into());
    }
    let ids_len = *n as usize * 4;
    if rest.len() < ids_len + 8 {
        return Err("truncated queue entry".into());
    }
    let ids: Vec<u32> =
        rest[..ids_len].chunks_exact(4).map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes"))).collect();
    let received = u64::from_be_bytes(rest[ids_len..ids_len + 8].try_into().expect("8 bytes"));
    let Some(msg) = decode_publish(&rest[ids_len + 8..], received, unix_now)? else { return Ok(None) };
    Ok(Some(stored_delivery(msg, *qos, *flags & 1 == 1, &ids, seq)))
}

/// Encodes a retained message with its global sequence.
pub fn encode_retained(msg: &Msg, seq: u64, unix_at_mono_zero: u64) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(17 + msg.topic.len() + msg.payload.len() + 16);
    out.extend_from_slice(&[VERSION]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(msg.received_ms + unix_at_mono_zero).to_be_bytes());
    publish_bytes(&mut out, msg);
    out.to_vec()
}

/// The sequence of a stored retained message, if readable.
pub fn retained_seq(v: &[u8]) -> Option<u64> {
    (v.len() >= 9 && v[0] == VERSION).then(|| u64::from_be_bytes(v[1..9].try_into().expect("8 bytes")))
}

/// Decodes a retained message and its sequence; `None` if it expired while stored.
pub fn decode_retained(v: &[u8], unix_now: u64) -> Result<Option<(Msg, u64)>, String> {
    if v.len() < 17 {
        return Err("truncated retained message".into());
    }
    if v[0] != VERSION {
        return Err(format!("retained message version {} (this build reads {VERSION})", v[0]));
    }
    let seq = u64::from_be_bytes(v[1..9].try_into().expect("8 bytes"));
    let received = u64::from_be_bytes(v[9..17].try_into().expect("8 bytes"));
    Ok(decode_publish(&v[17..], received, unix_now)?.map(|m| (m, seq)))
}

/// Encodes a QoS 2 message pending on other shards (the value of its inbound id's row):
/// `1, origin id (u64 BE), received (Unix ms, u64 BE), n, n × (shard, m, m × (length u16 BE,
/// shared group filter))`, then the PUBLISH. A bare inbound id has an empty value.
pub fn encode_forward(f: &PendingForward, unix_at_mono_zero: u64) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(32 + f.msg.topic.len() + f.msg.payload.len());
    out.extend_from_slice(&[VERSION]);
    out.extend_from_slice(&f.oid.to_be_bytes());
    out.extend_from_slice(&(f.msg.received_ms + unix_at_mono_zero).to_be_bytes());
    out.extend_from_slice(&[f.targets.len().min(255) as u8]);
    for (shard, shared) in f.targets.iter().take(255) {
        out.extend_from_slice(&[*shard, shared.len().min(255) as u8]);
        for g in shared.iter().take(255) {
            out.extend_from_slice(&(g.len() as u16).to_be_bytes());
            out.extend_from_slice(g.as_bytes());
        }
    }
    publish_bytes(&mut out, &f.msg);
    out.to_vec()
}

/// Decodes a pending forward; `None` if its message expired while stored.
pub fn decode_forward(v: &[u8], unix_now: u64) -> Result<Option<PendingForward>, String> {
    let truncated = || "truncated pending forward".to_string();
    let (head, mut rest) = v.split_at_checked(18).ok_or_else(truncated)?;
    if head[0] != VERSION {
        return Err(format!("pending forward version {} (this build reads {VERSION})", head[0]));
    }
    let oid = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
    let received = u64::from_be_bytes(head[9..17].try_into().expect("8 bytes"));
    let mut targets = Targets::new();
    for _ in 0..head[17] {
        let [shard, m, r @ ..] = rest else { return Err(truncated()) };
        rest = r;
        let mut shared = smallvec::SmallVec::new();
        for _ in 0..*m {
            let [a, b, r @ ..] = rest else { return Err(truncated()) };
            let (g, r) = r.split_at_checked(u16::from_be_bytes([*a, *b]) as usize).ok_or_else(truncated)?;
            let g = std::str::from_utf8(g).map_err(|_| "corrupt pending forward".to_string())?;
            shared.push(std::sync::Arc::from(g));
            rest = r;
        }
        targets.push((*shard, shared));
    }
    let Some(msg) = decode_publish(rest, received, unix_now)? else { return Ok(None) };
    Ok(Some(PendingForward { oid, msg, targets }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{MqStr, Properties};

    fn msg(expiry: Option<u32>) -> Msg {
        Msg {
            topic: MqStr::copy_from("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            props: Properties { message_expiry_interval: expiry, ..Properties::default() }.into(),
            received_ms: 1000,
        }
    }

    #[test]
    fn a_message_queued_for_several_sessions_is_encoded_once_and_the_same() {
        let a = stored_delivery(msg(None), 1, true, &[7], 1);
        let b = Delivery { sub_ids: [8, 9].into_iter().collect(), seq: 2, ..a.clone() };
        let other = stored_delivery(msg(Some(5)), 2, false, &[], 3);
        let mut last = LastPublish::default();
        for d in [&a, &b, &other, &a] {
            assert_eq!(last.delivery(d, 1_700_000_000_000), encode_delivery(d, 1_700_000_000_000));
        }
    }

    #[test]
    fn a_queued_delivery_round_trips_with_its_attributes() {
        let d = stored_delivery(msg(None), 1, true, &[7, 9], 42);
        let v = encode_delivery(&d, 1_700_000_000_000);
        let back = decode_delivery(&v, 42, 1_700_000_005_000).unwrap().unwrap();
        assert_eq!(back.msg.topic.as_str(), "a/b");
        assert_eq!(&back.msg.payload[..], b"hello");
        assert_eq!((back.qos, back.retain, back.seq), (QoS::AtLeastOnce, true, 42));
        assert_eq!(&back.sub_ids[..], &[7, 9]);
    }

    #[test]
    fn a_pending_forward_round_trips_with_its_targets() {
        let shared: smallvec::SmallVec<[std::sync::Arc<str>; 2]> =
            ["$share/g/a/#".into()].into_iter().collect();
        let targets: Targets = [(1, Default::default()), (3, shared)].into_iter().collect();
        let f = PendingForward { oid: 7 << 40, msg: msg(None), targets };
        let v = encode_forward(&f, 1_700_000_000_000);
        let back = decode_forward(&v, 1_700_000_005_000).unwrap().unwrap();
        assert_eq!((back.oid, &back.targets), (f.oid, &f.targets));
        assert_eq!((back.msg.topic.as_str(), &back.msg.payload[..]), ("a/b", &b"hello"[..]));
        for cut in 0..v.len() {
            assert!(decode_forward(&v[..cut], 1_700_000_005_000).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn message_expiry_counts_the_time_spent_stored() {
        let d = stored_delivery(msg(Some(10)), 1, false, &[], 1);
        let v = encode_delivery(&d, 1_700_000_000_000); // received at ...001_000
        let left = decode_delivery(&v, 1, 1_700_000_005_000).unwrap().unwrap();
        assert_eq!(left.msg.props.message_expiry_interval, Some(10), "the property is kept");
        let now = crate::clock::mono_ms();
        assert!(now - left.msg.received_ms >= 4_000, "it aged while stored");
        assert!(matches!(left.msg.expiry(now), crate::broker::msg::Expiry::Left(5 | 6)));
        assert!(decode_delivery(&v, 1, 1_700_000_011_000).unwrap().is_none(), "expired while stored");
    }

    #[test]
    fn corrupt_and_truncated_values_are_errors_not_panics() {
        let d = stored_delivery(msg(None), 1, false, &[1], 1);
        let v = encode_delivery(&d, 0);
        for cut in 0..v.len() {
            assert!(decode_delivery(&v[..cut], 1, 0).is_err(), "cut at {cut}");
        }
        let mut bad = v.clone();
        bad[0] = 9;
        assert!(decode_delivery(&bad, 1, 0).unwrap_err().contains("version"));
        let r = encode_retained(&msg(None), 5, 0);
        assert_eq!(retained_seq(&r), Some(5));
        for cut in 0..r.len() {
            assert!(decode_retained(&r[..cut], 0).is_err(), "cut at {cut}");
        }
        assert!(decode_session(b"{not json").is_err());
    }
}
