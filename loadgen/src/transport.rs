//! Client-side transports for the load generator: plain TCP, TLS (rustls), WebSocket and
//! secure WebSocket (tungstenite), behind one blocking read/write interface.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Plain TCP.
    Tcp,
    /// TLS.
    Tls,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// A TLS client configuration trusting `cafile`, without session resumption (every handshake
/// is a full one).
pub fn tls_config(cafile: &str) -> Result<Arc<ClientConfig>, String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cafile).map_err(|e| format!("{cafile}: {e}"))? {
        roots.add(c.map_err(|e| format!("{cafile}: {e}"))?).map_err(|e| format!("{cafile}: {e}"))?;
    }
    let mut cfg = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

enum Inner {
    Tcp(TcpStream),
    Tls(Box<Tls>),
    Ws(Box<WebSocket<TcpStream>>),
    Wss(Box<WebSocket<Tls>>),
}

/// One client connection.
pub struct Conn {
    inner: Inner,
    pending: Vec<u8>,
}

fn tls_connect(tcp: TcpStream, cfg: &Arc<ClientConfig>) -> Result<Tls, String> {
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(s)
}

fn ws_request(host: &str, port: u16, tls: bool) -> Result<tungstenite::handshake::client::Request, String> {
    use tungstenite::client::IntoClientRequest;
    let scheme = if tls { "wss" } else { "ws" };
    let mut req =
        format!("{scheme}://{host}:{port}/mqtt").into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("static header"));
    Ok(req)
}

impl Conn {
    /// Connects with `kind`; `tls` is required for tls and wss.
    pub fn connect(
        host: &str,
        port: u16,
        kind: Kind,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<Conn, String> {
        let tcp = TcpStream::connect((host, port)).map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let need_tls = || tls.ok_or_else(|| "--cafile is required for tls/wss".to_string());
        let inner = match kind {
            Kind::Tcp => Inner::Tcp(tcp),
            Kind::Tls => Inner::Tls(Box::new(tls_connect(tcp, need_tls()?)?)),
            Kind::Ws => {
                let (ws, _) = tungstenite::client::client(ws_request(host, port, false)?, tcp)
                    .map_err(|e| format!("WebSocket: {e}"))?;
                Inner::Ws(Box::new(ws))
            }
            Kind::Wss => {
                let s = tls_connect(tcp, need_tls()?)?;
                let (ws, _) = tungstenite::client::client(ws_request("localhost", port, true)?, s)
                    .map_err(|e| format!("WebSocket: {e}"))?;
                Inner::Wss(Box::new(ws))
            }
        };
        Ok(Conn { inner, pending: Vec::new() })
    }

    /// Writes all bytes (one binary message on WebSocket).
    pub fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        let e = |e: tungstenite::Error| std::io::Error::other(e.to_string());
        match &mut self.inner {
            Inner::Tcp(s) => s.write_all(b),
            Inner::Tls(s) => s.write_all(b).and_then(|_| s.flush()),
            Inner::Ws(w) => w.send(Message::Binary(b.to_vec().into())).map_err(e),
            Inner::Wss(w) => w.send(Message::Binary(b.to_vec().into())).map_err(e),
        }
    }

    /// Reads some bytes; 0 means closed.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.pending.is_empty() {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        let msg = match &mut self.inner {
            Inner::Tcp(s) => return s.read(buf),
            Inner::Tls(s) => return s.read(buf),
            Inner::Ws(w) => w.read(),
            Inner::Wss(w) => w.read(),
        };
        match msg {
            Ok(Message::Binary(b)) => {
                self.pending.extend_from_slice(&b);
                self.read(buf)
            }
            Ok(Message::Close(_)) => Ok(0),
            Ok(_) => self.read(buf),
            Err(tungstenite::Error::Io(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// A second handle on a plain TCP connection (for a separate reader thread).
    pub fn try_clone_tcp(&self) -> Result<Conn, String> {
        match &self.inner {
            Inner::Tcp(s) => {
                Ok(Conn { inner: Inner::Tcp(s.try_clone().map_err(|e| e.to_string())?), pending: Vec::new() })
            }
            _ => Err("only plain TCP connections can be cloned".into()),
        }
    }

    /// Shuts the underlying socket down.
    pub fn shutdown(&self) {
        let s = match &self.inner {
            Inner::Tcp(s) => s,
            Inner::Tls(s) => &s.sock,
            Inner::Ws(w) => w.get_ref(),
            Inner::Wss(w) => &w.get_ref().sock,
        };
        let _ = s.shutdown(std::net::Shutdown::Both);
    }

    /// Sets a read timeout on the underlying socket.
    pub fn set_read_timeout(&self, d: Option<std::time::Duration>) {
        let _ = match &self.inner {
            Inner::Tcp(s) => s.set_read_timeout(d),
            Inner::Tls(s) => s.sock.set_read_timeout(d),
            Inner::Ws(w) => w.get_ref().set_read_timeout(d),
            Inner::Wss(w) => w.get_ref().sock.set_read_timeout(d),
        };
    }
}
