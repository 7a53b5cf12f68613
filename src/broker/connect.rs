//! CONNECT to CONNACK: validation, authentication (password on the hashing pool, token, JWT,
//! anonymous), the org's limits, the session claim; and MQTT 5 re-authentication with AUTH.

use super::*;

/// The MQTT 5 Authentication Method for JWTs.
pub const JWT_AUTH_METHOD: &str = "jwt";

/// Work for the shell, answered with [`ShardCore::handle_auth_result`].
#[derive(Debug)]
pub enum AuthJob {
    /// Verify a password on the hashing pool.
    Hash {
        /// The waiting connection.
        conn: ConnId,
        /// The stored Argon2id hash.
        phc: Arc<str>,
        /// The password sent.
        password: Vec<u8>,
    },
    /// Ask the control plane to refresh a JWT provider's keys (single-flight, rate-limited).
    FetchKeys {
        /// The waiting connection.
        conn: ConnId,
        /// Organization.
        org: Arc<str>,
        /// Provider name.
        provider: Arc<str>,
    },
}

impl ShardCore {
    pub(super) fn handle_connect(&mut self, id: ConnId, now_ms: u64, c: Connect) {
        let v = c.protocol;
        let v5 = v == Protocol::V5;
        let max_ka = self.cfg.max_keepalive;
        let shutting_down = self.shutting_down;
        let conn = self.conn_mut(id).expect("caller checked");
        conn.proto.protocol = Some(v);
        if shutting_down {
            // 0x8B is a DISCONNECT code only; a CONNACK says Server unavailable (3.1.1: code 3).
            return self.refuse(id, v, ReasonCode::SERVER_UNAVAILABLE);
        }
        if c.client_id.len() > limits::CLIENT_ID_BYTES_MAX {
            return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if !v5 && max_ka != u16::MAX && (c.keep_alive == 0 || c.keep_alive > max_ka) {
            // 3.1.1 cannot be told another keep-alive: refused as Mosquitto does (return code 2).
            return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let client_id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
                // [MQTT-3.1.3-8]
            }
            // Unguessable (130 random bits): an assigned id names a session nobody else may
            // find by counting.
            let gen = MqStr::copy_from(&format!("auto-{}", crate::auth::secret::random_b32(26)))
                .expect("generated id has no NUL");
            if v5 {
                conn.proto.assigned_id = Some(gen.clone());
            }
            gen
        } else {
            c.client_id.to_owned_copy()
        };
        let mut c = c;
        match c.props.authentication_method.as_ref().map(|m| m.as_str()) {
            None => {}
            // Enhanced authentication with a JWT (SPEC §2.3): the token may come as
            // Authentication Data instead of the password; AUTH can later renew it.
            Some(JWT_AUTH_METHOD) => {
                if c.username.is_none() {
                    // The org comes from `local@org`; a JWT never lands in an anonymous org.
                    return self.refuse(id, v, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
                }
                if c.password.is_none() {
                    c.password = c.props.authentication_data.take();
                }
                self.conn_mut(id).expect("caller checked").login.auth_jwt = true;
            }
            Some(_) => return self.refuse(id, v, ReasonCode::BAD_AUTHENTICATION_METHOD),
        }
        self.authenticate(id, now_ms, c, client_id, true);
    }

    /// Runs authentication for a CONNECT (again, after a key refresh, with `may_fetch` off).
    fn authenticate(&mut self, id: ConnId, now_ms: u64, c: Connect, client_id: MqStr, may_fetch: bool) {
        let v = c.protocol;
        let anonymous_org = self.conn(id).expect("caller checked").link.listener.anonymous_org.clone();
        let verdict = self.auth.check(
            c.username.as_ref().map(|u| u.as_str()),
            c.password.as_deref(),
            anonymous_org.as_ref(),
            self.unix_ms(now_ms),
            may_fetch,
        );
        self.apply_verdict(id, now_ms, v, verdict, c, client_id);
    }

    fn apply_verdict(
        &mut self,
        id: ConnId,
        now_ms: u64,
        v: Protocol,
        verdict: Verdict,
        c: Connect,
        client_id: MqStr,
    ) {
        match verdict {
            Verdict::Allow(identity) => self.admit(id, now_ms, c, client_id, identity),
            Verdict::Deny(why, org) => self.deny_auth(id, now_ms, v, why, org, &c, &client_id),
            Verdict::Verify(mut ticket) => {
                // The password goes to the pool; the parked ticket keeps no copy of it.
                let password = std::mem::take(&mut ticket.password);
                self.auth_jobs.push(AuthJob::Hash { conn: id, phc: ticket.phc.clone(), password });
                let conn = self.conn_mut(id).expect("caller checked");
                conn.phase = Phase::AwaitAuth;
                conn.login.pending_auth =
                    Some(Box::new(PendingAuth { ticket: Some(ticket), connect: c, client_id }));
            }
            Verdict::FetchKeys { org, provider } => {
                self.auth_jobs.push(AuthJob::FetchKeys { conn: id, org, provider });
                let conn = self.conn_mut(id).expect("caller checked");
                conn.phase = Phase::AwaitAuth;
                conn.login.pending_auth = Some(Box::new(PendingAuth { ticket: None, connect: c, client_id }));
            }
        }
    }

    /// The credential directory and caches this core reads.
    pub fn auth_shared(&self) -> &Arc<AuthShared> {
        &self.cfg.auth
    }

    /// Work the shell must hand to the hashing pool or the control plane.
    pub fn poll_auth(&mut self) -> Vec<AuthJob> {
        std::mem::take(&mut self.auth_jobs)
    }

    /// Whether auth jobs are waiting for the shell.
    pub fn has_auth_jobs(&self) -> bool {
        !self.auth_jobs.is_empty()
    }

    /// The answer to an [`AuthJob`] of `id`: the password verdict (`None`: the pool was full),
    /// or, for a key refresh, whether it ran (the token is then checked again).
    pub fn handle_auth_result(&mut self, id: ConnId, now_ms: u64, ok: Option<bool>) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(p) = c.login.pending_auth.take() else { return };
        let PendingAuth { ticket, connect, client_id } = *p;
        let closing = c.link.closing;
        let v = connect.protocol;
        match ticket {
            Some(ticket) if closing => {
                self.auth.verified(ticket, None);
                return;
            }
            _ if closing => return,
            Some(ticket) => {
                let verdict = self.auth.verified(ticket, ok);
                self.apply_verdict(id, now_ms, v, verdict, connect, client_id);
            }
            None => self.authenticate(id, now_ms, connect, client_id, false),
        }
        if let Some(c) = self.conn_mut(id) {
            wake(&mut c.link.reader);
        }
        self.drain_self(now_ms);
    }

    #[allow(clippy::too_many_arguments)]
    fn deny_auth(
        &mut self,
        id: ConnId,
        now_ms: u64,
        v: Protocol,
        why: Denied,
        org: Option<Arc<str>>,
        c: &Connect,
        client_id: &MqStr,
    ) {
        let reason = match why {
            Denied::AnonymousRefused => ReasonCode::NOT_AUTHORIZED,
            Denied::Busy => ReasonCode::SERVER_BUSY,
            _ => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        };
        if let Some(folded) = self.reports.refusal_log.tick(now_ms) {
            let c = self.conn(id).expect("caller checked");
            // The reason and where from; never a password, token or user name.
            tracing::info!(shard = self.shard, org = org.as_deref().unwrap_or("-"), reason = why.as_str(),
                transport = c.link.listener.transport, remote = %c.link.remote, more_since_last_line = folded, "login refused");
        }
        if let Some(org) = org {
            let (transport, remote) = {
                let conn = self.conn(id).expect("caller checked");
                (conn.link.listener.transport, conn.link.remote.clone())
            };
            let method = if matches!(why, Denied::Jwt(_)) {
                "jwt"
            } else if c.username.as_ref().is_some_and(|u| u.as_str().starts_with("tok_")) {
                "token"
            } else {
                "password"
            };
            self.audit(
                now_ms,
                org,
                AuditKind::AuthFailure,
                Some(client_id),
                c.username.as_ref().map(|u| u.as_str()),
                &[
                    ("method", method.into()),
                    ("reason", why.as_str().into()),
                    ("transport", transport.into()),
                    ("remote", (*remote).into()),
                ],
            );
        }
        self.refuse(id, v, reason);
    }

    /// Authenticated: set the connection up and claim its session at the session's home.
    fn admit(&mut self, id: ConnId, now_ms: u64, c: Connect, client_id: MqStr, identity: Identity) {
        let v = c.protocol;
        let v5 = v == Protocol::V5;
        let org = identity.org.clone();
        let cert_cn = self.conn(id).expect("caller checked").link.client_cn.clone();
        let acl = Arc::new(self.compile_acl(&identity, client_id.as_str(), cert_cn.as_deref()));
        if let Some(w) = &c.will {
            // A will is a publish at CONNECT: checked now (SPEC §3).
            let d = acl.check_publish(w.topic.as_str(), w.qos as u8, w.retain);
            if w.topic.as_str().starts_with("$SYS") || !d.allow {
                let who = identity.audit_name();
                let detail = [
                    ("action", "will".into()),
                    ("topic", w.topic.as_str().into()),
                    ("rule", d.policy_rule_json()),
                ];
                self.audit(
                    now_ms,
                    org.clone(),
                    AuditKind::AclDenied,
                    Some(&client_id),
                    who.as_deref(),
                    &detail,
                );
                return self.refuse(id, v, ReasonCode::NOT_AUTHORIZED);
            }
        }
        let quota = self.org_quota(&org);
        let slot = quota.as_ref().is_none_or(|q| q.try_connect());
        let cn = self.conn_mut(id).expect("caller checked");
        cn.login.acl = Some(acl);
        if let Some(q) = &quota {
            // At the limit the claim still goes ahead: a takeover hands the old slot over.
            cn.share.quota_slot = slot;
            cn.share.slot_wait = !slot;
            if let Some(m) = q.max_packet_size() {
                cn.proto.max_packet = cn.proto.max_packet.min(m.min(u32::MAX as u64) as u32);
            }
        }
        cn.share.quota = quota;
        let deadline = identity.expires_unix_ms.map(|t| t.saturating_sub(self.cfg.unix_at_mono_zero));
        let (transport, remote) = {
            let conn = self.conn(id).expect("caller checked");
            (conn.link.listener.transport, conn.link.remote.clone())
        };
        // Anonymous clients did not authenticate: their `connect` event is the record.
        if identity.method != crate::auth::directory::Method::Anonymous {
            self.audit(
                now_ms,
                org.clone(),
                AuditKind::AuthSuccess,
                Some(&client_id),
                c.username.as_ref().map(|u| u.as_str()),
                &[
                    ("method", identity.method.as_str().into()),
                    ("identity", (*identity.name).into()),
                    ("transport", transport.into()),
                    ("remote", (*remote).into()),
                ],
            );
        }
        let max_ka = self.cfg.max_keepalive;
        if let Some(t) = deadline {
            self.timers.note(t);
        }
        let conn = self.conn_mut(id).expect("caller checked");
        conn.login.identity = Some(Arc::new(identity));
        conn.login.auth_deadline_ms = deadline;
        // A 3.1.1 client over the cap was refused at CONNECT; a 5.0 one gets the cap (CONNACK
        // Server Keep Alive), as does one asking for none.
        let ka = if c.keep_alive == 0 || c.keep_alive > max_ka { max_ka } else { c.keep_alive };
        conn.link.keep_alive_ms = if max_ka == u16::MAX && c.keep_alive == 0 { 0 } else { ka as u64 * 1000 };
        conn.attach.clean_start = c.clean_start;
        conn.attach.expiry_req = if v5 {
            c.props.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let quota_window = conn
            .share
            .quota
            .as_ref()
            .and_then(|q| q.max_inflight())
            .map_or(u16::MAX, |m| m.min(65_535) as u16);
        conn.proto.send_window =
            c.props.receive_maximum.unwrap_or(u16::MAX).min(limits::INFLIGHT_MAX).min(quota_window.max(1));
        conn.proto.client_max_packet = c.props.maximum_packet_size.unwrap_or(u32::MAX);
        conn.proto.client_alias_max = c.props.topic_alias_maximum.unwrap_or(0);
        if let Some(w) = c.will {
            let mut props = w.props;
            conn.attach.will_delay_secs = props.will_delay_interval.take().unwrap_or(0);
            let m = Msg {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                props: props.into(),
                received_ms: now_ms,
            };
            conn.attach.will = Some(m.to_owned_copy());
        }
        let key = SessionKey { org, client_id };
        conn.attach.key = Some(key.clone());
        conn.phase = Phase::AwaitSession;
        let home = home_shard(&key, self.cfg.nr_shards);
        let shard = self.shard;
        self.send(home, MeshMsg::Claim { key, shard, conn: id, clean_start: c.clean_start });
    }

    /// AUTH on a live connection: re-authentication with a fresh JWT (MQTT 5 §4.12.1). The new
    /// token must name the same subject; its `exp` becomes the connection's deadline.
    pub(super) fn handle_auth(&mut self, id: ConnId, now_ms: u64, a: crate::codec::Auth) {
        let Some(c) = self.conn(id) else { return };
        if !c.login.auth_jwt {
            // No enhanced authentication method was established at CONNECT [MQTT-4.12.0-1].
            return self.close_conn(id, CloseCause::Protocol(ReasonCode::PROTOCOL_ERROR), now_ms);
        }
        if a.props.authentication_method.as_ref().map(|m| m.as_str()) != Some(JWT_AUTH_METHOD) {
            return self.close_conn(id, CloseCause::Protocol(ReasonCode::BAD_AUTHENTICATION_METHOD), now_ms);
            // [MQTT-4.12.1-1]
        }
        if a.reason != ReasonCode::RE_AUTHENTICATE {
            return self.close_conn(id, CloseCause::Protocol(ReasonCode::PROTOCOL_ERROR), now_ms);
        }
        let Some(old) = c.login.identity.clone() else { return };
        let client_id = c.attach.key.as_ref().map(|k| k.client_id.clone());
        let token = a.props.authentication_data.unwrap_or_default();
        let unix_now = self.unix_ms(now_ms);
        let result = self.auth.verify_jwt(&old.org, &token);
        let detail_method = ("method", serde_json::Value::from("jwt_reauth"));
        match result {
            Ok(new) if new.name == old.name && new.expires_unix_ms.is_some_and(|t| t > unix_now) => {
                let deadline = new.expires_unix_ms.map(|t| t.saturating_sub(self.cfg.unix_at_mono_zero));
                let who = new.audit_name();
                self.audit(
                    now_ms,
                    old.org.clone(),
                    AuditKind::AuthSuccess,
                    client_id.as_ref(),
                    who.as_deref(),
                    &[detail_method],
                );
                if let Some(t) = deadline {
                    self.timers.note(t);
                }
                let c = self.conn_mut(id).expect("checked");
                c.login.identity = Some(Arc::new(new));
                c.login.auth_deadline_ms = deadline;
                let props = Properties {
                    authentication_method: MqStr::copy_from(JWT_AUTH_METHOD),
                    ..Properties::default()
                };
                self.write(id, &Packet::Auth(crate::codec::Auth { reason: ReasonCode::SUCCESS, props }));
            }
            other => {
                let why = match other {
                    Ok(_) => "jwt_subject_changed",
                    Err(r) => r,
                };
                let who = old.audit_name();
                self.audit(
                    now_ms,
                    old.org.clone(),
                    AuditKind::AuthFailure,
                    client_id.as_ref(),
                    who.as_deref(),
                    &[detail_method, ("reason", why.into())],
                );
                self.close_conn(id, CloseCause::ReauthenticationFailed, now_ms);
            }
        }
    }
}
