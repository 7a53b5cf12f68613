//! What the core asks the store to write (SPEC §7): persistent sessions (subscriptions,
//! expiry), every QoS 1/2 message held for them (queued, or in flight with its packet id and
//! state, online or offline) until it is acknowledged, inbound QoS 2 packet ids, and retained
//! messages. The core stays free of I/O: it records [`StoreOp`]s, the shell applies them to
//! the shard's fjall database (`crate::store`) and reloads them at start with
//! [`ShardCore::restore_session`].
//!
//! A session that moves to another shard (a takeover) is written whole into the new shard's
//! store under a higher epoch; the old shard forgets its copy only once the new one is durable
//! (`MeshMsg::Forget`), so a crash in between leaves two copies, and the start keeps the one
//! with the highest epoch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::durable::AfterDurable;
use super::exactly_once::PendingForward;
use super::mesh::SessionKey;
use super::msg::Msg;
use super::session::{Delivery, InFlight, OutState, Session, SessionState, SubEntry};
use super::*;
use crate::codec::{MqStr, Protocol, QoS, RetainHandling, SubOptions};

/// Stored messages done with (acknowledged, dropped) after which a session's record is
/// rewritten to move its scan cursor (`StoredSession::first_seq`) past their deletions.
pub const RECORD_CURSOR_EVERY: u32 = 4096;

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
    /// A stored message went in flight under a packet id, or (`released`) its PUBREC came and
    /// PUBREL was sent: after a restart it is resent with that id [MQTT-4.4.0-1].
    Outbound {
        /// Whose.
        key: SessionKey,
        /// The message's sequence.
        seq: u64,
        /// Its packet id.
        pid: u16,
        /// PUBREC received (QoS 2): PUBREL is what is resent.
        released: bool,
    },
    /// A stored message is done with: acknowledged, dropped for a bound, expired.
    Unqueued {
        /// Whose.
        key: SessionKey,
        /// Which.
        seq: u64,
    },
    /// The session ended: its record and everything stored for it go.
    Forget {
        /// Whose.
        key: SessionKey,
    },
    /// The session moved to another shard and its copy there is durable: this store's copy
    /// goes unless it is of a later epoch (the session came back since).
    ForgetBefore {
        /// Whose.
        key: SessionKey,
        /// The new copy's epoch: an older copy here is deleted.
        epoch: u64,
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
    /// A QoS 2 message forwarded to other shards, stored with its inbound packet id (pending)
    /// until they all confirm their copies durable (`super::exactly_once`).
    Qos2Forward {
        /// Whose.
        key: SessionKey,
        /// Packet id.
        pid: u16,
        /// The message and where it goes.
        fwd: Box<PendingForward>,
    },
    /// This shard stored the copies of a forward with an origin id: a replay of it after a
    /// crash is then recognised (`super::exactly_once`).
    Origin {
        /// Origin id.
        oid: u64,
    },
    /// De-duplication rows with origin ids below `before` go.
    ExpireOrigins {
        /// Exclusive bound.
        before: u64,
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
    /// The org was deleted: every row it owns in this shard's store and in the retained store
    /// goes.
    PurgeOrg {
        /// Organization.
        org: Arc<str>,
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

impl StoreOp {
    /// Whether it writes to the retained store (shared by the shards) too.
    pub fn touches_retained(&self) -> bool {
        matches!(self, StoreOp::Retain { .. } | StoreOp::RetainExpired { .. } | StoreOp::PurgeOrg { .. })
    }
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
    /// Which copy is the live one if a crash left two (after a takeover across shards): the
    /// highest. Set when a copy is written whole (above the previous copy's, and at least the
    /// Unix time in ms); 0 in records written before epochs existed.
    #[serde(default)]
    pub epoch: u64,
    /// Every message stored for the session has a sequence at least this: the scan at start
    /// begins here, so it never walks the deletions of messages acknowledged long ago (the
    /// record is rewritten every [`RECORD_CURSOR_EVERY`] acknowledgements to move it on).
    #[serde(default)]
    pub first_seq: u64,
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

/// A stored message that was in flight when it was stored (reloaded into the in-flight window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundMark {
    /// The message's sequence in the session's queue.
    pub seq: u64,
    /// Its packet id.
    pub pid: u16,
    /// PUBREC received: PUBREL is resent, not the message.
    pub released: bool,
}

/// A session read back at start.
#[derive(Debug)]
pub struct RestoredSession {
    /// Whose.
    pub key: SessionKey,
    /// Its record.
    pub meta: StoredSession,
    /// Its queue, in order (expired messages left out).
    pub queue: Vec<Delivery>,
    /// Which of them were in flight, under which packet id.
    pub outbound: Vec<OutboundMark>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub qos2: Vec<u16>,
    /// Those whose message's copies on other shards were not all confirmed durable.
    pub forwards: Vec<(u16, PendingForward)>,
    /// The generation its shard restores it under (assigned by [`crate::store::open`]; 0 before).
    pub generation: u64,
}

impl ShardCore {
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
    pub(super) fn stored_key(&self, sref: SessionRef) -> Option<SessionKey> {
        let s = self.session(sref).filter(|s| self.cfg.persist && s.state.expiry_secs != 0)?;
        Some(SessionKey { org: s.org.clone(), client_id: s.client_id.clone() })
    }

    /// Records a persistent session's subscriptions and expiry (no-op for expiry 0 or without
    /// a store).
    fn persist_meta(&mut self, sref: SessionRef) {
        if !self.cfg.persist {
            return;
        }
        let unix = self.cfg.unix_at_mono_zero;
        let Some(s) = self.session_mut(sref) else { return };
        if s.state.expiry_secs == 0 {
            return;
        }
        s.state.unqueued_since_record = 0;
        let st = &s.state;
        let held = st.inflight.values().map(|f| &f.delivery).chain(st.queue.iter()).map(|d| d.seq);
        let first_seq = held.filter(|q| *q != 0).min().unwrap_or(st.next_seq + 1);
        let meta = StoredSession {
            v: 1,
            expiry_secs: s.state.expiry_secs,
            protocol: s.state.protocol.map_or(4, |p| p.level()),
            expires_at_unix_ms: s.expires_at_ms.map(|t| t + unix),
            next_seq: s.state.next_seq,
            epoch: s.state.epoch,
            first_seq,
            subs: s.state.subs.iter().map(|(f, e)| StoredSub::from_entry(f, e)).collect(),
        };
        let key = SessionKey { org: s.org.clone(), client_id: s.client_id.clone() };
        self.push_op(StoreOp::Session { key, meta: Box::new(meta) });
    }

    /// Records the session of connection `id` (after its subscriptions changed).
    pub(super) fn persist_conn_meta(&mut self, id: ConnId) {
        if let Some(sref) = self.conn(id).and_then(|c| c.attach.session) {
            self.persist_meta(sref);
        }
    }

    /// A persistent session went offline: its record (with its expiry time), and whatever it
    /// holds that is not stored yet.
    pub(super) fn persist_offline(&mut self, sref: SessionRef) {
        let Some(key) = self.stored_key(sref) else { return };
        self.persist_contents(sref, &key, false);
        self.persist_meta(sref);
    }

    /// Stores what a session holds: in flight (with packet id and state), then queued, then
    /// its inbound QoS 2 ids; `all` false: only the messages not stored yet.
    fn persist_contents(&mut self, sref: SessionRef, key: &SessionKey, all: bool) {
        let s = self.session_mut(sref).expect("caller found it");
        let SessionState { inflight, queue, inbound_qos2, next_seq, .. } = &mut s.state;
        let mut ops = Vec::new();
        for (pid, f) in inflight.iter_mut() {
            if f.delivery.seq == 0 {
                *next_seq += 1;
                f.delivery.seq = *next_seq;
            } else if !all {
                continue;
            }
            let (seq, released) = (f.delivery.seq, f.state == OutState::Released);
            ops.push(StoreOp::Queued { key: key.clone(), seq, delivery: f.delivery.clone() });
            ops.push(StoreOp::Outbound { key: key.clone(), seq, pid: *pid, released });
        }
        for d in queue.iter_mut() {
            if d.seq == 0 {
                *next_seq += 1;
                d.seq = *next_seq;
            } else if !all {
                continue;
            }
            ops.push(StoreOp::Queued { key: key.clone(), seq: d.seq, delivery: d.clone() });
        }
        if all {
            for pid in inbound_qos2.iter() {
                ops.push(StoreOp::Qos2 { key: key.clone(), pid: *pid, pending: true });
            }
        }
        for op in ops {
            self.push_op(op);
        }
    }

    /// A session was installed here by a takeover. If its state came from another shard's
    /// store it is written here whole under the next epoch, and the old shard is told to forget
    /// its copy once this one is durable; from this shard's own store only the record changes.
    /// A session that is not kept any more (expiry 0 now) has its old copy forgotten.
    pub(super) fn persist_installed(&mut self, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session_mut(sref) else { return };
        let from = s.state.stored_on.take();
        let Some(key) = self.stored_key(sref) else {
            if let Some(key) = self.key_of(sref) {
                let epoch = self.session(sref).map_or(0, |s| s.state.epoch);
                self.forget_left_copy(&key, from, epoch);
            }
            return;
        };
        if from != Some(self.shard) {
            // A new copy: its epoch is above the old one's and, as wall-clock time, above any
            // stale copy of an earlier session under this client id.
            let unix_now = self.cfg.unix_at_mono_zero + now_ms;
            let st = &mut self.session_mut(sref).expect("found above").state;
            st.epoch = (st.epoch + 1).max(unix_now);
            if from.is_some() {
                // Rows an earlier stay here left behind must not mix with the new copy.
                self.push_op(StoreOp::Forget { key: key.clone() });
            }
            self.persist_contents(sref, &key, true);
        }
        self.persist_meta(sref);
        if let Some(x) = from.filter(|x| *x != self.shard) {
            let epoch = self.session(sref).expect("found above").state.epoch;
            self.dur.after_durable(x, AfterDurable::Forget(key, epoch));
        }
    }

    /// A state that was stored on shard `stored_on` was discarded in transit (a clean start):
    /// that copy goes.
    pub(super) fn forget_discarded(&mut self, key: &SessionKey, state: &SessionState) {
        self.forget_left_copy(key, state.stored_on, state.epoch);
    }

    /// The copy of epoch `epoch` a session left on shard `stored_on` is not needed any more.
    fn forget_left_copy(&mut self, key: &SessionKey, stored_on: Option<u8>, epoch: u64) {
        if let Some(x) = stored_on {
            self.send(x, MeshMsg::Forget { key: key.clone(), epoch: epoch + 1 });
        }
    }

    /// Gives a QoS 1/2 delivery to a persistent session (online or offline) its sequence and
    /// stores it; it stays stored until acknowledged or dropped.
    pub(super) fn persist_queued(&mut self, sref: SessionRef, d: &mut Delivery) {
        let Some(key) = self.stored_key(sref) else { return };
        let s = self.session_mut(sref).expect("stored_key found it");
        s.state.next_seq += 1;
        d.seq = s.state.next_seq;
        self.push_op(StoreOp::Queued { key, seq: d.seq, delivery: d.clone() });
    }

    /// A stored delivery went in flight under `pid`, or (`released`) got its PUBREC.
    pub(super) fn persist_outbound(&mut self, sref: SessionRef, seq: u64, pid: u16, released: bool) {
        if !self.cfg.persist || seq == 0 {
            return;
        }
        if let Some(key) = self.key_of(sref) {
            self.push_op(StoreOp::Outbound { key, seq, pid, released });
        }
    }

    /// A stored delivery is done with (acknowledged, dropped for a bound, expired, too large).
    pub(super) fn persist_unqueued(&mut self, sref: SessionRef, d: &Delivery) {
        if !self.cfg.persist || d.seq == 0 {
            return;
        }
        let Some(key) = self.key_of(sref) else { return };
        self.push_op(StoreOp::Unqueued { key, seq: d.seq });
        let s = self.session_mut(sref).expect("key_of found it");
        s.state.unqueued_since_record += 1;
        if s.state.unqueued_since_record >= RECORD_CURSOR_EVERY {
            self.persist_meta(sref);
        }
    }

    /// The session ended here.
    pub(super) fn persist_forget(&mut self, key: &SessionKey) {
        if self.cfg.persist {
            self.push_op(StoreOp::Forget { key: key.clone() });
        }
    }

    /// Another shard holds a durable copy of a session that moved there (epoch `epoch`):
    /// this store's older copy goes.
    pub(super) fn persist_forget_before(&mut self, key: SessionKey, epoch: u64) {
        if self.cfg.persist {
            self.push_op(StoreOp::ForgetBefore { key, epoch });
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

    /// At start: a session homed here that shard `shard` restores under `generation`.
    pub fn restore_owner(&mut self, key: SessionKey, shard: u8, generation: u64) {
        self.next_generation = self.next_generation.max(generation >> 8);
        let nobody = ConnId { idx: u32::MAX, gen: 0 };
        self.registry.insert(key, Owner { shard, conn: nobody, generation });
    }

    /// Restores a persistent session from the store as an offline session of this shard (at
    /// start, before any client connects), under the generation [`crate::store::open`] gave
    /// it. `queue` is in sequence order; each delivery keeps its stored sequence; those in
    /// `outbound` go back in flight under their packet ids; `forwards` are re-forwarded by
    /// [`ShardCore::replay_forwards`]. A session already past its expiry is dropped (and
    /// forgotten).
    pub fn restore_session(&mut self, now_ms: u64, s: RestoredSession) -> bool {
        let RestoredSession { key, meta, queue, outbound, qos2, forwards, generation } = s;
        let (meta, outbound, qos2_pending) = (&meta, &outbound[..], &qos2[..]);
        self.next_generation = self.next_generation.max(generation >> 8);
        let unix_now = self.cfg.unix_at_mono_zero + now_ms;
        let expires_at_ms = match meta.expires_at_unix_ms {
            Some(t) if t <= unix_now => {
                self.persist_forget(&key);
                return false;
            }
            Some(t) => Some(t - self.cfg.unix_at_mono_zero),
            // Stored while online (a crash): it went offline at start.
            None if meta.expiry_secs != u32::MAX => Some(now_ms + meta.expiry_secs as u64 * 1000),
            None => None,
        };
        let mut state = SessionState {
            expiry_secs: meta.expiry_secs,
            protocol: Some(if meta.protocol == 5 { Protocol::V5 } else { Protocol::V311 }),
            next_seq: meta.next_seq.max(queue.last().map_or(0, |d| d.seq)),
            epoch: meta.epoch,
            ..SessionState::default()
        };
        let marks: HashMap<u64, &OutboundMark> = outbound.iter().map(|m| (m.seq, m)).collect();
        for d in queue {
            match marks.get(&d.seq) {
                Some(m) if !state.inflight.contains_key(&m.pid) => {
                    let st = if m.released { OutState::Released } else { OutState::Published };
                    state.inflight.insert(m.pid, InFlight { delivery: d, state: st });
                }
                _ => state.queue.push_back(d),
            }
        }
        state.next_pid = state.inflight.newest_pid().unwrap_or(0);
        for s in &meta.subs {
            state.subs.insert(s.filter.as_str().into(), s.entry());
        }
        state.inbound_qos2.extend(qos2_pending.iter().copied());
        let session = Session {
            org: key.org.clone(),
            client_id: key.client_id.clone(),
            generation,
            conn: None,
            expires_at_ms,
            delayed_will: None,
            state,
        };
        let sref = self.sessions.insert(session);
        self.restore_forwards(&key, forwards);
        if home_shard(&key, self.cfg.nr_shards) == self.shard {
            self.restore_owner(key.clone(), self.shard, generation);
        }
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
