//! The codec fuzz body: decode arbitrary bytes under every protocol state; whatever decodes
//! must re-encode to an equal packet, whatever is rejected must carry an error reason code.
//! Shared by the cargo-fuzz target (`tests/fuzz`) and the seed-corpus replay test.

use bytes::Bytes;

use super::encode::to_bytes;
use super::*;

/// Decodes exactly one whole packet from `raw`.
pub(crate) fn decode_all(v: Option<Protocol>, raw: &[u8]) -> Result<Packet, DecodeError> {
    let f = frame(raw, u32::MAX)?.ok_or(DecodeError::malformed("incomplete"))?;
    if f.total() != raw.len() {
        return Err(DecodeError::malformed("length mismatch"));
    }
    decode_packet(Bytes::copy_from_slice(raw), &f, v)
}

/// Decodes, re-encodes, decodes again: both decodes must agree and re-encoding must be stable.
/// Rejected input must carry a reason code >= 0x80. This is the body of the fuzz target.
pub fn roundtrip_check(data: &[u8]) {
    for v in [None, Some(Protocol::V311), Some(Protocol::V5)] {
        let Ok(Some(f)) = frame(data, 1 << 20) else { continue };
        if f.total() > data.len() {
            continue;
        }
        match decode_packet(Bytes::copy_from_slice(&data[..f.total()]), &f, v) {
            Err(e) => assert!(e.reason.is_error(), "rejection without an error code: {e:?}"),
            Ok(p) => {
                let proto = match (&p, v) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => unreachable!("only CONNECT decodes before a protocol is known"),
                };
                let enc = to_bytes(proto, &p);
                let again = decode_all(v, &enc).expect("re-encoded packet decodes");
                assert_eq!(p, again, "decode(encode(p)) == p");
                assert_eq!(enc, to_bytes(proto, &again), "encoding is stable");
            }
        }
    }
}
