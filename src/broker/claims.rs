//! Session ownership across shards: claims at the home shard, takeovers at the previous owner,
//! grants at the new owner, releases when a session ends. Also the mesh plumbing and timers.

use super::*;

impl ShardCore {
    pub(super) fn session_mut(&mut self, s: SessionRef) -> Option<&mut Session> {
        self.sessions.get_mut(s)
    }

    pub(super) fn session(&self, s: SessionRef) -> Option<&Session> {
        self.sessions.get(s)
    }

    pub(super) fn handle_takeover(
        &mut self,
        key: SessionKey,
        old_gen: u64,
        old_conn: ConnId,
        sup: Supersede,
        now_ms: u64,
    ) {
        // The previous claim may still be waiting for its grant: remember where the session
        // must go next, and close that connection.
        if let Some(c) = self.conn_mut(old_conn) {
            if c.phase == Phase::AwaitSession && c.attach.key.as_ref() == Some(&key) {
                c.attach.superseded = Some(sup);
                c.link.closing = true;
                c.link.cause = Some(CloseCause::SessionTakenOver);
                wake(&mut c.link.writer);
                wake(&mut c.link.reader);
                return;
            }
        }
        let sref =
            self.sessions.find(&key).filter(|s| self.session(*s).is_some_and(|s| s.generation == old_gen));
        let mut slot = false;
        let state = match sref {
            None => None, // already ended; its release is on the way home
            Some(sref) => {
                if let Some(live) = self.session(sref).and_then(|s| s.conn) {
                    // Kick the old connection [MQTT-3.1.4-3]; its will follows the takeover rules.
                    let continues = !sup.clean_start;
                    if let Some(c) = self.conn_mut(live) {
                        if continues && c.attach.will_delay_secs > 0 {
                            c.attach.will = None; // the session continues: a delayed will is cancelled
                        }
                    }
                    // Its quota slot goes with the session: the org's count stays the same.
                    if let Some(c) = self.conn_mut(live) {
                        slot = std::mem::take(&mut c.share.quota_slot);
                    }
                    self.close_conn(live, CloseCause::SessionTakenOver, now_ms);
                }
                // Closing the old connection ends a session whose expiry is 0: the new
                // connection then starts fresh.
                if self.session(sref).is_some() {
                    self.take_session(sref, sup.clean_start, now_ms)
                } else {
                    None
                }
            }
        };
        let msg = MeshMsg::Granted { key, conn: sup.conn, generation: sup.generation, state, slot };
        self.send(sup.to_shard, msg);
    }

    /// Removes a session from this shard for a takeover, returning its state unless `discard`.
    /// A returned state stays in this shard's store until its new owner's copy is durable.
    pub(super) fn take_session(
        &mut self,
        sref: SessionRef,
        discard: bool,
        now_ms: u64,
    ) -> Option<Box<SessionState>> {
        self.unsubscribe_all(sref);
        let stored_here = self.stored_key(sref).is_some();
        let mut s = self.sessions.remove(sref).expect("caller checked");
        let key = SessionKey { org: s.org.clone(), client_id: s.client_id.clone() };
        if discard {
            self.persist_forget(&key);
            self.forget_discarded(&key, &s.state);
            self.uncount_offline(&s.org, &mut s.state);
            if let Some((_, w)) = s.delayed_will {
                self.publish_internal(&s.org, w, now_ms);
            }
            None
        } else {
            s.state.stored_on = stored_here.then_some(self.shard);
            Some(Box::new(s.state))
        }
    }

    fn unsubscribe_all(&mut self, sref: SessionRef) {
        let Some(s) = self.session_mut(sref) else { return };
        let org = s.org.clone();
        let filters: Vec<Box<str>> = s.state.subs.keys().cloned().collect();
        for f in filters {
            let ch = self.router.unsubscribe(&org, &f, sref);
            if ch.interest_changed {
                self.announce(&org, &f, false, None);
            }
        }
    }

    /// Tells every other shard about a change of local interest; returns how many acks to wait for.
    pub(super) fn announce(
        &mut self,
        org: &Arc<str>,
        filter: &str,
        add: bool,
        ack: Option<(ConnId, u64)>,
    ) -> u32 {
        if self.cfg.nr_shards == 1 {
            return 0;
        }
        let filter: Arc<str> = Arc::from(filter);
        let shard = self.shard;
        self.broadcast(|| MeshMsg::Interest { org: org.clone(), filter: filter.clone(), shard, add, ack })
    }

    /// The home shard granted `key` to connection `id` (with the session's state, if it had
    /// one, and the connection slot of the connection it took over, if any).
    pub(super) fn handle_granted(
        &mut self,
        key: SessionKey,
        id: ConnId,
        generation: u64,
        state: Option<Box<SessionState>>,
        slot_in: bool,
        now_ms: u64,
    ) {
        if self.org_deleted(&key) {
            // The org was deleted while this claim was under way: nothing of it is installed.
            if self.conn(id).is_some_and(|c| c.phase == Phase::AwaitSession) {
                self.close_conn(id, CloseCause::OrgDeleted, now_ms);
            }
            return;
        }
        let (alive, sup) = match self.conn_mut(id) {
            Some(c) if c.phase == Phase::AwaitSession => (true, c.attach.superseded.take()),
            _ => (false, None),
        };
        let quota = self.org_quota(&key.org);
        if let Some(sup) = sup {
            return self.pass_on_superseded(key, id, sup, state, slot_in, quota, now_ms);
        }
        let refused = self.settle_slot(id, alive, slot_in, quota.as_deref());
        let (clean_start, expiry, protocol) = match self.conn(id) {
            Some(c) if alive => (c.attach.clean_start, c.attach.expiry_req, c.proto.protocol),
            // The connection went away while waiting: the session stays as it was, offline.
            _ => (false, state.as_ref().map_or(0, |s| s.expiry_secs), None),
        };
        let present = state.is_some() && !clean_start;
        let mut st = self.resumed_state(&key, state, clean_start);
        st.expiry_secs = expiry;
        st.protocol = protocol.or(st.protocol);
        let session = Session {
            org: key.org.clone(),
            client_id: key.client_id.clone(),
            generation,
            conn: (alive && !refused).then_some(id),
            expires_at_ms: None,
            delayed_will: None,
            state: st,
        };
        let sref = self.sessions.insert(session);
        let since = self.store_seq();
        self.persist_installed(sref, now_ms);
        // The session now belongs to this connection's identity: what it may not subscribe to
        // or read (another identity took it over, the rights changed, a restart) is dropped
        // before it is restored.
        if let Some(acl) = self.conn(id).filter(|_| alive && !refused).and_then(|c| c.login.acl.clone()) {
            self.hold_under(sref, acl, now_ms, false);
        }
        self.restore_subs(sref, &key.org);
        if !alive || refused {
            // The connection went away while waiting, or the org is at its connection limit:
            // the session is offline from the start.
            if refused {
                self.refuse_over_limit(id, quota.as_deref(), now_ms);
            }
            return self.leave_offline(sref, now_ms);
        }
        self.send_connack(id, &key.org, sref, present, since, now_ms);
        self.resend_inflight(id, sref, now_ms);
        self.pump(sref, now_ms);
    }

    /// A newer claim took this session before it was granted to `id`: pass it on, with one
    /// connection slot if we hold any (ours, or the one handed to us); free the other.
    #[allow(clippy::too_many_arguments)] // The grant's parts, passed on as they came.
    fn pass_on_superseded(
        &mut self,
        key: SessionKey,
        id: ConnId,
        sup: Supersede,
        state: Option<Box<SessionState>>,
        slot_in: bool,
        quota: Option<Arc<crate::quota::OrgQuota>>,
        now_ms: u64,
    ) {
        let state = match state {
            Some(st) if sup.clean_start => {
                self.forget_discarded(&key, &st);
                None
            }
            st => st,
        };
        let own = self.conn_mut(id).is_some_and(|c| std::mem::take(&mut c.share.quota_slot));
        if own && slot_in {
            if let Some(q) = &quota {
                q.disconnect();
            }
        }
        self.close_conn(id, CloseCause::SessionTakenOver, now_ms);
        let slot = own || slot_in;
        let msg = MeshMsg::Granted { key, conn: sup.conn, generation: sup.generation, state, slot };
        self.send(sup.to_shard, msg);
    }

    /// Settles the connection slot of `id` (`alive`: still waiting for this grant): a
    /// handed-over slot replaces a missing one (takeover at the limit) or is freed (we took our
    /// own, or the connection is gone); without one, tries once more. Whether the org's
    /// connection limit refuses it.
    fn settle_slot(
        &mut self,
        id: ConnId,
        alive: bool,
        slot_in: bool,
        quota: Option<&crate::quota::OrgQuota>,
    ) -> bool {
        let Some(q) = quota else { return false };
        match (self.conn_mut(id).filter(|_| alive), slot_in) {
            (Some(c), true) if c.share.slot_wait => {
                c.share.slot_wait = false;
                c.share.quota_slot = true;
            }
            (Some(c), false) if c.share.slot_wait => {
                c.share.slot_wait = false;
                c.share.quota_slot = q.try_connect();
                return !c.share.quota_slot;
            }
            (_, true) => q.disconnect(),
            _ => {}
        }
        false
    }

    /// The state a granted session starts from: the old one resumed (no longer counted as
    /// offline storage), or a fresh one (a clean start discards the old one).
    fn resumed_state(
        &mut self,
        key: &SessionKey,
        state: Option<Box<SessionState>>,
        clean_start: bool,
    ) -> SessionState {
        match state {
            Some(mut old) => {
                self.uncount_offline(&key.org, &mut old);
                if clean_start {
                    self.forget_discarded(key, &old);
                    SessionState::default()
                } else {
                    *old
                }
            }
            None => SessionState::default(),
        }
    }

    /// Puts the subscriptions of a session just installed into this shard's index.
    fn restore_subs(&mut self, sref: SessionRef, org: &Arc<str>) {
        let Some(s) = self.session(sref) else { return };
        let subs: Vec<(Box<str>, SubEntry)> = s.state.subs.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (f, e) in subs {
            let sub = Sub { session: sref, opts: e.opts, sub_id: e.sub_id, checked: e.checked };
            if self.router.subscribe(org, &f, sub).interest_changed {
                self.announce(org, &f, true, None);
            }
        }
    }

    /// Refuses a CONNECT whose org reached its connection limit while it waited (0x97).
    fn refuse_over_limit(&mut self, id: ConnId, quota: Option<&crate::quota::OrgQuota>, now_ms: u64) {
        if let Some(q) = quota {
            q.refused_connection();
        }
        self.quota_hit(id, now_ms, "max_connections");
        let v = self.conn(id).and_then(|c| c.proto.protocol).unwrap_or(Protocol::V311);
        self.refuse(id, v, ReasonCode::QUOTA_EXCEEDED);
        if let Some(c) = self.conn_mut(id) {
            c.phase = Phase::Active; // no longer waiting for a session
            wake(&mut c.link.reader);
        }
    }

    /// A session installed without a connection: ends now (no expiry) or waits offline.
    fn leave_offline(&mut self, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session_mut(sref) else { return };
        if s.state.expiry_secs == 0 {
            self.end_session(sref, now_ms);
        } else {
            if s.state.expiry_secs != u32::MAX {
                s.expires_at_ms = Some(now_ms + s.state.expiry_secs as u64 * 1000);
            }
            self.count_offline(sref);
            self.persist_offline(sref);
        }
    }

    /// `id` logs in with session `sref`: CONNACK (held until the session record written at
    /// `since` is durable), the `connect` audit event, and its reader goes on.
    fn send_connack(
        &mut self,
        id: ConnId,
        org: &Arc<str>,
        sref: SessionRef,
        present: bool,
        since: u64,
        now_ms: u64,
    ) {
        let fair = self.fair.join(org);
        let max_keepalive = self.cfg.max_keepalive;
        let c = self.conn_mut(id).expect("alive: checked by the caller");
        let max_packet = c.proto.max_packet; // the listener's, lowered by the org's quota
        c.attach.session = Some(sref);
        c.phase = Phase::Active;
        debug_assert!(c.share.fair.is_none(), "a connection logs in once");
        c.share.fair = Some(fair);
        let mut props = Properties::default();
        if c.proto.protocol == Some(Protocol::V5) {
            props.receive_maximum = Some(limits::INFLIGHT_MAX);
            if max_keepalive != u16::MAX {
                // The keep-alive in force (MQTT 5 §3.2.2.3.14): the client's, capped.
                props.server_keep_alive = Some((c.link.keep_alive_ms / 1000) as u16);
            }
            props.topic_alias_maximum = Some(limits::TOPIC_ALIAS_MAX);
            props.maximum_packet_size = Some(max_packet);
            props.assigned_client_identifier = c.proto.assigned_id.clone();
            if c.login.auth_jwt {
                props.authentication_method = MqStr::copy_from(super::JWT_AUTH_METHOD);
            }
            c.proto.aliases_in = vec![None; limits::TOPIC_ALIAS_MAX as usize];
        }
        let ack = Packet::ConnAck(ConnAck { session_present: present, reason: ReasonCode::SUCCESS, props });
        self.write(id, &ack);
        // The session record written for it (a persistent session) reaches the disk first.
        self.gate_output(id, since);
        let c = self.conn(id).expect("alive: checked by the caller");
        if let (Some(ident), Some(key)) = (c.login.identity.clone(), c.attach.key.clone()) {
            let detail = [
                ("transport", c.link.listener.transport.into()),
                ("remote", (*c.link.remote).into()),
                ("protocol", c.proto.protocol.map_or(0, |p| p.level()).into()),
                ("session_present", present.into()),
            ];
            let who = ident.audit_name();
            self.audit(
                now_ms,
                key.org.clone(),
                AuditKind::Connect,
                Some(&key.client_id),
                who.as_deref(),
                &detail,
            );
        }
        if let Some(c) = self.conn_mut(id) {
            wake(&mut c.link.reader);
        }
    }

    /// Resends what was in flight when the session was last connected [MQTT-4.4.0-1].
    fn resend_inflight(&mut self, id: ConnId, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session(sref) else { return };
        let resend: Vec<(u16, InFlight)> = s.state.inflight.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (pid, f) in resend {
            match f.state {
                OutState::Published => {
                    let sent = self.encode_delivery(id, &f.delivery, PacketId::new(pid), true, now_ms);
                    if !sent {
                        if let Some(s) = self.session_mut(sref) {
                            s.state.inflight.remove(&pid);
                        }
                        self.persist_unqueued(sref, &f.delivery);
                    }
                }
                OutState::Released => {
                    let p = PacketId::new(pid).expect("stored ids are non-zero");
                    self.write(id, &Packet::PubRel(pubresp(p, ReasonCode::SUCCESS)));
                }
            }
        }
    }

    /// At the home shard: the session of generation `generation` ended; forget who held it
    /// unless a newer claim already took it.
    pub(super) fn handle_release(&mut self, key: &SessionKey, generation: u64) {
        if self.registry.get(key).is_some_and(|o| o.generation == generation) {
            self.registry.remove(key);
        }
    }

    /// Ends a session: drops its subscriptions, publishes a pending will, tells the home shard.
    pub(super) fn end_session(&mut self, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session(sref) else { return };
        let key = SessionKey { org: s.org.clone(), client_id: s.client_id.clone() };
        let generation = s.generation;
        let _ = self.take_session(sref, true, now_ms);
        let home = home_shard(&key, self.cfg.nr_shards);
        self.send(home, MeshMsg::Release { key, generation });
    }

    // ------------------------------------------------------------------ timers

    pub(super) fn handle_claim(&mut self, key: SessionKey, shard: u8, conn: ConnId, clean_start: bool) {
        self.next_generation += 1;
        let generation = (self.next_generation << 8) | self.shard as u64;
        let prev = self.registry.insert(key.clone(), Owner { shard, conn, generation });
        match prev {
            None => self.send(shard, MeshMsg::Granted { key, conn, generation, state: None, slot: false }),
            Some(o) => self.send(
                o.shard,
                MeshMsg::Takeover {
                    key,
                    old_generation: o.generation,
                    old_conn: o.conn,
                    to_shard: shard,
                    conn,
                    generation,
                    clean_start,
                },
            ),
        }
    }
}
