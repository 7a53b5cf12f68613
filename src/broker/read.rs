//! Bytes in: framing, decoding and dispatch of each packet, and protocol failures.

use super::*;

/// The protocol level byte of a CONNECT frame, if it can be read.
fn peek_connect_level(raw: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *raw.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]) as usize;
    raw.get(i + 2 + name_len).copied()
}

impl ShardCore {
    /// Decodes and handles every complete packet in `buf`. The buffer keeps a partial packet;
    /// the shell must make room for at most the maximum packet size.
    pub fn handle_read(&mut self, id: ConnId, now_ms: u64, buf: &mut BytesMut) -> ReadVerdict {
        let verdict = self.read_packets(id, now_ms, buf);
        self.drain_self(now_ms);
        verdict
    }

    fn read_packets(&mut self, id: ConnId, now_ms: u64, buf: &mut BytesMut) -> ReadVerdict {
        loop {
            let Some(c) = self.conn_mut(id) else { return ReadVerdict::Close };
            if c.link.closing {
                return ReadVerdict::Close;
            }
            if matches!(c.phase, Phase::AwaitSession | Phase::AwaitAuth) {
                return ReadVerdict::Wait;
            }
            let protocol = c.proto.protocol;
            if c.phase != Phase::Active && buf.first().is_some_and(|b| *b != 0x10) {
                // Not a CONNECT (an HTTP request, a TLS ClientHello, noise): refuse at the first
                // byte instead of waiting for a length that may never arrive [MQTT-3.1.0-1].
                self.fail(id, None, buf, ReasonCode::PROTOCOL_ERROR, now_ms);
                return ReadVerdict::Close;
            }
            let max_packet = c.proto.max_packet;
            if protocol == Some(Protocol::V311)
                && c.phase == Phase::Active
                && buf.first().is_some_and(|b| b >> 4 == 3)
                && !match &c.share.quota {
                    Some(q) => c.share.lease.available(q, now_ms),
                    None => true,
                }
            {
                // Over the org's rate: 3.1.1 has no way to refuse a publish, so stop reading
                // (SPEC §4: throttled, nothing dropped); the PUBLISH stays in the buffer.
                c.share.throttled_until_ms = now_ms + limits::QUOTA_THROTTLE_MS;
                self.quota_hit(id, now_ms, "messages_per_minute");
                return ReadVerdict::Wait;
            }
            let f = match frame(buf, max_packet) {
                Ok(Some(f)) => f,
                Ok(None) => return ReadVerdict::Continue,
                Err(e) => {
                    self.fail(id, protocol, buf, e.reason, now_ms);
                    return ReadVerdict::Close;
                }
            };
            if buf.len() < f.total() {
                buf.reserve(f.total() - buf.len());
                return ReadVerdict::Continue;
            }
            let bytes = buf.split_to(f.total()).freeze();
            let c = self.conn_mut(id).expect("checked above");
            c.link.last_rx_ms = now_ms;
            let connected = if c.phase == Phase::Active { protocol } else { None };
            let packet = match decode_packet(bytes.clone(), &f, connected) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(id, protocol, &bytes, e.reason, now_ms);
                    return ReadVerdict::Close;
                }
            };
            self.handle_packet(id, now_ms, packet);
            if self.mesh_backlog() >= limits::MESH_BACKLOG_PAUSE {
                return ReadVerdict::Wait;
            }
            if let Some(c) = self.conn_mut(id) {
                if let Some(slot) = c.share.fair {
                    if self.fair.charge(slot) {
                        // Its org spent its share of this turn while another org has work.
                        if let Some(c) = self.conn_mut(id) {
                            c.share.fair_yielded = true;
                        }
                        return ReadVerdict::Wait;
                    }
                }
            }
        }
    }

    /// A decode or protocol failure: answer with the reason code where the protocol allows.
    fn fail(&mut self, id: ConnId, protocol: Option<Protocol>, raw: &[u8], reason: ReasonCode, now_ms: u64) {
        self.stats.protocol_errors += 1;
        let Some(c) = self.conn(id) else { return };
        if c.phase == Phase::Active {
            self.close_conn(id, CloseCause::Protocol(reason), now_ms);
            return;
        }
        // Before CONNECT completes: CONNACK with the reason in the client's protocol, if known.
        let level = protocol.map(|p| p.level()).or_else(|| peek_connect_level(raw));
        match (level, reason) {
            (Some(5), r) => self.refuse(id, Protocol::V5, r),
            (_, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)
            | (Some(4), ReasonCode::CLIENT_IDENTIFIER_NOT_VALID) => self.refuse(id, Protocol::V311, reason),
            _ => self.close_conn(id, CloseCause::Protocol(reason), now_ms),
        }
    }

    fn handle_packet(&mut self, id: ConnId, now_ms: u64, packet: Packet) {
        match packet {
            Packet::Connect(c) => self.handle_connect(id, now_ms, *c),
            Packet::Publish(p) => self.handle_publish(id, now_ms, p),
            Packet::PubAck(r) => self.handle_puback(id, now_ms, r, false),
            Packet::PubRec(r) => self.handle_pubrec(id, now_ms, r),
            Packet::PubRel(r) => self.handle_pubrel(id, now_ms, r),
            Packet::PubComp(r) => self.handle_puback(id, now_ms, r, true),
            Packet::Subscribe(s) => {
                let since = self.store_seq();
                self.handle_subscribe(id, now_ms, s);
                self.persist_conn_meta(id);
                self.gate_output(id, since);
            }
            Packet::Unsubscribe(u) => {
                let since = self.store_seq();
                self.handle_unsubscribe(id, now_ms, u);
                self.persist_conn_meta(id);
                self.gate_output(id, since);
            }
            Packet::PingReq => self.write(id, &Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(id, now_ms, d),
            Packet::Auth(a) => self.handle_auth(id, now_ms, a),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close_conn(id, CloseCause::Protocol(ReasonCode::PROTOCOL_ERROR), now_ms)
            }
        }
    }

    pub(super) fn write(&mut self, id: ConnId, p: &Packet) {
        if let Some(c) = self.conn_mut(id) {
            if let Some(v) = c.proto.protocol {
                encode_packet(&mut c.link.out, v, p);
                wake(&mut c.link.writer);
            }
        }
    }
}
