//! The I/O shell: one glommio executor per shard, each with its own `SO_REUSEPORT` listeners,
//! its connection tasks, a timer task and the cross-shard mesh. Everything here is thin: it
//! moves bytes and messages in and out of the shard's [`ShardCore`] and owns no broker state.
//! This is the only module that pins threads (through glommio's placement) and the only user
//! of the cross-shard channel.

mod conn;
mod durable;
pub mod guard;
mod mesh;
mod tasks;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

use crate::audit::AuditRecord;
use crate::auth::password::{HashJob, HashPool};
use crate::broker::persist::StoreOp;
use crate::broker::sys::SysBoard;
use crate::broker::{AuthJob, ConnId, CoreConfig, ListenerCtx, ShardCore};
use crate::clock::mono_ms;
use crate::config::Durability;
use crate::config::{Config, Listener};
use crate::limits;
use crate::plane::{ControlRequest, ShardCommand};
use crate::store::reopen::Reopenable;
use crate::store::{RestoredSession, RetainedStore, ShardStore};
use crate::transport::tls::{self, ReloadingCert};

/// The shell's tick: its own deadlines (handshakes), throttled readers, audit batches, signals;
/// the core's timers run when [`ShardCore::poll_timeout`] has come.
const TICK_MS: u64 = 50;

/// The CPUs this process may run on (taskset, systemd `CPUAffinity=`), as glommio's topology;
/// glommio's own `CpuSet::online()` ignores the affinity mask, so shards would land on CPUs the
/// operator reserved for something else.
fn allowed_cpus() -> Option<CpuSet> {
    let online = CpuSet::online().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let list = status.as_deref().and_then(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")));
    match list.map(parse_cpu_list) {
        Some(allowed) if !allowed.is_empty() => Some(online.filter(|l| allowed.contains(&l.cpu))),
        _ => Some(online),
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => out.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b => out.extend(a..=b),
            _ => return Vec::new(),
        }
    }
    out
}

/// A listener with what its connections need at accept time, shared by all shards.
pub(crate) struct ListenerRt {
    pub(crate) cfg: Listener,
    pub(crate) ctx: Arc<ListenerCtx>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) cert: Option<Arc<ReloadingCert>>,
    pub(crate) max_packet: u32,
}

/// Builds the runtime form of each listener (TLS configurations loaded and checked).
pub fn build_listeners(cfg: &Config) -> Result<Vec<ListenerRtHandle>, String> {
    tls::install_provider();
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let (tls, cert) = match &l.tls {
            None => (None, None),
            Some(s) => {
                let (c, r) = tls::server_config(s).map_err(|e| format!("listener[{i}]: {e}"))?;
                (Some(c), Some(r))
            }
        };
        let ctx = Arc::new(ListenerCtx {
            anonymous_org: l.anonymous_org.as_deref().map(Arc::from),
            transport: l.kind.name(),
        });
        out.push(ListenerRtHandle(Arc::new(ListenerRt {
            cfg: l.clone(),
            ctx,
            tls,
            cert,
            max_packet: cfg.max_packet_size,
        })));
    }
    Ok(out)
}

/// An opaque, validated listener (see [`build_listeners`]).
#[derive(Clone)]
pub struct ListenerRtHandle(Arc<ListenerRt>);

impl std::fmt::Debug for ListenerRtHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} listener on {}", self.0.cfg.kind.name(), self.0.cfg.bind)
    }
}

/// One shard's shell state, shared by its tasks (single-threaded).
pub(crate) struct Shard {
    pub(crate) core: RefCell<ShardCore>,
    /// Connections refused before MQTT (handshakes) get one log line a second.
    pub(crate) refused_log: RefCell<crate::ratelog::EverySecond>,
    mesh: mesh::MeshLinks,
    /// Coarse per-connection deadlines (handshakes, close flushes), woken by the shard's tick:
    /// no io_uring timer per connection. Min-heap by time; bounded by live connections × 2.
    deadlines: RefCell<std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>>,
    deadline_wakers: RefCell<std::collections::HashMap<u64, std::task::Waker>>,
    next_deadline_id: std::cell::Cell<u64>,
    pool: HashPool,
    /// Where the hashing pool answers this shard.
    auth_tx: flume::Sender<(ConnId, bool)>,
    audit_tx: flume::Sender<Vec<AuditRecord>>,
    control_tx: flume::Sender<ControlRequest>,
    audit_dropped: Arc<AtomicU64>,
    /// This shard's database, and the retained-message one (shared).
    store: Arc<Reopenable<ShardStore>>,
    retained_store: Arc<Reopenable<RetainedStore>>,
    durability: Durability,
    /// Writes taken from the core, applied at the next flush.
    store_ops: RefCell<Vec<StoreOp>>,
    /// Writes applied (or, while the store fails, collected) and not known durable yet.
    unpersisted: RefCell<Vec<StoreOp>>,
    /// How many writes left `unpersisted` (durable) since start: the position of its first.
    unpersisted_base: std::cell::Cell<u64>,
    /// The retained store's generation at this shard's last successful persist.
    retained_gen: std::cell::Cell<u64>,
    /// Writes applied since the last persist.
    store_dirty: std::cell::Cell<bool>,
    /// Writes to the retained store applied since the last persist.
    retained_dirty: std::cell::Cell<bool>,
    /// Sequence of the last write applied (made durable by the next persist).
    store_applied: std::cell::Cell<u64>,
    /// The commit task, woken when writes were applied.
    commit_waker: RefCell<Option<std::task::Waker>>,
    /// The store is failing: the commit task retries (`durable.rs`).
    store_failed: std::cell::Cell<bool>,
    unix_at_mono_zero: u64,
}

/// What one shard restores at start (see [`crate::store::Opened`]).
type Restored = (Vec<RestoredSession>, Vec<(crate::broker::mesh::SessionKey, u8, u64)>, Vec<u64>);

/// What each shard gets from the control plane.
#[derive(Clone)]
struct ShardLinks {
    pool: HashPool,
    audit_tx: flume::Sender<Vec<AuditRecord>>,
    control_tx: flume::Sender<ControlRequest>,
    audit_dropped: Arc<AtomicU64>,
    commands: Arc<Vec<flume::Receiver<ShardCommand>>>,
    /// The stores and what they held at start (each shard takes its sessions).
    stores: Arc<Vec<Arc<Reopenable<ShardStore>>>>,
    retained_store: Arc<Reopenable<RetainedStore>>,
    /// Per shard: its sessions, the home registry entries of its sessions held elsewhere, and
    /// its de-duplication rows of forwarded QoS 2 messages.
    restored: Arc<std::sync::Mutex<Vec<Restored>>>,
    retained_msgs: Arc<Vec<crate::store::StoredRetained>>,
    durability: Durability,
    /// Free lists of drained mesh batches, per ordered pair of shards.
    mesh_pool: mesh::BatchPool,
}

/// A future that completes at `at_ms` (shard clock), with tick resolution (50 ms).
pub(crate) struct Deadline {
    shard: Rc<Shard>,
    at_ms: u64,
    id: Option<u64>,
}

impl Deadline {
    /// Completes `ms` from now.
    pub(crate) fn after(shard: &Rc<Shard>, ms: u64) -> Deadline {
        Deadline { shard: shard.clone(), at_ms: mono_ms() + ms, id: None }
    }
}

impl std::future::Future for Deadline {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if mono_ms() >= self.at_ms {
            return std::task::Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.shard.next_deadline_id.get() + 1;
                self.shard.next_deadline_id.set(id);
                self.shard.deadlines.borrow_mut().push(std::cmp::Reverse((self.at_ms, id)));
                self.id = Some(id);
                id
            }
        };
        self.shard.deadline_wakers.borrow_mut().insert(id, cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            // The heap entry stays until its time; only the waker is released now.
            self.shard.deadline_wakers.borrow_mut().remove(&id);
        }
    }
}

impl Shard {
    /// Drains the core after a batch of inputs — the one call the shell makes after feeding
    /// it: store writes (applied at once, persisted by the commit task), work for the hashing
    /// pool and the control plane, and messages for other shards, one batch per peer pushed
    /// into the peer queues without blocking (`send_mesh`, shard/mesh.rs). Audit records go
    /// out once per tick instead (`flush_audit`).
    pub(crate) fn drain_core(self: &Rc<Self>) {
        self.flush_side();
        self.send_mesh();
        self.core.borrow_mut().wake_paused_readers();
    }
}

impl Shard {
    /// Hands the audit events raised since the last tick to the control plane, as one batch:
    /// one cross-thread wake-up per tick, not one per event (on a shared core, a wake-up per
    /// CONNECT cost more than the CONNECT).
    fn flush_audit(&self) {
        let mut core = self.core.borrow_mut();
        if !core.has_audit() {
            return;
        }
        let batch = core.poll_audit();
        let n = batch.len() as u64;
        if self.audit_tx.try_send(batch).is_err() {
            core.stats.audit_dropped += n;
            self.audit_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Hands password checks to the hashing pool and key refreshes to the control plane.
    fn flush_side(&self) {
        self.apply_store_ops();
        loop {
            let jobs = {
                let mut core = self.core.borrow_mut();
                if !core.has_auth_jobs() {
                    return;
                }
                core.poll_auth()
            };
            for job in jobs {
                let tx = self.auth_tx.clone();
                match job {
                    AuthJob::Hash { conn, phc, password } => {
                        let hj = HashJob {
                            phc,
                            password,
                            reply: Box::new(move |ok| {
                                let _ = tx.send((conn, ok));
                            }),
                        };
                        if self.pool.submit(hj).is_err() {
                            // Full: answered at once as "server busy"; this may queue more work.
                            self.core.borrow_mut().handle_auth_result(conn, mono_ms(), None);
                        }
                    }
                    AuthJob::FetchKeys { conn, org, provider } => {
                        let req = ControlRequest::RefreshKeys {
                            org,
                            provider,
                            reply: Box::new(move || {
                                let _ = tx.send((conn, true));
                            }),
                        };
                        if self.control_tx.try_send(req).is_err() {
                            // The control plane is swamped: check again without fetching.
                            self.core.borrow_mut().handle_auth_result(conn, mono_ms(), Some(false));
                        }
                    }
                }
            }
        }
    }
}

/// Opens the shards' stores and the retained store, reading back what they hold.
fn open_stores(
    cfg: &Config,
    sealer: Arc<crate::store::seal::Sealer>,
    cp: &crate::control::ControlPlane,
) -> std::io::Result<crate::store::Opened> {
    let t0 = std::time::Instant::now();
    let opened = crate::store::open(
        &cfg.data_dir,
        cfg.shards,
        cfg.durability,
        sealer,
        crate::clock::unix_ms(),
        &cp.pending_purges,
    )
    .map_err(|e| std::io::Error::other(format!("cannot load the stores: {e}")))?;
    cp.purges_done().map_err(|e| std::io::Error::other(format!("control store: {e}")))?;
    tracing::info!(
        sessions = opened.sessions.iter().map(Vec::len).sum::<usize>(),
        queued = opened.sessions.iter().flatten().map(|s| s.queue.len()).sum::<usize>(),
        retained = opened.retained_msgs.len(),
        ms = t0.elapsed().as_millis() as u64,
        durability = ?cfg.durability,
        "stores loaded"
    );
    Ok(opened)
}

impl ShardLinks {
    /// What every shard shares, from the control plane and the stores just opened.
    fn new(
        cp: &crate::control::ControlPlane,
        opened: crate::store::Opened,
        durability: Durability,
        nr_shards: usize,
    ) -> ShardLinks {
        ShardLinks {
            pool: cp.pool.clone(),
            audit_tx: cp.audit_tx.clone(),
            control_tx: cp.requests.clone(),
            audit_dropped: cp.audit_dropped.clone(),
            commands: Arc::new(cp.shard_commands.clone()),
            stores: Arc::new(opened.shards),
            retained_store: opened.retained,
            durability,
            restored: Arc::new(std::sync::Mutex::new(
                opened
                    .sessions
                    .into_iter()
                    .zip(opened.owners)
                    .zip(opened.origins)
                    .map(|((s, w), o)| (s, w, o))
                    .collect(),
            )),
            retained_msgs: Arc::new(opened.retained_msgs),
            mesh_pool: mesh::BatchPool::new(nr_shards),
        }
    }
}

/// Runs the broker until SIGTERM/SIGINT. Returns when every shard has stopped.
pub fn run(cfg: Config) -> std::io::Result<()> {
    // One descriptor per connection: lift the soft limit to the hard one (as Go and nginx do),
    // so a fleet is not refused at 1024 connections by a login shell's default.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 65_536 => tracing::warn!(nofile = n, "open-file limit is low; see tuning/README.md"),
        Ok(n) => tracing::debug!(nofile = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    let nr = cfg.shards;
    let rts = build_listeners(&cfg).map_err(std::io::Error::other)?;
    // Held until the process exits: one broker per data_dir, one per address.
    let _lock = guard::lock_data_dir(&cfg.data_dir).map_err(std::io::Error::other)?;
    for (i, l) in cfg.listeners.iter().enumerate() {
        guard::check_address_free(&format!("listener[{i}]"), l.bind).map_err(std::io::Error::other)?;
    }
    if let Some(a) = &cfg.admin {
        guard::check_address_free("admin.bind", a.bind).map_err(std::io::Error::other)?;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    let sys = Arc::new(SysBoard::new(nr));
    let sealer = Arc::new(crate::store::seal::Sealer::load(&cfg.encryption).map_err(std::io::Error::other)?);
    if sealer.verify(&cfg.data_dir).map_err(std::io::Error::other)? {
        sealer.request_reseal(); // a new key: the stores seal the plain values it covers
    }
    let cp = crate::control::start(&cfg, sys.clone(), sealer.clone()).map_err(std::io::Error::other)?;
    let opened = open_stores(&cfg, sealer, &cp)?;
    let core_cfg = CoreConfig {
        nr_shards: nr as u8,
        max_packet_size: cfg.max_packet_size,
        max_keepalive: cfg.max_keepalive,
        sys_interval_ms: cfg.sys_interval_ms,
        retained_max: limits::RETAINED_PER_ORG_MAX,
        auth: cp.auth.clone(),
        unix_at_mono_zero: crate::clock::unix_at_mono_zero(),
        retain_seq: Arc::new(AtomicU64::new(opened.retained_seq + 1)),
        sys,
        persist: true,
        gate_acks: cfg.durability != Durability::None,
    };
    let links = ShardLinks::new(&cp, opened, cfg.durability, nr);
    let mesh = MeshBuilder::full(nr, limits::MESH_QUEUE_CAPACITY);
    let cpus = allowed_cpus();
    let ncpu = cpus.as_ref().map_or(1, |c| c.len());
    let placement = if nr <= ncpu { PoolPlacement::MaxSpread(nr, cpus) } else { PoolPlacement::Unbound(nr) };
    let listeners: Arc<Vec<Arc<ListenerRt>>> = Arc::new(rts.into_iter().map(|h| h.0).collect());
    for l in listeners.iter() {
        let l = &l.cfg;
        tracing::info!(kind = l.kind.name(), bind = %l.bind, anonymous_org = ?l.anonymous_org, path = %l.path, proxy_protocol = l.proxy_protocol, "listener");
    }
    tracing::info!(shards = nr, "coremq {} starting", env!("CARGO_PKG_VERSION"));
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("coremq-shard")
        .on_all_shards(move || {
            let mesh = mesh.clone();
            let core_cfg = core_cfg.clone();
            let listeners = listeners.clone();
            let shutdown = shutdown.clone();
            let reload = reload.clone();
            let links = links.clone();
            async move { shard_main(mesh, core_cfg, listeners, shutdown, reload, links).await }
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut failed = None;
    for r in handles.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(std::io::Error::other(e.to_string())),
        }
    }
    cp.thread.stop();
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("coremq stopped");
            Ok(())
        }
    }
}

impl Shard {
    /// Shard `id`'s shell around a fresh core.
    fn new(
        id: u8,
        core_cfg: CoreConfig,
        mesh: mesh::MeshLinks,
        auth_tx: flume::Sender<(ConnId, bool)>,
        links: &ShardLinks,
    ) -> Shard {
        let unix_at_mono_zero = core_cfg.unix_at_mono_zero;
        Shard {
            core: RefCell::new(ShardCore::new(id, core_cfg, mono_ms())),
            refused_log: RefCell::default(),
            mesh,
            deadlines: RefCell::new(std::collections::BinaryHeap::new()),
            deadline_wakers: RefCell::new(std::collections::HashMap::new()),
            next_deadline_id: std::cell::Cell::new(0),
            pool: links.pool.clone(),
            auth_tx,
            audit_tx: links.audit_tx.clone(),
            control_tx: links.control_tx.clone(),
            audit_dropped: links.audit_dropped.clone(),
            durability: links.durability,
            store: links.stores[id as usize].clone(),
            retained_store: links.retained_store.clone(),
            store_ops: RefCell::new(Vec::new()),
            unpersisted: RefCell::new(Vec::new()),
            unpersisted_base: std::cell::Cell::new(0),
            retained_gen: std::cell::Cell::new(links.retained_store.generation()),
            store_dirty: std::cell::Cell::new(false),
            retained_dirty: std::cell::Cell::new(false),
            store_applied: std::cell::Cell::new(0),
            commit_waker: RefCell::new(None),
            store_failed: std::cell::Cell::new(false),
            unix_at_mono_zero,
        }
    }
}

async fn shard_main(
    mesh: MeshBuilder<mesh::MeshBatch, glommio::channels::channel_mesh::Full>,
    core_cfg: CoreConfig,
    listeners: Arc<Vec<Arc<ListenerRt>>>,
    shutdown: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    links: ShardLinks,
) -> std::io::Result<()> {
    let (senders, mut receivers) =
        mesh.join().await.map_err(|_| std::io::Error::other("mesh join failed"))?;
    let id = senders.peer_id() as u8;
    let (auth_tx, auth_rx) = flume::unbounded::<(ConnId, bool)>();
    let links_mesh = mesh::MeshLinks::new(senders, links.mesh_pool.clone());
    let shard = Rc::new(Shard::new(id, core_cfg, links_mesh, auth_tx, &links));
    tasks::restore(&shard, &links);
    shard.drain_core();
    tasks::spawn_commit(&shard);
    tasks::spawn_auth_results(&shard, auth_rx);
    tasks::spawn_commands(&shard, links.commands[id as usize].clone());
    for (peer, rx) in receivers.streams() {
        mesh::spawn_receiver(&shard, peer, rx);
    }
    tasks::spawn_turns(&shard);
    let accept_tasks = tasks::spawn_listeners(&shard, &listeners)?;
    if id == 0 {
        tracing::info!("ready");
    }
    timer_loop(&shard, &listeners, &shutdown, &reload).await;
    drop(accept_tasks);
    stop(&shard).await;
    Ok(())
}

/// Timer loop: the shell's deadlines, throttled readers, the core's timers, audit records,
/// certificate reloads on SIGHUP; returns on SIGTERM/SIGINT.
async fn timer_loop(
    shard: &Rc<Shard>,
    listeners: &[Arc<ListenerRt>],
    shutdown: &AtomicBool,
    reload: &AtomicBool,
) {
    let id = shard.core.borrow().shard;
    loop {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        let now = mono_ms();
        loop {
            let due = match shard.deadlines.borrow().peek() {
                Some(std::cmp::Reverse((at, id))) if *at <= now => *id,
                _ => break,
            };
            shard.deadlines.borrow_mut().pop();
            let w = shard.deadline_wakers.borrow_mut().remove(&due);
            if let Some(w) = w {
                w.wake();
            }
        }
        shard.core.borrow_mut().wake_throttled();
        shard.flush_audit();
        // The core's timers, when it said it has work (at least once a second).
        let due = shard.core.borrow().poll_timeout() <= now;
        if due {
            shard.core.borrow_mut().handle_timeout(now);
            shard.drain_core();
        }
        if id == 0 && reload.swap(false, Ordering::Relaxed) {
            // SIGHUP: certificates are shared by all shards, so one reload serves them all.
            for rt in listeners.iter() {
                if let Some(c) = &rt.cert {
                    match c.reload() {
                        Ok(()) => tracing::info!(bind = %rt.cfg.bind, "certificate reloaded"),
                        Err(e) => {
                            tracing::error!(bind = %rt.cfg.bind, error = %e, "certificate reload failed; keeping the old one")
                        }
                    }
                }
            }
        }
        if shutdown.load(Ordering::Relaxed) {
            break;
        }
    }
}

/// Shutdown: tell 5.0 clients why, give writers a moment to flush, persist what went offline.
async fn stop(shard: &Rc<Shard>) {
    shard.core.borrow_mut().shutdown_all(mono_ms());
    shard.drain_core();
    let deadline = mono_ms() + 2_000;
    while shard.core.borrow().conn_count() > 0 && mono_ms() < deadline {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    // Sessions went offline above: their state goes to disk before the process ends.
    shard.drain_core();
    shard.store_dirty.set(true);
    shard.persist_stores().await;
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("5"), vec![5]);
        assert!(parse_cpu_list("3-1").is_empty());
        assert!(parse_cpu_list("x").is_empty());
    }
}
