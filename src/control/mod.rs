//! The control plane (ARCHITECTURE "Control plane"): one OS thread running a tokio
//! current-thread runtime with the admin HTTP API, the org/user/key/token store, the audit
//! writer and periodic purges. It publishes immutable credential snapshots to shards through
//! `arc-swap` and sends them commands (disconnect a user, list sessions) over bounded
//! channels. Shards never wait on it: a CONNECT reads the current snapshot.

pub mod api;
pub mod audit;
pub mod http;
pub mod jwks;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::{AuditKind, AuditRecord};
use crate::auth::directory::{Directory, OrgDir, TokenDir, UserDir};
use crate::auth::password::HashPool;
use crate::auth::secret::{self, Pepper};
use crate::auth::{AuthShared, API_KEY_DOMAIN};
use crate::clock::unix_ms;
use crate::config::Config;
use crate::plane::{ControlRequest, KickTarget, ShardCommand};
use store::{ApiKeyRecord, OrgRecord, Store, StoreError, UserRecord};

/// Commands queued per shard before the control plane reports the shard as busy.
const SHARD_COMMAND_QUEUE: usize = 1024;
/// How long an org deletion waits for the shards before answering 503 (a repeated DELETE, or
/// the next start, finishes it).
const PURGE_WAIT: Duration = Duration::from_secs(30);
/// How long the control plane waits for each shard's answer to a question (sessions, kicks,
/// policy diffs).
const SHARD_ANSWER_WAIT: Duration = Duration::from_secs(2);
/// Audit batches (one per shard per tick) queued before more are dropped (and counted).
const AUDIT_QUEUE: usize = 1024;

/// Requests queued from all shards to the control plane.
const REQUEST_QUEUE: usize = 4096;

/// What `serve` hands to the shards.
#[derive(Debug)]
pub struct ControlPlane {
    /// Credentials snapshot and pepper.
    pub auth: Arc<AuthShared>,
    /// The Argon2id verification pool.
    pub pool: HashPool,
    /// Where shards send audit events.
    pub audit_tx: flume::Sender<Vec<AuditRecord>>,
    /// Each shard's command queue (index = shard).
    pub shard_commands: Vec<flume::Receiver<ShardCommand>>,
    /// The admin API's bound address, if any.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Where shards send requests (key refreshes).
    pub requests: flume::Sender<ControlRequest>,
    /// Audit events shards dropped because the queue was full (shown in /metrics).
    pub audit_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The control-plane thread, stopped once the shards have.
    pub thread: ControlThread,
    /// Orgs whose deletion did not finish (a crash, a 503): the stores drop their rows at
    /// start, then [`ControlPlane::purges_done`] clears the marks.
    pub pending_purges: Vec<String>,
    ctl: Arc<Ctl>,
}

impl ControlPlane {
    /// The shard and retained stores no longer hold anything of `pending_purges`.
    pub fn purges_done(&self) -> Result<(), StoreError> {
        for org in &self.pending_purges {
            self.ctl.store.purge_done(org)?;
            tracing::info!(org, "finished an interrupted org deletion");
        }
        Ok(())
    }
}

/// The running control-plane thread.
#[derive(Debug)]
pub struct ControlThread {
    stop: Arc<tokio::sync::Notify>,
    handle: std::thread::JoinHandle<()>,
}

impl ControlThread {
    /// Records the audit events still queued, syncs the store and ends the thread (after the
    /// shards stopped, so nothing is written behind its back and the process exits with every
    /// thread idle).
    pub fn stop(self) {
        self.stop.notify_one();
        if self.handle.join().is_err() {
            tracing::error!("control-plane thread panicked");
        }
    }
}

/// State shared by the admin API handlers and the background tasks.
pub struct Ctl {
    pub(crate) store: Store,
    /// The Argon2id pool (shared with the shards): new passwords are hashed there too.
    pub(crate) pool: HashPool,
    pub(crate) auth: Arc<AuthShared>,
    pub(crate) shards: Vec<flume::Sender<ShardCommand>>,
    pub(crate) operator_key: Option<String>,
    pub(crate) audit: Mutex<audit::AuditWriter>,
    /// Serializes changes and snapshot publication.
    pub(crate) write: Mutex<()>,
    pub(crate) audit_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// JWT providers' key rings.
    pub(crate) rings: jwks::Rings,
    pub(crate) http: reqwest::Client,
    /// Per-org figures the shards report every second (for /metrics).
    pub(crate) sys: Arc<crate::broker::sys::SysBoard>,
    /// Per-org quotas: limits and live counters, shared with shards through the directory.
    /// Kept across directory rebuilds (the counters must survive them).
    pub(crate) quotas: Mutex<HashMap<String, Arc<crate::quota::OrgQuota>>>,
    /// `[org.retention]` of declared orgs.
    pub(crate) retention: HashMap<String, crate::quota::Retention>,
    /// What the config file declares, which the admin API may not change (409 `config_owned`).
    pub(crate) config_owned: ConfigOwned,
}

/// Settings the config file declares: it owns them (the API would lose a change to them at
/// the next start). Config users and API keys carry `source = "config"` in the store.
#[derive(Debug, Default)]
pub(crate) struct ConfigOwned {
    /// Orgs whose `policy` the config sets.
    pub(crate) policies: std::collections::HashSet<String>,
    /// Orgs with an `[org.quotas]` table.
    pub(crate) quotas: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctl").finish_non_exhaustive()
    }
}

impl Ctl {
    /// The quota of `org`: from the config, else the limits stored by `PUT /v2/quotas`, else
    /// unlimited.
    pub(crate) fn quota(&self, org: &str) -> Arc<crate::quota::OrgQuota> {
        let mut q = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        q.entry(org.to_string())
            .or_insert_with(|| {
                let stored = self.store.quotas(org).unwrap_or_else(|e| {
                    tracing::error!(org, error = %e, "stored quotas unreadable; the org runs unlimited");
                    None
                });
                Arc::new(crate::quota::OrgQuota::new(&stored.unwrap_or_default(), crate::clock::mono_ms()))
            })
            .clone()
    }

    /// Rebuilds the whole credential directory from the store and publishes it to shards (at
    /// start and when a JWT provider's keys change).
    pub(crate) fn publish(&self) -> Result<(), StoreError> {
        let now = unix_ms();
        let mut dir = Directory::default();
        for o in self.store.orgs()? {
            let od = self.org_dir(&o.id, now)?;
            dir.orgs.insert(o.id.into(), Arc::new(od));
        }
        self.auth.directory.store(Arc::new(dir));
        Ok(())
    }

    /// Republishes one org's part of the directory (an admin change of that org; removed if
    /// the org is gone). The other orgs' parts are shared as they are: the cost of a change
    /// does not grow with the other tenants.
    pub(crate) fn publish_org(&self, org: &str) -> Result<(), StoreError> {
        let mut dir = (**self.auth.directory.load()).clone();
        match self.store.org(org)? {
            Some(_) => {
                dir.orgs.insert(org.into(), Arc::new(self.org_dir(org, unix_ms())?));
            }
            None => {
                dir.orgs.remove(org);
            }
        }
        self.auth.directory.store(Arc::new(dir));
        Ok(())
    }

    /// Puts one token into the published directory, or (`None`) takes it out: a mint or a
    /// revocation reads nothing else from the store.
    pub(crate) fn publish_token(&self, org: &str, id: &str, token: Option<TokenDir>) {
        let mut dir = (**self.auth.directory.load()).clone();
        let Some(od) = dir.orgs.get(org) else { return };
        let mut od = (**od).clone();
        match token {
            Some(t) => od.tokens.insert(id.into(), Arc::new(t)),
            None => od.tokens.remove(id),
        };
        dir.orgs.insert(org.into(), Arc::new(od));
        self.auth.directory.store(Arc::new(dir));
    }

    /// Drops expired tokens from the published directory (reads the directory, not the store).
    pub(crate) fn prune_expired_tokens(&self, now: u64) {
        let mut dir = (**self.auth.directory.load()).clone();
        let mut changed = false;
        for od in dir.orgs.values_mut() {
            if od.tokens.values().any(|t| t.expires_unix_ms <= now) {
                let mut o = (**od).clone();
                o.tokens.retain(|_, t| t.expires_unix_ms > now);
                *od = Arc::new(o);
                changed = true;
            }
        }
        if changed {
            self.auth.directory.store(Arc::new(dir));
        }
    }

    /// Tokens of `org` alive now, as published.
    pub(crate) fn live_tokens(&self, org: &str, now: u64) -> usize {
        let dir = self.auth.directory.load();
        dir.orgs.get(org).map_or(0, |o| o.tokens.values().filter(|t| t.expires_unix_ms > now).count())
    }

    /// One org's part of the directory, from the store.
    fn org_dir(&self, org: &str, now: u64) -> Result<OrgDir, StoreError> {
        let mut od = OrgDir::default();
        for u in self.store.users(org)? {
            od.users.insert(
                u.name.clone().into(),
                Arc::new(UserDir {
                    name: u.name.into(),
                    phc: u.phc.into(),
                    version: u.version,
                    disabled: u.disabled,
                    roles: u.roles.into(),
                    publish: u.publish.into(),
                    subscribe: u.subscribe.into(),
                }),
            );
        }
        for r in self.rings.by_org.get(org).into_iter().flatten() {
            od.jwt.push(Arc::new(r.provider_dir(now)));
        }
        for t in self.store.tokens(org)? {
            if t.expires_unix_ms <= now {
                continue;
            }
            let Some(mac) = unhex32(&t.mac) else { continue };
            od.tokens.insert(
                t.id.into(),
                Arc::new(TokenDir { mac, expires_unix_ms: t.expires_unix_ms, attrs: Arc::new(t.attrs) }),
            );
        }
        if let Some(doc) = self.store.policy(org)? {
            match crate::acl::Policy::from_value(doc) {
                Ok(p) => od.policy = Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!(org = %org, error = %e, "stored policy invalid; org is deny-all")
                }
            }
        }
        od.quota = Some(self.quota(org));
        od.retention = self.retention.get(org).copied().unwrap_or_default();
        Ok(od)
    }

    /// Tells every shard that `org`'s policy changed.
    pub(crate) fn policy_changed(&self, org: &str) {
        for s in &self.shards {
            let _ = s.try_send(ShardCommand::PolicyChanged { org: org.into() });
        }
    }

    /// Refreshes one provider's keys and republishes the directory if they changed.
    pub(crate) async fn refresh_ring(&self, org: &str, provider: &str, on_demand: bool) {
        let Some(ring) = self.rings.get(org, provider).cloned() else { return };
        match ring.refresh(&self.http, on_demand).await {
            Ok(true) => {
                let _w = self.write.lock().expect("write lock");
                if let Err(e) = self.publish() {
                    tracing::error!(error = %e, "publishing new keys failed");
                }
                tracing::info!(org, provider, "JWT keys updated");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(org, provider, error = %e, "JWT key fetch failed"),
        }
    }

    /// Sends every shard the command `make` builds around a reply channel, and gathers the
    /// answers that come within [`SHARD_ANSWER_WAIT`] (a busy or stuck shard is left out).
    pub(crate) async fn ask_shards<T>(&self, make: impl Fn(flume::Sender<T>) -> ShardCommand) -> Vec<T> {
        let mut replies = Vec::new();
        for s in &self.shards {
            let (tx, rx) = flume::bounded(1);
            if s.try_send(make(tx)).is_ok() {
                replies.push(rx);
            }
        }
        let mut answers = Vec::with_capacity(replies.len());
        for rx in replies {
            if let Ok(Ok(v)) = tokio::time::timeout(SHARD_ANSWER_WAIT, rx.recv_async()).await {
                answers.push(v);
            }
        }
        answers
    }

    /// Tells every shard to close `org`'s connections matching `target`; how many closed.
    pub(crate) async fn kick(&self, org: &str, target: KickTarget) -> usize {
        let org: Arc<str> = org.into();
        let counts = self
            .ask_shards(|tx| ShardCommand::Kick { org: org.clone(), target: target.clone(), reply: Some(tx) })
            .await;
        counts.into_iter().sum()
    }

    /// Tells every shard to remove everything `org` owns (memory and disk) and waits for all of
    /// them, up to [`PURGE_WAIT`]; true when every shard confirmed a durable deletion.
    pub(crate) async fn purge_org(&self, org: &str) -> bool {
        let org: Arc<str> = org.into();
        let mut replies = Vec::new();
        for s in &self.shards {
            let (tx, rx) = flume::bounded(1);
            let cmd = ShardCommand::PurgeOrg { org: org.clone(), reply: tx };
            match tokio::time::timeout(PURGE_WAIT, s.send_async(cmd)).await {
                Ok(Ok(())) => replies.push(rx),
                _ => return false,
            }
        }
        let deadline = tokio::time::Instant::now() + PURGE_WAIT;
        for rx in replies {
            match tokio::time::timeout_at(deadline, rx.recv_async()).await {
                Ok(Ok(true)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Records an audit event (admin changes).
    pub(crate) fn audit(&self, r: AuditRecord) {
        let mut w = self.audit.lock().expect("audit lock");
        if let Err(e) = w.record(&self.store, r) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    /// Records a batch of audit events from a shard.
    pub(crate) fn audit_batch(&self, batch: Vec<AuditRecord>) {
        let mut w = self.audit.lock().expect("audit lock");
        for r in batch {
            if let Err(e) = w.record(&self.store, r) {
                tracing::error!(error = %e, "audit write failed");
            }
        }
    }

    /// An admin-change audit event.
    pub(crate) fn audit_admin(&self, org: &str, actor: &str, action: &str, target: &str) {
        self.audit_admin_with(org, actor, action, target, serde_json::Map::new());
    }

    /// An admin-change audit event with more detail (what changed; never a secret).
    pub(crate) fn audit_admin_with(
        &self,
        org: &str,
        actor: &str,
        action: &str,
        target: &str,
        mut detail: serde_json::Map<String, serde_json::Value>,
    ) {
        detail.insert("action".into(), action.into());
        detail.insert("target".into(), target.into());
        self.audit(AuditRecord {
            org: org.into(),
            kind: AuditKind::Admin,
            client_id: None,
            username: Some(actor.to_string()),
            detail,
            unix_ms: unix_ms(),
        });
    }

    /// Mints a new API key for `org`: the key (shown once) and its public id.
    pub(crate) fn mint_api_key(&self, org: &str, source: &str) -> Result<(String, String), StoreError> {
        let key = format!("cmq_{}", secret::random_b32(40));
        let id = format!("key_{}", secret::random_b32(8));
        self.store_api_key(org, &key, &id, source)?;
        Ok((key, id))
    }

    fn store_api_key(&self, org: &str, key: &str, id: &str, source: &str) -> Result<(), StoreError> {
        let mac = secret::hex(&self.auth.pepper.mac(API_KEY_DOMAIN, key.as_bytes()));
        let rec = ApiKeyRecord {
            id: id.into(),
            org: org.into(),
            created_unix_ms: unix_ms(),
            source: source.into(),
        };
        self.store.put_api_key(&mac, &rec)
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Applies the config's orgs, users and API keys to the store (declarative bootstrap):
/// config-declared users that left the file are removed; API-created ones are kept.
fn bootstrap(ctl: &Ctl, cfg: &Config) -> Result<(), String> {
    let now = unix_ms();
    let err = |e: StoreError| e.to_string();
    for o in &cfg.orgs {
        let created = ctl.store.org(&o.id).map_err(err)?.map_or(now, |r| r.created_unix_ms);
        ctl.store
            .put_org(&OrgRecord {
                id: o.id.clone(),
                created_unix_ms: created,
                token_ttl_secs: o.token_ttl_secs,
                token_ttl_max_secs: o.token_ttl_max_secs,
                source: "config".into(),
            })
            .map_err(err)?;
        if let Some(p) = &o.policy {
            ctl.store.put_policy(&o.id, &p.source).map_err(err)?;
        }
        let stored: HashMap<String, UserRecord> =
            ctl.store.users(&o.id).map_err(err)?.into_iter().map(|u| (u.name.clone(), u)).collect();
        for u in &o.users {
            let prev = stored.get(&u.name);
            let mut rec = UserRecord {
                name: u.name.clone(),
                phc: u.password_hash.clone(),
                roles: u.roles.clone(),
                publish: u.publish.clone(),
                subscribe: u.subscribe.clone(),
                disabled: false,
                version: prev.map_or(1, |p| p.version),
                source: "config".into(),
            };
            if prev != Some(&rec) {
                rec.version = prev.map_or(1, |p| p.version + 1);
                ctl.store.put_user(&o.id, &rec).map_err(err)?;
            }
        }
        for (name, u) in &stored {
            if u.source == "config" && !o.users.iter().any(|c| &c.name == name) {
                ctl.store.delete_user(&o.id, name).map_err(err)?;
            }
        }
        // The API key from the environment replaces any earlier config-sourced key.
        for (mac, k) in ctl.store.api_keys_of(&o.id).map_err(err)? {
            if k.source == "config" {
                ctl.store.delete_api_key(&mac).map_err(err)?;
            }
        }
        if let Some(var) = &o.api_key_env {
            let key = std::env::var(var).map_err(|_| {
                format!("org \"{}\": api_key_env: environment variable {var} is not set", o.id)
            })?;
            if key.len() < 16 {
                return Err(format!("org \"{}\": api_key_env: {var} must hold at least 16 characters", o.id));
            }
            ctl.store_api_key(&o.id, &key, &format!("key_env_{}", o.id), "config").map_err(err)?;
        }
    }
    ctl.store.sync().map_err(err)?;
    Ok(())
}

/// Opens the store, applies the config, starts the control-plane thread (admin API, audit
/// writer, purges) and returns what the shards need.
pub fn start(
    cfg: &Config,
    sys: Arc<crate::broker::sys::SysBoard>,
    sealer: Arc<crate::store::seal::Sealer>,
) -> Result<ControlPlane, String> {
    let store = Store::open_sealed(&cfg.data_dir.join("control"), sealer).map_err(|e| e.to_string())?;
    let pepper = Pepper::new(&store.pepper().map_err(|e| e.to_string())?);
    let auth = Arc::new(AuthShared::new(Directory::default(), pepper));
    let operator_key = match cfg.admin.as_ref().and_then(|a| a.operator_key_env.as_ref()) {
        None => None,
        Some(var) => {
            let k = std::env::var(var)
                .map_err(|_| format!("admin.operator_key_env: environment variable {var} is not set"))?;
            if k.len() < 16 {
                return Err(format!("admin.operator_key_env: {var} must hold at least 16 characters"));
            }
            Some(k)
        }
    };
    let mut shard_tx = Vec::new();
    let mut shard_rx = Vec::new();
    for _ in 0..cfg.shards {
        let (tx, rx) = flume::bounded(SHARD_COMMAND_QUEUE);
        shard_tx.push(tx);
        shard_rx.push(rx);
    }
    let mut rings = jwks::Rings::default();
    for o in &cfg.orgs {
        for j in &o.jwt {
            rings.by_org.entry(o.id.clone()).or_default().push(Arc::new(jwks::Ring::new(&o.id, j)?));
        }
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let pool = HashPool::start(threads, crate::limits::HASH_QUEUE_MAX);
    let ctl = Arc::new(Ctl {
        store,
        pool: pool.clone(),
        auth: auth.clone(),
        shards: shard_tx,
        operator_key,
        audit: Mutex::new(audit::AuditWriter::default()),
        write: Mutex::new(()),
        audit_dropped: Default::default(),
        rings,
        http,
        sys,
        // A `[org.quotas]` table in the config wins; without one, the limits last set through
        // the admin API apply (loaded on first use by `Ctl::quota`).
        quotas: Mutex::new(
            cfg.orgs
                .iter()
                .filter_map(|o| o.quotas.as_ref().map(|q| (o.id.clone(), q)))
                .map(|(id, q)| (id, Arc::new(crate::quota::OrgQuota::new(q, crate::clock::mono_ms()))))
                .collect(),
        ),
        retention: cfg.orgs.iter().map(|o| (o.id.clone(), o.retention)).collect(),
        config_owned: ConfigOwned {
            policies: cfg.orgs.iter().filter(|o| o.policy.is_some()).map(|o| o.id.clone()).collect(),
            quotas: cfg.orgs.iter().filter(|o| o.quotas.is_some()).map(|o| o.id.clone()).collect(),
        },
    });
    bootstrap(&ctl, cfg)?;
    ctl.publish().map_err(|e| e.to_string())?;
    let (audit_tx, audit_rx) = flume::bounded::<Vec<AuditRecord>>(AUDIT_QUEUE);
    let (req_tx, req_rx) = flume::bounded::<ControlRequest>(REQUEST_QUEUE);
    // Bind the admin listener here so a bad address fails start-up with a clear message.
    let admin = match &cfg.admin {
        None => None,
        Some(a) => {
            let l = std::net::TcpListener::bind(a.bind).map_err(|e| format!("admin.bind {}: {e}", a.bind))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        }
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let retention = cfg.audit_retention_ms;
    let pending_purges = ctl.store.pending_purges().map_err(|e| e.to_string())?;
    let ctl2 = ctl.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let handle = std::thread::Builder::new()
        .name("coremq-control".into())
        .spawn(move || {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(run(ctl2, admin, audit_rx, req_rx, retention, stop2));
        })
        .map_err(|e| e.to_string())?;
    if let Some(a) = admin_addr {
        tracing::info!(bind = %a, operator_key = ctl.operator_key.is_some(), "admin API");
    }
    Ok(ControlPlane {
        auth,
        pool,
        audit_tx,
        shard_commands: shard_rx,
        admin_addr,
        requests: req_tx,
        audit_dropped: ctl.audit_dropped.clone(),
        thread: ControlThread { stop, handle },
        pending_purges,
        ctl,
    })
}

async fn run(
    ctl: Arc<Ctl>,
    admin: Option<std::net::TcpListener>,
    audit_rx: flume::Receiver<Vec<AuditRecord>>,
    req_rx: flume::Receiver<ControlRequest>,
    retention_ms: u64,
    stop: Arc<tokio::sync::Notify>,
) {
    // Key refreshes asked for by shards (unknown kid), and scheduled ones.
    let c = ctl.clone();
    tokio::spawn(async move {
        while let Ok(ControlRequest::RefreshKeys { org, provider, reply }) = req_rx.recv_async().await {
            let c = c.clone();
            tokio::spawn(async move {
                c.refresh_ring(&org, &provider, true).await;
                reply();
            });
        }
    });
    let c = ctl.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let due: Vec<_> = c.rings.all().filter(|r| r.due(now)).cloned().collect();
            for r in due {
                let c = c.clone();
                tokio::spawn(async move { c.refresh_ring(&r.org, &r.cfg.name, false).await });
            }
        }
    });
    if let Some(l) = admin {
        let app = api::router(ctl.clone());
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(http::serve(l, app));
            }
            Err(e) => tracing::error!(error = %e, "admin API listener"),
        }
    }
    // Audit events from shards.
    let c = ctl.clone();
    let rx = audit_rx.clone();
    tokio::spawn(async move {
        while let Ok(batch) = rx.recv_async().await {
            c.audit_batch(batch);
        }
    });
    // Periodic work: audit sync, token purge, audit retention.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.notified() => {
                // The shards have stopped: record what they queued last, make it durable.
                while let Ok(batch) = audit_rx.try_recv() {
                    ctl.audit_batch(batch);
                }
                if let Err(e) = ctl.store.sync() {
                    tracing::error!(error = %e, "final store sync failed");
                }
                return;
            }
        }
        n += 1;
        let dirty = std::mem::take(&mut ctl.audit.lock().expect("audit lock").dirty);
        if dirty {
            if let Err(e) = ctl.store.sync() {
                tracing::error!(error = %e, "audit sync failed");
            }
        }
        if n.is_multiple_of(20) {
            let now = unix_ms();
            ctl.audit.lock().expect("audit lock").prune(now);
            let _w = ctl.write.lock().expect("write lock");
            match ctl.store.purge_tokens(now) {
                Ok(0) => {}
                Ok(k) => {
                    tracing::debug!(tokens = k, "expired tokens purged");
                    ctl.prune_expired_tokens(now);
                }
                Err(e) => tracing::error!(error = %e, "token purge failed"),
            }
        }
        // Audit retention: purged a few times per retention period (at most hourly).
        let every = (retention_ms / 4).clamp(1000, 3_600_000) / 500;
        if n % every.max(1) == 1 {
            let cutoff = unix_ms().saturating_sub(retention_ms);
            match ctl.store.purge_audit(cutoff) {
                Ok(0) => {}
                Ok(k) => tracing::debug!(events = k, "audit events past retention purged"),
                Err(e) => tracing::error!(error = %e, "audit retention purge failed"),
            }
        }
    }
}
