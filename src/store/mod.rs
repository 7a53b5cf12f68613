//! Durable messaging state (SPEC §7): one fjall database per shard under
//! `data_dir/shards/<n>` holding persistent sessions (`sessions`: record per `org \0
//! client_id`), the QoS 1/2 messages held for them until acknowledged (`queue`: `org \0
//! client_id \0 seq`, big-endian sequence, so one session's queue is one prefix scan in
//! order), the packet id and state of those in flight (`outbound`, same key), and inbound QoS 2
//! packet ids not yet released (`qos2`: `org \0 client_id \0 pid`, empty, or the message while
//! its copies on other shards are not all durable), de-duplication rows of QoS 2 messages
//! forwarded from other shards (`origins`: origin id, u64 BE), and one database for retained
//! messages under `data_dir/retained` (`org \0 topic` -> sequence + message; written by
//! whichever shard received the publish, the highest sequence wins).
//!
//! The shard's core records [`StoreOp`]s; the shell applies them at once ([`ShardStore::apply`],
//! memtable and journal buffer) and makes them durable per the `durability` mode
//! ([`ShardStore::persist`] on glommio's blocking pool). At start, [`open`] reads every shard
//! database (also those of a larger shard count, whose sessions move to their home's database),
//! and hands each shard the sessions its database holds, the home registry entries of its
//! sessions held elsewhere, and every retained message.

pub mod format;
pub mod keys;
pub mod reopen;
pub mod seal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::broker::home_shard;
use crate::broker::mesh::SessionKey;
use crate::broker::msg::Msg;
pub use crate::broker::persist::RestoredSession;
use crate::broker::persist::{OutboundMark, StoreOp};
use crate::config::Durability;
use keys::{org_key, row_aad, split_key};
use reopen::Reopenable;
use seal::{OpenError, Sealer};

pub use keys::StoreError;

fn ctx(what: &str) -> impl Fn(fjall::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{what}: {e}"))
}

/// `org \0 client_id`.
fn session_key(key: &SessionKey) -> Vec<u8> {
    org_key(&key.org, key.client_id.as_str().as_bytes())
}

/// `org \0 client_id \0` (the prefix of the session's queue).
fn queue_prefix(key: &SessionKey) -> Vec<u8> {
    let mut k = session_key(key);
    k.push(0);
    k
}

fn queue_key(key: &SessionKey, seq: u64) -> Vec<u8> {
    let mut k = queue_prefix(key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `org \0 client_id \0 pid` (an inbound QoS 2 packet id not yet released).
fn qos2_key(key: &SessionKey, pid: u16) -> Vec<u8> {
    let mut k = queue_prefix(key);
    k.extend_from_slice(&pid.to_be_bytes());
    k
}

/// The sequence at the end of a queue or outbound key.
fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(k.len().checked_sub(8)?..)?.try_into().ok()?))
}

/// `org \0 topic`.
fn retained_key(org: &str, topic: &str) -> Vec<u8> {
    org_key(org, topic.as_bytes())
}

/// Opens a stored value; `None` (the row noted in `dead`) when a destroyed key sealed it.
fn open_row<'a>(
    sealer: &Sealer,
    ks: &str,
    k: &[u8],
    v: &'a [u8],
    dead: &mut Vec<Vec<u8>>,
    what: impl FnOnce() -> String,
) -> Result<Option<std::borrow::Cow<'a, [u8]>>, StoreError> {
    let org = split_key(k).map(|(o, _)| o);
    match sealer.open(org, &row_aad(ks, k), v) {
        Ok(v) => Ok(Some(v)),
        Err(OpenError::Destroyed(_)) => {
            dead.push(k.to_vec());
            Ok(None)
        }
        Err(e) => Err(StoreError(format!("{}: {e}", what()))),
    }
}

/// Seals the plain values of `ks` (keys `org \0 …`) that a key now covers; how many.
fn seal_plain(sealer: &Sealer, name: &str, ks: &Keyspace) -> Result<usize, StoreError> {
    let mut rows = Vec::new();
    for g in ks.iter() {
        let (k, v) = g.into_inner().map_err(ctx(name))?;
        let org = split_key(&k).map(|(o, _)| o);
        if !v.is_empty() && Sealer::is_plain(&v) && sealer.seals(org) {
            rows.push((k.to_vec(), sealer.seal(org, &row_aad(name, &k), v.to_vec())));
        }
    }
    for (k, v) in &rows {
        ks.insert(k, v).map_err(ctx(name))?;
    }
    Ok(rows.len())
}

/// How a persist syncs: `always` with a full fsync (file metadata too), else fdatasync.
fn sync_mode(durability: Durability) -> PersistMode {
    if durability == Durability::Always {
        PersistMode::SyncAll
    } else {
        PersistMode::SyncData
    }
}

/// One shard's database.
pub struct ShardStore {
    dir: PathBuf,
    db: Database,
    sessions: Keyspace,
    queue: Keyspace,
    outbound: Keyspace,
    qos2: Keyspace,
    /// De-duplication rows of forwarded QoS 2 messages (`broker::exactly_once`).
    origins: Keyspace,
    durability: Durability,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardStore({})", self.dir.display())
    }
}

/// The retained-message database, shared by all shards.
pub struct RetainedStore {
    db: Database,
    ks: Keyspace,
    sealer: Arc<Sealer>,
    /// Serializes compare-by-sequence writes from different shards.
    write: Mutex<()>,
}

impl std::fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetainedStore(..)")
    }
}

fn open_db(dir: &Path) -> Result<Database, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("{}: cannot create: {e}", dir.display())))?;
    Database::builder(dir)
        .worker_threads(1)
        .manual_journal_persist(true)
        .open()
        .map_err(|e| StoreError(format!("{}: cannot open: {e}", dir.display())))
}

impl ShardStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path, durability: Durability, sealer: Arc<Sealer>) -> Result<ShardStore, StoreError> {
        let db = open_db(dir)?;
        let what = dir.display().to_string();
        Ok(ShardStore {
            sessions: db.keyspace("sessions", KeyspaceCreateOptions::default).map_err(ctx(&what))?,
            queue: db.keyspace("queue", KeyspaceCreateOptions::default).map_err(ctx(&what))?,
            outbound: db.keyspace("outbound", KeyspaceCreateOptions::default).map_err(ctx(&what))?,
            qos2: db.keyspace("qos2", KeyspaceCreateOptions::default).map_err(ctx(&what))?,
            origins: db.keyspace("origins", KeyspaceCreateOptions::default).map_err(ctx(&what))?,
            db,
            dir: dir.to_path_buf(),
            durability,
            sealer,
        })
    }

    /// The `durability` mode it runs under.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Applies the core's writes (staged: in the memtable and the journal's buffer). Applying
    /// them again, after a reopen, leaves the same rows.
    pub fn apply(
        &self,
        ops: &[StoreOp],
        retained: &RetainedStore,
        unix_at_mono_zero: u64,
    ) -> Result<(), StoreError> {
        let what = self.dir.display().to_string();
        let mut batch = self.db.batch();
        let mut encoded = format::LastPublish::default();
        for op in ops {
            match op {
                StoreOp::Session { key, meta } => {
                    let k = session_key(key);
                    let v = self.seal(key, "sessions", &k, format::encode_session(meta));
                    batch.insert(&self.sessions, k, v);
                }
                StoreOp::Queued { key, seq, delivery } => {
                    let k = queue_key(key, *seq);
                    let plain = encoded.delivery(delivery, unix_at_mono_zero);
                    batch.insert(&self.queue, k.clone(), self.seal(key, "queue", &k, plain));
                }
                StoreOp::Outbound { key, seq, pid, released } => {
                    batch.insert(
                        &self.outbound,
                        queue_key(key, *seq),
                        format::encode_outbound(*pid, *released),
                    );
                }
                StoreOp::Unqueued { key, seq } => {
                    let k = queue_key(key, *seq);
                    batch.remove(&self.outbound, k.clone());
                    batch.remove(&self.queue, k);
                }
                StoreOp::Qos2 { key, pid, pending } => {
                    let k = qos2_key(key, *pid);
                    if *pending {
                        batch.insert(&self.qos2, k, []);
                    } else {
                        batch.remove(&self.qos2, k);
                    }
                }
                StoreOp::Qos2Forward { key, pid, fwd } => {
                    let k = qos2_key(key, *pid);
                    let v = self.seal(key, "qos2", &k, format::encode_forward(fwd, unix_at_mono_zero));
                    batch.insert(&self.qos2, k, v);
                }
                StoreOp::Origin { oid } => batch.insert(&self.origins, oid.to_be_bytes(), []),
                StoreOp::ExpireOrigins { before } => {
                    std::mem::replace(&mut batch, self.db.batch()).commit().map_err(ctx(&what))?;
                    self.expire_origins(*before)?;
                }
                StoreOp::Forget { key } => {
                    // Committed first: the ranges are read from the tree, which must hold what
                    // this batch wrote before.
                    std::mem::replace(&mut batch, self.db.batch()).commit().map_err(ctx(&what))?;
                    self.forget(key)?;
                }
                StoreOp::ForgetBefore { key, epoch } => {
                    std::mem::replace(&mut batch, self.db.batch()).commit().map_err(ctx(&what))?;
                    if self.stored_epoch(key).is_none_or(|e| e < *epoch) {
                        self.forget(key)?;
                    }
                }
                StoreOp::PurgeOrg { org } => {
                    std::mem::replace(&mut batch, self.db.batch()).commit().map_err(ctx(&what))?;
                    self.purge_org(org)?;
                    retained.purge_org(org)?;
                }
                StoreOp::Retain { org, msg, seq } => retained.put(org, msg, *seq, unix_at_mono_zero)?,
                StoreOp::RetainExpired { org, topic, seq } => retained.expire(org, topic, *seq)?,
            }
        }
        batch.commit().map_err(ctx(&what))
    }

    fn seal(&self, key: &SessionKey, ks: &str, row: &[u8], plain: Vec<u8>) -> Vec<u8> {
        self.sealer.seal(Some(&key.org), &row_aad(ks, row), plain)
    }

    /// The epoch of the stored copy of a session (None: none, or unreadable).
    fn stored_epoch(&self, key: &SessionKey) -> Option<u64> {
        let k = session_key(key);
        let v = self.sessions.get(&k).ok()??;
        let v = self.sealer.open(Some(&key.org), &row_aad("sessions", &k), &v).ok()?;
        format::decode_session(&v).ok().map(|m| m.epoch)
    }

    /// Deletes every key of `ks` under `prefix`, in one batch.
    fn remove_prefix(&self, ks: &Keyspace, prefix: &[u8]) -> Result<(), StoreError> {
        let what = self.dir.display().to_string();
        let keys: Vec<_> =
            ks.prefix(prefix).map(|g| g.key()).collect::<Result<_, _>>().map_err(ctx(&what))?;
        let mut batch = self.db.batch();
        for k in keys {
            batch.remove(ks, k);
        }
        batch.commit().map_err(ctx(&what))
    }

    /// Deletes every row of `org`: sessions, queues, in-flight marks, inbound QoS 2 ids.
    pub fn purge_org(&self, org: &str) -> Result<(), StoreError> {
        let prefix = org_key(org, b"");
        for ks in [&self.sessions, &self.queue, &self.outbound, &self.qos2] {
            self.remove_prefix(ks, &prefix)?;
        }
        Ok(())
    }

    /// Deletes the de-duplication rows with origin ids below `before`.
    fn expire_origins(&self, before: u64) -> Result<(), StoreError> {
        let what = self.dir.display().to_string();
        let mut batch = self.db.batch();
        for g in self.origins.range(..before.to_be_bytes()) {
            batch.remove(&self.origins, g.key().map_err(ctx(&what))?);
        }
        batch.commit().map_err(ctx(&what))
    }

    /// The de-duplication rows (origin ids).
    fn read_origins(&self) -> Result<Vec<u64>, StoreError> {
        let what = self.dir.display().to_string();
        let mut out = Vec::new();
        for g in self.origins.iter() {
            let k = g.key().map_err(ctx(&what))?;
            let oid = <[u8; 8]>::try_from(&*k).map(u64::from_be_bytes);
            out.push(oid.map_err(|_| StoreError(format!("{what}: corrupt origin row")))?);
        }
        Ok(out)
    }

    /// Makes every applied write durable (syncs the journal as its durability says); blocking.
    pub fn persist(&self) -> Result<(), StoreError> {
        self.db.persist(sync_mode(self.durability)).map_err(ctx(&self.dir.display().to_string()))
    }

    /// Every stored session with its queue (in sequence order).
    pub(crate) fn read_all(&self, unix_now: u64) -> Result<Vec<RestoredSession>, StoreError> {
        let what = self.dir.display().to_string();
        let mut out = Vec::new();
        let mut shredded = Vec::new();
        let mut dead_rows = Vec::new();
        let mut expired = Vec::new();
        for g in self.sessions.iter() {
            let (k, v) = g.into_inner().map_err(ctx(&what))?;
            let (org, cid) =
                split_key(&k).ok_or_else(|| StoreError(format!("{what}: corrupt session key")))?;
            let Some(v) = open_row(&self.sealer, "sessions", &k, &v, &mut shredded, || {
                format!("{what}: session {org}/{cid}")
            })?
            else {
                continue;
            };
            let meta = format::decode_session(&v)
                .map_err(|e| StoreError(format!("{what}: session {org}/{cid}: {e}")))?;
            let client_id = crate::broker::persist::stored_client_id(cid)
                .ok_or_else(|| StoreError(format!("{what}: corrupt client id")))?;
            let key = SessionKey { org: Arc::from(org), client_id };
            let mut queue = Vec::new();
            // From the session's cursor: the deletions of acknowledged messages lie below it.
            let live = queue_key(&key, meta.first_seq)..=queue_key(&key, u64::MAX);
            for g in self.queue.range(live.clone()) {
                let (k, v) = g.into_inner().map_err(ctx(&what))?;
                let seq = seq_of(&k).ok_or_else(|| StoreError(format!("{what}: corrupt queue key")))?;
                let Some(v) = open_row(&self.sealer, "queue", &k, &v, &mut dead_rows, || {
                    format!("{what}: queued message of {org}/{cid}")
                })?
                else {
                    continue;
                };
                match format::decode_delivery(&v, seq, unix_now) {
                    Ok(Some(d)) => queue.push(d),
                    Ok(None) => expired.push(k.to_vec()), // expired while stored: deleted below
                    Err(e) => return Err(StoreError(format!("{what}: queued message of {org}/{cid}: {e}"))),
                }
            }
            let mut outbound = Vec::new();
            for g in self.outbound.range(live) {
                let (k, v) = g.into_inner().map_err(ctx(&what))?;
                let seq = seq_of(&k).ok_or_else(|| StoreError(format!("{what}: corrupt outbound key")))?;
                let (pid, released) = format::decode_outbound(&v)
                    .map_err(|e| StoreError(format!("{what}: in-flight state of {org}/{cid}: {e}")))?;
                outbound.push(OutboundMark { seq, pid, released });
            }
            let mut qos2 = Vec::new();
            let mut forwards = Vec::new();
            for g in self.qos2.prefix(queue_prefix(&key)) {
                let (k, v) = g.into_inner().map_err(ctx(&what))?;
                let pid = k.len().checked_sub(2).map(|i| u16::from_be_bytes([k[i], k[i + 1]]));
                let pid = pid.ok_or_else(|| StoreError(format!("{what}: corrupt qos2 key")))?;
                qos2.push(pid);
                if v.is_empty() {
                    continue;
                }
                let Some(v) = open_row(&self.sealer, "qos2", &k, &v, &mut Vec::new(), || {
                    format!("{what}: pending forward of {org}/{cid}")
                })?
                else {
                    continue;
                };
                let f = format::decode_forward(&v, unix_now)
                    .map_err(|e| StoreError(format!("{what}: pending forward of {org}/{cid}: {e}")))?;
                forwards.extend(f.map(|f| (pid, f)));
            }
            out.push(RestoredSession { key, meta, queue, outbound, qos2, forwards, generation: 0 });
        }
        // Crypto-shredded: what a destroyed key sealed is deleted (it cannot be read anyway).
        for k in &shredded {
            let (org, cid) = split_key(k).expect("checked above");
            let client_id = crate::broker::persist::stored_client_id(cid)
                .ok_or_else(|| StoreError(format!("{what}: corrupt client id")))?;
            self.forget(&SessionKey { org: Arc::from(org), client_id })?;
        }
        for k in dead_rows.iter().chain(&expired) {
            self.queue.remove(k.clone()).map_err(ctx(&what))?;
            self.outbound.remove(k.clone()).map_err(ctx(&what))?;
        }
        if !shredded.is_empty() || !dead_rows.is_empty() {
            tracing::warn!(
                store = %what,
                sessions = shredded.len(),
                queued = dead_rows.len(),
                "dropped stored state sealed with destroyed keys"
            );
        }
        Ok(out)
    }

    /// Writes a whole session (record, queue, in-flight marks), as `data import` does.
    pub(crate) fn write_session(
        &self,
        s: &RestoredSession,
        unix_at_mono_zero: u64,
    ) -> Result<(), StoreError> {
        let what = self.dir.display().to_string();
        let mut batch = self.db.batch();
        let k = session_key(&s.key);
        batch.insert(
            &self.sessions,
            k.clone(),
            self.seal(&s.key, "sessions", &k, format::encode_session(&s.meta)),
        );
        for d in &s.queue {
            let k = queue_key(&s.key, d.seq);
            let v = self.seal(&s.key, "queue", &k, format::encode_delivery(d, unix_at_mono_zero));
            batch.insert(&self.queue, k, v);
        }
        for m in &s.outbound {
            batch.insert(
                &self.outbound,
                queue_key(&s.key, m.seq),
                format::encode_outbound(m.pid, m.released),
            );
        }
        for pid in &s.qos2 {
            batch.insert(&self.qos2, qos2_key(&s.key, *pid), []);
        }
        for (pid, f) in &s.forwards {
            let k = qos2_key(&s.key, *pid);
            let v = self.seal(&s.key, "qos2", &k, format::encode_forward(f, unix_at_mono_zero));
            batch.insert(&self.qos2, k, v);
        }
        batch.commit().map_err(ctx(&what))
    }

    fn forget(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.sessions.remove(session_key(key)).map_err(ctx(&self.dir.display().to_string()))?;
        self.remove_prefix(&self.qos2, &queue_prefix(key))?;
        self.remove_prefix(&self.outbound, &queue_prefix(key))?;
        self.remove_prefix(&self.queue, &queue_prefix(key))
    }
}

impl RetainedStore {
    /// Opens (or creates) the retained database in `dir`.
    pub fn open(dir: &Path, sealer: Arc<Sealer>) -> Result<RetainedStore, StoreError> {
        let db = open_db(dir)?;
        let ks = db.keyspace("retained", KeyspaceCreateOptions::default).map_err(ctx("retained store"))?;
        Ok(RetainedStore { db, ks, sealer, write: Mutex::new(()) })
    }

    /// Stores (or, for an empty payload, deletes) a retained message unless a newer write is
    /// already stored.
    pub(crate) fn put(
        &self,
        org: &str,
        msg: &Msg,
        seq: u64,
        unix_at_mono_zero: u64,
    ) -> Result<(), StoreError> {
        let k = retained_key(org, msg.topic.as_str());
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let aad = row_aad("retained", &k);
        if let Some(old) = self.ks.get(&k).map_err(ctx("retained store"))? {
            // An old value that does not open (destroyed key) is simply overwritten.
            let old = self.sealer.open(Some(org), &aad, &old).ok();
            if old.is_some_and(|o| format::retained_seq(&o).is_some_and(|s| s >= seq)) {
                return Ok(());
            }
        }
        if msg.payload.is_empty() {
            self.ks.remove(k).map_err(ctx("retained store"))
        } else {
            let v = self.sealer.seal(Some(org), &aad, format::encode_retained(msg, seq, unix_at_mono_zero));
            self.ks.insert(k, v).map_err(ctx("retained store"))
        }
    }

    /// Deletes the retained message of `org` on `topic` if the stored one is the write `seq`.
    fn expire(&self, org: &str, topic: &str, seq: u64) -> Result<(), StoreError> {
        let k = retained_key(org, topic);
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = self.ks.get(&k).map_err(ctx("retained store"))? else { return Ok(()) };
        let old = self.sealer.open(Some(org), &row_aad("retained", &k), &old).ok();
        if old.is_some_and(|o| format::retained_seq(&o) == Some(seq)) {
            self.ks.remove(k).map_err(ctx("retained store"))?;
        }
        Ok(())
    }

    /// Deletes every retained message of `org`.
    pub fn purge_org(&self, org: &str) -> Result<(), StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<_> = self
            .ks
            .prefix(org_key(org, b""))
            .map(|g| g.key())
            .collect::<Result<_, _>>()
            .map_err(ctx("retained store"))?;
        for k in keys {
            self.ks.remove(k).map_err(ctx("retained store"))?;
        }
        Ok(())
    }

    /// Makes retained writes durable (synced as `durability` says); blocking.
    pub fn persist(&self, durability: Durability) -> Result<(), StoreError> {
        self.db.persist(sync_mode(durability)).map_err(ctx("retained store"))
    }

    /// Every retained message, and the highest write sequence seen.
    pub(crate) fn read_all(&self, unix_now: u64) -> Result<(Vec<StoredRetained>, u64), StoreError> {
        let mut out = Vec::new();
        let mut max = 0;
        let mut shredded = Vec::new();
        for g in self.ks.iter() {
            let (k, v) = g.into_inner().map_err(ctx("retained store"))?;
            let (org, _) = split_key(&k).ok_or_else(|| StoreError("retained store: corrupt key".into()))?;
            let Some(v) = open_row(&self.sealer, "retained", &k, &v, &mut shredded, || {
                format!("retained store: {org}")
            })?
            else {
                continue;
            };
            match format::decode_retained(&v, unix_now) {
                Ok(Some((msg, seq))) => {
                    max = max.max(seq);
                    out.push((Arc::from(org), msg, seq));
                }
                Ok(None) => {} // expired while stored
                Err(e) => return Err(StoreError(format!("retained store: {org}: {e}"))),
            }
        }
        if !shredded.is_empty() {
            tracing::warn!(retained = shredded.len(), "dropped retained messages sealed with destroyed keys");
            for k in shredded {
                self.ks.remove(k).map_err(ctx("retained store"))?;
            }
        }
        Ok((out, max))
    }
}

/// A retained message read back at start: org, message, sequence.
pub type StoredRetained = (Arc<str>, Msg, u64);

/// The stores, opened, with what they held at start.
#[derive(Debug)]
pub struct Opened {
    /// One per shard.
    pub shards: Vec<Arc<Reopenable<ShardStore>>>,
    /// Shared by all shards.
    pub retained: Arc<Reopenable<RetainedStore>>,
    /// Sessions per shard that restores them (the one whose store holds them).
    pub sessions: Vec<Vec<RestoredSession>>,
    /// Per home shard: its sessions that another shard restores (key, that shard, generation).
    #[allow(clippy::type_complexity)]
    pub owners: Vec<Vec<(SessionKey, u8, u64)>>,
    /// Per shard: its de-duplication rows of forwarded QoS 2 messages (origin ids).
    pub origins: Vec<Vec<u64>>,
    /// Retained messages (org, message, sequence).
    pub retained_msgs: Vec<StoredRetained>,
    /// Highest retained sequence stored (new writes continue above it).
    pub retained_seq: u64,
}

/// A crash during a takeover across shards can leave two copies of a session (in the old and
/// the new shard's store): the one with the highest epoch is the live one. Splits `(store
/// index, session)` pairs into (kept, older copies).
#[allow(clippy::type_complexity)] // Two lists of the same pairs.
pub(crate) fn newest_copies(
    all: Vec<(usize, RestoredSession)>,
) -> (Vec<(usize, RestoredSession)>, Vec<(usize, RestoredSession)>) {
    let mut best: HashMap<SessionKey, (u64, usize)> = HashMap::new();
    for (n, (_, s)) in all.iter().enumerate() {
        let e = best.entry(s.key.clone()).or_insert((s.meta.epoch, n));
        if s.meta.epoch > e.0 {
            *e = (s.meta.epoch, n);
        }
    }
    let (mut kept, mut older) = (Vec::with_capacity(best.len()), Vec::new());
    for (n, pair) in all.into_iter().enumerate() {
        if best.get(&pair.1.key).is_some_and(|b| b.1 == n) {
            kept.push(pair);
        } else {
            older.push(pair);
        }
    }
    (kept, older)
}

/// Opens the stores under `data_dir` for `nr` shards and reads them back; the sessions of
/// stores beyond `nr` (a smaller shard count) move into their home's database.
pub fn open(
    data_dir: &Path,
    nr: usize,
    durability: Durability,
    sealer: Arc<Sealer>,
    unix_now: u64,
    purge: &[String],
) -> Result<Opened, StoreError> {
    let root = data_dir.join("shards");
    let mut dirs: Vec<(usize, PathBuf)> = (0..nr).map(|i| (i, root.join(i.to_string()))).collect();
    if let Ok(rd) = std::fs::read_dir(&root) {
        for e in rd.flatten() {
            if let Some(i) = e.file_name().to_str().and_then(|n| n.parse::<usize>().ok()) {
                if i >= nr {
                    dirs.push((i, e.path()));
                }
            }
        }
    }
    let mut stores = Vec::new();
    for (_, d) in &dirs {
        stores.push(ShardStore::open(d, durability, sealer.clone())?);
    }
    let retained = RetainedStore::open(&data_dir.join("retained"), sealer.clone())?;
    if sealer.reseal_requested() {
        // A key used for the first time seals the plain values it covers (else they would be
        // refused as planted).
        let mut n = seal_plain(&sealer, "retained", &retained.ks)?;
        retained.persist(durability)?;
        for st in &stores {
            n += seal_plain(&sealer, "sessions", &st.sessions)? + seal_plain(&sealer, "queue", &st.queue)?;
            n += seal_plain(&sealer, "qos2", &st.qos2)?;
            st.persist()?;
        }
        if n > 0 {
            tracing::info!(rows = n, "stores: plain values sealed with the new encryption key");
        }
    }
    // Deletions that did not finish (a crash, a shard that did not answer) finish first.
    for org in purge {
        for st in &stores {
            st.purge_org(org)?;
            st.persist()?;
        }
        retained.purge_org(org)?;
        retained.persist(durability)?;
    }
    let unix_at_mono_zero = unix_now.saturating_sub(crate::clock::mono_ms());
    let mut sessions: Vec<Vec<RestoredSession>> = (0..nr).map(|_| Vec::new()).collect();
    let mut moved = false;
    // Read everything first: a session moved into a database not read yet must not be read
    // twice.
    let mut all = Vec::new();
    for (i, st) in stores.iter().enumerate() {
        all.extend(st.read_all(unix_now)?.into_iter().map(|s| (i, s)));
    }
    let (kept, dropped) = newest_copies(all);
    for (i, s) in dropped {
        tracing::info!(org = %s.key.org, client_id = %s.key.client_id.as_str(), epoch = s.meta.epoch,
            "dropped an older copy of a session left by a takeover");
        stores[i].forget(&s.key)?;
        moved = true;
    }
    // A session stays with the shard whose store holds it (moving it would change which
    // shards hold which copies of a message a crash left pending, `broker::exactly_once`); its
    // home shard learns where it is. Only the stores of shards that no longer exist move their
    // sessions home.
    let mut owners: Vec<Vec<(SessionKey, u8, u64)>> = (0..nr).map(|_| Vec::new()).collect();
    for (n, (mut i, mut s)) in kept.into_iter().enumerate() {
        let home = home_shard(&s.key, nr as u8) as usize;
        if i >= nr {
            stores[home].write_session(&s, unix_at_mono_zero)?;
            stores[i].forget(&s.key)?;
            moved = true;
            i = home;
        }
        s.generation = ((n as u64 + 1) << 8) | i as u64;
        if home != i {
            owners[home].push((s.key.clone(), i as u8, s.generation));
        }
        sessions[i].push(s);
    }
    if moved {
        for st in &stores {
            st.persist()?;
        }
    }
    let (retained_msgs, retained_seq) = retained.read_all(unix_now)?;
    stores.truncate(nr);
    let origins = stores.iter().map(|s| s.read_origins()).collect::<Result<_, _>>()?;
    // Each wrapped so that it can be reopened after a failure (a full disk).
    let shards = stores
        .into_iter()
        .enumerate()
        .map(|(i, st)| {
            let (dir, sealer) = (root.join(i.to_string()), sealer.clone());
            Arc::new(Reopenable::new(st, move || ShardStore::open(&dir, durability, sealer.clone())))
        })
        .collect();
    let dir = data_dir.join("retained");
    let retained = Arc::new(Reopenable::new(retained, move || RetainedStore::open(&dir, sealer.clone())));
    Ok(Opened { shards, retained, sessions, owners, origins, retained_msgs, retained_seq })
}
