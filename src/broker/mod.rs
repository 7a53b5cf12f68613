//! The sans-IO shard core: one per shard, owning that shard's connections, sessions, replica of
//! the subscription index and replica of the retained store.
//!
//! It never touches a socket, a file or the clock. The I/O shell ([`crate::shard`]) feeds it
//! bytes with [`ShardCore::handle_read`], cross-shard messages with [`ShardCore::handle_mesh`]
//! and time with [`ShardCore::handle_timeout`], and drains encoded output per connection with
//! [`ShardCore::poll_output`] and cross-shard messages with [`ShardCore::poll_mesh`].

mod claims;
pub mod conn;
pub mod exactly_once;
mod fair;
mod flow;
pub mod mesh;
pub mod msg;
pub mod persist;
mod purge;
pub mod retained;
mod rights;
pub mod session;
mod store_health;
pub mod sys;
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use ahash::RandomState;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::acl::{CompiledAcl, Policy};
use crate::audit::{AuditKind, AuditRecord};
use crate::auth::directory::{Directory, Identity};
use crate::auth::secret::Pepper;
use crate::auth::{AuthShared, Authenticator, Denied, Verdict};
use crate::codec::encode::{encode_publish, PublishOut};
use crate::codec::topic::{classify, valid_filter, FilterKind};
use crate::codec::{
    decode_packet, encode_packet, frame, ConnAck, Connect, Disconnect, MqStr, Packet, PacketId, Properties,
    Protocol, PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::limits;
use crate::router::{Matches, Router, SessionRef, Sub};
use claims::{peek_connect_level, pubresp, wake};
use conn::{Conn, ConnTable, PendingAuth, PendingSubAck, Phase, Supersede};
pub use conn::{ConnId, ListenerCtx, PeerInfo, TlsInfo};
use mesh::{MeshMsg, SessionKey};
use msg::{Expiry, Msg};
use retained::Retained;
use session::{Delivery, InFlight, OutState, Session, SessionState, SessionTable, SubEntry};
use sys::SysBoard;

/// Broker-wide settings every shard core reads.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Number of shards.
    pub nr_shards: u8,
    /// Largest packet accepted from clients.
    pub max_packet_size: u32,
    /// Longest keep-alive a client may ask for, seconds (`u16::MAX`: no cap).
    pub max_keepalive: u16,
    /// `$SYS` publication interval; 0 disables.
    pub sys_interval_ms: u64,
    /// Retained messages per org.
    pub retained_max: usize,
    /// Credentials and organizations, published by the control plane (SPEC §2).
    pub auth: Arc<AuthShared>,
    /// Unix time (ms) at `now_ms == 0`: converts the core's monotonic clock to wall time for
    /// credential expiry.
    pub unix_epoch_ms: u64,
    /// Global order of retained writes (one counter for all shards).
    pub retain_seq: Arc<AtomicU64>,
    /// Per-shard figures behind `$SYS`.
    pub sys: Arc<SysBoard>,
    /// Record [`StoreOp`]s for persistent sessions and retained messages (SPEC §7).
    pub persist: bool,
    /// Hold PUBACK/PUBREC/PUBCOMP until the store writes they depend on are durable
    /// (`durability` group or always).
    pub gate_acks: bool,
}

impl CoreConfig {
    /// A single-shard configuration with org `local` (tests, benches).
    pub fn single() -> CoreConfig {
        CoreConfig::with_shards(1)
    }

    /// `n` shards sharing one retained sequence and `$SYS` board.
    pub fn with_shards(n: u8) -> CoreConfig {
        CoreConfig {
            nr_shards: n,
            max_packet_size: limits::PACKET_BYTES_MAX_DEFAULT,
            max_keepalive: u16::MAX,
            sys_interval_ms: 10_000,
            retained_max: limits::RETAINED_PER_ORG_MAX,
            auth: Arc::new(AuthShared::new(Directory::with_orgs(["local"]), Pepper::new(b"test"))),
            unix_epoch_ms: 1_700_000_000_000,
            retain_seq: Arc::new(AtomicU64::new(1)),
            sys: Arc::new(SysBoard::new(n as usize)),
            persist: false,
            gate_acks: false,
        }
    }
}

/// What the shell does after [`ShardCore::handle_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Read more bytes.
    Continue,
    /// Stop reading until [`ShardCore::can_read`] is true (CONNECT awaiting its session, or
    /// cross-shard backpressure); the bytes already read stay in the buffer.
    Wait,
    /// Flush the output, then close the connection.
    Close,
}

/// What [`ShardCore::poll_output`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputPoll {
    /// Bytes were swapped into the caller's buffer: write them.
    Data,
    /// Nothing to write; the waker is registered.
    Pending,
    /// The connection is closing and all output was handed out: shut the socket.
    Close,
}

/// The MQTT 5 Authentication Method for JWTs.
pub const JWT_AUTH_METHOD: &str = "jwt";

/// Work for the shell, answered with [`ShardCore::handle_auth_result`].
#[derive(Debug)]
pub enum AuthJob {
    /// Verify a password on the hashing pool.
    Hash {
        /// The waiting connection.
        conn: ConnId,
        /// The stored Argon2id hash.
        phc: Arc<str>,
        /// The password sent.
        password: Vec<u8>,
    },
    /// Ask the control plane to refresh a JWT provider's keys (single-flight, rate-limited).
    FetchKeys {
        /// The waiting connection.
        conn: ConnId,
        /// Organization.
        org: Arc<str>,
        /// Provider name.
        provider: Arc<str>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    shard: u8,
    conn: ConnId,
    generation: u64,
}

/// Counters of one shard.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Messages received from clients.
    pub received: u64,
    /// Messages sent to clients.
    pub sent: u64,
    /// QoS 0 messages dropped because a subscriber's output was full.
    pub dropped_slow: u64,
    /// Connections closed for protocol errors.
    pub protocol_errors: u64,
    /// Audit events dropped because the control plane fell behind.
    pub audit_dropped: u64,
    /// QoS 0 messages dropped (and QoS 1/2 refused) over an org's message rate.
    pub quota_dropped: u64,
}

/// One shard's broker state, composed of parts that each own one concern. See the module
/// docs.
pub struct ShardCore {
    /// This shard's index.
    pub shard: u8,
    cfg: CoreConfig,
    conns: ConnTable,
    sessions: SessionTable,
    /// Home registry: sessions whose home is this shard, and who holds each.
    registry: HashMap<SessionKey, Owner, RandomState>,
    router: Router,
    retained: Retained,
    /// Buffers reused by every fan-out.
    scratch: Scratch,
    /// Messages for other shards (and for this one, through its own queue).
    mesh: MeshOut,
    /// Tasks waiting for the core to let them go on.
    parked: Parked,
    /// Connections whose pending output is above `OUTPUT_PRESSURE_BYTES` (not stalled).
    /// Bounded by the connection count; usually empty.
    pressure: Vec<ConnId>,
    /// Per-org shares of this shard's turns.
    fair: fair::Fair,
    /// Store writes and the acknowledgements that wait for them.
    dur: persist::Durability,
    /// QoS 2 exactly once across shards: pending forward records, de-duplication rows.
    xonce: exactly_once::ExactlyOnce,
    next_generation: u64,
    next_token: u64,
    /// When the periodic work last ran.
    timers: Timers,
    /// Messages received and sent by connections already closed, per org (for `$SYS`).
    closed_rx: HashMap<Arc<str>, (u64, u64), RandomState>,
    auth: Authenticator,
    auth_jobs: Vec<AuthJob>,
    /// Audit records for the control plane, and the rate limits on what is reported.
    reports: Reports,
    /// Counters.
    pub stats: ShardStats,
    /// Orgs deleted while this shard ran (`purge`): a late claim of theirs installs nothing.
    deleted_orgs: std::collections::HashSet<Arc<str>, RandomState>,
    /// The broker is stopping: a CONNECT still arriving (accepted just before the listeners
    /// closed) is refused (0x88 Server unavailable; 3.1.1 return code 3).
    shutting_down: bool,
}

/// Buffers reused by every fan-out (no allocation per message).
#[derive(Debug, Default)]
struct Scratch {
    matches: Matches,
    fanout: Vec<Sub>,
}

/// Messages leaving the core for shards: one queue per peer, and this shard's own queue (so
/// handlers never re-enter).
#[derive(Debug, Default)]
struct MeshOut {
    mesh_out: Vec<VecDeque<MeshMsg>>,
    self_queue: VecDeque<MeshMsg>,
}

/// Tasks the core let wait, woken when what they wait for clears.
#[derive(Debug, Default)]
struct Parked {
    /// Readers paused because the mesh backlog is high (woken when it drains).
    paused_readers: Vec<Waker>,
    /// Readers paused for output pressure in their org, and mesh receivers paused for local
    /// pressure (woken when a pressured connection clears).
    pressure_paused: Vec<Waker>,
    /// Readers of 3.1.1 connections throttled by their org's rate, woken by the timer.
    throttled: Vec<Waker>,
}

/// When each periodic task last ran (core clock, ms).
#[derive(Debug, Default)]
struct Timers {
    start_ms: u64,
    last_sys_ms: u64,
    last_report_ms: u64,
    /// Last retention sweep (maximum ages of stored messages, `[org.retention]`).
    last_retention_ms: u64,
}

/// Audit records waiting for the control plane, and what keeps reports to a rate.
#[derive(Debug, Default)]
struct Reports {
    audit_out: Vec<AuditRecord>,
    /// Last quota audit event per (org, quota) on this shard, and hits since: one event per
    /// second at most, carrying the count.
    quota_audits: HashMap<(Arc<str>, &'static str), (u64, u64)>,
    /// Refused logins get one log line a second (with the count of the others).
    refusal_log: crate::ratelog::EverySecond,
}

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore").field("shard", &self.shard).finish_non_exhaustive()
    }
}

/// Home shard of a session: hash of org and client id.
pub fn home_shard(key: &SessionKey, nr_shards: u8) -> u8 {
    // Fixed keys: every shard must compute the same home.
    (RandomState::with_seeds(1, 2, 3, 4).hash_one(key) % nr_shards as u64) as u8
}

impl ShardCore {
    /// A core for shard `shard`, with its clock starting at `now_ms`.
    pub fn new(shard: u8, cfg: CoreConfig, now_ms: u64) -> ShardCore {
        assert!((shard as usize) < cfg.nr_shards as usize, "shard index out of range");
        assert!(cfg.nr_shards as usize <= limits::SHARDS_MAX, "too many shards");
        let peers = cfg.nr_shards as usize;
        ShardCore {
            shard,
            router: Router::new(shard),
            conns: ConnTable::default(),
            sessions: SessionTable::default(),
            registry: HashMap::default(),
            retained: Retained::default(),
            scratch: Scratch::default(),
            mesh: MeshOut {
                mesh_out: (0..peers).map(|_| VecDeque::new()).collect(),
                self_queue: VecDeque::new(),
            },
            parked: Parked::default(),
            pressure: Vec::new(),
            fair: fair::Fair::default(),
            dur: persist::Durability::new(peers),
            xonce: Default::default(),
            next_generation: 0,
            next_token: 0,
            timers: Timers { start_ms: now_ms, last_sys_ms: now_ms, last_report_ms: 0, last_retention_ms: 0 },
            closed_rx: HashMap::default(),
            auth: Authenticator::new(cfg.auth.clone()),
            auth_jobs: Vec::new(),
            reports: Reports::default(),
            stats: ShardStats::default(),
            deleted_orgs: Default::default(),
            shutting_down: false,
            cfg,
        }
    }

    // ------------------------------------------------------------------ connection lifecycle

    /// Registers a new transport connection.
    pub fn open_conn(&mut self, now_ms: u64, listener: Arc<ListenerCtx>, peer: &PeerInfo) -> ConnId {
        self.conns.open(now_ms, listener, peer, self.cfg.max_packet_size)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id)
    }

    /// Number of open connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The transport is gone (EOF, error, or after a requested close). Frees the slot.
    pub fn handle_closed(&mut self, id: ConnId, now_ms: u64) {
        if self.conn(id).is_none() {
            return;
        }
        self.detach(id, now_ms, true);
        self.clear_pressure(id);
        if let Some(t) = self.conn_mut(id).and_then(|c| c.login.pending_auth.take()).and_then(|p| p.ticket) {
            self.auth.verified(t, None);
        }
        let c = self.conns.remove(id).expect("checked above");
        if let Some(s) = c.share.fair {
            self.fair.leave(s);
        }
        if c.share.quota_slot {
            if let Some(q) = &c.share.quota {
                q.disconnect();
            }
        }
        if let (Some(ident), Some(key)) = (&c.login.identity, &c.attach.key) {
            let reason = c.link.close_reason.unwrap_or(if c.link.closing {
                "server_closed"
            } else {
                "connection_lost"
            });
            let mut detail = vec![
                ("reason", reason.into()),
                ("transport", c.link.listener.transport.into()),
                ("remote", (*c.link.remote).into()),
            ];
            if let Some(code) = c.link.close_code {
                detail.push(("reason_code", code.into()));
            }
            let who = ident.audit_name();
            self.audit(
                now_ms,
                key.org.clone(),
                AuditKind::Disconnect,
                Some(&key.client_id),
                who.as_deref(),
                &detail,
            );
        }
        tracing::debug!(shard = self.shard, remote = %c.link.remote, transport = c.link.listener.transport, client_cn = ?c.link.client_cn, "connection closed");
        if let Some(k) = &c.attach.key {
            let e = self.closed_rx.entry(k.org.clone()).or_default();
            e.0 += c.link.rx_msgs;
            e.1 += c.link.tx_msgs;
        }
        self.drain_self(now_ms);
    }

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
    fn expire_pressure(&mut self, now_ms: u64) {
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
    fn note_pressure(&mut self, id: ConnId, now_ms: u64) {
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
    fn clear_pressure(&mut self, id: ConnId) {
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

    /// Closes every connection with `reason` (5.0 clients get a DISCONNECT), for shutdown.
    pub fn shutdown_all(&mut self, now_ms: u64, reason: ReasonCode) {
        self.shutting_down = true;
        let ids = self.conns_where(|_| true);
        for id in ids {
            self.close_conn(id, Some(reason), now_ms);
        }
    }

    /// Hands out the pending output of `id` by swapping it with `spare` (which must be empty).
    pub fn poll_output(&mut self, id: ConnId, spare: &mut BytesMut, waker: &Waker) -> OutputPoll {
        let durable = self.dur.durable_upto;
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

    /// Whether the connection wants to close (the reader should stop).
    pub fn is_closing(&self, id: ConnId) -> bool {
        self.conn(id).is_none_or(|c| c.link.closing)
    }

    /// Starts closing `id`: 5.0 clients get DISCONNECT `reason` first (when connected).
    pub fn close_conn(&mut self, id: ConnId, reason: Option<ReasonCode>, now_ms: u64) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.link.closing {
            return;
        }
        if let (Some(r), Some(Protocol::V5), Phase::Active) = (reason, c.proto.protocol, &c.phase) {
            let d = Packet::Disconnect(Disconnect { reason: r, props: Properties::default() });
            encode_packet(&mut c.link.out, Protocol::V5, &d);
        }
        c.link.closing = true;
        if c.link.close_code.is_none() {
            c.link.close_code = reason.map(|r| r.0);
        }
        wake(&mut c.link.writer);
        wake(&mut c.link.reader);
        if let Some(t) = c.login.pending_auth.take().and_then(|p| p.ticket) {
            self.auth.verified(t, None); // releases its in-flight slot
        }
        // A normal DISCONNECT has already discarded the will; every other close publishes it.
        self.detach(id, now_ms, true);
        self.drain_self(now_ms);
    }

    /// Refuses a CONNECT with `reason` (CONNACK in the client's protocol) and closes.
    fn refuse(&mut self, id: ConnId, protocol: Protocol, reason: ReasonCode) {
        let Some(c) = self.conn_mut(id) else { return };
        let ack = Packet::ConnAck(ConnAck { session_present: false, reason, props: Properties::default() });
        encode_packet(&mut c.link.out, protocol, &ack);
        c.link.closing = true;
        wake(&mut c.link.writer);
    }

    /// Detaches the session from a closing connection; publishes or schedules the will.
    fn detach(&mut self, id: ConnId, now_ms: u64, publish_will: bool) {
        let Some(c) = self.conn_mut(id) else { return };
        let will = c.attach.will.take();
        let will_delay = c.attach.will_delay_secs;
        let Some(sref) = c.attach.session.take() else {
            return;
        };
        let key = c.attach.key.clone();
        let Some(s) = self.session_mut(sref) else { return };
        s.conn = None;
        let expiry = s.state.expiry_secs;
        if expiry != 0 {
            self.count_offline(sref);
        }
        let Some(s) = self.session_mut(sref) else { return };
        if let (true, Some(w)) = (publish_will, will) {
            if will_delay > 0 && expiry > 0 {
                let delay = will_delay.min(expiry) as u64 * 1000;
                s.delayed_will = Some((now_ms + delay, w));
            } else if let Some(k) = &key {
                let org = k.org.clone();
                self.publish_internal(&org, w, now_ms);
            }
        }
        let s = self.session_mut(sref).expect("session still present");
        if expiry == 0 {
            self.end_session(sref, now_ms);
        } else {
            if expiry != u32::MAX {
                s.expires_at_ms = Some(now_ms + expiry as u64 * 1000);
            }
            self.persist_offline(sref);
        }
    }

    // ------------------------------------------------------------------ reading

    /// Decodes and handles every complete packet in `buf`. The buffer keeps a partial packet;
    /// the shell must make room for at most the maximum packet size.
    pub fn handle_read(&mut self, id: ConnId, now_ms: u64, buf: &mut BytesMut) -> ReadVerdict {
        let verdict = self.read_packets(id, now_ms, buf);
        self.drain_self(now_ms);
        verdict
    }

    fn read_packets(&mut self, id: ConnId, now_ms: u64, buf: &mut BytesMut) -> ReadVerdict {
        loop {
            let Some(c) = self.conn_mut(id) else { return ReadVerdict::Close };
            if c.link.closing {
                return ReadVerdict::Close;
            }
            if matches!(c.phase, Phase::AwaitSession | Phase::AwaitAuth) {
                return ReadVerdict::Wait;
            }
            let protocol = c.proto.protocol;
            if c.phase != Phase::Active && buf.first().is_some_and(|b| *b != 0x10) {
                // Not a CONNECT (an HTTP request, a TLS ClientHello, noise): refuse at the first
                // byte instead of waiting for a length that may never arrive [MQTT-3.1.0-1].
                self.fail(id, None, buf, ReasonCode::PROTOCOL_ERROR, now_ms);
                return ReadVerdict::Close;
            }
            let max_packet = c.proto.max_packet;
            if protocol == Some(Protocol::V311)
                && c.phase == Phase::Active
                && buf.first().is_some_and(|b| b >> 4 == 3)
                && !match &c.share.quota {
                    Some(q) => c.share.lease.available(q, now_ms),
                    None => true,
                }
            {
                // Over the org's rate: 3.1.1 has no way to refuse a publish, so stop reading
                // (SPEC §4: throttled, nothing dropped); the PUBLISH stays in the buffer.
                c.share.throttled_until_ms = now_ms + limits::QUOTA_THROTTLE_MS;
                self.quota_hit(id, now_ms, "messages_per_minute");
                return ReadVerdict::Wait;
            }
            let f = match frame(buf, max_packet) {
                Ok(Some(f)) => f,
                Ok(None) => return ReadVerdict::Continue,
                Err(e) => {
                    self.fail(id, protocol, buf, e.reason, now_ms);
                    return ReadVerdict::Close;
                }
            };
            if buf.len() < f.total() {
                buf.reserve(f.total() - buf.len());
                return ReadVerdict::Continue;
            }
            let bytes = buf.split_to(f.total()).freeze();
            let c = self.conn_mut(id).expect("checked above");
            c.link.last_rx_ms = now_ms;
            let connected = if c.phase == Phase::Active { protocol } else { None };
            let packet = match decode_packet(bytes.clone(), &f, connected) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(id, protocol, &bytes, e.reason, now_ms);
                    return ReadVerdict::Close;
                }
            };
            self.handle_packet(id, now_ms, packet);
            if self.mesh_backlog() >= limits::MESH_BACKLOG_PAUSE {
                return ReadVerdict::Wait;
            }
            if let Some(c) = self.conn_mut(id) {
                if let Some(slot) = c.share.fair {
                    if self.fair.charge(slot) {
                        // Its org spent its share of this turn while another org has work.
                        if let Some(c) = self.conn_mut(id) {
                            c.share.fair_yielded = true;
                        }
                        return ReadVerdict::Wait;
                    }
                }
            }
        }
    }

    /// A decode or protocol failure: answer with the reason code where the protocol allows.
    fn fail(&mut self, id: ConnId, protocol: Option<Protocol>, raw: &[u8], reason: ReasonCode, now_ms: u64) {
        self.stats.protocol_errors += 1;
        let Some(c) = self.conn(id) else { return };
        if c.phase == Phase::Active {
            self.close_conn(id, Some(reason), now_ms);
            return;
        }
        // Before CONNECT completes: CONNACK with the reason in the client's protocol, if known.
        let level = protocol.map(|p| p.level()).or_else(|| peek_connect_level(raw));
        match (level, reason) {
            (Some(5), r) => self.refuse(id, Protocol::V5, r),
            (_, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)
            | (Some(4), ReasonCode::CLIENT_IDENTIFIER_NOT_VALID) => self.refuse(id, Protocol::V311, reason),
            _ => self.close_conn(id, None, now_ms),
        }
    }

    fn handle_packet(&mut self, id: ConnId, now_ms: u64, packet: Packet) {
        match packet {
            Packet::Connect(c) => self.handle_connect(id, now_ms, *c),
            Packet::Publish(p) => self.handle_publish(id, now_ms, p),
            Packet::PubAck(r) => self.handle_puback(id, now_ms, r, false),
            Packet::PubRec(r) => self.handle_pubrec(id, now_ms, r),
            Packet::PubRel(r) => self.handle_pubrel(id, now_ms, r),
            Packet::PubComp(r) => self.handle_puback(id, now_ms, r, true),
            Packet::Subscribe(s) => {
                let since = self.store_seq();
                self.handle_subscribe(id, now_ms, s);
                self.persist_conn_meta(id);
                self.gate_output(id, since);
            }
            Packet::Unsubscribe(u) => {
                let since = self.store_seq();
                self.handle_unsubscribe(id, now_ms, u);
                self.persist_conn_meta(id);
                self.gate_output(id, since);
            }
            Packet::PingReq => self.write(id, &Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(id, now_ms, d),
            Packet::Auth(a) => self.handle_auth(id, now_ms, a),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms)
            }
        }
    }

    fn write(&mut self, id: ConnId, p: &Packet) {
        if let Some(c) = self.conn_mut(id) {
            if let Some(v) = c.proto.protocol {
                encode_packet(&mut c.link.out, v, p);
                wake(&mut c.link.writer);
            }
        }
    }

    // ------------------------------------------------------------------ CONNECT

    fn handle_connect(&mut self, id: ConnId, now_ms: u64, c: Connect) {
        let v = c.protocol;
        let v5 = v == Protocol::V5;
        let max_ka = self.cfg.max_keepalive;
        let shutting_down = self.shutting_down;
        let conn = self.conn_mut(id).expect("caller checked");
        conn.proto.protocol = Some(v);
        if shutting_down {
            // 0x8B is a DISCONNECT code only; a CONNACK says Server unavailable (3.1.1: code 3).
            return self.refuse(id, v, ReasonCode::SERVER_UNAVAILABLE);
        }
        if c.client_id.len() > limits::CLIENT_ID_BYTES_MAX {
            return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        if !v5 && max_ka != u16::MAX && (c.keep_alive == 0 || c.keep_alive > max_ka) {
            // 3.1.1 cannot be told another keep-alive: refused as Mosquitto does (return code 2).
            return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let client_id = if c.client_id.is_empty() {
            if !v5 && !c.clean_start {
                return self.refuse(id, v, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
                // [MQTT-3.1.3-8]
            }
            // Unguessable (130 random bits): an assigned id names a session nobody else may
            // find by counting.
            let gen = MqStr::copy_from(&format!("auto-{}", crate::auth::secret::random_b32(26)))
                .expect("generated id has no NUL");
            if v5 {
                conn.proto.assigned_id = Some(gen.clone());
            }
            gen
        } else {
            c.client_id.to_owned_copy()
        };
        let mut c = c;
        match c.props.authentication_method.as_ref().map(|m| m.as_str()) {
            None => {}
            // Enhanced authentication with a JWT (SPEC §2.3): the token may come as
            // Authentication Data instead of the password; AUTH can later renew it.
            Some(JWT_AUTH_METHOD) => {
                if c.username.is_none() {
                    // The org comes from `local@org`; a JWT never lands in an anonymous org.
                    return self.refuse(id, v, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
                }
                if c.password.is_none() {
                    c.password = c.props.authentication_data.take();
                }
                self.conn_mut(id).expect("caller checked").login.auth_jwt = true;
            }
            Some(_) => return self.refuse(id, v, ReasonCode::BAD_AUTHENTICATION_METHOD),
        }
        self.authenticate(id, now_ms, c, client_id, true);
    }

    /// Runs authentication for a CONNECT (again, after a key refresh, with `may_fetch` off).
    fn authenticate(&mut self, id: ConnId, now_ms: u64, c: Connect, client_id: MqStr, may_fetch: bool) {
        let v = c.protocol;
        let anonymous_org = self.conn(id).expect("caller checked").link.listener.anonymous_org.clone();
        let verdict = self.auth.check(
            c.username.as_ref().map(|u| u.as_str()),
            c.password.as_deref(),
            anonymous_org.as_ref(),
            self.unix_ms(now_ms),
            may_fetch,
        );
        self.apply_verdict(id, now_ms, v, verdict, c, client_id);
    }

    fn apply_verdict(
        &mut self,
        id: ConnId,
        now_ms: u64,
        v: Protocol,
        verdict: Verdict,
        c: Connect,
        client_id: MqStr,
    ) {
        match verdict {
            Verdict::Allow(identity) => self.admit(id, now_ms, c, client_id, identity),
            Verdict::Deny(why, org) => self.deny_auth(id, now_ms, v, why, org, &c, &client_id),
            Verdict::Verify(mut ticket) => {
                // The password goes to the pool; the parked ticket keeps no copy of it.
                let password = std::mem::take(&mut ticket.password);
                self.auth_jobs.push(AuthJob::Hash { conn: id, phc: ticket.phc.clone(), password });
                let conn = self.conn_mut(id).expect("caller checked");
                conn.phase = Phase::AwaitAuth;
                conn.login.pending_auth =
                    Some(Box::new(PendingAuth { ticket: Some(ticket), connect: c, client_id }));
            }
            Verdict::FetchKeys { org, provider } => {
                self.auth_jobs.push(AuthJob::FetchKeys { conn: id, org, provider });
                let conn = self.conn_mut(id).expect("caller checked");
                conn.phase = Phase::AwaitAuth;
                conn.login.pending_auth = Some(Box::new(PendingAuth { ticket: None, connect: c, client_id }));
            }
        }
    }

    /// The credential directory and caches this core reads.
    pub fn auth_shared(&self) -> &Arc<AuthShared> {
        &self.cfg.auth
    }

    /// Work the shell must hand to the hashing pool or the control plane.
    pub fn take_auth_jobs(&mut self) -> Vec<AuthJob> {
        std::mem::take(&mut self.auth_jobs)
    }

    /// Whether auth jobs are waiting for the shell.
    pub fn has_auth_jobs(&self) -> bool {
        !self.auth_jobs.is_empty()
    }

    /// The answer to an [`AuthJob`] of `id`: the password verdict (`None`: the pool was full),
    /// or, for a key refresh, whether it ran (the token is then checked again).
    pub fn handle_auth_result(&mut self, id: ConnId, now_ms: u64, ok: Option<bool>) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(p) = c.login.pending_auth.take() else { return };
        let PendingAuth { ticket, connect, client_id } = *p;
        let closing = c.link.closing;
        let v = connect.protocol;
        match ticket {
            Some(ticket) if closing => {
                self.auth.verified(ticket, None);
                return;
            }
            _ if closing => return,
            Some(ticket) => {
                let verdict = self.auth.verified(ticket, ok);
                self.apply_verdict(id, now_ms, v, verdict, connect, client_id);
            }
            None => self.authenticate(id, now_ms, connect, client_id, false),
        }
        if let Some(c) = self.conn_mut(id) {
            wake(&mut c.link.reader);
        }
        self.drain_self(now_ms);
    }

    /// Audit events raised since the last call, for the control plane.
    pub fn take_audit(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.reports.audit_out)
    }

    /// Whether audit events are waiting.
    pub fn has_audit(&self) -> bool {
        !self.reports.audit_out.is_empty()
    }

    fn unix_ms(&self, now_ms: u64) -> u64 {
        self.cfg.unix_epoch_ms + now_ms
    }

    fn audit(
        &mut self,
        now_ms: u64,
        org: Arc<str>,
        kind: AuditKind,
        client_id: Option<&MqStr>,
        username: Option<&str>,
        detail: &[(&str, serde_json::Value)],
    ) {
        if self.reports.audit_out.len() >= limits::AUDIT_BACKLOG_MAX {
            self.stats.audit_dropped += 1;
            return;
        }
        self.reports.audit_out.push(AuditRecord {
            org,
            kind,
            client_id: client_id.map(|c| c.as_str().to_string()),
            username: username.map(str::to_string),
            detail: detail.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect(),
            unix_ms: self.unix_ms(now_ms),
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn deny_auth(
        &mut self,
        id: ConnId,
        now_ms: u64,
        v: Protocol,
        why: Denied,
        org: Option<Arc<str>>,
        c: &Connect,
        client_id: &MqStr,
    ) {
        let reason = match why {
            Denied::AnonymousRefused => ReasonCode::NOT_AUTHORIZED,
            Denied::Busy => ReasonCode::SERVER_BUSY,
            _ => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        };
        if let Some(folded) = self.reports.refusal_log.tick(now_ms) {
            let c = self.conn(id).expect("caller checked");
            // The reason and where from; never a password, token or user name.
            tracing::info!(shard = self.shard, org = org.as_deref().unwrap_or("-"), reason = why.as_str(),
                transport = c.link.listener.transport, remote = %c.link.remote, more_since_last_line = folded, "login refused");
        }
        if let Some(org) = org {
            let (transport, remote) = {
                let conn = self.conn(id).expect("caller checked");
                (conn.link.listener.transport, conn.link.remote.clone())
            };
            let method = if matches!(why, Denied::Jwt(_)) {
                "jwt"
            } else if c.username.as_ref().is_some_and(|u| u.as_str().starts_with("tok_")) {
                "token"
            } else {
                "password"
            };
            self.audit(
                now_ms,
                org,
                AuditKind::AuthFailure,
                Some(client_id),
                c.username.as_ref().map(|u| u.as_str()),
                &[
                    ("method", method.into()),
                    ("reason", why.as_str().into()),
                    ("transport", transport.into()),
                    ("remote", (*remote).into()),
                ],
            );
        }
        self.refuse(id, v, reason);
    }

    /// Authenticated: set the connection up and claim its session at the session's home.
    fn admit(&mut self, id: ConnId, now_ms: u64, c: Connect, client_id: MqStr, identity: Identity) {
        let v = c.protocol;
        let v5 = v == Protocol::V5;
        let org = identity.org.clone();
        let cert_cn = self.conn(id).expect("caller checked").link.client_cn.clone();
        let acl = Arc::new(self.compile_acl(&identity, client_id.as_str(), cert_cn.as_deref()));
        if let Some(w) = &c.will {
            // A will is a publish at CONNECT: checked now (SPEC §3).
            let d = acl.check_publish(w.topic.as_str(), w.qos as u8, w.retain);
            if w.topic.as_str().starts_with("$SYS") || !d.allow {
                let who = identity.audit_name();
                let detail = [
                    ("action", "will".into()),
                    ("topic", w.topic.as_str().into()),
                    ("rule", d.policy_rule_json()),
                ];
                self.audit(
                    now_ms,
                    org.clone(),
                    AuditKind::AclDenied,
                    Some(&client_id),
                    who.as_deref(),
                    &detail,
                );
                return self.refuse(id, v, ReasonCode::NOT_AUTHORIZED);
            }
        }
        let quota = self.org_quota(&org);
        let slot = quota.as_ref().is_none_or(|q| q.try_connect());
        let cn = self.conn_mut(id).expect("caller checked");
        cn.login.acl = Some(acl);
        if let Some(q) = &quota {
            // At the limit the claim still goes ahead: a takeover hands the old slot over.
            cn.share.quota_slot = slot;
            cn.share.slot_wait = !slot;
            if let Some(m) = q.max_packet_size() {
                cn.proto.max_packet = cn.proto.max_packet.min(m.min(u32::MAX as u64) as u32);
            }
        }
        cn.share.quota = quota;
        let deadline = identity.expires_unix_ms.map(|t| t.saturating_sub(self.cfg.unix_epoch_ms));
        let (transport, remote) = {
            let conn = self.conn(id).expect("caller checked");
            (conn.link.listener.transport, conn.link.remote.clone())
        };
        // Anonymous clients did not authenticate: their `connect` event is the record.
        if identity.method != crate::auth::directory::Method::Anonymous {
            self.audit(
                now_ms,
                org.clone(),
                AuditKind::AuthSuccess,
                Some(&client_id),
                c.username.as_ref().map(|u| u.as_str()),
                &[
                    ("method", identity.method.as_str().into()),
                    ("identity", (*identity.name).into()),
                    ("transport", transport.into()),
                    ("remote", (*remote).into()),
                ],
            );
        }
        let max_ka = self.cfg.max_keepalive;
        let conn = self.conn_mut(id).expect("caller checked");
        conn.login.identity = Some(Arc::new(identity));
        conn.login.auth_deadline_ms = deadline;
        // A 3.1.1 client over the cap was refused at CONNECT; a 5.0 one gets the cap (CONNACK
        // Server Keep Alive), as does one asking for none.
        let ka = if c.keep_alive == 0 || c.keep_alive > max_ka { max_ka } else { c.keep_alive };
        conn.link.keep_alive_ms = if max_ka == u16::MAX && c.keep_alive == 0 { 0 } else { ka as u64 * 1000 };
        conn.attach.clean_start = c.clean_start;
        conn.attach.expiry_req = if v5 {
            c.props.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let quota_window = conn
            .share
            .quota
            .as_ref()
            .and_then(|q| q.max_inflight())
            .map_or(u16::MAX, |m| m.min(65_535) as u16);
        conn.proto.send_window =
            c.props.receive_maximum.unwrap_or(u16::MAX).min(limits::INFLIGHT_MAX).min(quota_window.max(1));
        conn.proto.client_max_packet = c.props.maximum_packet_size.unwrap_or(u32::MAX);
        conn.proto.client_alias_max = c.props.topic_alias_maximum.unwrap_or(0);
        if let Some(w) = c.will {
            let mut props = w.props;
            conn.attach.will_delay_secs = props.will_delay_interval.take().unwrap_or(0);
            let m = Msg {
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                props,
                received_ms: now_ms,
            };
            conn.attach.will = Some(m.to_owned_copy());
        }
        let key = SessionKey { org, client_id };
        conn.attach.key = Some(key.clone());
        conn.phase = Phase::AwaitSession;
        let home = home_shard(&key, self.cfg.nr_shards);
        let shard = self.shard;
        self.send(home, MeshMsg::Claim { key, shard, conn: id, clean_start: c.clean_start });
    }

    /// Live, authenticated connections of `org` on this shard.
    pub fn live_sessions(&self, org: &str) -> Vec<crate::plane::SessionInfo> {
        self.conns
            .iter()
            .map(|(_, c)| c)
            .filter(|c| !c.link.closing && c.phase == Phase::Active)
            .filter_map(|c| {
                let ident = c.login.identity.as_ref()?;
                let key = c.attach.key.as_ref()?;
                (&*key.org == org).then(|| crate::plane::SessionInfo {
                    client_id: key.client_id.as_str().to_string(),
                    identity: ident.name.to_string(),
                    method: ident.method.as_str().to_string(),
                    transport: c.link.listener.transport.to_string(),
                    remote: c.link.remote.to_string(),
                    protocol: c.proto.protocol.map_or(0, |p| p.level()),
                    shard: self.shard,
                })
            })
            .collect()
    }

    /// Closes `org`'s connections matching `target`; how many.
    pub fn kick_target(&mut self, now_ms: u64, org: &str, target: &crate::plane::KickTarget) -> usize {
        use crate::auth::directory::Method;
        use crate::plane::KickTarget;
        match target {
            KickTarget::All => self.kick(now_ms, org, |_| true),
            KickTarget::User(u) => self.kick(now_ms, org, |i| i.method == Method::Password && &*i.name == u),
            KickTarget::Token(t) => self.kick(now_ms, org, |i| i.method == Method::Token && &*i.name == t),
            KickTarget::ClientId(cid) => self.close_admin(now_ms, |c| {
                c.phase == Phase::Active
                    && c.attach.key.as_ref().is_some_and(|k| &*k.org == org && k.client_id.as_str() == cid)
            }),
        }
    }

    /// AUTH on a live connection: re-authentication with a fresh JWT (MQTT 5 §4.12.1). The new
    /// token must name the same subject; its `exp` becomes the connection's deadline.
    fn handle_auth(&mut self, id: ConnId, now_ms: u64, a: crate::codec::Auth) {
        let Some(c) = self.conn(id) else { return };
        if !c.login.auth_jwt {
            // No enhanced authentication method was established at CONNECT [MQTT-4.12.0-1].
            return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms);
        }
        if a.props.authentication_method.as_ref().map(|m| m.as_str()) != Some(JWT_AUTH_METHOD) {
            return self.close_conn(id, Some(ReasonCode::BAD_AUTHENTICATION_METHOD), now_ms);
            // [MQTT-4.12.1-1]
        }
        if a.reason != ReasonCode::RE_AUTHENTICATE {
            return self.close_conn(id, Some(ReasonCode::PROTOCOL_ERROR), now_ms);
        }
        let Some(old) = c.login.identity.clone() else { return };
        let client_id = c.attach.key.as_ref().map(|k| k.client_id.clone());
        let token = a.props.authentication_data.unwrap_or_default();
        let now_unix = self.unix_ms(now_ms);
        let result = self.auth.verify_jwt(&old.org, &token);
        let detail_method = ("method", serde_json::Value::from("jwt_reauth"));
        match result {
            Ok(new) if new.name == old.name && new.expires_unix_ms.is_some_and(|t| t > now_unix) => {
                let deadline = new.expires_unix_ms.map(|t| t.saturating_sub(self.cfg.unix_epoch_ms));
                let who = new.audit_name();
                self.audit(
                    now_ms,
                    old.org.clone(),
                    AuditKind::AuthSuccess,
                    client_id.as_ref(),
                    who.as_deref(),
                    &[detail_method],
                );
                let c = self.conn_mut(id).expect("checked");
                c.login.identity = Some(Arc::new(new));
                c.login.auth_deadline_ms = deadline;
                let props = Properties {
                    authentication_method: MqStr::copy_from(JWT_AUTH_METHOD),
                    ..Properties::default()
                };
                self.write(id, &Packet::Auth(crate::codec::Auth { reason: ReasonCode::SUCCESS, props }));
            }
            other => {
                let why = match other {
                    Ok(_) => "jwt_subject_changed",
                    Err(r) => r,
                };
                let who = old.audit_name();
                self.audit(
                    now_ms,
                    old.org.clone(),
                    AuditKind::AuthFailure,
                    client_id.as_ref(),
                    who.as_deref(),
                    &[detail_method, ("reason", why.into())],
                );
                if let Some(c) = self.conn_mut(id) {
                    c.link.close_reason = Some("reauthentication_failed");
                }
                self.close_conn(id, Some(ReasonCode::NOT_AUTHORIZED), now_ms);
            }
        }
    }

    /// Binds the org's current policy (blank when it has none) to `identity`.
    /// Counts a quota hit and records a `quota_exceeded` audit event: the first at once, then
    /// at most one per second per (org, quota) on this shard, carrying the hits since.
    pub(crate) fn quota_hit(&mut self, id: ConnId, now_ms: u64, quota: &'static str) {
        let Some(c) = self.conn(id) else { return };
        let Some(key) = c.attach.key.clone() else { return };
        let who = c.login.identity.as_ref().and_then(|i| i.audit_name());
        let e = self.reports.quota_audits.entry((key.org.clone(), quota)).or_insert((0, 0));
        e.1 += 1;
        if e.0 != 0 && now_ms < e.0 + 1000 {
            return;
        }
        let count = std::mem::take(&mut e.1);
        e.0 = now_ms.max(1);
        let limit = self.org_quota(&key.org).map(|q| serde_json::to_value(q.limits()).unwrap_or_default());
        let detail = [("quota", quota.into()), ("hits", count.into()), ("limits", limit.unwrap_or_default())];
        self.audit(
            now_ms,
            key.org.clone(),
            AuditKind::QuotaExceeded,
            Some(&key.client_id),
            who.as_deref(),
            &detail,
        );
    }

    /// The maximum ages of `org`'s stored messages.
    pub(crate) fn retention(&self, org: &str) -> crate::quota::Retention {
        self.cfg.auth.directory.load().orgs.get(org).map(|o| o.retention).unwrap_or_default()
    }

    /// The quota of `org`, if it has one.
    pub(crate) fn org_quota(&self, org: &str) -> Option<Arc<crate::quota::OrgQuota>> {
        self.cfg.auth.directory.load().orgs.get(org).and_then(|o| o.quota.clone())
    }

    /// A persistent session went offline: what it holds counts against its org's session
    /// storage from now on.
    pub(crate) fn count_offline(&mut self, sref: SessionRef) {
        let Some(org) = self.session(sref).map(|s| s.org.clone()) else { return };
        let Some(q) = self.org_quota(&org) else { return };
        let s = self.session_mut(sref).expect("checked above");
        let b = s.state.held_bytes();
        q.release_bytes(s.state.stored_bytes);
        q.store_bytes(b);
        s.state.stored_bytes = b;
    }

    /// A session's state is resumed or discarded: it no longer counts as offline storage.
    pub(crate) fn uncount_offline(&self, org: &str, state: &mut session::SessionState) {
        if state.stored_bytes > 0 {
            if let Some(q) = self.org_quota(org) {
                q.release_bytes(state.stored_bytes);
            }
            state.stored_bytes = 0;
        }
    }

    /// Retained messages `org` may hold: its quota, never above the broker's bound.
    pub(crate) fn retained_max(&self, org: &str) -> usize {
        let q = self.org_quota(org).and_then(|q| q.max_retained());
        q.map_or(self.cfg.retained_max, |m| (m as usize).min(self.cfg.retained_max))
    }

    fn compile_acl(&self, identity: &Identity, client_id: &str, cert_cn: Option<&str>) -> CompiledAcl {
        let dir = self.cfg.auth.directory.load();
        let org_policy = dir.orgs.get(&identity.org).and_then(|o| o.policy.as_deref());
        let policy: &Policy = org_policy.unwrap_or(Policy::blank_ref());
        let id = identity.acl_identity(client_id, cert_cn);
        CompiledAcl::compile(policy, &id, &identity.user_publish, &identity.user_subscribe)
    }

    /// Records an ACL denial: the first at once, then at most one event per second per
    /// connection carrying the count, so a client hammering a denied topic cannot flood the log.
    fn acl_denied(
        &mut self,
        id: ConnId,
        now_ms: u64,
        action: &'static str,
        topic: &str,
        d: crate::acl::Decision,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        c.login.acl_denials += 1;
        if c.login.acl_reported_ms != 0 && now_ms < c.login.acl_reported_ms + 1000 {
            return;
        }
        let count = std::mem::take(&mut c.login.acl_denials);
        c.login.acl_reported_ms = now_ms.max(1);
        let (Some(key), Some(ident)) = (c.attach.key.clone(), c.login.identity.clone()) else { return };
        let who = ident.audit_name();
        let detail = [
            ("action", action.into()),
            ("topic", topic.into()),
            ("rule", d.policy_rule_json()),
            ("denials", count.into()),
        ];
        self.audit(
            now_ms,
            key.org.clone(),
            AuditKind::AclDenied,
            Some(&key.client_id),
            who.as_deref(),
            &detail,
        );
    }

    /// Re-checks every subscription of `sref` against `acl`: those no longer allowed are
    /// removed (audited when `audit`), the others get their delivery-check flag refreshed.
    pub(super) fn prune_subs(&mut self, sref: SessionRef, acl: &CompiledAcl, now_ms: u64, live: bool) {
        let Some(s) = self.session(sref) else { return };
        let org = s.org.clone();
        let client_id = s.client_id.clone();
        let subs: Vec<(Box<str>, SubEntry)> = s.state.subs.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (f, e) in subs {
            let inner = match classify(&f) {
                FilterKind::Shared(sf) => sf.filter,
                _ => &f,
            };
            let d = acl.check_subscribe(inner, e.opts.qos as u8);
            if !d.decision.allow {
                self.session_mut(sref).expect("present").state.subs.remove(&f);
                if live {
                    let ch = self.router.unsubscribe(&org, &f, sref);
                    if ch.interest_changed {
                        self.announce(&org, &f, false, None);
                    }
                }
                let detail = [
                    ("action", "subscription_removed".into()),
                    ("topic", (*f).into()),
                    ("rule", d.decision.policy_rule_json()),
                ];
                self.audit(now_ms, org.clone(), AuditKind::AclDenied, Some(&client_id), None, &detail);
            } else if d.checked != e.checked {
                let st = &mut self.session_mut(sref).expect("present").state;
                if let Some(x) = st.subs.get_mut(&f) {
                    x.checked = d.checked;
                }
                if live {
                    let sub = Sub { session: sref, opts: e.opts, sub_id: e.sub_id, checked: d.checked };
                    self.router.subscribe(&org, &f, sub); // replaces the entry in place
                }
            }
        }
    }

    /// The live subscriptions of `org` on this shard that `policy` would remove.
    pub fn policy_diff(&self, org: &str, policy: &Policy) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (_, c) in self.conns.iter() {
            let (Some(ident), Some(key), Some(sref)) = (&c.login.identity, &c.attach.key, c.attach.session)
            else {
                continue;
            };
            if &*ident.org != org {
                continue;
            }
            let id = ident.acl_identity(key.client_id.as_str(), c.link.client_cn.as_deref());
            let acl = CompiledAcl::compile(policy, &id, &ident.user_publish, &ident.user_subscribe);
            let Some(s) = self.session(sref) else { continue };
            for (f, e) in &s.state.subs {
                let inner = match classify(f) {
                    FilterKind::Shared(sf) => sf.filter,
                    _ => f,
                };
                if !acl.check_subscribe(inner, e.opts.qos as u8).decision.allow {
                    out.push((key.client_id.as_str().to_string(), f.to_string()));
                }
            }
        }
        out
    }

    /// The org's policy changed: recompile the ACL of its live connections and sessions and
    /// remove the subscriptions it no longer allows (SPEC §3).
    pub fn policy_changed(&mut self, now_ms: u64, org: &str) -> usize {
        let ids = self.conns_where(|c| c.login.identity.as_ref().is_some_and(|x| &*x.org == org));
        for id in &ids {
            let c = self.conn(*id).expect("listed");
            let (Some(ident), Some(key)) = (c.login.identity.clone(), c.attach.key.clone()) else { continue };
            let acl = Arc::new(self.compile_acl(&ident, key.client_id.as_str(), c.link.client_cn.as_deref()));
            let sref = c.attach.session;
            self.conn_mut(*id).expect("listed").login.acl = Some(acl.clone());
            if let Some(sref) = sref {
                // Live: subscriptions and stored messages against the new ACL.
                self.hold_under(sref, acl, now_ms, true);
            }
        }
        // Offline sessions keep their holder's old ACL until that identity comes back (its
        // bindings are not known here): the new one is applied, and what is stored re-checked,
        // when it resumes.
        self.drain_self(now_ms);
        ids.len()
    }

    /// Publishes into `org` on behalf of a service (the REST bridge); the caller has checked
    /// the ACL. Routed like a client's publish, from this shard.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_service(
        &mut self,
        now_ms: u64,
        org: &str,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) {
        let Some(t) = MqStr::copy_from(topic) else { return };
        let mut props = Properties::default();
        for (k, v) in user_properties {
            if let (Some(k), Some(v)) = (MqStr::copy_from(&k), MqStr::copy_from(&v)) {
                props.user_properties.push((k, v));
            }
        }
        let msg = Msg {
            topic: t,
            payload,
            qos: if qos >= 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain,
            props,
            received_ms: now_ms,
        };
        let org: Arc<str> = org.into();
        self.stats.received += 1;
        self.publish_internal(&org, msg, now_ms);
        self.drain_self(now_ms);
    }

    /// Closes every live connection of `org` whose identity `matches` (a deleted or changed
    /// user, a revoked token), with 0x98 administrative action on 5.0.
    pub fn kick(&mut self, now_ms: u64, org: &str, matches: impl Fn(&Identity) -> bool) -> usize {
        self.close_admin(now_ms, |c| c.login.identity.as_ref().is_some_and(|i| &*i.org == org && matches(i)))
    }

    /// The connections `select` picks (admin commands; a scan of this shard's connections).
    fn conns_where(&self, select: impl Fn(&Conn) -> bool) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| select(c)).map(|(id, _)| id).collect()
    }

    /// Closes the live connections `select` picks, with 0x98 administrative action; how many.
    fn close_admin(&mut self, now_ms: u64, select: impl Fn(&Conn) -> bool) -> usize {
        let ids = self.conns_where(|c| !c.link.closing && select(c));
        for id in &ids {
            if let Some(c) = self.conn_mut(*id) {
                c.link.close_reason = Some("administrative_action");
            }
            self.close_conn(*id, Some(ReasonCode::ADMINISTRATIVE_ACTION), now_ms);
        }
        ids.len()
    }

    // ------------------------------------------------------------------ session claims

    fn handle_claim(&mut self, key: SessionKey, shard: u8, conn: ConnId, clean_start: bool) {
        self.next_generation += 1;
        let generation = (self.next_generation << 8) | self.shard as u64;
        let prev = self.registry.insert(key.clone(), Owner { shard, conn, generation });
        match prev {
            None => self.send(shard, MeshMsg::Granted { key, conn, generation, state: None, slot: false }),
            Some(o) => self.send(
                o.shard,
                MeshMsg::Takeover {
                    key,
                    old_generation: o.generation,
                    old_conn: o.conn,
                    to_shard: shard,
                    conn,
                    generation,
                    clean_start,
                },
            ),
        }
    }
}
