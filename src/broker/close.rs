//! How a connection ends: a requested close (with the reason code and audit cause), a
//! refused CONNECT, DISCONNECT from the client, the transport gone, the broker stopping; and
//! what ending does to its session (will, expiry, detach).

use super::*;

/// Why the broker closes a connection: what the client is told (the MQTT 5 DISCONNECT reason
/// code, when the connection is active) and what the audit log's `disconnect` event names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The transport failed or the client went away without DISCONNECT.
    ConnectionLost,
    /// No CONNECT within the CONNECT timeout.
    ConnectTimeout,
    /// Nothing received for one and a half keep-alives (0x8D).
    KeepAliveTimeout,
    /// The token or JWT it authenticated with expired (0xA0).
    CredentialExpired,
    /// A packet broke the protocol; the reason code says how (0x81, 0x82, 0x94, 0x93…).
    Protocol(ReasonCode),
    /// Another connection took its session (0x8E), or claimed it before it was granted.
    SessionTakenOver,
    /// An administrator closed it, or its user or token was removed (0x98).
    AdministrativeAction,
    /// Its organization was deleted (0x98).
    OrgDeleted,
    /// MQTT 5 re-authentication failed (0x87).
    ReauthenticationFailed,
    /// The store failed while the connection waited for something it had to make durable.
    StoreFailing,
    /// The broker is stopping (0x8B).
    ServerShuttingDown,
}

impl CloseCause {
    /// The reason code an active MQTT 5 client gets in DISCONNECT (`None`: no DISCONNECT).
    pub fn reason_code(self) -> Option<ReasonCode> {
        match self {
            CloseCause::ClientDisconnect
            | CloseCause::ConnectionLost
            | CloseCause::ConnectTimeout
            | CloseCause::StoreFailing => None,
            CloseCause::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            CloseCause::CredentialExpired => Some(ReasonCode::MAXIMUM_CONNECT_TIME),
            CloseCause::Protocol(r) => Some(r),
            CloseCause::SessionTakenOver => Some(ReasonCode::SESSION_TAKEN_OVER),
            CloseCause::AdministrativeAction | CloseCause::OrgDeleted => {
                Some(ReasonCode::ADMINISTRATIVE_ACTION)
            }
            CloseCause::ReauthenticationFailed => Some(ReasonCode::NOT_AUTHORIZED),
            CloseCause::ServerShuttingDown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
        }
    }

    /// The `reason` of the audit log's `disconnect` event.
    pub fn audit_name(self) -> &'static str {
        match self {
            CloseCause::ClientDisconnect => "client_disconnect",
            CloseCause::ConnectionLost => "connection_lost",
            CloseCause::ConnectTimeout => "connect_timeout",
            CloseCause::KeepAliveTimeout => "keep_alive_timeout",
            CloseCause::CredentialExpired => "credential_expired",
            CloseCause::Protocol(_) => "protocol_error",
            CloseCause::SessionTakenOver => "session_taken_over",
            CloseCause::AdministrativeAction => "administrative_action",
            CloseCause::OrgDeleted => "org_deleted",
            CloseCause::ReauthenticationFailed => "reauthentication_failed",
            CloseCause::StoreFailing => "store_failing",
            CloseCause::ServerShuttingDown => "server_shutting_down",
        }
    }
}

impl ShardCore {
    /// The transport is gone (EOF, error, or after a requested close). Frees the slot.
    pub fn handle_closed(&mut self, id: ConnId, now_ms: u64) {
        if self.conn(id).is_none() {
            return;
        }
        self.detach(id, now_ms, true);
        self.clear_pressure(id);
        if let Some(t) = self.conn_mut(id).and_then(|c| c.login.pending_auth.take()).and_then(|p| p.ticket) {
            self.auth.verified(t, None);
        }
        let c = self.conns.remove(id).expect("checked above");
        if let Some(s) = c.share.fair {
            self.fair.leave(s);
        }
        if c.share.quota_slot {
            if let Some(q) = &c.share.quota {
                q.disconnect();
            }
        }
        if let (Some(ident), Some(key)) = (&c.login.identity, &c.attach.key) {
            let reason = c.link.cause.unwrap_or(CloseCause::ConnectionLost).audit_name();
            let mut detail = vec![
                ("reason", reason.into()),
                ("transport", c.link.listener.transport.into()),
                ("remote", (*c.link.remote).into()),
            ];
            if let Some(code) = c.link.cause.and_then(CloseCause::reason_code) {
                detail.push(("reason_code", code.0.into()));
            }
            let who = ident.audit_name();
            self.audit(
                now_ms,
                key.org.clone(),
                AuditKind::Disconnect,
                Some(&key.client_id),
                who.as_deref(),
                &detail,
            );
        }
        tracing::debug!(shard = self.shard, remote = %c.link.remote, transport = c.link.listener.transport, client_cn = ?c.link.client_cn, "connection closed");
        if let Some(k) = &c.attach.key {
            let e = self.closed_rx.entry(k.org.clone()).or_default();
            e.0 += c.link.rx_msgs;
            e.1 += c.link.tx_msgs;
        }
        self.drain_self(now_ms);
    }

    /// Closes every connection with `reason` (5.0 clients get a DISCONNECT), for shutdown.
    pub fn shutdown_all(&mut self, now_ms: u64) {
        self.shutting_down = true;
        let ids = self.conns_where(|_| true);
        for id in ids {
            self.close_conn(id, CloseCause::ServerShuttingDown, now_ms);
        }
    }

    /// Whether the connection wants to close (the reader should stop).
    pub fn is_closing(&self, id: ConnId) -> bool {
        self.conn(id).is_none_or(|c| c.link.closing)
    }

    /// Starts closing `id`: 5.0 clients get DISCONNECT `reason` first (when connected).
    pub fn close_conn(&mut self, id: ConnId, cause: CloseCause, now_ms: u64) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.link.closing {
            return;
        }
        if let (Some(r), Some(Protocol::V5), Phase::Active) =
            (cause.reason_code(), c.proto.protocol, &c.phase)
        {
            let d = Packet::Disconnect(Disconnect { reason: r, props: Properties::default() });
            encode_packet(&mut c.link.out, Protocol::V5, &d);
        }
        c.link.closing = true;
        c.link.cause.get_or_insert(cause);
        wake(&mut c.link.writer);
        wake(&mut c.link.reader);
        if let Some(t) = c.login.pending_auth.take().and_then(|p| p.ticket) {
            self.auth.verified(t, None); // releases its in-flight slot
        }
        // A normal DISCONNECT has already discarded the will; every other close publishes it.
        self.detach(id, now_ms, true);
        self.drain_self(now_ms);
    }

    /// Refuses a CONNECT with `reason` (CONNACK in the client's protocol) and closes.
    pub(super) fn refuse(&mut self, id: ConnId, protocol: Protocol, reason: ReasonCode) {
        let Some(c) = self.conn_mut(id) else { return };
        let ack = Packet::ConnAck(ConnAck { session_present: false, reason, props: Properties::default() });
        encode_packet(&mut c.link.out, protocol, &ack);
        c.link.closing = true;
        wake(&mut c.link.writer);
    }

    /// Detaches the session from a closing connection; publishes or schedules the will.
    fn detach(&mut self, id: ConnId, now_ms: u64, publish_will: bool) {
        let Some(c) = self.conn_mut(id) else { return };
        let will = c.attach.will.take();
        let will_delay = c.attach.will_delay_secs;
        let Some(sref) = c.attach.session.take() else {
            return;
        };
        let key = c.attach.key.clone();
        let Some(s) = self.session_mut(sref) else { return };
        s.conn = None;
        let expiry = s.state.expiry_secs;
        if expiry != 0 {
            self.count_offline(sref);
        }
        let Some(s) = self.session_mut(sref) else { return };
        if let (true, Some(w)) = (publish_will, will) {
            if will_delay > 0 && expiry > 0 {
                let delay = will_delay.min(expiry) as u64 * 1000;
                s.delayed_will = Some((now_ms + delay, w));
            } else if let Some(k) = &key {
                let org = k.org.clone();
                self.publish_internal(&org, w, now_ms);
            }
        }
        let s = self.session_mut(sref).expect("session still present");
        if expiry == 0 {
            self.end_session(sref, now_ms);
        } else {
            if expiry != u32::MAX {
                s.expires_at_ms = Some(now_ms + expiry as u64 * 1000);
            }
            self.persist_offline(sref);
        }
    }

    pub(super) fn handle_disconnect(&mut self, id: ConnId, now_ms: u64, d: Disconnect) {
        let c = self.conn_mut(id).expect("caller checked");
        if let Some(e) = d.props.session_expiry_interval {
            // Zero at CONNECT cannot become non-zero at DISCONNECT [MQTT-3.14.2-2].
            if c.attach.expiry_req == 0 && e != 0 {
                return self.close_conn(id, CloseCause::Protocol(ReasonCode::PROTOCOL_ERROR), now_ms);
            }
            c.attach.expiry_req = e;
            if let Some(sref) = c.attach.session {
                self.session_mut(sref).expect("live").state.expiry_secs = e;
            }
        }
        let c = self.conn_mut(id).expect("caller checked");
        if d.reason != ReasonCode::DISCONNECT_WITH_WILL {
            c.attach.will = None; // a normal DISCONNECT discards the will [MQTT-3.1.2-10]
        }
        self.close_conn(id, CloseCause::ClientDisconnect, now_ms);
    }
}
