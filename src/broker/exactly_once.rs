//! QoS 2 exactly once across shards and crashes (issue 14.1).
//!
//! A QoS 2 message from a persistent session that other shards' subscribers want is stored,
//! with where it goes, in the publisher's inbound QoS 2 record on the origin shard, in the same
//! write as its local copies (`StoreOp::Qos2Forward`). The forwards leave once that record is
//! durable and carry an origin id; each receiving shard writes a de-duplication row for the id
//! in the same write as its own copies (`StoreOp::Origin`). When every shard confirmed its
//! copies durable, the record drops the message (a bare inbound id again), and only then does
//! the publisher get PUBREC, also for a resent PUBLISH.
//!
//! After a crash, the origin shard re-forwards every record still holding a message (marked
//! as a replay); a shard that already holds the copies (its row for the id was read at start)
//! confirms without delivering again. Rows are deleted after [`ORIGIN_ROW_KEEP_MS`] of running
//! time: the record they answer for is complete within milliseconds unless a store fails.

use std::collections::HashSet;
use std::sync::Arc;

use smallvec::SmallVec;

use super::mesh::{MeshMsg, SessionKey};
use super::msg::Msg;
use super::persist::StoreOp;
use super::{SessionRef, ShardCore};

/// How long (running time) a receiving shard keeps the de-duplication row of a forward.
pub const ORIGIN_ROW_KEEP_MS: u64 = 60_000;

/// How often a shard deletes its expired de-duplication rows.
const EXPIRE_EVERY_MS: u64 = 10_000;

/// Shards a QoS 2 message was forwarded to, each with the shared groups it was picked for.
pub type Targets = SmallVec<[(u8, SmallVec<[Arc<str>; 2]>); 2]>;

/// A QoS 2 message whose copies on other shards are not all confirmed durable, as the origin
/// shard stores it with the publisher's inbound packet id.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingForward {
    /// Origin id: unique across shards (low 6 bits: the origin shard), increasing per shard,
    /// at least `unix ms << 20` when made.
    pub oid: u64,
    /// An owned copy of the message.
    pub msg: Msg,
    /// Where it goes.
    pub targets: Targets,
}

/// What a forward of an acknowledged publish carries back and for de-duplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FwdAck {
    /// Shard to confirm to.
    pub origin: u8,
    /// Token the confirmation (`MeshMsg::Stored`) names.
    pub token: u64,
    /// Origin id of a recorded QoS 2 forward (0: none; nothing to de-duplicate).
    pub oid: u64,
    /// Sent again at start: skip it if this shard already stored it.
    pub replay: bool,
}

/// What routing an acknowledged publish needs for its forwards: the token their confirmations
/// name and, for a QoS 2 message of a persistent session, (inbound packet id, origin id).
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteAck {
    pub token: u64,
    pub qos2: Option<(u16, u64)>,
}

/// A record waiting for its confirmations.
#[derive(Debug)]
struct Waiting {
    key: SessionKey,
    pid: u16,
    missing: u16,
    failed: bool,
}

/// The shard's part of exactly-once across shards.
#[derive(Debug, Default)]
pub(super) struct ExactlyOnce {
    next_oid: u64,
    /// Records waiting for confirmations, by token.
    waiting: std::collections::HashMap<u64, Waiting, ahash::RandomState>,
    /// Records restored at start, re-forwarded once every session is back.
    replays: Vec<(SessionKey, u16, PendingForward)>,
    /// De-duplication rows read at start: origin ids.
    seen: HashSet<u64, ahash::RandomState>,
    /// Running time after which `seen` is dropped and old rows expire.
    seen_until_ms: u64,
    last_expiry_ms: u64,
    wrote_rows: bool,
}

impl ExactlyOnce {
    /// Unique across shards (the low 6 bits name the shard) and increasing per shard.
    fn next_oid(&mut self, shard: u8, unix_now: u64) -> u64 {
        let n = ((self.next_oid >> 6) + 1).max(unix_now << 14);
        self.next_oid = (n << 6) | shard as u64;
        self.next_oid
    }
}

impl ShardCore {
    /// A fresh origin id for a QoS 2 publish about to be forwarded.
    pub(super) fn new_origin_id(&mut self, now_ms: u64) -> u64 {
        let unix = self.cfg.unix_at_mono_zero + now_ms;
        self.xonce.next_oid(self.shard, unix)
    }

    /// Records a QoS 2 message of session `sref` (inbound id `pid`) forwarded to `targets`,
    /// under `token`: written with the inbound id, before the forwards may leave.
    pub(super) fn record_forward(
        &mut self,
        sref: SessionRef,
        pid: u16,
        fwd: (u64, u64),
        msg: &Msg,
        targets: Targets,
    ) {
        let Some(key) = self.stored_key(sref) else { return };
        let (token, oid) = fwd;
        let missing = targets.len() as u16;
        let rec = PendingForward { oid, msg: msg.to_owned_copy(), targets };
        self.push_op(StoreOp::Qos2Forward { key: key.clone(), pid, fwd: Box::new(rec) });
        self.xonce.waiting.insert(token, Waiting { key, pid, missing, failed: false });
    }

    /// A shard confirmed (or refused) a forward: once all did, the record drops its message.
    pub(super) fn record_confirmed(&mut self, token: u64, ok: bool) {
        let Some(w) = self.xonce.waiting.get_mut(&token) else { return };
        w.missing = w.missing.saturating_sub(1);
        w.failed |= !ok;
        if w.missing > 0 {
            return;
        }
        let w = self.xonce.waiting.remove(&token).expect("checked");
        let here = self.sessions.find(&w.key);
        let holds = here.and_then(|s| self.session(s)).is_some_and(|s| s.state.inbound_qos2.contains(&w.pid));
        if !w.failed && holds {
            // A bare inbound id: the message is durable wherever it goes.
            self.push_op(StoreOp::Qos2 { key: w.key, pid: w.pid, pending: true });
        }
    }

    /// The token of a record still waiting for session `sref`'s inbound id `pid`, with the
    /// number of confirmations missing: a resent PUBLISH's PUBREC waits for them too.
    pub(super) fn waiting_record(&self, sref: SessionRef, pid: u16) -> Option<(u64, u16)> {
        if self.xonce.waiting.is_empty() {
            return None;
        }
        let s = self.session(sref)?;
        self.xonce
            .waiting
            .iter()
            .find(|(_, w)| w.pid == pid && *w.key.org == *s.org && w.key.client_id == s.client_id)
            .map(|(t, w)| (*t, w.missing))
    }

    /// A forward with an origin id arrived: false when it is a replay of one this shard
    /// already stored; else its de-duplication row is written (with the copies routing makes).
    pub(super) fn accept_forward(&mut self, ack: &FwdAck) -> bool {
        if ack.oid == 0 {
            return true;
        }
        if ack.replay && self.xonce.seen.contains(&ack.oid) {
            return false;
        }
        self.xonce.wrote_rows = true;
        self.push_op(StoreOp::Origin { oid: ack.oid });
        true
    }

    /// At start: a session's records that still hold a message (re-forwarded by
    /// [`ShardCore::replay_forwards`]).
    pub(super) fn restore_forwards(&mut self, key: &SessionKey, forwards: Vec<(u16, PendingForward)>) {
        for (pid, f) in forwards {
            if f.oid & 63 == self.shard as u64 {
                self.xonce.next_oid = self.xonce.next_oid.max(f.oid);
            }
            self.xonce.replays.push((key.clone(), pid, f));
        }
    }

    /// At start: the de-duplication rows this shard's store held.
    pub fn restore_origins(&mut self, now_ms: u64, rows: Vec<u64>) {
        self.xonce.wrote_rows |= !rows.is_empty();
        self.xonce.seen.extend(rows);
        self.xonce.seen_until_ms = now_ms + ORIGIN_ROW_KEEP_MS;
    }

    /// At start, once every session is back: forwards again every QoS 2 message whose copies
    /// were not all confirmed before the crash (the other shards skip those they stored).
    pub fn replay_forwards(&mut self, now_ms: u64) {
        for (key, pid, f) in std::mem::take(&mut self.xonce.replays) {
            // The session may have moved home (a different shard count): this shard can be
            // one of the targets, reached through its own queue like the others.
            let targets: Targets = f.targets.into_iter().filter(|(s, _)| *s < self.cfg.nr_shards).collect();
            if targets.is_empty() {
                continue;
            }
            self.next_token += 1;
            let token = self.next_token;
            let missing = targets.len() as u16;
            self.xonce.waiting.insert(token, Waiting { key: key.clone(), pid, missing, failed: false });
            let msg = Msg { received_ms: now_ms.min(f.msg.received_ms), ..f.msg };
            for (shard, shared) in targets {
                let ack = Some(FwdAck { origin: self.shard, token, oid: f.oid, replay: true });
                let m = MeshMsg::Forward { org: key.org.clone(), msg: msg.clone(), shared, ack };
                self.send(shard, m);
            }
        }
    }

    /// Deletes de-duplication rows older than [`ORIGIN_ROW_KEEP_MS`] (every 10 s).
    pub(super) fn expire_origins(&mut self, now_ms: u64) {
        if now_ms < self.xonce.last_expiry_ms + EXPIRE_EVERY_MS || !self.xonce.wrote_rows {
            return;
        }
        self.xonce.last_expiry_ms = now_ms;
        if now_ms >= self.xonce.seen_until_ms {
            self.xonce.seen = HashSet::default();
        }
        let unix = (self.cfg.unix_at_mono_zero + now_ms).saturating_sub(ORIGIN_ROW_KEEP_MS);
        self.push_op(StoreOp::ExpireOrigins { before: unix << 20 });
    }
}
