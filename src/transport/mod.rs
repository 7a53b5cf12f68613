//! Transports: plain TCP, TLS (rustls), WebSocket and secure WebSocket (tungstenite), with an
//! optional PROXY protocol v2 header first. Each turns an accepted socket into one byte stream
//! (`AsyncRead + AsyncWrite`) for the same connection task and codec, and reports the same
//! [`PeerInfo`] to the session and identity layer.

pub mod proxy;
pub mod tls;
pub mod ws;

/// What every transport reports about a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Remote address (the client's, behind a PROXY v2 load balancer).
    pub remote: String,
    /// `tcp`, `tls`, `ws` or `wss`.
    pub transport: &'static str,
    /// TLS details, for `tls` and `wss`.
    pub tls: Option<TlsInfo>,
}

/// Negotiated TLS parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Server name the client asked for (SNI).
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// Common name of a verified client certificate (the identity layer's `{cert_cn}`).
    pub client_cn: Option<String>,
}
