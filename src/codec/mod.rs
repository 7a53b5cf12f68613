//! MQTT 3.1.1 and 5.0 wire codec: every packet type (AUTH included), every property.
//!
//! Decoding is strict and zero-copy: topics, strings and payloads are [`Bytes`] slices of the
//! frame that was read, and every rejection carries the MQTT 5 reason code the broker answers
//! with ([`DecodeError::reason`]). The codec does no I/O and never allocates more than the
//! negotiated maximum packet size: [`decode::frame`] checks the declared size before a single
//! byte of the body is buffered.

pub mod decode;
pub mod encode;
pub mod props;
pub mod reason;
pub mod topic;
pub mod wire;

#[cfg(test)]
mod tests;

#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz {
    //! The fuzz body, shared by the cargo-fuzz target and the corpus replay test.
    pub use super::fuzz_body::roundtrip_check;
}
#[cfg(any(test, fuzzing))]
mod fuzz_body;

use std::num::NonZeroU16;

use bytes::Bytes;

pub use decode::{decode_packet, frame, DecodeError, Frame};
pub use encode::encode_packet;
pub use props::Properties;
pub use reason::ReasonCode;

/// Protocol level negotiated in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Parses the two QoS bits; 3 is invalid.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string as MQTT defines it (valid UTF-8, no U+0000), held as a zero-copy slice.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqStr(Bytes);

impl MqStr {
    /// Validates `b` as an MQTT UTF-8 string: well-formed UTF-8 without U+0000 [MQTT-1.5.4].
    pub fn new(b: Bytes) -> Option<MqStr> {
        let s = std::str::from_utf8(&b).ok()?;
        if s.as_bytes().contains(&0) {
            return None;
        }
        Some(MqStr(b))
    }

    /// Builds from a static string (panics on U+0000: a programmer error).
    pub fn from_static(s: &'static str) -> MqStr {
        assert!(!s.as_bytes().contains(&0), "static MQTT string holds U+0000");
        MqStr(Bytes::from_static(s.as_bytes()))
    }

    /// Copies a `&str` (it must hold no U+0000; checked).
    pub fn copy_from(s: &str) -> Option<MqStr> {
        if s.as_bytes().contains(&0) {
            return None;
        }
        Some(MqStr(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Invariant: constructed only from validated UTF-8.
        std::str::from_utf8(&self.0).expect("MqStr holds validated UTF-8")
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A deep copy that does not pin the buffer this string was decoded from.
    pub fn to_owned_copy(&self) -> MqStr {
        MqStr(Bytes::copy_from_slice(&self.0))
    }
}

impl std::fmt::Debug for MqStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MqStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Packet identifier: never zero on the wire [MQTT-2.2.1-3].
pub type PacketId = NonZeroU16;

/// Will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic (a topic name, no wildcards).
    pub topic: MqStr,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (5.0).
    pub props: Properties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level.
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables.
    pub keep_alive: u16,
    /// CONNECT properties (5.0).
    pub props: Properties,
    /// Client identifier, possibly empty.
    pub client_id: MqStr,
    /// Will message.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<MqStr>,
    /// Password (binary).
    pub password: Option<Bytes>,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Reason code (5.0) or mapped return code (3.1.1, see [`ReasonCode::connack_v311`]).
    pub reason: ReasonCode,
    /// CONNACK properties (5.0).
    pub props: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty only in 5.0 with a topic alias.
    pub topic: MqStr,
    /// Packet id, present iff QoS > 0.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (5.0).
    pub props: Properties,
    /// Application payload.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    /// Packet id being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (5.0; always Success on 3.1.1).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub props: Properties,
}

/// Retain handling subscription option (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    #[default]
    SendAlways = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Never send retained messages at subscribe time.
    DoNotSend = 2,
}

/// Subscription options byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// Properties (5.0): subscription identifier, user properties.
    pub props: Properties,
    /// Topic filters with their options (at least one).
    pub filters: Vec<(MqStr, SubOptions)>,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet id.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub props: Properties,
    /// One reason code per filter.
    pub reasons: Vec<ReasonCode>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub props: Properties,
    /// Topic filters (at least one).
    pub filters: Vec<MqStr>,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet id.
    pub packet_id: PacketId,
    /// Properties (5.0).
    pub props: Properties,
    /// One reason code per filter (5.0; empty on 3.1.1).
    pub reasons: Vec<ReasonCode>,
}

/// DISCONNECT (reason and properties are 5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code.
    pub reason: ReasonCode,
    /// Properties.
    pub props: Properties,
}

/// AUTH (5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Reason code: Success, Continue authentication or Re-authenticate.
    pub reason: ReasonCode,
    /// Properties (authentication method and data).
    pub props: Properties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1).
    Connect(Box<Connect>),
    /// CONNACK (2).
    ConnAck(ConnAck),
    /// PUBLISH (3).
    Publish(Publish),
    /// PUBACK (4).
    PubAck(PubResp),
    /// PUBREC (5).
    PubRec(PubResp),
    /// PUBREL (6).
    PubRel(PubResp),
    /// PUBCOMP (7).
    PubComp(PubResp),
    /// SUBSCRIBE (8).
    Subscribe(Subscribe),
    /// SUBACK (9).
    SubAck(SubAck),
    /// UNSUBSCRIBE (10).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11).
    UnsubAck(UnsubAck),
    /// PINGREQ (12).
    PingReq,
    /// PINGRESP (13).
    PingResp,
    /// DISCONNECT (14).
    Disconnect(Disconnect),
    /// AUTH (15, 5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet type number (1..=15).
    pub fn kind(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }
}
