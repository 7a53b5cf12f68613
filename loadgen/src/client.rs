//! The MQTT client side, on the `mqttbytes` codec (3.1.1): connect, subscribe, read packets.
//! An implementation independent of the broker's codec, so each cross-checks the other.

use bytes::BytesMut;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;

use crate::transport::{self, Conn, Kind};
use crate::Res;

/// Where and how to connect: shared by every scenario.
#[derive(Clone, Debug)]
pub struct Target {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Port subscribers connect to (the same as `port` unless `--sub-port` says otherwise).
    pub sub_port: u16,
    /// Transport.
    pub kind: Kind,
    /// TLS client configuration for tls and wss.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Target {
    /// Builds a target, loading the CA for tls and wss.
    pub fn new(host: &str, port: u16, kind: Kind, cafile: Option<&str>) -> Res<Target> {
        let tls = match (kind, cafile) {
            (Kind::Tls | Kind::Wss, Some(ca)) => Some(transport::tls_config(ca)?),
            (Kind::Tls | Kind::Wss, None) => return Err("--cafile is required for tls and wss".into()),
            _ => None,
        };
        Ok(Target { host: host.into(), port, sub_port: port, kind, tls })
    }

    /// Opens a connection and completes CONNECT/CONNACK.
    pub fn connect(&self, id: &str, login: Option<(&str, &str)>, keep_alive: u16) -> Res<(Conn, BytesMut)> {
        let s = Conn::connect(&self.host, self.port, self.kind, self.tls.as_ref())?;
        mqtt_connect(s, id, login, keep_alive)
    }

    /// The target subscribers use: `sub_port` instead of `port`.
    pub fn for_subscribers(&self) -> Target {
        Target { port: self.sub_port, ..self.clone() }
    }
}

/// Sends CONNECT on an open transport and waits for a successful CONNACK. Returns the
/// connection and any bytes read past the CONNACK.
pub fn mqtt_connect(
    s: Conn,
    id: &str,
    login: Option<(&str, &str)>,
    keep_alive: u16,
) -> Res<(Conn, BytesMut)> {
    mqtt_connect_clean(s, id, login, keep_alive, true)
}

/// Opens a connection to `t` and connects with the given Clean Session flag (false: a
/// persistent session the broker keeps while the client is away).
pub fn mqtt_connect_session(
    t: &Target,
    id: &str,
    login: Option<(&str, &str)>,
    keep_alive: u16,
    clean: bool,
) -> Res<(Conn, BytesMut)> {
    let s = Conn::connect(&t.host, t.port, t.kind, t.tls.as_ref())?;
    mqtt_connect_clean(s, id, login, keep_alive, clean)
}

fn mqtt_connect_clean(
    mut s: Conn,
    id: &str,
    login: Option<(&str, &str)>,
    keep_alive: u16,
    clean: bool,
) -> Res<(Conn, BytesMut)> {
    let mut buf = BytesMut::new();
    let mut c = v4::Connect::new(id);
    c.keep_alive = keep_alive;
    c.clean_session = clean;
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    c.write(&mut buf).map_err(|e| format!("{e:?}"))?;
    s.write_all(&buf).map_err(|e| format!("CONNECT: {e}"))?;
    let mut rb = BytesMut::new();
    match read_packet(&mut s, &mut rb)? {
        Packet::ConnAck(ack) if ack.code == v4::ConnectReturnCode::Success => Ok((s, rb)),
        Packet::ConnAck(ack) => Err(format!("CONNECT refused: {:?}", ack.code)),
        other => Err(format!("unexpected reply to CONNECT: {other:?}")),
    }
}

/// Subscribes to `filters` with packet id 1 and waits for the SUBACK. A server may send
/// matching PUBLISH packets before the SUBACK (MQTT 3.8.4): those are skipped here (they are
/// leftovers, not part of the measured run, which starts after every client is subscribed).
pub fn subscribe(s: &mut Conn, rb: &mut BytesMut, filters: &[String], qos: QoS) -> Res<()> {
    let mut buf = BytesMut::new();
    let subs: Vec<_> = filters.iter().map(|f| v4::SubscribeFilter::new(f.clone(), qos)).collect();
    let mut sub = v4::Subscribe::new_many(subs);
    sub.pkid = 1;
    sub.write(&mut buf).map_err(|e| format!("{e:?}"))?;
    s.write_all(&buf).map_err(|e| format!("SUBSCRIBE: {e}"))?;
    loop {
        match read_packet(s, rb)? {
            Packet::SubAck(ack) => {
                let refused = ack.return_codes.iter().any(|c| matches!(c, v4::SubscribeReasonCode::Failure));
                return if refused { Err(format!("SUBSCRIBE {filters:?} refused")) } else { Ok(()) };
            }
            Packet::Publish(_) => {}
            other => return Err(format!("unexpected reply to SUBSCRIBE: {other:?}")),
        }
    }
}

/// Reads one packet, blocking.
pub fn read_packet(s: &mut Conn, rb: &mut BytesMut) -> Res<Packet> {
    let mut chunk = [0u8; 16384];
    loop {
        match v4::read(rb, 1 << 24) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("decode: {e:?}")),
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed by the broker".into());
        }
        rb.extend_from_slice(&chunk[..n]);
    }
}

/// The QoS for a number given on the command line.
pub fn qos(n: u8) -> Res<QoS> {
    match n {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err("--qos must be 0, 1 or 2".into()),
    }
}
