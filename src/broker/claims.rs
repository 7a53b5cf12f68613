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

    /// Sends a mesh message (to ourselves through a local queue, so handlers never re-enter).
    pub(super) fn send(&mut self, to: u8, msg: MeshMsg) {
        if to == self.shard {
            self.mesh.self_queue.push_back(msg);
        } else {
            self.mesh.mesh_out[to as usize].push_back(msg);
        }
    }

    /// Sends to every other shard (`make` builds each copy).
    pub(super) fn broadcast(&mut self, mut make: impl FnMut() -> MeshMsg) -> u32 {
        let mut n = 0;
        for peer in 0..self.cfg.nr_shards {
            if peer != self.shard {
                let m = make();
                self.mesh.mesh_out[peer as usize].push_back(m);
                n += 1;
            }
        }
        n
    }

    /// Processes messages this shard sent to itself.
    pub(super) fn drain_self(&mut self, now_ms: u64) {
        let mut budget = 1_000_000;
        while let Some(m) = self.mesh.self_queue.pop_front() {
            self.dispatch(now_ms, m);
            budget -= 1;
            assert!(budget > 0, "self-addressed mesh messages loop");
        }
    }

    /// Next message for `peer`, if any.
    pub fn poll_mesh(&mut self, peer: u8) -> Option<MeshMsg> {
        self.mesh.mesh_out.get_mut(peer as usize)?.pop_front()
    }

    /// Puts back a message the shell could not send (peer queue full), keeping order.
    pub fn unpoll_mesh(&mut self, peer: u8, msg: MeshMsg) {
        self.mesh.mesh_out[peer as usize].push_front(msg);
    }

    /// Mesh messages waiting to leave this shard.
    pub fn mesh_backlog(&self) -> usize {
        self.mesh.mesh_out.iter().map(|q| q.len()).sum()
    }

    /// Output pressure changed (not necessarily gone): readers paused for it look again;
    /// those still pressured (same org) register once more.
    pub(crate) fn wake_pressure_paused(&mut self) {
        for w in self.parked.pressure_paused.drain(..) {
            w.wake();
        }
    }

    /// The mesh backlog went down: readers paused for it may go on (those also under output
    /// pressure in their org then wait for that separately, so one org's slow subscriber
    /// never holds back another org's readers).
    pub fn wake_paused_readers(&mut self) {
        if self.mesh_backlog() < limits::MESH_BACKLOG_PAUSE / 2 {
            for w in self.parked.paused_readers.drain(..) {
                w.wake();
            }
        }
        // Without any pressure left, whoever waited for it looks again too (a safety net:
        // every path that clears pressure wakes them, but a missed wake-up here would stall a
        // mesh receiver, and with it every claim and delivery from other shards).
        if self.pressure.is_empty() && !self.parked.pressure_paused.is_empty() {
            self.wake_pressure_paused();
        }
    }

    /// Handles a message from another shard.
    pub fn handle_mesh(&mut self, now_ms: u64, msg: MeshMsg) {
        self.dispatch(now_ms, msg);
        self.drain_self(now_ms);
    }

    fn dispatch(&mut self, now_ms: u64, msg: MeshMsg) {
        match msg {
            MeshMsg::Forward { org, msg, shared, ack } => {
                let since = self.store_seq();
                if ack.as_ref().is_some_and(|a| !self.accept_forward(a)) {
                    // A replay of a forward whose copies are stored here: confirm only.
                    let a = ack.expect("checked");
                    return self.confirm_forward(a.origin, a.token, since);
                }
                self.route(&org, &msg, None, true, None, now_ms);
                for full in shared {
                    if let Some(sub) = self.router.pick_shared_local(&org, &full) {
                        let mut stored = None;
                        let q = sub.opts.qos.min(msg.qos);
                        let retain = sub.opts.retain_as_published && msg.retain;
                        let ids: SmallVec<[u32; 2]> = sub.sub_id.into_iter().collect();
                        self.deliver(sub.session, &msg, q, retain, &ids, &mut stored, now_ms);
                    }
                }
                if let Some(a) = ack {
                    self.confirm_forward(a.origin, a.token, since);
                }
            }
            MeshMsg::Stored { token, ok } => self.forward_confirmed(token, ok, now_ms),
            MeshMsg::Interest { org, filter, shard, add, ack } => {
                self.router.set_remote(&org, &filter, shard, add);
                if let Some((conn, token)) = ack {
                    self.send(shard, MeshMsg::InterestAck { conn, token });
                }
            }
            MeshMsg::InterestAck { conn, token } => self.handle_interest_ack(conn, token, now_ms),
            MeshMsg::Retain { org, msg, seq } => {
                let max = self.retained_max(&org);
                self.retained.apply(&org, msg, seq, max);
            }
            MeshMsg::Claim { key, shard, conn, clean_start } => {
                self.handle_claim(key, shard, conn, clean_start)
            }
            MeshMsg::Takeover { key, old_generation, old_conn, to_shard, conn, generation, clean_start } => {
                let sup = Supersede { to_shard, conn, generation, clean_start };
                self.handle_takeover(key, old_generation, old_conn, sup, now_ms)
            }
            MeshMsg::Granted { key, conn, generation, state, slot } => {
                self.handle_granted(key, conn, generation, state, slot, now_ms)
            }
            MeshMsg::Forget { key, epoch } => self.persist_forget_before(key, epoch),
            MeshMsg::Release { key, generation } => {
                if self.registry.get(&key).is_some_and(|o| o.generation == generation) {
                    self.registry.remove(&key);
                }
            }
        }
    }

    fn handle_takeover(
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
                    self.close_conn(live, Some(ReasonCode::SESSION_TAKEN_OVER), now_ms);
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

    fn handle_granted(
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
                self.close_conn(id, Some(ReasonCode::ADMINISTRATIVE_ACTION), now_ms);
            }
            return;
        }
        let (alive, sup) = match self.conn_mut(id) {
            Some(c) if c.phase == Phase::AwaitSession => (true, c.attach.superseded.take()),
            _ => (false, None),
        };
        let quota = self.org_quota(&key.org);
        if let Some(sup) = sup {
            // A newer claim took this session before it was granted to us: pass it on, with one
            // connection slot if we hold any (ours, or the one handed to us); free the other.
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
            self.close_conn(id, None, now_ms);
            let slot = own || slot_in;
            let msg = MeshMsg::Granted { key, conn: sup.conn, generation: sup.generation, state, slot };
            self.send(sup.to_shard, msg);
            return;
        }
        // Settle the connection slot: a handed-over slot replaces a missing one (takeover at the
        // limit) or is freed (we took our own); without one, try once more, else refuse.
        let mut refused = false;
        if let Some(q) = &quota {
            let c = self.conn_mut(id).filter(|_| alive);
            match (c, slot_in) {
                (Some(c), true) if c.share.slot_wait => {
                    c.share.slot_wait = false;
                    c.share.quota_slot = true;
                }
                (Some(c), false) if c.share.slot_wait => {
                    c.share.slot_wait = false;
                    c.share.quota_slot = q.try_connect();
                    refused = !c.share.quota_slot;
                }
                (_, true) => q.disconnect(),
                _ => {}
            }
        }
        let (clean_start, expiry, protocol) = match self.conn(id) {
            Some(c) if alive => (c.attach.clean_start, c.attach.expiry_req, c.proto.protocol),
            // The connection went away while waiting: the session stays as it was, offline.
            _ => (false, state.as_ref().map_or(0, |s| s.expiry_secs), None),
        };
        let present = state.is_some() && !clean_start;
        let mut state = state;
        if let Some(st) = state.as_deref_mut() {
            // Resumed (or discarded by a clean start): no longer offline storage.
            self.uncount_offline(&key.org, st);
        }
        let mut st = match state {
            Some(old) if clean_start => {
                self.forget_discarded(&key, &old);
                SessionState::default()
            }
            Some(old) => *old,
            None => SessionState::default(),
        };
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
        // Restore subscriptions into this shard's index.
        let subs: Vec<(Box<str>, SubEntry)> = self
            .session(sref)
            .expect("just inserted")
            .state
            .subs
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (f, e) in subs {
            let ch = self.router.subscribe(
                &key.org,
                &f,
                Sub { session: sref, opts: e.opts, sub_id: e.sub_id, checked: e.checked },
            );
            if ch.interest_changed {
                self.announce(&key.org, &f, true, None);
            }
        }
        if !alive || refused {
            // The connection went away while waiting, or the org is at its connection limit:
            // the session is offline from the start.
            if refused {
                if let Some(q) = &quota {
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
            let s = self.session_mut(sref).expect("just inserted");
            if s.state.expiry_secs == 0 {
                self.end_session(sref, now_ms);
            } else {
                if s.state.expiry_secs != u32::MAX {
                    s.expires_at_ms = Some(now_ms + s.state.expiry_secs as u64 * 1000);
                }
                self.count_offline(sref);
                self.persist_offline(sref);
            }
            return;
        }
        let fair = self.fair.join(&key.org);
        let max_keepalive = self.cfg.max_keepalive;
        let c = self.conn_mut(id).expect("alive");
        let max_packet = c.proto.max_packet; // the listener's, lowered by the org's quota
        c.attach.session = Some(sref);
        c.phase = Phase::Active;
        debug_assert!(c.share.fair.is_none(), "a connection logs in once");
        c.share.fair = Some(fair);
        let v5 = c.proto.protocol == Some(Protocol::V5);
        let mut props = Properties::default();
        if v5 {
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
        let c = self.conn(id).expect("alive");
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
        wake(&mut self.conn_mut(id).expect("alive").link.reader);
        // Resend what was in flight [MQTT-4.4.0-1], then drain the queue.
        let resend: Vec<(u16, InFlight)> = self
            .session(sref)
            .expect("present")
            .state
            .inflight
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (pid, f) in resend {
            match f.state {
                OutState::Published => {
                    let sent = self.encode_delivery(id, &f.delivery, PacketId::new(pid), true, now_ms);
                    if !sent {
                        self.session_mut(sref).expect("present").state.inflight.remove(&pid);
                        self.persist_unqueued(sref, &f.delivery);
                    }
                }
                OutState::Released => {
                    let p = PacketId::new(pid).expect("stored ids are non-zero");
                    self.write(id, &Packet::PubRel(pubresp(p, ReasonCode::SUCCESS)));
                }
            }
        }
        self.pump(sref, now_ms);
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

    /// Advances time: keep-alive and CONNECT deadlines, session expiry, delayed wills, `$SYS`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire_pressure(now_ms);
        let mut expired_conns = Vec::new();
        for (id, c) in self.conns.iter() {
            if c.link.closing {
                continue;
            }
            match c.phase {
                Phase::AwaitConnect { deadline_ms } if now_ms >= deadline_ms => {
                    expired_conns.push((id, None));
                }
                // [MQTT-3.1.2-22]: one and a half times the keep alive.
                Phase::Active
                    if c.link.keep_alive_ms > 0
                        && now_ms > c.link.last_rx_ms + c.link.keep_alive_ms * 3 / 2 =>
                {
                    expired_conns.push((id, Some(ReasonCode::KEEP_ALIVE_TIMEOUT)));
                }
                // The token or JWT it authenticated with has expired (SPEC §2).
                Phase::Active | Phase::AwaitSession
                    if c.login.auth_deadline_ms.is_some_and(|t| now_ms >= t) =>
                {
                    expired_conns.push((id, Some(ReasonCode::MAXIMUM_CONNECT_TIME)));
                }
                _ => {}
            }
        }
        for (id, reason) in expired_conns {
            if let Some(c) = self.conn_mut(id) {
                c.link.close_reason = Some(match reason {
                    None => "connect_timeout",
                    Some(ReasonCode::KEEP_ALIVE_TIMEOUT) => "keep_alive_timeout",
                    Some(_) => "credential_expired",
                });
            }
            self.close_conn(id, reason, now_ms);
        }
        let mut ended = Vec::new();
        let mut wills = Vec::new();
        for (sref, s) in self.sessions.iter_mut() {
            if s.conn.is_some() {
                continue;
            }
            if s.delayed_will.as_ref().is_some_and(|(at, _)| *at <= now_ms) {
                let (_, w) = s.delayed_will.take().expect("checked");
                wills.push((s.org.clone(), w));
            }
            if s.expires_at_ms.is_some_and(|at| at <= now_ms) {
                ended.push(sref);
            }
        }
        for (org, w) in wills {
            self.publish_internal(&org, w, now_ms);
        }
        for s in ended {
            self.end_session(s, now_ms);
        }
        if now_ms >= self.timers.last_retention_ms + 1000 {
            self.timers.last_retention_ms = now_ms;
            self.expire_retention(now_ms);
        }
        self.expire_origins(now_ms);
        if now_ms >= self.timers.last_report_ms + 1000 {
            // Figures for /metrics every second, whether or not $SYS is published.
            self.timers.last_report_ms = now_ms;
            self.report_figures();
        }
        if self.cfg.sys_interval_ms > 0 && now_ms >= self.timers.last_sys_ms + self.cfg.sys_interval_ms {
            self.timers.last_sys_ms = now_ms;
            self.publish_sys(now_ms);
        }
        self.drain_self(now_ms);
    }

    /// Drops what is older than its org's `[org.retention]` maximum ages: the head of offline
    /// queues, and retained messages (in the replica here and, once per message, in the store).
    fn expire_retention(&mut self, now_ms: u64) {
        let dir = self.cfg.auth.directory.load();
        if dir.orgs.values().all(|o| o.retention == crate::quota::Retention::default()) {
            return;
        }
        let mut trimmed = Vec::new();
        for (sref, s) in self.sessions.iter_mut() {
            if s.conn.is_some() {
                continue; // a connected session's queue is checked as it is sent (pump)
            }
            let Some(max) = dir.orgs.get(&s.org).and_then(|o| o.retention.queued_max_age_ms) else {
                continue;
            };
            while let Some(d) = s.state.queue.front() {
                if now_ms.saturating_sub(d.msg.received_ms) <= max {
                    break;
                }
                trimmed.push((sref, s.state.queue.pop_front().expect("checked")));
            }
        }
        let mut touched: Vec<SessionRef> = Vec::new();
        for (sref, d) in trimmed {
            self.persist_unqueued(sref, &d);
            if touched.last() != Some(&sref) {
                touched.push(sref);
            }
        }
        for sref in touched {
            self.count_offline(sref);
        }
        let orgs: Vec<(Arc<str>, u64)> = dir
            .orgs
            .iter()
            .filter_map(|(o, d)| d.retention.retained_max_age_ms.map(|m| (o.clone(), m)))
            .collect();
        for (org, max) in orgs {
            for (topic, seq) in self.retained.expire(&org, now_ms.saturating_sub(max)) {
                self.persist_retain_expired(&org, topic, seq);
            }
        }
    }

    fn report_figures(&mut self) {
        let mut figures: HashMap<Arc<str>, sys::OrgFigures, RandomState> = HashMap::default();
        for o in self.cfg.auth.directory.load().orgs.keys() {
            figures.entry(o.clone()).or_default();
        }
        for (_, c) in self.conns.iter() {
            if let Some(k) = &c.attach.key {
                let f = figures.entry(k.org.clone()).or_default();
                f.connected += (c.phase == Phase::Active) as u64;
                f.received += c.link.rx_msgs;
                f.sent += c.link.tx_msgs;
            }
        }
        for (org, (rx, tx)) in &self.closed_rx {
            let f = figures.entry(org.clone()).or_default();
            f.received += rx;
            f.sent += tx;
        }
        for (org, f) in figures.iter_mut() {
            f.subscriptions = self.router.local_subscription_count(org) as u64;
            f.retained = self.retained.count(org) as u64;
        }
        self.cfg.sys.report(self.shard as usize, figures);
    }

    fn publish_sys(&mut self, now_ms: u64) {
        self.report_figures();
        if self.shard != 0 {
            return;
        }
        let uptime = now_ms.saturating_sub(self.timers.start_ms) / 1000;
        for (org, f) in self.cfg.sys.totals() {
            let items = [
                ("$SYS/broker/version", concat!("coremq ", env!("CARGO_PKG_VERSION")).to_string()),
                ("$SYS/broker/uptime", format!("{uptime} seconds")),
                ("$SYS/broker/clients/connected", f.connected.to_string()),
                ("$SYS/broker/messages/received", f.received.to_string()),
                ("$SYS/broker/messages/sent", f.sent.to_string()),
                ("$SYS/broker/subscriptions/count", f.subscriptions.to_string()),
                ("$SYS/broker/retained/count", f.retained.to_string()),
            ];
            for (topic, value) in items {
                let msg = Msg {
                    topic: MqStr::from_static(topic),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    props: Properties::default(),
                    received_ms: now_ms,
                };
                self.publish_internal(&org, msg, now_ms);
            }
        }
    }
}

/// Wakes and clears a stored waker.
pub(super) fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub(super) fn pubresp(packet_id: PacketId, reason: ReasonCode) -> PubResp {
    PubResp { packet_id, reason, props: Properties::default() }
}

/// The protocol level byte of a CONNECT frame, if it can be read.
pub(super) fn peek_connect_level(raw: &[u8]) -> Option<u8> {
    let mut i = 1;
    while *raw.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let name_len = u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]) as usize;
    raw.get(i + 2 + name_len).copied()
}
