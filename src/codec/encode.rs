//! Encoding. Sizes are computed first so the fixed header is written once and the output
//! buffer grows at most once per packet; [`encode_publish`] is the hot-path entry that writes a
//! PUBLISH straight into a connection's output buffer without building a [`Publish`].

use bytes::{BufMut, Bytes, BytesMut};

use super::props::Properties;
pub use super::wire::{varint_len, write_binary, write_str, write_varint};
use super::*;

fn header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    write_varint(out, remaining);
}

/// Fields of an outgoing PUBLISH, borrowed so the hot path builds nothing.
#[derive(Debug, Clone, Copy)]
pub struct PublishOut<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic (empty when an established alias replaces it).
    pub topic: &'a [u8],
    /// Packet id for QoS > 0.
    pub packet_id: Option<PacketId>,
    /// Message properties (5.0), without subscription ids or alias.
    pub props: Option<&'a Properties>,
    /// Subscription identifiers to add (5.0).
    pub sub_ids: &'a [u32],
    /// Topic alias to add (5.0).
    pub topic_alias: Option<u16>,
    /// Remaining message expiry to write instead of the original (5.0).
    pub expiry_left: Option<u32>,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> PublishOut<'a> {
    /// The fields of a decoded or built [`Publish`], with no per-subscriber additions.
    pub fn from_publish(p: &'a Publish) -> PublishOut<'a> {
        PublishOut {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.as_bytes(),
            packet_id: p.packet_id,
            props: Some(&p.props),
            sub_ids: &[],
            topic_alias: None,
            expiry_left: None,
            payload: &p.payload,
        }
    }

    fn props_body_len(&self) -> usize {
        let mut len = 0;
        if let Some(p) = self.props {
            len += p.body_len();
            if self.expiry_left.is_some() && p.message_expiry_interval.is_none() {
                len += 5; // the rewritten expiry replaces the original one at the same width
            }
        } else if self.expiry_left.is_some() {
            len += 5;
        }
        for id in self.sub_ids {
            len += 1 + varint_len(*id as usize);
        }
        if self.topic_alias.is_some() {
            len += 3;
        }
        len
    }

    /// Total encoded size for `v`.
    pub fn encoded_len(&self, v: Protocol) -> usize {
        let rem = self.remaining_len(v);
        1 + varint_len(rem) + rem
    }

    fn remaining_len(&self, v: Protocol) -> usize {
        let mut rem = 2 + self.topic.len() + self.payload.len();
        if self.packet_id.is_some() {
            rem += 2;
        }
        if v == Protocol::V5 {
            let pl = self.props_body_len();
            rem += varint_len(pl) + pl;
        }
        rem
    }
}

/// Writes a PUBLISH for protocol `v` into `out`.
pub fn encode_publish(out: &mut BytesMut, v: Protocol, p: &PublishOut<'_>) {
    let first = 0x30 | ((p.dup as u8) << 3) | ((p.qos as u8) << 1) | p.retain as u8;
    header(out, first, p.remaining_len(v));
    write_binary(out, p.topic);
    if let Some(id) = p.packet_id {
        out.put_u16(id.get());
    }
    if v == Protocol::V5 {
        write_varint(out, p.props_body_len());
        if let Some(props) = p.props {
            props.encode_body(out, p.expiry_left.is_some());
        }
        if let Some(left) = p.expiry_left {
            out.put_u8(0x02);
            out.put_u32(left);
        }
        for id in p.sub_ids {
            out.put_u8(0x0B);
            write_varint(out, *id as usize);
        }
        if let Some(a) = p.topic_alias {
            out.put_u8(0x23);
            out.put_u16(a);
        }
    }
    out.put_slice(p.payload);
}

/// Encodes any packet for protocol `v` into `out`.
pub fn encode_packet(out: &mut BytesMut, v: Protocol, packet: &Packet) {
    let v5 = v == Protocol::V5;
    let plen = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
    match packet {
        Packet::Connect(c) => encode_connect(out, v5, c),
        Packet::ConnAck(a) => {
            header(out, 0x20, 2 + plen(&a.props));
            out.put_u8(a.session_present as u8);
            out.put_u8(if v5 { a.reason.0 } else { a.reason.connack_v311() });
            if v5 {
                a.props.encode(out);
            }
        }
        Packet::Publish(p) => encode_publish(out, v, &PublishOut::from_publish(p)),
        Packet::PubAck(r) => pubresp(out, 0x40, v5, r),
        Packet::PubRec(r) => pubresp(out, 0x50, v5, r),
        Packet::PubRel(r) => pubresp(out, 0x62, v5, r),
        Packet::PubComp(r) => pubresp(out, 0x70, v5, r),
        Packet::Subscribe(s) => encode_subscribe(out, v5, s),
        Packet::SubAck(s) => {
            header(out, 0x90, 2 + plen(&s.props) + s.reasons.len());
            out.put_u16(s.packet_id.get());
            if v5 {
                s.props.encode(out);
            }
            for r in &s.reasons {
                out.put_u8(if v5 { r.0 } else { r.suback_v311() });
            }
        }
        Packet::Unsubscribe(u) => {
            let rem = 2 + plen(&u.props) + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            header(out, 0xA2, rem);
            out.put_u16(u.packet_id.get());
            if v5 {
                u.props.encode(out);
            }
            for f in &u.filters {
                write_str(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            let n = if v5 { u.reasons.len() } else { 0 };
            header(out, 0xB0, 2 + plen(&u.props) + n);
            out.put_u16(u.packet_id.get());
            if v5 {
                u.props.encode(out);
                for r in &u.reasons {
                    out.put_u8(r.0);
                }
            }
        }
        Packet::PingReq => out.put_slice(&[0xC0, 0]),
        Packet::PingResp => out.put_slice(&[0xD0, 0]),
        Packet::Disconnect(d) => {
            if !v5 || (d.reason == ReasonCode::SUCCESS && d.props.is_empty()) {
                out.put_slice(&[0xE0, 0]);
            } else {
                header(out, 0xE0, 1 + d.props.encoded_len());
                out.put_u8(d.reason.0);
                d.props.encode(out);
            }
        }
        Packet::Auth(a) => {
            if a.reason == ReasonCode::SUCCESS && a.props.is_empty() {
                out.put_slice(&[0xF0, 0]);
            } else {
                header(out, 0xF0, 1 + a.props.encoded_len());
                out.put_u8(a.reason.0);
                a.props.encode(out);
            }
        }
    }
}

fn encode_connect(out: &mut BytesMut, v5: bool, c: &Connect) {
    let plen = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
    let mut rem = 2 + 4 + 1 + 1 + 2 + plen(&c.props) + 2 + c.client_id.len();
    if let Some(w) = &c.will {
        rem += plen(&w.props) + 2 + w.topic.len() + 2 + w.payload.len();
    }
    if let Some(u) = &c.username {
        rem += 2 + u.len();
    }
    if let Some(p) = &c.password {
        rem += 2 + p.len();
    }
    header(out, 0x10, rem);
    write_binary(out, b"MQTT");
    out.put_u8(c.protocol.level());
    let mut flags = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | ((w.retain as u8) << 5);
    }
    flags |= (c.password.is_some() as u8) << 6;
    flags |= (c.username.is_some() as u8) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        c.props.encode(out);
    }
    write_str(out, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            w.props.encode(out);
        }
        write_str(out, &w.topic);
        write_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        write_str(out, u);
    }
    if let Some(p) = &c.password {
        write_binary(out, p);
    }
}

fn encode_subscribe(out: &mut BytesMut, v5: bool, s: &Subscribe) {
    let plen = |p: &Properties| if v5 { p.encoded_len() } else { 0 };
    let rem = 2 + plen(&s.props) + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    header(out, 0x82, rem);
    out.put_u16(s.packet_id.get());
    if v5 {
        s.props.encode(out);
    }
    for (f, o) in &s.filters {
        write_str(out, f);
        let mut b = o.qos as u8;
        if v5 {
            b |=
                (o.no_local as u8) << 2 | (o.retain_as_published as u8) << 3 | (o.retain_handling as u8) << 4;
        }
        out.put_u8(b);
    }
}

fn pubresp(out: &mut BytesMut, first: u8, v5: bool, r: &PubResp) {
    if !v5 || (r.reason == ReasonCode::SUCCESS && r.props.is_empty()) {
        header(out, first, 2);
        out.put_u16(r.packet_id.get());
    } else if r.props.is_empty() {
        header(out, first, 3);
        out.put_u16(r.packet_id.get());
        out.put_u8(r.reason.0);
    } else {
        header(out, first, 3 + r.props.encoded_len());
        out.put_u16(r.packet_id.get());
        out.put_u8(r.reason.0);
        r.props.encode(out);
    }
}

/// Convenience: encodes a packet into a fresh `Bytes` (tests, tools; not the hot path).
pub fn to_bytes(v: Protocol, packet: &Packet) -> Bytes {
    let mut b = BytesMut::new();
    encode_packet(&mut b, v, packet);
    b.freeze()
}
