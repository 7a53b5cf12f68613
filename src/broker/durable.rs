//! Durability of acknowledgements: store writes are numbered; PUBACK/PUBREC/PUBCOMP, and
//! replies to other shards, wait until the writes they depend on are durable (here and on
//! the shards a message was forwarded to). A failing store (a full disk, an I/O error) makes
//! the core refuse what needs it; a recovered one (`shard/durable.rs` reopens it) lets it
//! acknowledge again.

use super::persist::StoreOp;
use super::*;

/// Reason string of a PUBACK/PUBREC refused because the store fails.
const STORE_FAILING: &str = "the broker's store is failing; not stored";

/// The shard's store writes and what waits on their durability.
#[derive(Debug)]
pub(super) struct Durability {
    /// Writes for the shard's store, drained by the shell, and the sequence of the last one.
    store_out: Vec<StoreOp>,
    store_seq: u64,
    /// The store failed: acknowledgements that depend on it are refused.
    store_broken: bool,
    /// Acknowledgements waiting for store writes to be durable, here and on the shards the
    /// message was forwarded to.
    held_acks: VecDeque<HeldAck>,
    /// Store writes up to this sequence are durable.
    durable_upto: u64,
    /// Forwards of a held acknowledgement not yet confirmed by their shard: token ->
    /// (confirmations missing, a shard's store failed). Empty without cross-shard traffic.
    remote_waits: HashMap<u64, (u16, bool), RandomState>,
    /// Messages to other shards that wait for this shard's store: (write sequence, to whom,
    /// what): confirmations of forwarded messages, forgets of moved sessions' old copies.
    stored_replies: VecDeque<(u64, u8, AfterDurable)>,
    /// Forwards to each shard waiting in `stored_replies` (later forwards to that shard queue
    /// behind them, so messages keep their order).
    deferred_forwards: Vec<u32>,
    /// Connections whose output waits for the store (`Conn::out_gate`).
    gated: Vec<ConnId>,
}

impl Durability {
    /// Store writes up to this sequence are durable.
    pub(super) fn durable_upto(&self) -> u64 {
        self.durable_upto
    }

    /// Whether an acknowledgement given now would wait for store writes not yet durable.
    pub(super) fn writes_pending(&self) -> bool {
        self.store_seq > self.durable_upto && !self.store_broken
    }

    /// A forward to `shard`: sent now (`Some`), or held until the store writes made so far
    /// are durable, when `wait` says so or an earlier forward to that shard is held (order).
    pub(super) fn hold_forward(&mut self, shard: u8, f: MeshMsg, wait: bool) -> Option<MeshMsg> {
        if !wait && self.deferred_forwards[shard as usize] == 0 {
            return Some(f);
        }
        self.deferred_forwards[shard as usize] += 1;
        self.stored_replies.push_back((self.store_seq, shard, AfterDurable::Forward(Box::new(f))));
        None
    }

    /// Sends `what` to shard `to` once the store writes made so far are durable; nothing if the
    /// store is failing (what it would confirm is not on disk).
    pub(super) fn after_durable(&mut self, to: u8, what: AfterDurable) {
        if !self.store_broken {
            self.stored_replies.push_back((self.store_seq, to, what));
        }
    }

    /// Nothing written yet, for a broker of `peers` shards.
    pub(super) fn new(peers: usize) -> Durability {
        Durability {
            store_out: Vec::new(),
            store_seq: 0,
            store_broken: false,
            held_acks: VecDeque::new(),
            durable_upto: 0,
            remote_waits: HashMap::default(),
            stored_replies: VecDeque::new(),
            deferred_forwards: vec![0; peers],
            gated: Vec::new(),
        }
    }
}

/// What a shard sends to another once its own store writes up to a point are durable.
#[derive(Debug)]
pub(super) enum AfterDurable {
    /// Confirms a forwarded message's writes (`MeshMsg::Stored`).
    Stored(u64),
    /// The moved session's copy here is durable: the old shard may forget its own.
    Forget(SessionKey, u64),
    /// A QoS 2 message for another shard's subscribers, sent once the inbound packet id that
    /// makes the publisher's resend a duplicate is durable here.
    Forward(Box<MeshMsg>),
}

/// An acknowledgement held for durability.
#[derive(Debug)]
pub(super) struct HeldAck {
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
    /// The store failed (a full disk, an I/O error): what waited for it is refused, and so is
    /// every later acknowledgement that would depend on it. Nothing is acknowledged as stored
    /// that was not.
    pub fn store_failed(&mut self, now_ms: u64) {
        self.dur.store_broken = true;
        while let Some((_, to, what)) = self.dur.stored_replies.pop_front() {
            match what {
                AfterDurable::Stored(token) => self.send(to, MeshMsg::Stored { token, ok: false }),
                // A moved session's old copy stays: its new copy may not be on disk.
                AfterDurable::Forget(..) => {}
                // Delivered as the local subscribers' copies were (the publisher is refused).
                AfterDurable::Forward(m) => {
                    self.dur.deferred_forwards[to as usize] -= 1;
                    self.send(to, *m);
                }
            }
        }
        // A CONNACK or SUBACK that promised a stored session must not go out: close without it
        // (the client reconnects and is told then).
        for id in std::mem::take(&mut self.dur.gated) {
            if let Some(c) = self.conn_mut(id) {
                c.link.out_gate = 0;
                c.link.out.clear();
                self.close_conn(id, CloseCause::StoreFailing, now_ms);
            }
        }
        while let Some(h) = self.dur.held_acks.pop_front() {
            self.dur.remote_waits.remove(&h.token);
            if let Some(c) = self.conn_mut(h.id) {
                c.link.held_acks -= 1;
                self.refuse_ack(h.id, h.p, now_ms);
            }
        }
    }

    /// Whether the store failed.
    pub fn store_is_broken(&self) -> bool {
        self.dur.store_broken
    }

    /// The store works again and every write up to `upto` is durable: acknowledgements that
    /// need the store go out again.
    pub fn store_recovered(&mut self, upto: u64, now_ms: u64) {
        self.dur.store_broken = false;
        self.durable(upto, now_ms);
    }

    /// Store writes made since the last call, in order; returns the sequence of the last one
    /// (pass it to [`ShardCore::durable`] once they are on disk).
    pub fn poll_store(&mut self, out: &mut Vec<StoreOp>) -> u64 {
        out.append(&mut self.dur.store_out);
        self.dur.store_seq
    }

    pub(super) fn push_op(&mut self, op: StoreOp) {
        self.dur.store_seq += 1;
        self.dur.store_out.push(op);
    }

    /// Sequence of the last store write made.
    pub(super) fn store_seq(&self) -> u64 {
        self.dur.store_seq
    }

    /// A forwarded message reached this shard (`since`: the store sequence before it was
    /// routed): confirm to `origin` at once if nothing was stored for it, else once durable.
    pub(super) fn confirm_forward(&mut self, origin: u8, token: u64, since: u64) {
        if self.dur.store_broken {
            self.send(origin, MeshMsg::Stored { token, ok: false });
        } else if self.dur.store_seq == since && self.dur.stored_replies.is_empty() {
            self.send(origin, MeshMsg::Stored { token, ok: true });
        } else {
            // Behind earlier replies, in order, so a confirmation never overtakes a write.
            self.dur.stored_replies.push_back((self.dur.store_seq, origin, AfterDurable::Stored(token)));
        }
    }

    /// Holds the output of `id` (a CONNACK or SUBACK just written, and what follows) until the
    /// store writes made since `since` are durable. After a store failure nothing is held: the
    /// broker keeps serving sessions from memory (a persistent subscriber can still drain its
    /// queue), and the publishes that would need the store are the ones refused.
    pub(super) fn gate_output(&mut self, id: ConnId, since: u64) {
        if !self.cfg.gate_acks || self.dur.store_broken || self.dur.store_seq <= since {
            return;
        }
        let seq = self.dur.store_seq;
        let Some(c) = self.conn_mut(id) else { return };
        let first = c.link.out_gate == 0;
        c.link.out_gate = seq;
        if first {
            self.dur.gated.push(id);
        }
    }

    /// A shard confirmed (or, `ok` false, refused) a forward of a held acknowledgement.
    pub(super) fn forward_confirmed(&mut self, token: u64, ok: bool, now_ms: u64) {
        if let Some(w) = self.dur.remote_waits.get_mut(&token) {
            w.0 = w.0.saturating_sub(1);
            w.1 |= !ok;
        }
        self.record_confirmed(token, ok);
        self.release_held(now_ms);
    }

    /// Sends the held acknowledgements at the head whose writes are durable here and whose
    /// forwards are all confirmed (in order: one connection's acks never overtake each other).
    fn release_held(&mut self, now_ms: u64) {
        while let Some(h) = self.dur.held_acks.front() {
            if h.seq > self.dur.durable_upto {
                break;
            }
            let failed = match self.dur.remote_waits.get(&h.token) {
                Some((n, _)) if *n > 0 => break,
                Some((_, failed)) => *failed,
                None => false,
            };
            let h = self.dur.held_acks.pop_front().expect("checked");
            self.dur.remote_waits.remove(&h.token);
            if let Some(c) = self.conn_mut(h.id) {
                c.link.held_acks -= 1;
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
        let needs = self.cfg.gate_acks && (self.dur.store_seq > since || forwards.is_some());
        if needs && self.dur.store_broken {
            return self.refuse_ack(id, p, now_ms);
        }
        let seq = self.dur.store_seq;
        let Some(c) = self.conn_mut(id) else { return };
        if needs || c.link.held_acks > 0 {
            c.link.held_acks += 1;
            let token = forwards.map_or(0, |(token, n)| {
                self.dur.remote_waits.insert(token, (n, false));
                token
            });
            self.dur.held_acks.push_back(HeldAck { seq, token, id, p });
        } else {
            self.write(id, &p);
        }
    }

    /// Store writes up to `upto` are durable: the acknowledgements waiting for them go out
    /// (those also waiting for other shards, once those confirm), and so do this shard's
    /// confirmations of forwarded messages.
    pub fn durable(&mut self, upto: u64, now_ms: u64) {
        self.dur.durable_upto = self.dur.durable_upto.max(upto);
        while self.dur.stored_replies.front().is_some_and(|(s, _, _)| *s <= upto) {
            let (_, to, what) = self.dur.stored_replies.pop_front().expect("checked");
            let m = match what {
                AfterDurable::Stored(token) => MeshMsg::Stored { token, ok: true },
                AfterDurable::Forget(key, epoch) => MeshMsg::Forget { key, epoch },
                AfterDurable::Forward(m) => {
                    self.dur.deferred_forwards[to as usize] -= 1;
                    *m
                }
            };
            self.send(to, m);
        }
        self.release_held(now_ms);
        let mut gated = std::mem::take(&mut self.dur.gated);
        gated.retain(|id| match self.conns.get_mut(*id) {
            Some(c) if c.link.out_gate > upto => true,
            Some(c) => {
                c.link.out_gate = 0;
                wake(&mut c.link.writer);
                false
            }
            _ => false,
        });
        self.dur.gated = gated;
    }

    /// An acknowledgement that cannot promise durability: 5.0 gets PUBACK/PUBREC 0x80
    /// (Unspecified error; the sender may retry later); 3.1.1 has no way to say it, so the
    /// connection closes unacknowledged (the client resends after reconnecting).
    pub(super) fn refuse_ack(&mut self, id: ConnId, p: Packet, now_ms: u64) {
        let v5 = self.conn(id).is_some_and(|c| c.proto.protocol == Some(Protocol::V5));
        match p {
            Packet::PubAck(_) | Packet::PubRec(_) if !v5 => {
                self.close_conn(id, CloseCause::StoreFailing, now_ms)
            }
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
}
