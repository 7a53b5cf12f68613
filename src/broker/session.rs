//! MQTT session state: subscriptions, the outbound in-flight window and queue, inbound QoS 2
//! packet ids. Plain data; the shard core drives it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ahash::RandomState;
use smallvec::SmallVec;

use super::mesh::SessionKey;
use super::msg::Msg;
use super::ConnId;
use crate::codec::{Protocol, QoS, SubOptions};
use crate::limits;
use crate::router::SessionRef;

/// One subscription as the session remembers it (the router holds the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    /// Options.
    pub opts: SubOptions,
    /// Subscription identifier (5.0).
    pub sub_id: Option<u32>,
    /// Deliveries are checked against the ACL (a deny rule overlaps the filter).
    pub checked: bool,
}

/// State of an outbound QoS 1/2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// A message delivered to this session with its per-subscription attributes.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Shared owned message.
    pub msg: Arc<Msg>,
    /// Granted QoS for this delivery.
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers (5.0).
    pub sub_ids: SmallVec<[u32; 2]>,
    /// Its key in the session's stored queue (0: not stored).
    pub seq: u64,
}

/// An outbound message in flight.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// What was sent.
    pub delivery: Delivery,
    /// Where it stands.
    pub state: OutState,
}

/// The transferable part of a session (moves between shards on takeover).
#[derive(Debug, Default)]
pub struct SessionState {
    /// Filter -> options. Bounded by `SUBSCRIPTIONS_PER_SESSION_MAX`.
    pub subs: HashMap<Box<str>, SubEntry>,
    /// Outbound QoS 1/2 messages awaiting acknowledgement, by packet id, in send order.
    pub inflight: super::inflight::Inflight,
    /// Messages waiting for the in-flight window or for the client to come back.
    /// Bounded by `SESSION_QUEUE_MAX` (oldest dropped).
    pub queue: VecDeque<Delivery>,
    /// Inbound QoS 2 packet ids received and not yet released (PUBREL).
    pub inbound_qos2: HashSet<u16>,
    /// Next outbound packet id candidate.
    pub next_pid: u16,
    /// Session expiry interval in seconds (0: ends with the connection; u32::MAX: never).
    pub expiry_secs: u32,
    /// Protocol of the last connection (3.1.1 sessions never see 5.0 properties).
    pub protocol: Option<Protocol>,
    /// Messages dropped from the queue because it was full.
    pub dropped: u64,
    /// Bytes of this (offline) session counted in its org's session storage.
    pub stored_bytes: u64,
    /// Last sequence given to a message of its stored queue.
    pub next_seq: u64,
    /// Epoch of its stored copy (the highest is the live one if a crash left two copies; see
    /// `StoredSession::epoch`).
    pub epoch: u64,
    /// While in transit: the shard whose store still holds this state (it forgets it once the
    /// new owner's copy is durable).
    pub stored_on: Option<u8>,
    /// Stored messages done with since the session's record was last written.
    pub unqueued_since_record: u32,
    /// The ACL of the identity that last held it (travels with the state; `None` after a
    /// restart). A new holder whose ACL differs re-checks what is queued and in flight.
    pub holder_acl: Option<Arc<crate::acl::CompiledAcl>>,
}

/// A session living on this shard.
#[derive(Debug)]
pub struct Session {
    /// Organization.
    pub org: Arc<str>,
    /// Client identifier.
    pub client_id: crate::codec::MqStr,
    /// Generation assigned by the home shard at claim time.
    pub generation: u64,
    /// Live connection, if any.
    pub conn: Option<ConnId>,
    /// When an offline session expires (ms), if it does.
    pub expires_at_ms: Option<u64>,
    /// A delayed will waiting to be published: (when, org-scoped message).
    pub delayed_will: Option<(u64, Msg)>,
    /// The transferable state (with the holder's ACL).
    pub state: SessionState,
}

/// A shard's sessions: a slab of slots addressed by [`SessionRef`] (what the router's
/// subscriptions point at), and the index by org and client id.
#[derive(Debug, Default)]
pub(super) struct SessionTable {
    slots: Vec<Option<Session>>,
    free: Vec<u32>,
    index: HashMap<SessionKey, SessionRef, RandomState>,
}

impl SessionTable {
    /// The session in slot `s`.
    pub(super) fn get(&self, s: SessionRef) -> Option<&Session> {
        self.slots.get(s.0 as usize)?.as_ref()
    }

    /// The session in slot `s`, mutably.
    pub(super) fn get_mut(&mut self, s: SessionRef) -> Option<&mut Session> {
        self.slots.get_mut(s.0 as usize)?.as_mut()
    }

    /// The session of `key` held here.
    pub(super) fn find(&self, key: &SessionKey) -> Option<SessionRef> {
        self.index.get(key).copied()
    }

    /// Puts a session into a free slot and indexes it.
    pub(super) fn insert(&mut self, session: Session) -> SessionRef {
        let key = SessionKey { org: session.org.clone(), client_id: session.client_id.clone() };
        let sref = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(session);
                SessionRef(i)
            }
            None => {
                self.slots.push(Some(session));
                SessionRef((self.slots.len() - 1) as u32)
            }
        };
        self.index.insert(key, sref);
        sref
    }

    /// Takes the session out of slot `s` and out of the index.
    pub(super) fn remove(&mut self, s: SessionRef) -> Option<Session> {
        let session = self.slots.get_mut(s.0 as usize)?.take()?;
        self.free.push(s.0);
        self.index.remove(&SessionKey { org: session.org.clone(), client_id: session.client_id.clone() });
        Some(session)
    }

    /// Every session with its slot.
    pub(super) fn iter(&self) -> impl Iterator<Item = (SessionRef, &Session)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.as_ref().map(|s| (SessionRef(i as u32), s)))
    }

    /// Every session with its slot, mutably.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (SessionRef, &mut Session)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| s.as_mut().map(|s| (SessionRef(i as u32), s)))
    }
}

impl SessionState {
    /// Allocates the next free packet id, or None when 65535 are in flight.
    pub fn alloc_pid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                self.next_pid = 1;
            }
            if !self.inflight.contains_key(&self.next_pid) {
                return Some(self.next_pid);
            }
        }
        None
    }

    /// Queues a delivery, dropping the oldest at the bound (a QoS 0 message among the oldest
    /// [`limits::QUEUE_VICTIM_SCAN`] first); returns the dropped one. Constant time: a full
    /// queue under a flood must not cost a scan of the whole queue per message.
    pub fn enqueue(&mut self, d: Delivery) -> Option<Delivery> {
        let mut out = None;
        if self.queue.len() >= limits::SESSION_QUEUE_MAX {
            let victim = self
                .queue
                .iter()
                .take(limits::QUEUE_VICTIM_SCAN)
                .position(|q| q.qos == QoS::AtMostOnce)
                .unwrap_or(0);
            out = self.queue.remove(victim);
            self.dropped += 1;
        }
        self.queue.push_back(d);
        out
    }

    /// Bytes (topic + payload) of everything queued or in flight.
    pub fn held_bytes(&self) -> u64 {
        self.queue.iter().map(Delivery::bytes).sum::<u64>()
            + self.inflight.values().map(|f| f.delivery.bytes()).sum::<u64>()
    }
}

impl Delivery {
    /// What this delivery counts against session storage: topic + payload bytes.
    pub fn bytes(&self) -> u64 {
        (self.msg.topic.len() + self.msg.payload.len()) as u64
    }
}
