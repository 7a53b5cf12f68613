//! Message flow: PUBLISH in, routing and fan-out, QoS 1/2 acknowledgements both ways,
//! SUBSCRIBE/UNSUBSCRIBE, DISCONNECT. The fan-out path allocates nothing in steady state
//! (proved by `tests/no_alloc.rs`).

use super::exactly_once::{FwdAck, RouteAck, Targets};
use super::persist::AfterDurable;
use super::*;

/// Reason string on the PUBACK/PUBREC of a 5.0 retained publish over the org's retained limit.
const RETAINED_FULL: &str = "retained message limit reached: delivered, not retained";

impl ShardCore {
    pub(super) fn handle_publish(&mut self, id: ConnId, now_ms: u64, mut p: Publish) {
        let c = self.conn_mut(id).expect("caller checked");
        let v = c.proto.protocol.expect("active connection has a protocol");
        let sref = c.attach.session.expect("active connection has a session");
        let org = c.attach.key.as_ref().expect("active connection has a key").org.clone();
        if !p.props.subscription_identifiers.is_empty() {
            // Only the server sends subscription identifiers [MQTT-3.3.4-6].
            return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms);
        }
        if let Some(alias) = p.props.topic_alias.take() {
            if alias > limits::TOPIC_ALIAS_MAX {
                return self.close_conn(id, Some(ReasonCode::TOPIC_ALIAS_INVALID), now_ms);
            }
            let slot = &mut c.proto.aliases_in[alias as usize - 1];
            if p.topic.is_empty() {
                match slot {
                    Some(t) => p.topic = t.clone(),
                    None => return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms),
                }
            } else {
                *slot = Some(p.topic.to_owned_copy());
            }
        }
        c.link.rx_msgs += 1;
        // `$SYS` is broker-owned whatever the policy says [SPEC §3]; then the ACL.
        let verdict = match &c.login.acl {
            Some(acl) => acl.check_publish(p.topic.as_str(), p.qos as u8, p.retain),
            None => crate::acl::Decision { allow: false, origin: None, rule: None },
        };
        self.stats.received += 1;
        let denied = p.topic.as_str().starts_with("$SYS") || !verdict.allow;
        if denied {
            self.acl_denied(id, now_ms, "publish", p.topic.as_str(), verdict);
        }
        // The org's message rate (allocation-free: a local decrement, a lease now and then).
        // 3.1.1 connections were throttled before this packet was read; 5.0 ones get 0x97.
        let c = self.conn_mut(id).expect("caller checked");
        let over = !denied
            && v == Protocol::V5
            && match &c.share.quota {
                Some(q) => !c.share.lease.take(q, now_ms),
                None => false,
            };
        if over {
            self.stats.quota_dropped += 1;
            self.quota_hit(id, now_ms, "messages_per_minute");
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(pid)) => {
                    let seq = self.store_seq();
                    self.ack(id, Packet::PubAck(pubresp(pid, ReasonCode::QUOTA_EXCEEDED)), seq, now_ms)
                }
                (QoS::ExactlyOnce, Some(pid)) => {
                    let seq = self.store_seq();
                    self.ack(id, Packet::PubRec(pubresp(pid, ReasonCode::QUOTA_EXCEEDED)), seq, now_ms)
                }
                _ => {}
            }
            return;
        } else if !denied && v == Protocol::V311 {
            if let Some(q) = &c.share.quota {
                let _ = c.share.lease.take(q, now_ms); // checked available before reading
            }
        }
        // Over the retained limit the message is still delivered; 5.0 hears why it was not kept.
        let retained_full = p.retain
            && !denied
            && v == Protocol::V5
            && !p.payload.is_empty()
            && p.qos != QoS::AtMostOnce
            && self.retained.is_full_for(&org, p.topic.as_str(), self.retained_max(&org));
        let ack_props = || Properties {
            reason_string: if retained_full { MqStr::copy_from(RETAINED_FULL) } else { None },
            ..Properties::default()
        };
        // The acknowledgement goes out after routing: with durability gating it waits for the
        // store writes routing made (offline queues, retained) to reach the disk.
        let since = self.store_seq();
        let pid_in = p.packet_id.map(|p| p.get());
        let ack = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => {
                let pid = p.packet_id.expect("decoder guarantees an id for QoS 1");
                let reason = if denied { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
                Some(Packet::PubAck(PubResp { packet_id: pid, reason, props: ack_props() }))
            }
            QoS::ExactlyOnce => {
                let pid = p.packet_id.expect("decoder guarantees an id for QoS 2");
                let st = &mut self.session_mut(sref).expect("live session").state;
                if denied {
                    self.ack(id, Packet::PubRec(pubresp(pid, ReasonCode::NOT_AUTHORIZED)), since, now_ms);
                    return;
                }
                if st.inbound_qos2.contains(&pid.get()) {
                    // A resend of a message we already have: acknowledge, do not deliver twice;
                    // once its copies on other shards are durable, if they are not yet.
                    let rec = Packet::PubRec(pubresp(pid, ReasonCode::SUCCESS));
                    let waits = self.waiting_record(sref, pid.get());
                    self.ack_waiting(id, rec, since, waits, now_ms);
                    return;
                }
                if st.inbound_qos2.len() >= limits::INFLIGHT_MAX as usize {
                    return self.close_conn(id, Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED), now_ms);
                }
                st.inbound_qos2.insert(pid.get());
                self.persist_qos2(sref, pid.get(), true);
                Some(Packet::PubRec(PubResp {
                    packet_id: pid,
                    reason: ReasonCode::SUCCESS,
                    props: ack_props(),
                }))
            }
        };
        if denied {
            if let Some(a) = ack {
                self.ack(id, a, since, now_ms);
            }
            return;
        }
        let _ = v;
        let msg = Msg {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: p.props,
            received_ms: now_ms,
        };
        if msg.retain {
            self.apply_retain(&org, &msg);
        }
        // With gating, forwards carry a token: the shards they reach confirm once stored.
        let token = (ack.is_some() && self.cfg.gate_acks && self.cfg.nr_shards > 1).then(|| {
            self.next_token += 1;
            self.next_token
        });
        // A QoS 2 message of a persistent session is recorded with its inbound id if it goes
        // to other shards (exactly once across a crash, `exactly_once`).
        let qos2 = match (token, msg.qos, pid_in) {
            (Some(_), QoS::ExactlyOnce, Some(pid)) if self.stored_key(sref).is_some() => {
                Some((pid, self.new_origin_id(now_ms)))
            }
            _ => None,
        };
        let route_ack = token.map(|token| RouteAck { token, qos2 });
        let forwards = self.route(&org, &msg, Some(sref), false, route_ack, now_ms);
        if let Some(a) = ack {
            let waits = token.filter(|_| forwards > 0).map(|t| (t, forwards));
            self.ack_waiting(id, a, since, waits, now_ms);
        }
    }

    /// Whether the ACL of session `sref` lets a message on `topic` through a subscription that
    /// a deny rule overlaps. Allocation-free.
    fn delivery_allowed(&self, sref: SessionRef, topic: &str) -> bool {
        self.session(sref).and_then(|s| s.state.holder_acl.as_ref()).is_none_or(|a| a.check_delivery(topic))
    }

    /// Publishes a message originating in the broker (wills, `$SYS`).
    pub(super) fn publish_internal(&mut self, org: &Arc<str>, msg: Msg, now_ms: u64) {
        let msg = Msg { received_ms: now_ms, ..msg };
        if msg.retain {
            self.apply_retain(org, &msg);
        }
        self.route(org, &msg, None, false, None, now_ms);
    }

    fn apply_retain(&mut self, org: &Arc<str>, msg: &Msg) {
        let seq = self.cfg.retain_seq.fetch_add(1, Ordering::Relaxed);
        let owned = msg.to_owned_copy();
        let max = self.retained_max(org);
        if let super::retained::RetainOutcome::Full = self.retained.apply(org, owned.clone(), seq, max) {
            // Delivered but not retained (SPEC §4); peers would refuse it the same way.
            if let Some(q) = self.org_quota(org) {
                q.retained_refused.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.persist_retain(org, &owned, seq);
        self.broadcast(|| MeshMsg::Retain { org: org.clone(), msg: owned.clone(), seq });
    }

    /// Routes `msg` to local subscribers and, unless it came from another shard, forwards it
    /// once to each interested remote shard.
    pub(super) fn route(
        &mut self,
        org: &Arc<str>,
        msg: &Msg,
        publisher: Option<SessionRef>,
        from_remote: bool,
        ack: Option<RouteAck>,
        now_ms: u64,
    ) -> u16 {
        let mut m = std::mem::take(&mut self.scratch.matches);
        let mut forwards = 0;
        self.router.route(org, msg.topic.as_str(), !from_remote, &mut m);
        let mut subs = std::mem::take(&mut self.scratch.fanout);
        subs.clear();
        subs.extend_from_slice(&m.subs);
        subs.sort_unstable_by_key(|s| s.session);
        let mut stored: Option<Arc<Msg>> = None;
        let mut i = 0;
        while i < subs.len() {
            let session = subs[i].session;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids: SmallVec<[u32; 2]> = SmallVec::new();
            while i < subs.len() && subs[i].session == session {
                let s = &subs[i];
                i += 1;
                if s.opts.no_local && publisher == Some(session) {
                    continue; // [MQTT-3.8.3-3]
                }
                if s.checked && !self.delivery_allowed(session, msg.topic.as_str()) {
                    continue; // a deny rule overlaps this subscription and matches this topic
                }
                let q = s.opts.qos.min(msg.qos);
                qos = Some(qos.map_or(q, |old| old.max(q)));
                retain |= s.opts.retain_as_published && msg.retain;
                if let Some(id) = s.sub_id {
                    if ids.len() < limits::SUB_IDS_PER_PUBLISH_MAX {
                        ids.push(id);
                    }
                }
            }
            if let Some(q) = qos {
                self.deliver(session, msg, q, retain, &ids, &mut stored, now_ms);
            }
        }
        if !from_remote && (m.remote != 0 || !m.shared_remote.is_empty()) {
            let mut targets = m.remote;
            for p in &m.shared_remote {
                targets |= 1 << p.shard;
            }
            let shared_for = |shard: u8| -> SmallVec<[Arc<str>; 2]> {
                m.shared_remote.iter().filter(|p| p.shard == shard).map(|p| p.filter.clone()).collect()
            };
            if let (Some(a), Some((pid, oid)), Some(p)) = (ack, ack.and_then(|a| a.qos2), publisher) {
                // Stored with the inbound id, before the forwards may leave.
                let mut all = Targets::new();
                let mut mask = targets;
                while mask != 0 {
                    let shard = mask.trailing_zeros() as u8;
                    mask &= mask - 1;
                    all.push((shard, shared_for(shard)));
                }
                self.record_forward(p, pid, (a.token, oid), msg, all);
            }
            while targets != 0 {
                let shard = targets.trailing_zeros() as u8;
                targets &= targets - 1;
                let shared = shared_for(shard);
                let oid = ack.and_then(|a| a.qos2).map_or(0, |q| q.1);
                let ack = ack.map(|a| FwdAck { origin: self.shard, token: a.token, oid, replay: false });
                forwards += 1;
                let f = MeshMsg::Forward { org: org.clone(), msg: msg.clone(), shared, ack };
                // QoS 2 exactly once across a crash: the other shard's subscribers may hand the
                // message on at once, so it leaves only once the inbound packet id (which makes
                // the publisher's resend a duplicate) is durable here; later forwards to that
                // shard queue behind it.
                let pending =
                    ack.is_some() && self.dur.store_seq > self.dur.durable_upto && !self.dur.store_broken;
                if (pending && msg.qos == QoS::ExactlyOnce) || self.dur.deferred_forwards[shard as usize] > 0
                {
                    self.dur.deferred_forwards[shard as usize] += 1;
                    let seq = self.dur.store_seq;
                    self.dur.stored_replies.push_back((seq, shard, AfterDurable::Forward(Box::new(f))));
                } else {
                    self.mesh.mesh_out[shard as usize].push_back(f);
                }
            }
        }
        self.scratch.fanout = subs;
        self.scratch.matches = m;
        forwards
    }

    /// Delivers to one session: straight into its connection's output when possible, else into
    /// its bounded queue. `stored` is the owned copy shared by all QoS 1/2 deliveries of `msg`.
    #[allow(clippy::too_many_arguments)] // One call site per kind of delivery; a struct would add noise.
    pub(super) fn deliver(
        &mut self,
        sref: SessionRef,
        msg: &Msg,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        stored: &mut Option<Arc<Msg>>,
        now_ms: u64,
    ) {
        if msg.expiry(now_ms) == Expiry::Expired {
            return;
        }
        let Some(s) = self.session_mut(sref) else { return };
        let conn = s.conn;
        if qos == QoS::AtMostOnce {
            let Some(id) = conn else { return }; // QoS 0 is not queued for offline sessions
            let full = self.conn(id).is_none_or(|c| c.link.out.len() >= limits::CONN_OUTPUT_BYTES_MAX);
            if full {
                self.stats.dropped_slow += 1;
                if let Some(c) = self.conn_mut(id) {
                    c.link.dropped += 1;
                }
                return;
            }
            let po = PublishOut {
                dup: false,
                qos,
                retain,
                topic: msg.topic.as_bytes(),
                packet_id: None,
                props: Some(&msg.props),
                sub_ids: ids,
                topic_alias: None,
                expiry_left: None,
                payload: &msg.payload,
            };
            self.write_publish(id, po, &msg.topic, msg, now_ms);
            return;
        }
        let arc = stored.get_or_insert_with(|| Arc::new(msg.to_owned_copy())).clone();
        let mut d = Delivery { msg: arc, qos, retain, sub_ids: ids.iter().copied().collect(), seq: 0 };
        if conn.is_none() {
            return self.enqueue_offline(sref, d);
        }
        // A persistent session keeps it stored until it is acknowledged.
        self.persist_queued(sref, &mut d);
        let s = self.session_mut(sref).expect("checked above");
        if let Some(old) = s.state.enqueue(d) {
            self.persist_unqueued(sref, &old);
        }
        if let Some(id) = conn {
            self.pump(sref, now_ms);
            if self.session(sref).is_some_and(|s| s.state.queue.len() >= limits::QUEUE_PRESSURE) {
                self.note_pressure(id, now_ms);
            }
        }
    }

    /// Queues for an offline session, keeping its org's session storage within the quota:
    /// the session's oldest messages go first (counted); a message that cannot fit alone is
    /// dropped itself.
    fn enqueue_offline(&mut self, sref: SessionRef, mut d: Delivery) {
        let org = match self.session(sref) {
            Some(s) => s.org.clone(),
            None => return,
        };
        let quota = self.org_quota(&org);
        let persistent = self.session(sref).is_some_and(|s| s.state.expiry_secs != 0);
        let mut gone: SmallVec<[Delivery; 2]> = SmallVec::new();
        self.persist_queued(sref, &mut d);
        let s = self.session_mut(sref).expect("checked above");
        let (Some(q), true) = (quota, persistent) else {
            if let Some(old) = s.state.enqueue(d) {
                self.persist_unqueued(sref, &old);
            }
            return;
        };
        let b = d.bytes();
        if let Some(limit) = q.session_storage_limit() {
            while q.stored_bytes.load(Ordering::Relaxed) + b > limit {
                let Some(old) = s.state.queue.pop_front() else { break };
                let ob = old.bytes();
                q.release_bytes(ob);
                s.state.stored_bytes = s.state.stored_bytes.saturating_sub(ob);
                s.state.dropped += 1;
                q.stored_dropped.fetch_add(1, Ordering::Relaxed);
                gone.push(old);
            }
            if q.stored_bytes.load(Ordering::Relaxed) + b > limit {
                s.state.dropped += 1;
                q.stored_dropped.fetch_add(1, Ordering::Relaxed);
                gone.push(d);
                for old in gone {
                    self.persist_unqueued(sref, &old);
                }
                return;
            }
        }
        q.store_bytes(b);
        s.state.stored_bytes += b;
        if let Some(old) = s.state.enqueue(d) {
            let ob = old.bytes();
            q.release_bytes(ob);
            s.state.stored_bytes = s.state.stored_bytes.saturating_sub(ob);
            gone.push(old);
        }
        for old in gone {
            self.persist_unqueued(sref, &old);
        }
    }

    /// An acknowledgement from a subscriber under queue pressure: it is alive (the stall clock
    /// restarts), and once its queue is short again it stops slowing publishers.
    fn queue_progress(&mut self, id: ConnId, sref: SessionRef, now_ms: u64) {
        let queued = self.session(sref).map_or(0, |s| s.state.queue.len());
        let Some(c) = self.conn_mut(id) else { return };
        if c.link.pressure_since.is_none() {
            return;
        }
        if queued < limits::QUEUE_PRESSURE && c.link.out.len() < limits::OUTPUT_PRESSURE_BYTES {
            self.clear_pressure(id);
        } else {
            c.link.pressure_since = Some(now_ms);
        }
    }

    /// Moves queued messages into the in-flight window while it and the output have room.
    pub(super) fn pump(&mut self, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session(sref) else { return };
        let Some(id) = s.conn else { return };
        let Some(c) = self.conn(id) else { return };
        if c.phase != Phase::Active {
            return;
        }
        let window = c.proto.send_window as usize;
        if s.state.queue.is_empty() {
            return;
        }
        let max_age = self.retention(&s.org).queued_max_age_ms.unwrap_or(u64::MAX);
        loop {
            let out_full = self.conn(id).is_none_or(|c| c.link.out.len() >= limits::CONN_OUTPUT_BYTES_MAX);
            let s = self.session_mut(sref).expect("checked above");
            if out_full || s.state.inflight.len() >= window {
                return;
            }
            let Some(d) = s.state.queue.pop_front() else { return };
            if d.msg.expiry(now_ms) == Expiry::Expired || now_ms.saturating_sub(d.msg.received_ms) > max_age {
                self.persist_unqueued(sref, &d);
                continue;
            }
            let Some(pid) = s.state.alloc_pid() else {
                s.state.queue.push_front(d);
                return;
            };
            let sent = self.encode_delivery(id, &d, PacketId::new(pid), false, now_ms);
            if sent {
                self.persist_outbound(sref, d.seq, pid, false);
                if d.qos == QoS::ExactlyOnce && d.seq != 0 {
                    // Exactly once across a crash: a receiver may hand the message on at once,
                    // so it leaves only when the inbound QoS 2 state that makes the publisher's
                    // resend a duplicate, and this copy, are on disk.
                    self.gate_output(id, self.dur.durable_upto);
                }
                let s = self.session_mut(sref).expect("checked above");
                s.state.inflight.insert(pid, InFlight { delivery: d, state: OutState::Published });
            } else {
                self.persist_unqueued(sref, &d);
            }
        }
    }

    /// Encodes a stored delivery; false when it could not be sent (too large for the client).
    pub(super) fn encode_delivery(
        &mut self,
        id: ConnId,
        d: &Delivery,
        pid: Option<PacketId>,
        dup: bool,
        now_ms: u64,
    ) -> bool {
        let msg = &d.msg;
        let po = PublishOut {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: msg.topic.as_bytes(),
            packet_id: if d.qos == QoS::AtMostOnce { None } else { pid },
            props: Some(&msg.props),
            sub_ids: &d.sub_ids,
            topic_alias: None,
            expiry_left: None,
            payload: &msg.payload,
        };
        self.write_publish(id, po, &msg.topic, msg, now_ms)
    }

    /// Writes a PUBLISH to a connection, applying message expiry, the client's maximum packet
    /// size and outbound topic aliases. False if it was not sent.
    fn write_publish(
        &mut self,
        id: ConnId,
        mut po: PublishOut<'_>,
        topic: &MqStr,
        msg: &Msg,
        now_ms: u64,
    ) -> bool {
        let Some(c) = self.conn_mut(id) else { return false };
        let Some(v) = c.proto.protocol else { return false };
        match msg.expiry(now_ms) {
            Expiry::Expired => return false,
            Expiry::Left(s) => po.expiry_left = Some(s),
            Expiry::Never => {}
        }
        if v == Protocol::V5 && c.proto.client_alias_max > 0 {
            if let Some(a) = c.proto.aliases_out.get(topic) {
                po.topic_alias = Some(*a);
                po.topic = b"";
            } else if c.proto.aliases_out.len() < c.proto.client_alias_max as usize {
                let a = c.proto.aliases_out.len() as u16 + 1;
                c.proto.aliases_out.insert(topic.to_owned_copy(), a);
                po.topic_alias = Some(a);
            }
        }
        if po.encoded_len(v) > c.proto.client_max_packet as usize {
            // Too large for the client: not sent, treated as delivered [MQTT-3.1.2-25].
            c.link.dropped += 1;
            return false;
        }
        encode_publish(&mut c.link.out, v, &po);
        c.link.tx_msgs += 1;
        let pressure = c.link.out.len() >= limits::OUTPUT_PRESSURE_BYTES;
        wake(&mut c.link.writer);
        self.stats.sent += 1;
        if pressure {
            self.note_pressure(id, now_ms);
        }
        true
    }

    pub(super) fn handle_puback(&mut self, id: ConnId, now_ms: u64, r: PubResp, comp: bool) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let st = &mut self.session_mut(sref).expect("live session").state;
        let want = if comp { OutState::Released } else { OutState::Published };
        let pid = r.packet_id.get();
        match st.inflight.get(&pid) {
            Some(f) if f.state == want && (comp || f.delivery.qos == QoS::AtLeastOnce) => {
                let done = st.inflight.remove(&pid).expect("just found");
                self.persist_unqueued(sref, &done.delivery);
                self.pump(sref, now_ms);
                self.queue_progress(id, sref, now_ms);
            }
            // Unknown or out-of-state acknowledgements are ignored, as most brokers do.
            _ => {}
        }
    }

    pub(super) fn handle_pubrec(&mut self, id: ConnId, now_ms: u64, r: PubResp) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let since = self.store_seq();
        let st = &mut self.session_mut(sref).expect("live session").state;
        let pid = r.packet_id.get();
        let reply = match st.inflight.get_mut(&pid) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                if r.reason.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-?].
                    let done = st.inflight.remove(&pid).expect("just found");
                    self.persist_unqueued(sref, &done.delivery);
                    return;
                }
                f.state = OutState::Released;
                let seq = f.delivery.seq;
                self.persist_outbound(sref, seq, pid, true);
                ReasonCode::SUCCESS
            }
            _ => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        // Durable before PUBREL: resending the PUBLISH after a crash, once the receiver has
        // released the id, would deliver it twice.
        self.ack(id, Packet::PubRel(pubresp(r.packet_id, reply)), since, now_ms);
    }

    pub(super) fn handle_pubrel(&mut self, id: ConnId, now_ms: u64, r: PubResp) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let since = self.store_seq();
        let st = &mut self.session_mut(sref).expect("live session").state;
        let reason = if st.inbound_qos2.remove(&r.packet_id.get()) {
            // Durable before PUBCOMP: a release lost in a crash would make the id's next
            // message look like a resend.
            self.persist_qos2(sref, r.packet_id.get(), false);
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.ack(id, Packet::PubComp(pubresp(r.packet_id, reason)), since, now_ms);
    }

    pub(super) fn handle_subscribe(&mut self, id: ConnId, now_ms: u64, s: Subscribe) {
        let c = self.conn(id).expect("caller checked");
        let v5 = c.proto.protocol == Some(Protocol::V5);
        let sref = c.attach.session.expect("active");
        let org = c.attach.key.as_ref().expect("active").org.clone();
        let sub_id = s.props.subscription_identifiers.first().copied();
        let max_subs = c
            .share
            .quota
            .as_ref()
            .and_then(|q| q.max_subscriptions())
            .map_or(limits::SUBSCRIPTIONS_PER_SESSION_MAX, |m| {
                (m as usize).min(limits::SUBSCRIPTIONS_PER_SESSION_MAX)
            });
        self.next_token += 1;
        let token = self.next_token;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut waiting = 0;
        for (filter, opts) in &s.filters {
            let f = filter.as_str();
            let kind = if valid_filter(f) { classify(f) } else { FilterKind::InvalidShared };
            let shared = match kind {
                FilterKind::Plain(_) => false,
                FilterKind::Shared(_) => true,
                FilterKind::InvalidShared => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if shared && opts.no_local && v5 {
                return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms);
                // [MQTT-3.8.3-4]
            }
            let inner = match kind {
                FilterKind::Shared(sf) => sf.filter,
                _ => f,
            };
            let acl = self.conn(id).and_then(|c| c.login.acl.clone());
            let d = match &acl {
                Some(acl) => acl.check_subscribe(inner, opts.qos as u8),
                None => crate::acl::SubDecision {
                    decision: crate::acl::Decision { allow: false, origin: None, rule: None },
                    granted: 0,
                    checked: false,
                },
            };
            if !d.decision.allow {
                self.acl_denied(id, now_ms, "subscribe", f, d.decision);
                // 5.0: Not authorized; 3.1.1: the only failure code, 0x80.
                reasons.push(if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let mut opts = *opts;
            opts.qos = match d.granted {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            }
            .min(opts.qos);
            let opts = &opts;
            let st = &mut self.session_mut(sref).expect("active").state;
            if !st.subs.contains_key(f) && st.subs.len() >= max_subs {
                // 5.0: Quota exceeded; 3.1.1: the only failure code, 0x80.
                reasons.push(if v5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::UNSPECIFIED_ERROR });
                if let Some(q) = self.conn(id).and_then(|c| c.share.quota.as_ref()) {
                    q.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                }
                self.quota_hit(id, now_ms, "max_subscriptions_per_client");
                continue;
            }
            st.subs.insert(f.into(), SubEntry { opts: *opts, sub_id, checked: d.checked });
            let ch = self.router.subscribe(
                &org,
                f,
                Sub { session: sref, opts: *opts, sub_id, checked: d.checked },
            );
            if ch.interest_changed {
                waiting += self.announce(&org, f, true, Some((id, token)));
            }
            reasons.push(ReasonCode(opts.qos as u8));
            let send = match opts.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !ch.existed,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2-?; 5.0 §4.8.2].
            if send && !shared {
                retained.push((Box::<str>::from(f), opts.qos, sub_id));
            }
        }
        let c = self.conn_mut(id).expect("caller checked");
        c.attach.pending_subacks.push_back(PendingSubAck {
            token,
            waiting,
            packet_id: s.packet_id,
            reasons,
            retained,
        });
        self.release_subacks(id, now_ms);
    }

    pub(super) fn handle_interest_ack(&mut self, id: ConnId, token: u64, now_ms: u64) {
        let Some(c) = self.conn_mut(id) else { return };
        if let Some(p) = c.attach.pending_subacks.iter_mut().find(|p| p.token == token) {
            p.waiting = p.waiting.saturating_sub(1);
        }
        self.release_subacks(id, now_ms);
    }

    /// Sends, in order, every SUBACK whose interest announcements all peers have acknowledged,
    /// followed by its retained messages.
    fn release_subacks(&mut self, id: ConnId, now_ms: u64) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if c.attach.pending_subacks.front().is_none_or(|p| p.waiting > 0) {
                return;
            }
            let p = c.attach.pending_subacks.pop_front().expect("checked");
            let Some(sref) = c.attach.session else { return };
            let org = c.attach.key.as_ref().expect("active").org.clone();
            let ack = Packet::SubAck(SubAck {
                packet_id: p.packet_id,
                props: Properties::default(),
                reasons: p.reasons,
            });
            self.write(id, &ack);
            let max_age = self.retention(&org).retained_max_age_ms.unwrap_or(u64::MAX);
            for (filter, qos, sub_id) in p.retained {
                let msgs: Vec<Arc<Msg>> = self
                    .retained
                    .matching(&org, &filter)
                    .filter(|m| now_ms.saturating_sub(m.received_ms) <= max_age)
                    .cloned()
                    .collect();
                let checked =
                    self.session(sref).and_then(|s| s.state.subs.get(&*filter)).is_some_and(|e| e.checked);
                for m in msgs {
                    if checked && !self.delivery_allowed(sref, m.topic.as_str()) {
                        continue;
                    }
                    let q = qos.min(m.qos);
                    let ids: SmallVec<[u32; 2]> = sub_id.into_iter().collect();
                    // Retained messages keep RETAIN=1 when sent because of a subscribe [MQTT-3.3.1-8].
                    let mut stored = Some(m.clone());
                    self.deliver(sref, &m, q, true, &ids, &mut stored, now_ms);
                }
            }
        }
    }

    pub(super) fn handle_unsubscribe(&mut self, id: ConnId, now_ms: u64, u: Unsubscribe) {
        let _ = now_ms;
        let c = self.conn(id).expect("caller checked");
        let sref = c.attach.session.expect("active");
        let org = c.attach.key.as_ref().expect("active").org.clone();
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let f = f.as_str();
            if !valid_filter(f) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID); // MQTT 5 §3.11.3
                continue;
            }
            let st = &mut self.session_mut(sref).expect("active").state;
            if st.subs.remove(f).is_none() {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                continue;
            }
            let ch = self.router.unsubscribe(&org, f, sref);
            if ch.interest_changed {
                self.announce(&org, f, false, None);
            }
            reasons.push(ReasonCode::SUCCESS);
        }
        let ack =
            Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, props: Properties::default(), reasons });
        self.write(id, &ack);
    }

    pub(super) fn handle_disconnect(&mut self, id: ConnId, now_ms: u64, d: Disconnect) {
        let c = self.conn_mut(id).expect("caller checked");
        if let Some(e) = d.props.session_expiry_interval {
            // Zero at CONNECT cannot become non-zero at DISCONNECT [MQTT-3.14.2-2].
            if c.attach.expiry_req == 0 && e != 0 {
                return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms);
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
        c.link.close_reason = Some("client_disconnect");
        self.close_conn(id, None, now_ms);
    }
}
