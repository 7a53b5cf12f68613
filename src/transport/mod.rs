//! Transports: plain TCP, TLS (rustls), WebSocket and secure WebSocket (tungstenite), with an
//! optional PROXY protocol v2 header first. Each turns an accepted socket into one byte stream
//! (`AsyncRead + AsyncWrite`) for the same connection task and codec, and reports the same
//! [`PeerInfo`] to the session and identity layer.

pub mod proxy;
pub mod tls;
pub mod ws;

pub use crate::broker::conn::{PeerInfo, TlsInfo};
