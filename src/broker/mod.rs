//! The sans-IO shard core: one per shard, owning that shard's connections, sessions, replica of
//! the subscription index and replica of the retained store. It never touches a socket, a
//! file or the clock.
//!
//! # The contract with the shell ([`crate::shard`])
//! - Inputs, each with the time: [`ShardCore::open_conn`], [`ShardCore::handle_read`] (bytes),
//!   [`ShardCore::handle_output_progress`] / [`ShardCore::handle_closed`] (the transport),
//!   [`ShardCore::handle_mesh_batch`] (other shards), [`ShardCore::handle_auth_result`] (the hashing
//!   pool), [`ShardCore::durable`] (the store), [`ShardCore::handle_timeout`], and the control
//!   plane's commands (`kick_target`, `policy_changed`, `publish_service`, `purge_org`, ...).
//! - After each batch of inputs the shell drains, in one place (`Shard::drain_core`):
//!   [`ShardCore::poll_store`] (writes for the store), [`ShardCore::poll_auth`] (work for the
//!   hashing pool and the control plane) and [`ShardCore::take_mesh`] (messages per peer, in batches);
//!   [`ShardCore::poll_audit`] once per tick; [`ShardCore::poll_output`] from each
//!   connection's writer.
//! - [`ShardCore::poll_timeout`] says when `handle_timeout` next has work.
//!
//! # Parts (one file each)
//! Connections (`conn`: `ConnTable`, and each `Conn` split into link, negotiated, login, org
//! share and attach), sessions (`session`: `SessionTable`), the home registry and claims
//! (`claims`), durability (`durable`, `persist`, `exactly_once`), the mesh
//! (`mesh`), back-pressure and fairness (`pressure`, `fair`), timers (`timers`), reports
//! (`reports`, `sys`). The stages of a packet: `read`, `connect`, `publish`, `fanout`, `acks`,
//! `subscribe`, `close`; and the control plane's commands: `admin`, `rights`, `purge`,
//! `quotas`.

mod acks;
mod admin;
mod claims;
mod close;
pub mod conn;
mod connect;
mod durable;
pub mod exactly_once;
mod fair;
mod fanout;
pub mod inflight;
pub mod mesh;
pub mod msg;
pub mod persist;
mod pressure;
mod publish;
mod purge;
mod quotas;
mod read;
mod reports;
pub mod retained;
mod rights;
pub mod session;
#[cfg(test)]
mod sim;
mod subscribe;
pub mod sys;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;

use ahash::RandomState;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::acl::Policy;
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
use acks::pubresp;
pub use close::CloseCause;
use conn::{Conn, ConnTable, PendingAuth, PendingSubAck, Phase, Supersede};
pub use conn::{ConnId, ListenerCtx, PeerInfo, TlsInfo};
pub use connect::{AuthJob, JWT_AUTH_METHOD};
use durable::Durability;
use mesh::MeshOut;
use mesh::{MeshMsg, SessionKey};
use msg::{Expiry, Msg};
use pressure::{wake, Parked};
use reports::Reports;
use retained::Retained;
use session::{Delivery, InFlight, OutState, Session, SessionState, SessionTable, SubEntry};
use sys::SysBoard;
use timers::Timers;

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
    pub unix_at_mono_zero: u64,
    /// Global order of retained writes (one counter for all shards).
    pub retain_seq: Arc<AtomicU64>,
    /// Per-shard figures behind `$SYS`.
    pub sys: Arc<SysBoard>,
    /// Record [`persist::StoreOp`]s for persistent sessions and retained messages (SPEC §7).
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
            unix_at_mono_zero: 1_700_000_000_000,
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
    dur: Durability,
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
            dur: Durability::new(peers),
            xonce: Default::default(),
            next_generation: 0,
            next_token: 0,
            timers: Timers {
                start_ms: now_ms,
                last_sys_ms: now_ms,
                last_report_ms: 0,
                last_retention_ms: 0,
                next_deadline_ms: u64::MAX,
            },
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

    // ------------------------------------------------------------------ reading

    // ------------------------------------------------------------------ CONNECT

    // ------------------------------------------------------------------ session claims
}
