//! MQTT over WebSocket (`ws`, `wss`). The HTTP request head is read and checked here (path,
//! upgrade, subprotocol), so every refusal gets a clear HTTP status; the WebSocket handshake and
//! all framing are tungstenite's. [`WsBytes`] turns the message stream into the byte stream the
//! connection task reads: binary messages only, MQTT packets may span messages and one message
//! may hold several packets. Frame and message sizes are capped by the maximum packet size.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::{Buf, Bytes};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::Stream;
use futures_util::Sink;

/// Longest HTTP request head accepted.
const HEAD_BYTES_MAX: usize = 8 * 1024;

/// Subprotocols we speak, in order of preference (`mqttv3.1` is the 3.1-era name some
/// clients still send).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why an upgrade was refused (already answered with an HTTP status).
#[derive(Debug)]
pub struct Refused(pub String);

/// Reads and checks the upgrade request, then completes the WebSocket handshake.
// The handshake callback's error type (an HTTP response) is dictated by tungstenite's
// `Callback` trait; it is built at most once per connection.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(mut s: S, path: &str, max_packet: u32) -> Result<WsBytes<Prefixed<S>>, Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 512];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > HEAD_BYTES_MAX {
            return Err(reply(&mut s, 431, "request head too large").await);
        }
        let n = s.read(&mut byte).await.map_err(|e| Refused(e.to_string()))?;
        if n == 0 {
            return Err(Refused("closed during the HTTP request".into()));
        }
        head.extend_from_slice(&byte[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head[..end]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(reply(&mut s, 400, "malformed HTTP request").await),
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let req_path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    if req_path != path {
        return Err(reply(&mut s, 404, &format!("no MQTT endpoint at {req_path}; use {path}")).await);
    }
    if req.method != Some("GET") || !header("upgrade").to_ascii_lowercase().contains("websocket") {
        return Err(
            reply(&mut s, 426, "this endpoint speaks MQTT over WebSocket: send an Upgrade request").await
        );
    }
    let offered = header("sec-websocket-protocol");
    let offered: Vec<&str> = offered.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let chosen = SUBPROTOCOLS.iter().find(|p| offered.contains(p)).copied();
    if !offered.is_empty() && chosen.is_none() {
        return Err(reply(&mut s, 400, "unsupported WebSocket subprotocol; use \"mqtt\"").await);
    }
    let stream = Prefixed { prefix: Bytes::from(head), inner: s };
    let max = max_packet as usize;
    let cfg = WebSocketConfig::default().max_frame_size(Some(max)).max_message_size(Some(max));
    let callback = move |_req: &Request, mut resp: Response| {
        if let Some(p) = chosen {
            resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        Ok(resp)
    };
    let ws = async_tungstenite::accept_hdr_async_with_config(stream, callback, Some(cfg))
        .await
        .map_err(|e| Refused(format!("WebSocket handshake: {e}")))?;
    Ok(WsBytes { ws, rbuf: Bytes::new() })
}

async fn reply<S: AsyncWrite + Unpin>(s: &mut S, status: u16, msg: &str) -> Refused {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        _ => "Request Header Fields Too Large",
    };
    let body = format!("{msg}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nUpgrade: websocket\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.flush().await;
    Refused(format!("{status} {msg}"))
}

/// A stream that first yields bytes already read (the HTTP request head).
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.prefix.is_empty() {
            let n = buf.len().min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// MQTT bytes over WebSocket binary messages.
#[derive(Debug)]
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    rbuf: Bytes,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if !self.rbuf.is_empty() {
                let n = buf.len().min(self.rbuf.len());
                buf[..n].copy_from_slice(&self.rbuf[..n]);
                self.rbuf.advance(n);
                return Poll::Ready(Ok(n));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.rbuf = b,
                // tungstenite answers pings itself; pongs and raw frames carry no MQTT bytes.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // MQTT over WebSocket is binary only [MQTT-6.0.0-1]: a text frame closes.
                Some(Ok(Message::Text(_))) => return Poll::Ready(Err(io_err("text frame (binary only)"))),
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_err)?;
        Pin::new(&mut self.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io_err)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_err)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(io_err)
    }
}
