//! The wire's primitives: fixed-width integers, variable byte integers, length-prefixed
//! strings and binary data, read strictly and written, and the error a strict read reports.
//! Shared by packet decoding, encoding and properties.

use bytes::{Buf, BufMut, Bytes};

use super::{MqStr, PacketId, ReasonCode};

/// Why a packet was rejected, with the reason code to answer with before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// MQTT 5 reason code (CONNACK or DISCONNECT).
    pub reason: ReasonCode,
    /// Human-readable cause, for logs.
    pub what: &'static str,
}

impl DecodeError {
    /// A rejection with an explicit reason code.
    pub fn new(reason: ReasonCode, what: &'static str) -> Self {
        DecodeError { reason, what }
    }
    /// Malformed Packet (0x81).
    pub fn malformed(what: &'static str) -> Self {
        Self::new(ReasonCode::MALFORMED_PACKET, what)
    }
    /// Protocol Error (0x82).
    pub fn protocol(what: &'static str) -> Self {
        Self::new(ReasonCode::PROTOCOL_ERROR, what)
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (reason 0x{:02X})", self.what, self.reason.0)
    }
}

impl std::error::Error for DecodeError {}

/// Reads one byte.
pub(crate) fn read_u8(b: &mut Bytes) -> Result<u8, DecodeError> {
    if b.remaining() < 1 {
        return Err(DecodeError::malformed("packet truncated"));
    }
    Ok(b.get_u8())
}

/// Reads a big-endian u16.
pub(crate) fn read_u16(b: &mut Bytes) -> Result<u16, DecodeError> {
    if b.remaining() < 2 {
        return Err(DecodeError::malformed("packet truncated"));
    }
    Ok(b.get_u16())
}

/// Reads a big-endian u32.
pub(crate) fn read_u32(b: &mut Bytes) -> Result<u32, DecodeError> {
    if b.remaining() < 4 {
        return Err(DecodeError::malformed("packet truncated"));
    }
    Ok(b.get_u32())
}

/// Reads a non-zero packet identifier [MQTT-2.2.1-3].
pub(crate) fn read_pid(b: &mut Bytes) -> Result<PacketId, DecodeError> {
    PacketId::new(read_u16(b)?).ok_or(DecodeError::malformed("packet identifier 0"))
}

/// Reads a variable byte integer (at most 4 bytes, minimal form not required inside bodies).
pub(crate) fn read_varint(b: &mut Bytes) -> Result<u32, DecodeError> {
    let mut v = 0u32;
    for i in 0..4 {
        let byte = read_u8(b)?;
        v |= ((byte & 0x7F) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::malformed("variable byte integer longer than 4 bytes"))
}

/// Reads two-byte-length-prefixed binary data.
pub(crate) fn read_binary(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(b)? as usize;
    if b.remaining() < len {
        return Err(DecodeError::malformed("packet truncated"));
    }
    Ok(b.split_to(len))
}

/// Reads an MQTT UTF-8 string.
pub(crate) fn read_str(b: &mut Bytes) -> Result<MqStr, DecodeError> {
    MqStr::new(read_binary(b)?).ok_or(DecodeError::malformed("invalid UTF-8 string"))
}

/// Bytes a variable byte integer takes.
pub fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer (`v` < 268,435,456).
pub fn write_varint(out: &mut impl BufMut, mut v: usize) {
    debug_assert!(v < 268_435_456, "varint out of range");
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed string.
pub fn write_str(out: &mut impl BufMut, s: &MqStr) {
    write_binary(out, s.as_bytes());
}

/// Writes length-prefixed binary data (callers guarantee len <= 65535).
pub fn write_binary(out: &mut impl BufMut, b: &[u8]) {
    debug_assert!(b.len() <= u16::MAX as usize);
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}
