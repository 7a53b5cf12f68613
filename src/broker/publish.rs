//! PUBLISH from clients and from inside the broker (wills, `$SYS`, the REST bridge): checks,
//! retain, and routing to this shard's subscribers and to the other shards.

use super::exactly_once::{FwdAck, RouteAck, Targets};
use super::*;

/// Reason string on the PUBACK/PUBREC of a 5.0 retained publish over the org's retained limit.
const RETAINED_FULL: &str = "retained message limit reached: delivered, not retained";

impl ShardCore {
    /// PUBLISH from client `id` (connected): checks, the org's rate, the inbound QoS 2 state,
    /// retain, routing, and the acknowledgement once what it depends on is durable.
    pub(super) fn handle_publish(&mut self, id: ConnId, now_ms: u64, mut p: Publish) {
        if let Err(r) = self.resolve_alias(id, &mut p) {
            return self.close_conn(id, CloseCause::Protocol(r), now_ms);
        }
        let c = self.conn_mut(id).expect("caller checked");
        let v = c.proto.protocol.expect("active connection has a protocol");
        let sref = c.attach.session.expect("active connection has a session");
        let org = c.attach.key.as_ref().expect("active connection has a key").org.clone();
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
        } else if !self.take_rate(id, v, now_ms) {
            return self.refuse_over_rate(id, &p, now_ms);
        }
        // Over the retained limit the message is still delivered; 5.0 hears why it was not kept.
        let retained_full = p.retain
            && !denied
            && v == Protocol::V5
            && !p.payload.is_empty()
            && p.qos != QoS::AtMostOnce
            && self.retained.is_full_for(&org, p.topic.as_str(), self.retained_max(&org));
        // The acknowledgement goes out after routing: with durability gating it waits for the
        // store writes routing made (offline queues, retained) to reach the disk.
        let since = self.store_seq();
        let pid_in = p.packet_id.map(|p| p.get());
        let Some(ack) = self.inbound_ack(id, sref, &p, denied, retained_full, since, now_ms) else { return };
        if denied {
            if let Some(a) = ack {
                self.ack(id, a, since, now_ms);
            }
            return;
        }
        let msg = Msg {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: p.props.into(),
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

    /// Checks the subscription identifiers a client may not send [MQTT-3.3.4-6] and resolves a
    /// topic alias (MQTT 5): the reason code to close with if the packet breaks the protocol.
    fn resolve_alias(&mut self, id: ConnId, p: &mut Publish) -> Result<(), ReasonCode> {
        if !p.props.subscription_identifiers.is_empty() {
            return Err(ReasonCode::PROTOCOL_ERROR);
        }
        let Some(alias) = p.props.topic_alias.take() else { return Ok(()) };
        if alias > limits::TOPIC_ALIAS_MAX {
            return Err(ReasonCode::TOPIC_ALIAS_INVALID);
        }
        let c = self.conn_mut(id).expect("caller checked");
        let slot = &mut c.proto.aliases_in[alias as usize - 1];
        if !p.topic.is_empty() {
            *slot = Some(p.topic.to_owned_copy());
        } else {
            p.topic = slot.clone().ok_or(ReasonCode::PROTOCOL_ERROR)?;
        }
        Ok(())
    }

    /// Takes one message from the org's rate (allocation-free: a local decrement, a lease now
    /// and then). 3.1.1 connections were throttled before this packet was read, so they always
    /// get one; false: a 5.0 connection is over the rate.
    fn take_rate(&mut self, id: ConnId, v: Protocol, now_ms: u64) -> bool {
        let c = self.conn_mut(id).expect("caller checked");
        let Some(q) = &c.share.quota else { return true };
        let took = c.share.lease.take(q, now_ms);
        took || v == Protocol::V311
    }

    /// A 5.0 PUBLISH over the org's rate: dropped, counted, and a QoS 1/2 one refused (0x97).
    fn refuse_over_rate(&mut self, id: ConnId, p: &Publish, now_ms: u64) {
        self.stats.quota_dropped += 1;
        self.quota_hit(id, now_ms, "messages_per_minute");
        let seq = self.store_seq();
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(pid)) => {
                self.ack(id, Packet::PubAck(pubresp(pid, ReasonCode::QUOTA_EXCEEDED)), seq, now_ms)
            }
            (QoS::ExactlyOnce, Some(pid)) => {
                self.ack(id, Packet::PubRec(pubresp(pid, ReasonCode::QUOTA_EXCEEDED)), seq, now_ms)
            }
            _ => {}
        }
    }

    /// The acknowledgement `p` will get (`Some(None)`: none, QoS 0), recording a new inbound
    /// QoS 2 id; `None` when handled here already (a denied or repeated QoS 2 PUBLISH,
    /// answered; too many QoS 2 in flight, closed).
    #[allow(clippy::too_many_arguments)] // The publish's facts, computed once by the caller.
    fn inbound_ack(
        &mut self,
        id: ConnId,
        sref: SessionRef,
        p: &Publish,
        denied: bool,
        retained_full: bool,
        since: u64,
        now_ms: u64,
    ) -> Option<Option<Packet>> {
        let ack_props = || Properties {
            reason_string: if retained_full { MqStr::copy_from(RETAINED_FULL) } else { None },
            ..Properties::default()
        };
        match p.qos {
            QoS::AtMostOnce => Some(None),
            QoS::AtLeastOnce => {
                let pid = p.packet_id.expect("decoder guarantees an id for QoS 1");
                let reason = if denied { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::SUCCESS };
                Some(Some(Packet::PubAck(PubResp { packet_id: pid, reason, props: ack_props() })))
            }
            QoS::ExactlyOnce => {
                let pid = p.packet_id.expect("decoder guarantees an id for QoS 2");
                if denied {
                    self.ack(id, Packet::PubRec(pubresp(pid, ReasonCode::NOT_AUTHORIZED)), since, now_ms);
                    return None;
                }
                let st = &mut self.session_mut(sref).expect("live session").state;
                if st.inbound_qos2.contains(&pid.get()) {
                    // A resend of a message we already have: acknowledge, do not deliver twice;
                    // once its copies on other shards are durable, if they are not yet.
                    let rec = Packet::PubRec(pubresp(pid, ReasonCode::SUCCESS));
                    let waits = self.waiting_record(sref, pid.get());
                    self.ack_waiting(id, rec, since, waits, now_ms);
                    return None;
                }
                if st.inbound_qos2.len() >= limits::INFLIGHT_MAX as usize {
                    let cause = CloseCause::Protocol(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
                    self.close_conn(id, cause, now_ms);
                    return None;
                }
                st.inbound_qos2.insert(pid.get());
                self.persist_qos2(sref, pid.get(), true);
                let rec = PubResp { packet_id: pid, reason: ReasonCode::SUCCESS, props: ack_props() };
                Some(Some(Packet::PubRec(rec)))
            }
        }
    }

    /// Whether the ACL of session `sref` lets a message on `topic` through a subscription that
    /// a deny rule overlaps. Allocation-free.
    pub(super) fn delivery_allowed(&self, sref: SessionRef, topic: &str) -> bool {
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
                let wait = ack.is_some() && msg.qos == QoS::ExactlyOnce && self.dur.writes_pending();
                if let Some(f) = self.dur.hold_forward(shard, f, wait) {
                    self.mesh.mesh_out[shard as usize].push_back(f);
                }
            }
        }
        self.scratch.fanout = subs;
        self.scratch.matches = m;
        forwards
    }
}
