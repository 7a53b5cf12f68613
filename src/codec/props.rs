//! MQTT 5 properties: one struct for every packet, with a table of which property may appear
//! in which packet. Duplicates of single-valued properties, misplaced properties, forbidden zero
//! values and out-of-range booleans are rejected with the reason code the spec names.

use bytes::{Buf, BufMut, Bytes};
use smallvec::SmallVec;

use super::wire::{
    read_binary, read_str, read_u16, read_u32, read_u8, read_varint, varint_len, write_binary, write_str,
    write_varint, DecodeError,
};
use super::{MqStr, ReasonCode};

/// Where a property list sits; decides which properties are allowed (MQTT 5.0 §2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropCtx {
    /// CONNECT.
    Connect,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// Will properties in CONNECT.
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl PropCtx {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A user property: a name/value pair of UTF-8 strings.
pub type UserProperty = (MqStr, MqStr);

/// The union of all MQTT 5 properties. Absent = `None` / empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)] // Field names are the specification's property names.
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqStr>,
    pub response_topic: Option<MqStr>,
    pub correlation_data: Option<Bytes>,
    /// Subscription identifiers: several in PUBLISH (server to client), one in SUBSCRIBE.
    pub subscription_identifiers: SmallVec<[u32; 2]>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<MqStr>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<MqStr>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<MqStr>,
    pub server_reference: Option<MqStr>,
    pub reason_string: Option<MqStr>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<UserProperty>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

use PropCtx::*;

/// Allowed contexts for a property id, or `None` for an unknown id.
fn allowed(id: u8) -> Option<u16> {
    let m = |c: &[PropCtx]| c.iter().fold(0u16, |acc, c| acc | c.bit());
    Some(match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => m(&[Publish, Will]),
        0x0B => m(&[Publish, Subscribe]),
        0x11 => m(&[Connect, ConnAck, Disconnect]),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => m(&[ConnAck]),
        0x15 | 0x16 => m(&[Connect, ConnAck, Auth]),
        0x17 | 0x19 => m(&[Connect]),
        0x18 => m(&[Will]),
        0x1C => m(&[ConnAck, Disconnect]),
        0x1F => m(&[ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth]),
        0x21 | 0x22 | 0x27 => m(&[Connect, ConnAck]),
        0x23 => m(&[Publish]),
        0x26 => 0xFFFF,
        _ => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::protocol("duplicate property"));
    }
    *slot = Some(v);
    Ok(())
}

fn boolean(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::protocol(what));
    }
    Ok(v)
}

fn nonzero_u16(v: u16, what: &'static str) -> Result<u16, DecodeError> {
    if v == 0 {
        return Err(DecodeError::protocol(what));
    }
    Ok(v)
}

impl Properties {
    /// Whether no property is set (field by field, without building an empty set: it runs for
    /// every PUBLISH; the destructuring makes a new field a compile error here).
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        } = self;
        let bytes = [
            payload_format_indicator,
            request_problem_information,
            request_response_information,
            maximum_qos,
            retain_available,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        ];
        let strings = [content_type, response_topic, assigned_client_identifier, authentication_method];
        let more_strings = [response_information, server_reference, reason_string];
        let u32s =
            [message_expiry_interval, session_expiry_interval, will_delay_interval, maximum_packet_size];
        let u16s = [server_keep_alive, receive_maximum, topic_alias_maximum, topic_alias];
        bytes.iter().all(|v| v.is_none())
            && strings.iter().chain(more_strings.iter()).all(|v| v.is_none())
            && u32s.iter().all(|v| v.is_none())
            && u16s.iter().all(|v| v.is_none())
            && correlation_data.is_none()
            && authentication_data.is_none()
            && subscription_identifiers.is_empty()
            && user_properties.is_empty()
    }

    /// Decodes a property list (length varint first) valid in `ctx`.
    pub fn decode(buf: &mut Bytes, ctx: PropCtx) -> Result<Properties, DecodeError> {
        let len = read_varint(buf)? as usize;
        if len > buf.remaining() {
            return Err(DecodeError::malformed("property length exceeds packet"));
        }
        let mut b = buf.split_to(len);
        let mut p = Properties::default();
        while b.has_remaining() {
            let id = read_varint(&mut b)?;
            let id = u8::try_from(id).map_err(|_| DecodeError::malformed("unknown property"))?;
            let mask = allowed(id).ok_or(DecodeError::malformed("unknown property identifier"))?;
            if mask & ctx.bit() == 0 {
                return Err(DecodeError::protocol("property not allowed in this packet"));
            }
            match id {
                0x01 => {
                    let v = boolean(read_u8(&mut b)?, "payload format indicator not 0 or 1")?;
                    set_once(&mut p.payload_format_indicator, v)?
                }
                0x02 => set_once(&mut p.message_expiry_interval, read_u32(&mut b)?)?,
                0x03 => set_once(&mut p.content_type, read_str(&mut b)?)?,
                0x08 => {
                    let t = read_str(&mut b)?;
                    if !super::topic::valid_name(t.as_str()) {
                        return Err(DecodeError::protocol("response topic is not a topic name"));
                    }
                    set_once(&mut p.response_topic, t)?
                }
                0x09 => set_once(&mut p.correlation_data, read_binary(&mut b)?)?,
                0x0B => {
                    let v = read_varint(&mut b)?;
                    if v == 0 {
                        return Err(DecodeError::protocol("subscription identifier 0"));
                    }
                    if ctx == Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::protocol("duplicate subscription identifier"));
                    }
                    if p.subscription_identifiers.len() >= crate::limits::SUB_IDS_PER_PUBLISH_MAX {
                        return Err(DecodeError::protocol("too many subscription identifiers"));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => set_once(&mut p.session_expiry_interval, read_u32(&mut b)?)?,
                0x12 => set_once(&mut p.assigned_client_identifier, read_str(&mut b)?)?,
                0x13 => set_once(&mut p.server_keep_alive, read_u16(&mut b)?)?,
                0x15 => set_once(&mut p.authentication_method, read_str(&mut b)?)?,
                0x16 => set_once(&mut p.authentication_data, read_binary(&mut b)?)?,
                0x17 => {
                    let v = boolean(read_u8(&mut b)?, "request problem information not 0 or 1")?;
                    set_once(&mut p.request_problem_information, v)?
                }
                0x18 => set_once(&mut p.will_delay_interval, read_u32(&mut b)?)?,
                0x19 => {
                    let v = boolean(read_u8(&mut b)?, "request response information not 0 or 1")?;
                    set_once(&mut p.request_response_information, v)?
                }
                0x1A => set_once(&mut p.response_information, read_str(&mut b)?)?,
                0x1C => set_once(&mut p.server_reference, read_str(&mut b)?)?,
                0x1F => set_once(&mut p.reason_string, read_str(&mut b)?)?,
                0x21 => {
                    let v = nonzero_u16(read_u16(&mut b)?, "receive maximum 0")?;
                    set_once(&mut p.receive_maximum, v)?
                }
                0x22 => set_once(&mut p.topic_alias_maximum, read_u16(&mut b)?)?,
                0x23 => {
                    let v = nonzero_u16(read_u16(&mut b)?, "topic alias 0")?;
                    set_once(&mut p.topic_alias, v)?
                }
                0x24 => {
                    let v = boolean(read_u8(&mut b)?, "maximum QoS not 0 or 1")?;
                    set_once(&mut p.maximum_qos, v)?
                }
                0x25 => {
                    let v = boolean(read_u8(&mut b)?, "retain available not 0 or 1")?;
                    set_once(&mut p.retain_available, v)?
                }
                0x26 => {
                    if p.user_properties.len() >= crate::limits::USER_PROPERTIES_MAX {
                        return Err(DecodeError::new(
                            ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                            "too many user properties",
                        ));
                    }
                    let k = read_str(&mut b)?;
                    let v = read_str(&mut b)?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = read_u32(&mut b)?;
                    if v == 0 {
                        return Err(DecodeError::protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                0x28 => {
                    let v = boolean(read_u8(&mut b)?, "wildcard subscription available not 0/1")?;
                    set_once(&mut p.wildcard_subscription_available, v)?
                }
                0x29 => {
                    let v = boolean(read_u8(&mut b)?, "subscription id available not 0 or 1")?;
                    set_once(&mut p.subscription_identifier_available, v)?
                }
                0x2A => {
                    let v = boolean(read_u8(&mut b)?, "shared subscription available not 0/1")?;
                    set_once(&mut p.shared_subscription_available, v)?
                }
                _ => unreachable!("allowed() rejected unknown ids"),
            }
        }
        Ok(p)
    }

    /// Encoded length of the property list without its length prefix.
    pub fn body_len(&self) -> usize {
        let s = |o: &Option<MqStr>| o.as_ref().map_or(0, |v| 3 + v.len());
        let b = |o: &Option<Bytes>| o.as_ref().map_or(0, |v| 3 + v.len());
        let n = |o: bool, w: usize| if o { 1 + w } else { 0 };
        let mut len = 0;
        len += n(self.payload_format_indicator.is_some(), 1);
        len += n(self.message_expiry_interval.is_some(), 4);
        len += s(&self.content_type) + s(&self.response_topic) + b(&self.correlation_data);
        for id in &self.subscription_identifiers {
            len += 1 + varint_len(*id as usize);
        }
        len += n(self.session_expiry_interval.is_some(), 4);
        len += s(&self.assigned_client_identifier);
        len += n(self.server_keep_alive.is_some(), 2);
        len += s(&self.authentication_method) + b(&self.authentication_data);
        len += n(self.request_problem_information.is_some(), 1);
        len += n(self.will_delay_interval.is_some(), 4);
        len += n(self.request_response_information.is_some(), 1);
        len += s(&self.response_information) + s(&self.server_reference);
        len += s(&self.reason_string);
        len += n(self.receive_maximum.is_some(), 2);
        len += n(self.topic_alias_maximum.is_some(), 2);
        len += n(self.topic_alias.is_some(), 2);
        len += n(self.maximum_qos.is_some(), 1);
        len += n(self.retain_available.is_some(), 1);
        for (k, v) in &self.user_properties {
            len += 1 + 2 + k.len() + 2 + v.len();
        }
        len += n(self.maximum_packet_size.is_some(), 4);
        len += n(self.wildcard_subscription_available.is_some(), 1);
        len += n(self.subscription_identifier_available.is_some(), 1);
        len += n(self.shared_subscription_available.is_some(), 1);
        len
    }

    /// Encoded length including the length prefix.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        varint_len(body) + body
    }

    /// Writes the property list with its length prefix.
    pub fn encode(&self, out: &mut impl BufMut) {
        write_varint(out, self.body_len());
        self.encode_body(out, false);
    }

    /// Writes the properties without the length prefix; `skip_expiry` leaves out the message
    /// expiry interval (the caller writes the remaining lifetime instead).
    pub fn encode_body(&self, out: &mut impl BufMut, skip_expiry: bool) {
        fn u8p(out: &mut impl BufMut, id: u8, v: Option<u8>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        }
        fn u16p(out: &mut impl BufMut, id: u8, v: Option<u16>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        }
        fn u32p(out: &mut impl BufMut, id: u8, v: Option<u32>) {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        }
        fn strp(out: &mut impl BufMut, id: u8, v: &Option<MqStr>) {
            if let Some(v) = v {
                out.put_u8(id);
                write_str(out, v);
            }
        }
        fn binp(out: &mut impl BufMut, id: u8, v: &Option<Bytes>) {
            if let Some(v) = v {
                out.put_u8(id);
                write_binary(out, v);
            }
        }
        u8p(out, 0x01, self.payload_format_indicator);
        if !skip_expiry {
            u32p(out, 0x02, self.message_expiry_interval);
        }
        strp(out, 0x03, &self.content_type);
        strp(out, 0x08, &self.response_topic);
        binp(out, 0x09, &self.correlation_data);
        for id in &self.subscription_identifiers {
            out.put_u8(0x0B);
            write_varint(out, *id as usize);
        }
        u32p(out, 0x11, self.session_expiry_interval);
        strp(out, 0x12, &self.assigned_client_identifier);
        u16p(out, 0x13, self.server_keep_alive);
        strp(out, 0x15, &self.authentication_method);
        binp(out, 0x16, &self.authentication_data);
        u8p(out, 0x17, self.request_problem_information);
        u32p(out, 0x18, self.will_delay_interval);
        u8p(out, 0x19, self.request_response_information);
        strp(out, 0x1A, &self.response_information);
        strp(out, 0x1C, &self.server_reference);
        strp(out, 0x1F, &self.reason_string);
        u16p(out, 0x21, self.receive_maximum);
        u16p(out, 0x22, self.topic_alias_maximum);
        u16p(out, 0x23, self.topic_alias);
        u8p(out, 0x24, self.maximum_qos);
        u8p(out, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(0x26);
            write_str(out, k);
            write_str(out, v);
        }
        u32p(out, 0x27, self.maximum_packet_size);
        u8p(out, 0x28, self.wildcard_subscription_available);
        u8p(out, 0x29, self.subscription_identifier_available);
        u8p(out, 0x2A, self.shared_subscription_available);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_empty_sees_every_property() {
        let set: Vec<fn(&mut Properties)> = vec![
            |p| p.payload_format_indicator = Some(1),
            |p| p.message_expiry_interval = Some(1),
            |p| p.content_type = Some(MqStr::from_static("x")),
            |p| p.response_topic = Some(MqStr::from_static("x")),
            |p| p.correlation_data = Some(bytes::Bytes::from_static(b"x")),
            |p| p.subscription_identifiers.push(1),
            |p| p.session_expiry_interval = Some(1),
            |p| p.assigned_client_identifier = Some(MqStr::from_static("x")),
            |p| p.server_keep_alive = Some(1),
            |p| p.authentication_method = Some(MqStr::from_static("x")),
            |p| p.authentication_data = Some(bytes::Bytes::from_static(b"x")),
            |p| p.request_problem_information = Some(1),
            |p| p.will_delay_interval = Some(1),
            |p| p.request_response_information = Some(1),
            |p| p.response_information = Some(MqStr::from_static("x")),
            |p| p.server_reference = Some(MqStr::from_static("x")),
            |p| p.reason_string = Some(MqStr::from_static("x")),
            |p| p.receive_maximum = Some(1),
            |p| p.topic_alias_maximum = Some(1),
            |p| p.topic_alias = Some(1),
            |p| p.maximum_qos = Some(1),
            |p| p.retain_available = Some(1),
            |p| p.user_properties.push((MqStr::from_static("k"), MqStr::from_static("v"))),
            |p| p.maximum_packet_size = Some(1),
            |p| p.wildcard_subscription_available = Some(1),
            |p| p.subscription_identifier_available = Some(1),
            |p| p.shared_subscription_available = Some(1),
        ];
        assert!(Properties::default().is_empty());
        for (i, f) in set.iter().enumerate() {
            let mut p = Properties::default();
            f(&mut p);
            assert_ne!(p, Properties::default(), "setter {i} sets something");
            assert!(!p.is_empty(), "setter {i}: a set property is seen");
        }
    }
}
