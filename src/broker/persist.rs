//! What the core asks the store to write (SPEC §7): persistent sessions (subscriptions,
//! expiry), the messages queued for them while they are offline, and retained messages. The
//! core stays free of I/O: it records [`StoreOp`]s, the shell applies them to the shard's
//! fjall database (`crate::store`) and reloads them at start with
//! [`ShardCore::restore_session`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::mesh::SessionKey;
use super::msg::Msg;
use super::session::{Delivery, Session, SessionState, SubEntry};
use super::*;
use crate::codec::{MqStr, Packet, Protocol, QoS, ReasonCode, RetainHandling, SubOptions};

/// Reason string of a PUBACK/PUBREC refused because the store fails.
const STORE_FAILING: &str = "the broker's store is failing; not stored";

/// One write for the shard's store, in the order the core made them.
#[derive(Debug)]
pub enum StoreOp {
    /// Creates or replaces a persistent session's record.
    Session {
        /// Whose.
        key: SessionKey,
        /// Its subscriptions and expiry.
        meta: Box<StoredSession>,
    },
    /// A message queued for an offline persistent session, under its sequence.
    Queued {
        /// Whose.
        key: SessionKey,
        /// Position in the session's queue (increasing).
        seq: u64,
        /// The message and its per-subscription attributes.
        delivery: Delivery,
    },
    /// A queued message left the queue (dropped for a bound).
    Unqueued {
        /// Whose.
        key: SessionKey,
        /// Which.
        seq: u64,
    },
    /// The session is online again: its stored queue is no longer needed.
    ClearQueue {
        /// Whose.
        key: SessionKey,
    },
    /// The session ended or left this shard: its record and queue go.
    Forget {
        /// Whose.
        key: SessionKey,
    },
    /// An inbound QoS 2 packet id of a persistent session became pending (PUBREC sent) or was
    /// released (PUBREL): a resend after a restart is then recognised, not delivered twice.
    Qos2 {
        /// Whose.
        key: SessionKey,
        /// Packet id.
        pid: u16,
        /// Pending (true) or released.
        pending: bool,
    },
    /// A retained message set (non-empty payload) or deleted (empty), with its global sequence.
    Retain {
        /// Organization.
        org: Arc<str>,
        /// Owned copy of the message.
        msg: Box<Msg>,
        /// Global retained sequence (the highest wins).
        seq: u64,
    },
    /// A retained message passed its org's maximum age: delete it if still the one stored.
    RetainExpired {
        /// Organization.
        org: Arc<str>,
        /// Its topic.
        topic: Box<str>,
        /// The sequence of the write that set it.
        seq: u64,
    },
}

/// A persistent session's record (JSON in the store; `v` is the format version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Format version (1).
    pub v: u8,
    /// Session expiry interval, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// Protocol level of its last connection (4 or 5).
    pub protocol: u8,
    /// When it expires if it stays offline (Unix ms), once offline.
    pub expires_at_unix_ms: Option<u64>,
    /// Next queue sequence.
    pub next_seq: u64,
    /// Subscriptions.
    pub subs: Vec<StoredSub>,
}

/// One subscription of a [`StoredSession`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSub {
    /// Topic filter.
    pub filter: String,
    /// Maximum QoS.
    pub qos: u8,
    /// No Local.
    pub nl: bool,
    /// Retain As Published.
    pub rap: bool,
    /// Retain Handling (0..=2).
    pub rh: u8,
    /// Subscription identifier.
    pub id: Option<u32>,
    /// Deliveries checked against the ACL.
    pub checked: bool,
}

fn qos_of(q: u8) -> QoS {
    match q {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    }
}

impl StoredSub {
    fn from_entry(filter: &str, e: &SubEntry) -> StoredSub {
        StoredSub {
            filter: filter.to_string(),
            qos: e.opts.qos as u8,
            nl: e.opts.no_local,
            rap: e.opts.retain_as_published,
            rh: e.opts.retain_handling as u8,
            id: e.sub_id,
            checked: e.checked,
        }
    }

    fn entry(&self) -> SubEntry {
        SubEntry {
            opts: SubOptions {
                qos: qos_of(self.qos),
                no_local: self.nl,
                retain_as_published: self.rap,
                retain_handling: match self.rh {
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAlways,
                },
            },
            sub_id: self.id,
            checked: self.checked,
        }
    }
}

/// An acknowledgement held for durability.
#[derive(Debug)]
pub struct HeldAck {
    /// Local store writes up to this sequence must be durable first.
    pub seq: u64,
    /// Its entry in `remote_waits` (0: no forwards to wait for).
    pub token: u64,
    /// To whom.
    pub id: ConnId,
    /// The PUBACK, PUBREC or PUBCOMP.
    pub p: Packet,
}

impl ShardCore {
    /// Store writes made since the last call, in order; returns the sequence of the last one
    /// (pass it to [`ShardCore::durable`] once they are on disk).
    pub fn take_store_ops(&mut self, out: &mut Vec<StoreOp>) -> u64 {
        out.append(&mut self.store_out);
        self.store_seq
    }

    fn push_op(&mut self, op: StoreOp) {
        self.store_seq += 1;
        self.store_out.push(op);
    }

    /// Sequence of the last store write made.
    pub(super) fn store_seq(&self) -> u64 {
        self.store_seq
    }

    /// A forwarded message reached this shard (`since`: the store sequence before it was
    /// routed): confirm to `origin` at once if nothing was stored for it, else once durable.
    pub(super) fn confirm_forward(&mut self, origin: u8, token: u64, since: u64) {
        if self.store_broken {
            self.send(origin, MeshMsg::Stored { token, ok: false });
        } else if self.store_seq == since && self.stored_replies.is_empty() {
            self.send(origin, MeshMsg::Stored { token, ok: true });
        } else {
            // Behind earlier replies, in order, so a confirmation never overtakes a write.
            self.stored_replies.push_back((self.store_seq, origin, token));
        }
    }

    /// Holds the output of `id` (a CONNACK or SUBACK just written, and what follows) until the
    /// store writes made since `since` are durable. After a store failure nothing is held: the
    /// broker keeps serving sessions from memory (a persistent subscriber can still drain its
    /// queue), and the publishes that would need the store are the ones refused.
    pub(super) fn gate_output(&mut self, id: ConnId, since: u64) {
        if !self.cfg.gate_acks || self.store_broken || self.store_seq <= since {
            return;
        }
        let seq = self.store_seq;
        let Some(c) = self.conn_mut(id) else { return };
        let first = c.out_gate == 0;
        c.out_gate = seq;
        if first {
            self.gated.push(id);
        }
    }

    /// A shard confirmed (or, `ok` false, refused) a forward of a held acknowledgement.
    pub(super) fn forward_confirmed(&mut self, token: u64, ok: bool, now_ms: u64) {
        if let Some(w) = self.remote_waits.get_mut(&token) {
            w.0 = w.0.saturating_sub(1);
            w.1 |= !ok;
        }
        self.release_held(now_ms);
    }

    /// Sends the held acknowledgements at the head whose writes are durable here and whose
    /// forwards are all confirmed (in order: one connection's acks never overtake each other).
    fn release_held(&mut self, now_ms: u64) {
        while let Some(h) = self.held_acks.front() {
            if h.seq > self.durable_upto {
                break;
            }
            let failed = match self.remote_waits.get(&h.token) {
                Some((n, _)) if *n > 0 => break,
                Some((_, failed)) => *failed,
                None => false,
            };
            let h = self.held_acks.pop_front().expect("checked");
            self.remote_waits.remove(&h.token);
            if let Some(c) = self.conn_mut(h.id) {
                c.held_acks -= 1;
                if failed {
                    self.refuse_ack(h.id, h.p, now_ms);
                } else {
                    self.write(h.id, &h.p);
                }
            }
        }
    }

    /// Sends an acknowledgement that may depend on store writes made since `since` (a
    /// [`ShardCore::store_seq`] taken before): with gating on and such writes made, it is held
    /// until [`ShardCore::durable`] covers them. Acks of a connection keep their order
    /// [MQTT-4.6.0-2]: behind a held one, every later one waits too.
    pub(super) fn ack(&mut self, id: ConnId, p: Packet, since: u64, now_ms: u64) {
        self.ack_waiting(id, p, since, None, now_ms);
    }

    /// [`ShardCore::ack`] for a publish that was also forwarded with `forwards` = (token, number
    /// of shards): it is held as well until every one of them confirmed its own writes durable.
    pub(super) fn ack_waiting(
        &mut self,
        id: ConnId,
        p: Packet,
        since: u64,
        forwards: Option<(u64, u16)>,
        now_ms: u64,
    ) {
        let needs = self.cfg.gate_acks && (self.store_seq > since || forwards.is_some());
        if needs && self.store_broken {
            return self.refuse_ack(id, p, now_ms);
        }
        let seq = self.store_seq;
        let Some(c) = self.conn_mut(id) else { return };
        if needs || c.held_acks > 0 {
            c.held_acks += 1;
            let token = forwards.map_or(0, |(token, n)| {
                self.remote_waits.insert(token, (n, false));
                token
            });
            self.held_acks.push_back(HeldAck { seq, token, id, p });
        } else {
            self.write(id, &p);
        }
    }

    /// Store writes up to `upto` are durable: the acknowledgements waiting for them go out
    /// (those also waiting for other shards, once those confirm), and so do this shard's
    /// confirmations of forwarded messages.
    pub fn durable(&mut self, upto: u64, now_ms: u64) {
        self.durable_upto = self.durable_upto.max(upto);
        while self.stored_replies.front().is_some_and(|(s, _, _)| *s <= upto) {
            let (_, origin, token) = self.stored_replies.pop_front().expect("checked");
            self.send(origin, MeshMsg::Stored { token, ok: true });
        }
        self.release_held(now_ms);
        let mut gated = std::mem::take(&mut self.gated);
        gated.retain(|id| match self.conns.get_mut(id.idx as usize).and_then(Option::as_mut) {
            Some(c) if c.gen == id.gen && c.out_gate > upto => true,
            Some(c) if c.gen == id.gen => {
                c.out_gate = 0;
                wake(&mut c.writer);
                false
            }
            _ => false,
        });
        self.gated = gated;
    }

    /// The store failed (a full disk, an I/O error): what waited for it is refused, and so is
    /// every later acknowledgement that would depend on it. Nothing is acknowledged as stored
    /// that was not.
    pub fn store_failed(&mut self, now_ms: u64) {
        self.store_broken = true;
        while let Some((_, origin, token)) = self.stored_replies.pop_front() {
            self.send(origin, MeshMsg::Stored { token, ok: false });
        }
        // A CONNACK or SUBACK that promised a stored session must not go out: close without it
        // (the client reconnects and is told then).
        for id in std::mem::take(&mut self.gated) {
            if let Some(c) = self.conn_mut(id) {
                c.out_gate = 0;
                c.out.clear();
                self.close_conn(id, None, now_ms);
            }
        }
        while let Some(h) = self.held_acks.pop_front() {
            self.remote_waits.remove(&h.token);
            if let Some(c) = self.conn_mut(h.id) {
                c.held_acks -= 1;
                self.refuse_ack(h.id, h.p, now_ms);
            }
        }
    }

    /// Whether the store failed.
    pub fn store_is_broken(&self) -> bool {
        self.store_broken
    }

    /// An acknowledgement that cannot promise durability: 5.0 gets PUBACK/PUBREC 0x80
    /// (Unspecified error; the sender may retry later); 3.1.1 has no way to say it, so the
    /// connection closes unacknowledged (the client resends after reconnecting).
    fn refuse_ack(&mut self, id: ConnId, p: Packet, now_ms: u64) {
        let v5 = self.conn(id).is_some_and(|c| c.protocol == Some(Protocol::V5));
        match p {
            Packet::PubAck(_) | Packet::PubRec(_) if !v5 => self.close_conn(id, None, now_ms),
            Packet::PubAck(r) if r.reason != ReasonCode::SUCCESS => self.write(id, &Packet::PubAck(r)),
            Packet::PubRec(r) if r.reason != ReasonCode::SUCCESS => self.write(id, &Packet::PubRec(r)),
            Packet::PubAck(mut r) => {
                r.reason = ReasonCode::UNSPECIFIED_ERROR;
                r.props.reason_string = MqStr::copy_from(STORE_FAILING);
                self.write(id, &Packet::PubAck(r));
            }
            Packet::PubRec(mut r) => {
                r.reason = ReasonCode::UNSPECIFIED_ERROR;
                r.props.reason_string = MqStr::copy_from(STORE_FAILING);
                self.write(id, &Packet::PubRec(r));
            }
            other => self.write(id, &other),
        }
    }

    /// Records a pending/released inbound QoS 2 packet id of a persistent session.
    pub(super) fn persist_qos2(&mut self, sref: SessionRef, pid: u16, pending: bool) {
        if let Some(key) = self.stored_key(sref) {
            self.push_op(StoreOp::Qos2 { key, pid, pending });
        }
    }

    fn key_of(&self, sref: SessionRef) -> Option<SessionKey> {
        self.session(sref).map(|s| SessionKey { org: s.org.clone(), client_id: s.client_id.clone() })
    }

    /// The key of `sref` if its writes are stored: a store is configured and the session is
    /// persistent (expiry > 0).
    fn stored_key(&self, sref: SessionRef) -> Option<SessionKey> {
        let s = self.session(sref).filter(|s| self.cfg.persist && s.state.expiry_secs != 0)?;
        Some(SessionKey { org: s.org.clone(), client_id: s.client_id.clone() })
    }

    /// Records a persistent session's subscriptions and expiry (no-op for expiry 0 or without
    /// a store).
    pub(super) fn persist_meta(&mut self, sref: SessionRef) {
        if !self.cfg.persist {
            return;
        }
        let unix = self.cfg.unix_epoch_ms;
        let Some(s) = self.session(sref) else { return };
        if s.state.expiry_secs == 0 {
            return;
        }
        let meta = StoredSession {
            v: 1,
            expiry_secs: s.state.expiry_secs,
            protocol: s.state.protocol.map_or(4, |p| p.level()),
            expires_at_unix_ms: s.expires_at_ms.map(|t| t + unix),
            next_seq: s.state.next_seq,
            subs: s.state.subs.iter().map(|(f, e)| StoredSub::from_entry(f, e)).collect(),
        };
        let key = SessionKey { org: s.org.clone(), client_id: s.client_id.clone() };
        self.push_op(StoreOp::Session { key, meta: Box::new(meta) });
    }

    /// Records the session of connection `id` (after its subscriptions changed).
    pub(super) fn persist_conn_meta(&mut self, id: ConnId) {
        if let Some(sref) = self.conn(id).and_then(|c| c.session) {
            self.persist_meta(sref);
        }
    }

    /// A persistent session went offline: its record, then everything it still holds (in
    /// flight first, then queued) as its stored queue.
    pub(super) fn persist_offline(&mut self, sref: SessionRef) {
        let Some(key) = self.stored_key(sref) else { return };
        let s = self.session_mut(sref).expect("stored_key found it");
        let mut ops = Vec::with_capacity(s.state.inflight.len() + s.state.queue.len() + 1);
        ops.push(StoreOp::ClearQueue { key: key.clone() });
        let st = &mut s.state;
        for f in st.inflight.values() {
            st.next_seq += 1;
            ops.push(StoreOp::Queued { key: key.clone(), seq: st.next_seq, delivery: f.delivery.clone() });
        }
        for d in st.queue.iter_mut() {
            st.next_seq += 1;
            d.seq = st.next_seq;
            ops.push(StoreOp::Queued { key: key.clone(), seq: d.seq, delivery: d.clone() });
        }
        self.persist_meta(sref);
        for op in ops {
            self.push_op(op);
        }
    }

    /// Gives a delivery queued for an offline persistent session its sequence and stores it.
    pub(super) fn persist_queued(&mut self, sref: SessionRef, d: &mut Delivery) {
        let Some(key) = self.stored_key(sref) else { return };
        let s = self.session_mut(sref).expect("stored_key found it");
        s.state.next_seq += 1;
        d.seq = s.state.next_seq;
        self.push_op(StoreOp::Queued { key, seq: d.seq, delivery: d.clone() });
    }

    /// A stored delivery left the queue without being sent (a bound dropped it).
    pub(super) fn persist_unqueued(&mut self, sref: SessionRef, d: &Delivery) {
        if !self.cfg.persist || d.seq == 0 {
            return;
        }
        if let Some(key) = self.key_of(sref) {
            self.push_op(StoreOp::Unqueued { key, seq: d.seq });
        }
    }

    /// The session is online again on this shard: its record stays, its stored queue goes.
    pub(super) fn persist_resumed(&mut self, sref: SessionRef) {
        if !self.cfg.persist {
            return;
        }
        let had_queue = self.session(sref).is_some_and(|s| s.state.next_seq > 0);
        if let (true, Some(key)) = (had_queue, self.key_of(sref)) {
            self.push_op(StoreOp::ClearQueue { key });
        }
        self.persist_meta(sref);
    }

    /// The session ended or moved to another shard.
    pub(super) fn persist_forget(&mut self, key: &SessionKey) {
        if self.cfg.persist {
            self.push_op(StoreOp::Forget { key: key.clone() });
        }
    }

    /// A retained write made on this shard.
    pub(super) fn persist_retain(&mut self, org: &Arc<str>, msg: &Msg, seq: u64) {
        // `$SYS` topics are the broker's own, republished every interval: not stored.
        if self.cfg.persist && !msg.topic.as_str().starts_with("$SYS") {
            self.push_op(StoreOp::Retain { org: org.clone(), msg: Box::new(msg.clone()), seq });
        }
    }

    /// A retained message passed its org's maximum age: deleted from the store unless a newer
    /// write replaced it there (each shard's replica expires it; the compare makes the deletes
    /// from every shard one).
    pub(super) fn persist_retain_expired(&mut self, org: &Arc<str>, topic: Box<str>, seq: u64) {
        if self.cfg.persist {
            self.push_op(StoreOp::RetainExpired { org: org.clone(), topic, seq });
        }
    }

    /// Restores a stored retained message (at start, before any client connects).
    pub fn restore_retained(&mut self, org: &Arc<str>, msg: Msg, seq: u64) {
        self.retained.apply(org, msg, seq, usize::MAX);
    }

    /// Restores a persistent session from the store as an offline session homed here (at
    /// start, before any client connects). `queue` is in sequence order; each delivery keeps
    /// its stored sequence. A session already past its expiry is dropped (and forgotten).
    pub fn restore_session(
        &mut self,
        now_ms: u64,
        key: SessionKey,
        meta: &StoredSession,
        queue: Vec<Delivery>,
        qos2_pending: &[u16],
    ) -> bool {
        let unix_now = self.cfg.unix_epoch_ms + now_ms;
        let expires_at_ms = match meta.expires_at_unix_ms {
            Some(t) if t <= unix_now => {
                self.persist_forget(&key);
                return false;
            }
            Some(t) => Some(t - self.cfg.unix_epoch_ms),
            // Stored while online (a crash): it went offline at start.
            None if meta.expiry_secs != u32::MAX => Some(now_ms + meta.expiry_secs as u64 * 1000),
            None => None,
        };
        let mut state = SessionState {
            expiry_secs: meta.expiry_secs,
            protocol: Some(if meta.protocol == 5 { Protocol::V5 } else { Protocol::V311 }),
            next_seq: meta.next_seq.max(queue.last().map_or(0, |d| d.seq)),
            ..SessionState::default()
        };
        for s in &meta.subs {
            state.subs.insert(s.filter.as_str().into(), s.entry());
        }
        state.queue = queue.into();
        state.inbound_qos2.extend(qos2_pending.iter().copied());
        self.next_generation += 1;
        let generation = (self.next_generation << 8) | self.shard as u64;
        let session = Session {
            org: key.org.clone(),
            client_id: key.client_id.clone(),
            generation,
            conn: None,
            expires_at_ms,
            delayed_will: None,
            state,
            acl: None,
        };
        let sref = self.insert_session(session);
        self.session_index.insert(key.clone(), sref);
        let nobody = ConnId { idx: u32::MAX, gen: 0 };
        self.registry.insert(key.clone(), Owner { shard: self.shard, conn: nobody, generation });
        for s in &meta.subs {
            let e = s.entry();
            let ch = self.router.subscribe(
                &key.org,
                &s.filter,
                Sub { session: sref, opts: e.opts, sub_id: e.sub_id, checked: e.checked },
            );
            if ch.interest_changed {
                self.announce(&key.org, &s.filter, true, None);
            }
        }
        self.count_offline(sref);
        true
    }
}

/// Builds a stored delivery (used by the store when it reloads a queue).
pub fn stored_delivery(msg: Msg, qos: u8, retain: bool, sub_ids: &[u32], seq: u64) -> Delivery {
    Delivery { msg: Arc::new(msg), qos: qos_of(qos), retain, sub_ids: sub_ids.iter().copied().collect(), seq }
}

/// A client id from the store.
pub fn stored_client_id(s: &str) -> Option<MqStr> {
    MqStr::copy_from(s)
}
