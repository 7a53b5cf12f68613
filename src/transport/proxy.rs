//! PROXY protocol v2 (HAProxy), so that the remote address seen by logs and audit events is the
//! client's behind a TCP load balancer. Parsing is the `ppp` crate's.

use futures_lite::io::{AsyncRead, AsyncReadExt};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest header accepted (the spec allows 16 + 65535; addresses plus TLVs rarely exceed this).
const HEADER_BYTES_MAX: usize = 16 + 2048;

/// Reads one PROXY v2 header; returns the client address (`None` for LOCAL commands, e.g. the
/// balancer's health checks). Anything else is an error and the connection is closed.
pub async fn read_v2<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<String>, String> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).await.map_err(|e| format!("PROXY header: {e}"))?;
    if head[..12] != SIGNATURE {
        return Err("PROXY v2 signature missing".into());
    }
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    if 16 + len > HEADER_BYTES_MAX {
        return Err(format!("PROXY v2 header of {} bytes is too large", 16 + len));
    }
    let mut buf = head.to_vec();
    buf.resize(16 + len, 0);
    s.read_exact(&mut buf[16..]).await.map_err(|e| format!("PROXY header: {e}"))?;
    let h = ppp::v2::Header::try_from(&buf[..]).map_err(|e| format!("PROXY v2 header: {e:?}"))?;
    match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => Ok(None),
        (_, ppp::v2::Addresses::IPv4(a)) => Ok(Some(format!("{}:{}", a.source_address, a.source_port))),
        (_, ppp::v2::Addresses::IPv6(a)) => Ok(Some(format!("[{}]:{}", a.source_address, a.source_port))),
        (_, other) => Err(format!("PROXY v2 address family not supported: {other:?}")),
    }
}
