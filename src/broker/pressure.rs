//! Back-pressure and fairness between readers: whether a reader may go on (mesh backlog,
//! slow consumers in its org, its org's rate and share of the turn), and the per-connection
//! output the shell's writer drains.

use super::*;

/// Tasks the core let wait, woken when what they wait for clears.
#[derive(Debug, Default)]
pub(super) struct Parked {
    /// Readers paused because the mesh backlog is high (woken when it drains).
    pub(super) paused_readers: Vec<Waker>,
    /// Readers paused for output pressure in their org, and mesh receivers paused for local
    /// pressure (woken when a pressured connection clears).
    pub(super) pressure_paused: Vec<Waker>,
    /// Readers of 3.1.1 connections throttled by their org's rate, woken by the timer.
    pub(super) throttled: Vec<Waker>,
}

/// Wakes and clears a stored waker.
pub(super) fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

impl ShardCore {
    /// Whether the reader of `id` may go on (see [`ReadVerdict::Wait`]); registers `waker` if not.
    /// Readers pause while a claim is pending, while the mesh backlog is high, and while some
    /// subscriber on this shard has output pressure (until it drains or is declared stalled).
    pub fn can_read(&mut self, id: ConnId, now_ms: u64, waker: &Waker) -> bool {
        let backlog = self.mesh_backlog();
        self.expire_pressure(now_ms);
        // Output pressure slows the publishers of the pressured subscriber's org only: another
        // org's clients cannot publish to it (topics are per org), so pausing them would let
        // one org's slow subscriber stall every org on the shard.
        let pressured = !self.pressure.is_empty() && {
            let org = self.conn(id).and_then(|c| c.attach.key.as_ref()).map(|k| k.org.clone());
            self.pressure.iter().any(|p| {
                *p != id
                    && match (&org, self.conn(*p).and_then(|c| c.attach.key.as_ref())) {
                        (Some(o), Some(k)) => *k.org == **o,
                        _ => true, // not logged in yet: be conservative
                    }
            })
        };
        let Some(c) = self.conn_mut(id) else { return true };
        if c.link.closing {
            return true;
        }
        if matches!(c.phase, Phase::AwaitSession | Phase::AwaitAuth) {
            c.link.reader = Some(waker.clone());
            return false;
        }
        // A connection still sending its CONNECT is read even under pressure: a flood from
        // connected clients must not keep new clients (of any org) from logging in.
        if matches!(c.phase, Phase::AwaitConnect { .. }) {
            return true;
        }
        if c.share.throttled_until_ms > now_ms {
            self.parked.throttled.push(waker.clone());
            return false;
        }
        if backlog >= limits::MESH_BACKLOG_PAUSE {
            self.parked.paused_readers.push(waker.clone());
            return false;
        }
        if pressured {
            self.parked.pressure_paused.push(waker.clone());
            return false;
        }
        if let Some(slot) = c.share.fair {
            let yielded = std::mem::take(&mut c.share.fair_yielded);
            if self.fair.must_wait(slot, yielded, waker) {
                return false;
            }
        }
        true
    }

    /// Whether a reader waits for the next turn (per-org fair scheduling); registers the
    /// shell's turn task `waker` if not. The shell then lets the reactor poll once and calls
    /// [`ShardCore::next_turn`].
    pub fn turn_wanted(&mut self, waker: &Waker) -> bool {
        self.fair.turn_wanted(waker)
    }

    /// Starts a new turn: every org's share of the shard is whole again.
    pub fn next_turn(&mut self) {
        self.fair.next_turn();
    }

    /// Lets 3.1.1 readers throttled by their org's rate look at it again (called every shard
    /// tick, 50 ms, so a throttled flood is read in small, even bursts).
    pub fn wake_throttled(&mut self) {
        for w in self.parked.throttled.drain(..) {
            w.wake();
        }
    }

    /// Whether the mesh receivers may hand this shard more messages: not while a local
    /// subscriber has output pressure, so backpressure reaches publishers on other shards
    /// (their backlog fills and their readers pause). Registers `waker` if not.
    pub fn can_take_mesh(&mut self, now_ms: u64, waker: &Waker) -> bool {
        self.expire_pressure(now_ms);
        if self.pressure.is_empty() {
            return true;
        }
        self.parked.pressure_paused.push(waker.clone());
        false
    }

    /// Declares connections that held output pressure for too long stalled.
    pub(super) fn expire_pressure(&mut self, now_ms: u64) {
        let mut i = 0;
        let mut any = false;
        while i < self.pressure.len() {
            let id = self.pressure[i];
            let expired = match self.conn_mut(id) {
                Some(c) if c.link.pressure_since.is_some_and(|t| now_ms >= t + limits::OUTPUT_STALL_MS) => {
                    c.link.stalled = true;
                    c.link.pressure_since = None;
                    true
                }
                Some(_) => false,
                None => true,
            };
            if expired {
                self.pressure.swap_remove(i);
                any = true;
            } else {
                i += 1;
            }
        }
        if any {
            self.wake_pressure_paused();
        }
    }

    /// Notes output pressure on `id` after a write to its buffer.
    pub(super) fn note_pressure(&mut self, id: ConnId, now_ms: u64) {
        let queued = self.queued_for(id);
        let Some(c) = self.conn_mut(id) else { return };
        let full = c.link.out.len() >= limits::OUTPUT_PRESSURE_BYTES || queued >= limits::QUEUE_PRESSURE;
        if full && c.link.pressure_since.is_none() && !c.link.stalled {
            c.link.pressure_since = Some(now_ms);
            self.pressure.push(id);
        }
    }

    /// Messages waiting in the session queue of connection `id`.
    fn queued_for(&self, id: ConnId) -> usize {
        self.conn(id)
            .and_then(|c| c.attach.session)
            .and_then(|s| self.session(s))
            .map_or(0, |s| s.state.queue.len())
    }

    /// Output of `id` was handed to the writer: it no longer exerts pressure.
    pub(super) fn clear_pressure(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            c.link.stalled = false;
            if c.link.pressure_since.take().is_some() {
                self.pressure.retain(|p| *p != id);
                // Readers paused for this connection's org may go on: they look again.
                self.wake_pressure_paused();
            }
        }
    }

    /// Registers the reader's waker, woken when the connection starts closing.
    pub fn register_reader(&mut self, id: ConnId, waker: &Waker) {
        if let Some(c) = self.conn_mut(id) {
            if !c.link.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
                c.link.reader = Some(waker.clone());
            }
        }
    }

    /// Hands out the pending output of `id` by swapping it with `spare` (which must be empty).
    pub fn poll_output(&mut self, id: ConnId, spare: &mut BytesMut, waker: &Waker) -> OutputPoll {
        let durable = self.dur.durable_upto();
        let Some(c) = self.conn_mut(id) else { return OutputPoll::Close };
        if c.link.out_gate > durable && !c.link.closing {
            // A CONNACK or SUBACK that depends on the store is in there: not before it is durable.
            if !c.link.writer.as_ref().is_some_and(|w| w.will_wake(waker)) {
                c.link.writer = Some(waker.clone());
            }
            return OutputPoll::Pending;
        }
        if !c.link.out.is_empty() {
            std::mem::swap(&mut c.link.out, spare);
            // Still pressured while its session queue is long (a live subscriber whose window
            // is full): QoS 1/2 publishers wait instead of the queue overflowing.
            if (c.link.pressure_since.is_some() || c.link.stalled)
                && self.queued_for(id) < limits::QUEUE_PRESSURE
            {
                self.clear_pressure(id);
            }
            return OutputPoll::Data;
        }
        if c.link.closing {
            return OutputPoll::Close;
        }
        if !c.link.writer.as_ref().is_some_and(|w| w.will_wake(waker)) {
            c.link.writer = Some(waker.clone());
        }
        OutputPoll::Pending
    }

    /// The writer of `id` wrote some bytes to its socket: the client is reading, however
    /// slowly, so the stall clock restarts (a slow reader keeps slowing publishers down
    /// instead of losing QoS 0 messages; only one that stops reading is declared stalled).
    pub fn handle_output_progress(&mut self, id: ConnId, now_ms: u64) {
        if let Some(c) = self.conn_mut(id) {
            if let Some(t) = c.link.pressure_since.as_mut() {
                *t = now_ms;
            }
        }
    }

    /// The writer of `id` finished writing a batch: more queued messages may now fit.
    pub fn handle_output_drained(&mut self, id: ConnId, now_ms: u64) {
        if let Some(s) = self.conn(id).and_then(|c| c.attach.session) {
            self.pump(s, now_ms);
        }
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
}
