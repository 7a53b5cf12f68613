//! Messages between shards (the catalog lives in docs/architecture.md). Every message is
//! addressed to one shard and travels over a bounded single-producer queue per ordered pair.

use std::sync::Arc;

use smallvec::SmallVec;

use super::exactly_once::FwdAck;
use super::msg::Msg;
use super::session::SessionState;
use super::ConnId;
use super::*;
use crate::codec::MqStr;

/// Identity of a session: organization and client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Organization id.
    pub org: Arc<str>,
    /// Client identifier.
    pub client_id: MqStr,
}

/// One cross-shard message.
#[derive(Debug)]
pub enum MeshMsg {
    /// A PUBLISH matched remote interest: route it to local non-shared subscribers, and to one
    /// local member of each shared group in `shared`.
    Forward {
        /// Organization.
        org: Arc<str>,
        /// The message (borrowing the sender's read buffer until processed).
        msg: Msg,
        /// Shared groups (`$share/g/f`) this shard was picked to deliver.
        shared: SmallVec<[Arc<str>; 2]>,
        /// With durability gating: origin shard and token (the publisher's acknowledgement
        /// waits for a [`MeshMsg::Stored`] with this token, sent once what this shard stored
        /// for the message is durable), and the origin id of a recorded QoS 2 forward.
        ack: Option<FwdAck>,
    },
    /// What a shard stored for a forwarded message is durable (`ok`), or its store failed.
    Stored {
        /// Token of the [`MeshMsg::Forward`].
        token: u64,
        /// False: the store failed; the acknowledgement is refused.
        ok: bool,
    },
    /// `shard` gained or lost its local interest in `filter`.
    Interest {
        /// Organization.
        org: Arc<str>,
        /// Filter, possibly `$share/g/f`.
        filter: Arc<str>,
        /// The shard whose interest changed.
        shard: u8,
        /// Gained (true) or lost.
        add: bool,
        /// Token to acknowledge (SUBACK waits for every peer), if any.
        ack: Option<(ConnId, u64)>,
    },
    /// Acknowledges an `Interest` with a token.
    InterestAck {
        /// Connection whose SUBACK waits.
        conn: ConnId,
        /// Token.
        token: u64,
    },
    /// Replicates a retained message set (or delete, when the payload is empty).
    Retain {
        /// Organization.
        org: Arc<str>,
        /// Owned message.
        msg: Msg,
        /// Global order of retained writes: the highest sequence wins on every shard.
        seq: u64,
    },
    /// To the home shard: a connection on `shard` wants the session `key`.
    Claim {
        /// Session.
        key: SessionKey,
        /// Claiming shard.
        shard: u8,
        /// Claiming connection.
        conn: ConnId,
        /// Clean Start of the new connection.
        clean_start: bool,
    },
    /// From the home shard to the previous owner: hand the session to `to_shard`.
    Takeover {
        /// Session.
        key: SessionKey,
        /// Generation the previous owner holds.
        old_generation: u64,
        /// Connection of the previous owner's claim (it may still await its grant).
        old_conn: ConnId,
        /// New owner shard.
        to_shard: u8,
        /// New owner connection.
        conn: ConnId,
        /// New generation.
        generation: u64,
        /// Clean Start of the new connection (discard state).
        clean_start: bool,
    },
    /// To the claiming shard: the session is yours, with its state if it existed.
    Granted {
        /// Session.
        key: SessionKey,
        /// Claiming connection.
        conn: ConnId,
        /// Generation assigned by the home shard.
        generation: u64,
        /// Previous state (None: start fresh).
        state: Option<Box<SessionState>>,
        /// The previous connection's quota slot is handed over with the session (a takeover
        /// keeps the org's connection count, SPEC §4).
        slot: bool,
    },
    /// To the shard whose store still holds a moved (or discarded) session: the copy of epoch
    /// `epoch` is durable elsewhere (or the session is gone), forget yours if older.
    Forget {
        /// Session.
        key: SessionKey,
        /// Older copies than this go.
        epoch: u64,
    },
    /// To the home shard: the session ended (clean end or expiry).
    Release {
        /// Session.
        key: SessionKey,
        /// Generation that ended.
        generation: u64,
    },
}

/// Messages leaving the core for shards: one queue per peer, and this shard's own queue (so
/// handlers never re-enter).
#[derive(Debug, Default)]
pub(super) struct MeshOut {
    pub(super) mesh_out: Vec<VecDeque<MeshMsg>>,
    pub(super) self_queue: VecDeque<MeshMsg>,
}

impl ShardCore {
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

    /// Moves up to `max` of the messages waiting for `peer` into `batch`, in order; returns
    /// how many. The shell hands each batch to the peer whole (one queue slot, at most one
    /// wake-up), so what it moves here must not be reordered on the way.
    pub fn take_mesh(&mut self, peer: u8, batch: &mut Vec<MeshMsg>, max: usize) -> usize {
        let Some(q) = self.mesh.mesh_out.get_mut(peer as usize) else { return 0 };
        let n = q.len().min(max);
        batch.extend(q.drain(..n));
        n
    }

    /// Messages waiting to leave this shard for `peer`.
    pub fn mesh_pending(&self, peer: u8) -> usize {
        self.mesh.mesh_out.get(peer as usize).map_or(0, |q| q.len())
    }

    /// Messages waiting to leave this shard.
    pub fn mesh_backlog(&self) -> usize {
        self.mesh.mesh_out.iter().map(|q| q.len()).sum()
    }

    /// Handles a batch of messages from one other shard, in order, and leaves `batch` empty
    /// (its capacity kept, for the sender to reuse).
    pub fn handle_mesh_batch(&mut self, now_ms: u64, batch: &mut Vec<MeshMsg>) {
        for msg in batch.drain(..) {
            self.dispatch(now_ms, msg);
            self.drain_self(now_ms);
        }
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
            MeshMsg::Release { key, generation } => self.handle_release(&key, generation),
        }
    }
}
