//! Strict, zero-copy decoding. [`frame`] finds a packet boundary and checks the size limit
//! before anything is buffered; [`decode_packet`] turns one whole frame into a [`Packet`].

use bytes::{Buf, Bytes};

use super::props::{PropCtx, Properties};
use super::topic::{valid_name, NameError};
pub use super::wire::DecodeError;
use super::wire::{read_binary, read_pid, read_str, read_u16, read_u8};
use super::*;

/// A located packet: fixed-header byte and sizes. The packet occupies `total()` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// First byte: type in the high nibble, flags in the low nibble.
    pub header: u8,
    /// Bytes of fixed header (1 + length varint).
    pub header_len: usize,
    /// Remaining length.
    pub remaining: usize,
}

impl Frame {
    /// Whole packet size in bytes.
    pub fn total(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Finds the next packet in `buf`. `Ok(None)` = need more bytes (never more than `max_size`).
/// A remaining length with a 5th byte is malformed; a declared size over `max_size` is
/// Packet Too Large, reported as soon as the length is known.
pub fn frame(buf: &[u8], max_size: u32) -> Result<Option<Frame>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut remaining = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= ((b & 0x7F) as usize) << shift;
        if b & 0x80 == 0 {
            if i > 1 && b == 0 {
                // Non-minimal encoding (e.g. 0x80 0x00) is malformed [MQTT-1.5.5-1].
                return Err(DecodeError::malformed("non-minimal remaining length"));
            }
            let f = Frame { header: buf[0], header_len: 1 + i, remaining };
            if f.total() > max_size as usize {
                return Err(DecodeError::new(ReasonCode::PACKET_TOO_LARGE, "packet too large"));
            }
            return Ok(Some(f));
        }
        shift += 7;
    }
    Err(DecodeError::malformed("remaining length longer than 4 bytes"))
}

/// Decodes one whole frame (`bytes.len() == f.total()`). `protocol` is `None` until CONNECT has
/// been accepted: then only CONNECT is valid.
pub fn decode_packet(mut bytes: Bytes, f: &Frame, protocol: Option<Protocol>) -> Result<Packet, DecodeError> {
    debug_assert_eq!(bytes.len(), f.total());
    bytes.advance(f.header_len);
    let kind = f.header >> 4;
    let flags = f.header & 0x0F;
    let Some(v) = protocol else {
        if kind != 1 {
            return Err(DecodeError::protocol("first packet is not CONNECT"));
        }
        if flags != 0 {
            return Err(DecodeError::malformed("reserved CONNECT flags"));
        }
        return decode_connect(&mut bytes).map(|c| Packet::Connect(Box::new(c)));
    };
    let v5 = v == Protocol::V5;
    let want_flags = match kind {
        3 => flags, // PUBLISH flags are checked below
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != want_flags {
        return Err(DecodeError::malformed("reserved fixed-header flags"));
    }
    let b = &mut bytes;
    let p = match kind {
        1 => return Err(DecodeError::protocol("second CONNECT")),
        2 => Packet::ConnAck(decode_connack(b, v5)?),
        3 => Packet::Publish(decode_publish(b, flags, v5)?),
        4 => Packet::PubAck(decode_pubresp(b, v5, ReasonSet::PubAckRec)?),
        5 => Packet::PubRec(decode_pubresp(b, v5, ReasonSet::PubAckRec)?),
        6 => Packet::PubRel(decode_pubresp(b, v5, ReasonSet::PubRelComp)?),
        7 => Packet::PubComp(decode_pubresp(b, v5, ReasonSet::PubRelComp)?),
        8 => Packet::Subscribe(decode_subscribe(b, v5)?),
        9 => Packet::SubAck(decode_suback(b, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(b, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(b, v5)?),
        12 | 13 => {
            if b.has_remaining() {
                return Err(DecodeError::malformed("PINGREQ/PINGRESP with a body"));
            }
            if kind == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => Packet::Disconnect(decode_disconnect(b, v5)?),
        15 if v5 => Packet::Auth(decode_auth(b)?),
        15 => return Err(DecodeError::malformed("AUTH on MQTT 3.1.1")),
        _ => return Err(DecodeError::malformed("reserved packet type 0")),
    };
    if b.has_remaining() {
        return Err(DecodeError::malformed("trailing bytes in packet"));
    }
    Ok(p)
}

fn decode_connect(b: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = read_binary(b)?;
    let level = read_u8(b)?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(DecodeError::new(
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                "unsupported protocol level",
            ))
        }
        _ => return Err(DecodeError::protocol("unknown protocol name")),
    };
    let v5 = protocol == Protocol::V5;
    let flags = read_u8(b)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::malformed("CONNECT reserved flag set")); // [MQTT-3.1.2-3]
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::malformed("will QoS/retain without will flag"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::malformed("will QoS 3"))?;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::malformed("password without user name")); // [MQTT-3.1.2-22]
    }
    let keep_alive = read_u16(b)?;
    let props = if v5 { Properties::decode(b, PropCtx::Connect)? } else { Properties::default() };
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::protocol("authentication data without method"));
    }
    let client_id = read_str(b).map_err(|e| connect_field(e, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID))?;
    let will = if will_flag {
        let wprops = if v5 { Properties::decode(b, PropCtx::Will)? } else { Properties::default() };
        let topic = read_str(b)?;
        if !valid_name(topic.as_str()) {
            return Err(DecodeError::new(ReasonCode::TOPIC_NAME_INVALID, "invalid will topic"));
        }
        let payload = read_binary(b)?;
        check_payload_format(&wprops, &payload)?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, props: wprops })
    } else {
        None
    };
    let username = if has_username { Some(read_str(b)?) } else { None };
    let password = if has_password { Some(read_binary(b)?) } else { None };
    if b.has_remaining() {
        return Err(DecodeError::malformed("trailing bytes in CONNECT"));
    }
    Ok(Connect { protocol, clean_start, keep_alive, props, client_id, will, username, password })
}

fn connect_field(e: DecodeError, reason: ReasonCode) -> DecodeError {
    if e.reason == ReasonCode::MALFORMED_PACKET && e.what == "invalid UTF-8 string" {
        DecodeError::new(reason, e.what)
    } else {
        e
    }
}

fn check_payload_format(props: &Properties, payload: &[u8]) -> Result<(), DecodeError> {
    if props.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(DecodeError::new(
            ReasonCode::PAYLOAD_FORMAT_INVALID,
            "payload format indicator says UTF-8 but payload is not",
        ));
    }
    Ok(())
}

fn decode_connack(b: &mut Bytes, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = read_u8(b)?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::malformed("CONNACK reserved flags"));
    }
    let code = read_u8(b)?;
    let reason = if v5 {
        check_reason(code, ReasonSet::ConnAck)?
    } else {
        ReasonCode::from_connack_v311(code).ok_or(DecodeError::malformed("CONNACK return code"))?
    };
    let props = if v5 { Properties::decode(b, PropCtx::ConnAck)? } else { Properties::default() };
    Ok(ConnAck { session_present: flags & 1 != 0, reason, props })
}

fn decode_publish(b: &mut Bytes, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::malformed("PUBLISH QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::malformed("DUP set on QoS 0 PUBLISH")); // [MQTT-3.3.1-2]
    }
    let topic = read_str(b)?;
    match super::topic::check_name(topic.as_str()) {
        Ok(()) | Err(NameError::Empty) => {}
        Err(NameError::Wildcard) => {
            return Err(DecodeError::new(ReasonCode::TOPIC_NAME_INVALID, "wildcard in topic name"))
        }
        Err(NameError::TooDeep) => {
            return Err(DecodeError::new(ReasonCode::TOPIC_NAME_INVALID, "topic name has too many levels"))
        }
    }
    let packet_id = if qos != QoS::AtMostOnce { Some(read_pid(b)?) } else { None };
    let props = if v5 { Properties::decode(b, PropCtx::Publish)? } else { Properties::default() };
    if topic.is_empty() && props.topic_alias.is_none() {
        // MQTT 5 §3.3.4: an empty topic without a Topic Alias is a Protocol Error.
        return Err(DecodeError::new(ReasonCode::PROTOCOL_ERROR, "empty topic name without a topic alias"));
    }
    if !props.subscription_identifiers.is_empty() {
        // Only the server sends subscription identifiers in PUBLISH; decoding them is allowed so
        // the codec round-trips, and the session layer rejects them from clients.
    }
    let payload = b.split_to(b.remaining());
    check_payload_format(&props, &payload)?;
    Ok(Publish { dup, qos, retain, topic, packet_id, props, payload })
}

fn decode_pubresp(b: &mut Bytes, v5: bool, set: ReasonSet) -> Result<PubResp, DecodeError> {
    let packet_id = read_pid(b)?;
    let (reason, props) = if v5 && b.has_remaining() {
        let reason = check_reason(read_u8(b)?, set)?;
        let props =
            if b.has_remaining() { Properties::decode(b, PropCtx::PubResp)? } else { Properties::default() };
        (reason, props)
    } else {
        (ReasonCode::SUCCESS, Properties::default())
    };
    Ok(PubResp { packet_id, reason, props })
}

fn decode_subscribe(b: &mut Bytes, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = read_pid(b)?;
    let props = if v5 { Properties::decode(b, PropCtx::Subscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while b.has_remaining() {
        if filters.len() >= crate::limits::FILTERS_PER_PACKET_MAX {
            return Err(DecodeError::new(
                ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                "too many filters in one SUBSCRIBE",
            ));
        }
        let filter = read_str(b)?;
        let o = read_u8(b)?;
        let qos = QoS::from_u8(o & 0x03).ok_or(DecodeError::malformed("subscription QoS 3"))?;
        let opts = if v5 {
            if o & 0xC0 != 0 {
                return Err(DecodeError::malformed("subscription options reserved bits"));
            }
            let retain_handling = match (o >> 4) & 0x03 {
                0 => RetainHandling::SendAlways,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::protocol("retain handling 3")),
            };
            SubOptions { qos, no_local: o & 0x04 != 0, retain_as_published: o & 0x08 != 0, retain_handling }
        } else {
            if o & 0xFC != 0 {
                return Err(DecodeError::malformed("SUBSCRIBE requested QoS reserved bits"));
            }
            SubOptions { qos, ..SubOptions::default() }
        };
        filters.push((filter, opts));
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol("SUBSCRIBE without filters")); // [MQTT-3.8.3-3]
    }
    Ok(Subscribe { packet_id, props, filters })
}

fn decode_suback(b: &mut Bytes, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = read_pid(b)?;
    let props = if v5 { Properties::decode(b, PropCtx::SubAck)? } else { Properties::default() };
    if !v5 && b.iter().any(|c| !matches!(c, 0 | 1 | 2 | 0x80)) {
        return Err(DecodeError::malformed("3.1.1 SUBACK return code")); // [MQTT-3.9.3-2]
    }
    let reasons = b.iter().map(|c| check_reason(*c, ReasonSet::SubAck)).collect::<Result<_, _>>()?;
    b.advance(b.remaining());
    Ok(SubAck { packet_id, props, reasons })
}

fn decode_unsubscribe(b: &mut Bytes, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_pid(b)?;
    let props = if v5 { Properties::decode(b, PropCtx::Unsubscribe)? } else { Properties::default() };
    let mut filters = Vec::new();
    while b.has_remaining() {
        if filters.len() >= crate::limits::FILTERS_PER_PACKET_MAX {
            return Err(DecodeError::new(
                ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                "too many filters in one UNSUBSCRIBE",
            ));
        }
        filters.push(read_str(b)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::protocol("UNSUBSCRIBE without filters")); // [MQTT-3.10.3-2]
    }
    Ok(Unsubscribe { packet_id, props, filters })
}

fn decode_unsuback(b: &mut Bytes, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = read_pid(b)?;
    if !v5 {
        // A 3.1.1 UNSUBACK is exactly a packet id; trailing bytes are rejected by the caller.
        return Ok(UnsubAck { packet_id, props: Properties::default(), reasons: Vec::new() });
    }
    let props = Properties::decode(b, PropCtx::UnsubAck)?;
    let reasons = b.iter().map(|c| check_reason(*c, ReasonSet::UnsubAck)).collect::<Result<_, _>>()?;
    b.advance(b.remaining());
    Ok(UnsubAck { packet_id, props, reasons })
}

fn decode_disconnect(b: &mut Bytes, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 || !b.has_remaining() {
        return Ok(Disconnect::default());
    }
    let reason = check_reason(read_u8(b)?, ReasonSet::Disconnect)?;
    let props =
        if b.has_remaining() { Properties::decode(b, PropCtx::Disconnect)? } else { Properties::default() };
    Ok(Disconnect { reason, props })
}

fn decode_auth(b: &mut Bytes) -> Result<Auth, DecodeError> {
    if !b.has_remaining() {
        return Ok(Auth::default());
    }
    let reason = ReasonCode(read_u8(b)?);
    if !matches!(reason.0, 0x00 | 0x18 | 0x19) {
        return Err(DecodeError::protocol("invalid AUTH reason code"));
    }
    let props = if b.has_remaining() { Properties::decode(b, PropCtx::Auth)? } else { Properties::default() };
    Ok(Auth { reason, props })
}

/// Which reason codes each packet may carry (MQTT 5.0 §2.4, table 2-6).
#[derive(Clone, Copy)]
enum ReasonSet {
    ConnAck,
    PubAckRec,
    PubRelComp,
    SubAck,
    UnsubAck,
    Disconnect,
}

fn check_reason(code: u8, set: ReasonSet) -> Result<ReasonCode, DecodeError> {
    let ok = match set {
        ReasonSet::ConnAck => {
            matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
        }
        ReasonSet::PubAckRec => matches!(code, 0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99),
        ReasonSet::PubRelComp => matches!(code, 0x00 | 0x92),
        ReasonSet::SubAck => {
            matches!(code, 0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2)
        }
        ReasonSet::UnsubAck => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        ReasonSet::Disconnect => {
            matches!(code, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0xA2)
        }
    };
    if ok {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::malformed("reason code not valid for this packet"))
    }
}
