//! `coremq data export DIR` / `coremq data import DIR`: every store under `data_dir` written
//! to, and read from, a versioned set of JSON Lines files that do not depend on the storage
//! engine or its value formats (docs/durability.md, "Export format"). An export is plain text:
//! what was sealed at rest is opened, and an import seals it again with the configured keys
//! (so export + import also re-encrypts everything under the newest keys).
//!
//! Both need the broker stopped (the stores are locked while it runs).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::broker::home_shard;
use crate::broker::mesh::SessionKey;
use crate::broker::persist::{stored_client_id, stored_delivery, OutboundMark, StoredSession};
use crate::config::Config;
use crate::control::store::Store;
use crate::store::seal::Sealer;
use crate::store::{format, RestoredSession, RetainedStore, ShardStore};

/// `format` in the manifest.
pub const FORMAT: &str = "coremq-data";
/// The export format version this build writes and reads.
pub const VERSION: u32 = 1;

/// `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Export format version.
    pub version: u32,
    /// When it was written, Unix ms.
    pub exported_unix_ms: u64,
    /// The coremq that wrote it.
    pub coremq_version: String,
    /// Rows in `control.jsonl`.
    pub control_rows: u64,
    /// Lines in `sessions.jsonl`.
    pub sessions: u64,
    /// Queued messages across all sessions.
    pub queued: u64,
    /// Lines in `retained.jsonl`.
    pub retained: u64,
}

/// A line of `control.jsonl`: one row of the control plane's store.
#[derive(Debug, Serialize, Deserialize)]
struct ControlLine {
    keyspace: String,
    key_b64: String,
    /// The record, when it is JSON (every keyspace but `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<serde_json::Value>,
    /// Raw bytes otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
}

/// A line of `sessions.jsonl`: a persistent session, its queue and its inbound QoS 2 ids.
#[derive(Debug, Serialize, Deserialize)]
struct SessionLine {
    org: String,
    client_id: String,
    session: StoredSession,
    queue: Vec<QueuedLine>,
    qos2: Vec<u16>,
}

/// A queued message.
#[derive(Debug, Serialize, Deserialize)]
struct QueuedLine {
    seq: u64,
    qos: u8,
    retain: bool,
    sub_ids: Vec<u32>,
    received_unix_ms: u64,
    /// The message as an MQTT 5.0 PUBLISH packet, base64.
    publish_b64: String,
    /// In flight under this packet id when exported (resent with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u16>,
    /// In flight and its PUBREC came (QoS 2): PUBREL is resent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    released: bool,
}

/// A line of `retained.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct RetainedLine {
    org: String,
    seq: u64,
    received_unix_ms: u64,
    /// The message as an MQTT 5.0 PUBLISH packet, base64.
    publish_b64: String,
}

fn locked(e: crate::store::StoreError) -> String {
    let s = e.to_string();
    if s.contains("Locked") || s.contains("lock") {
        format!("{s} (is coremq running on this data_dir? stop it first)")
    } else {
        s
    }
}

fn publish_b64(msg: &crate::broker::msg::Msg) -> String {
    let mut b = BytesMut::new();
    format::publish_bytes(&mut b, msg);
    B64.encode(&b)
}

fn create_private(path: &Path) -> Result<BufWriter<File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(BufWriter::new)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))
}

fn write_line<T: Serialize>(w: &mut BufWriter<File>, path: &Path, v: &T) -> Result<(), String> {
    serde_json::to_writer(&mut *w, v).expect("serializes");
    w.write_all(b"\n").map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes everything under `cfg.data_dir` to `out` (which must not exist, or be empty).
pub fn export(cfg: &Config, out: &Path) -> Result<Manifest, String> {
    if out.exists() && std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))?.next().is_some()
    {
        return Err(format!("{}: not empty; export into a new directory", out.display()));
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out)
            .map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
    }
    // Export reads plain values wherever they are: it is a way out of them.
    let sealer = Arc::new(Sealer::load(&cfg.encryption)?.accepting_plain());
    sealer.verify(&cfg.data_dir)?;
    let unix_now = crate::clock::unix_ms();
    let unix_at_mono_zero = unix_now.saturating_sub(crate::clock::mono_ms());
    let mut m = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        exported_unix_ms: unix_now,
        coremq_version: env!("CARGO_PKG_VERSION").into(),
        control_rows: 0,
        sessions: 0,
        queued: 0,
        retained: 0,
    };

    let control = Store::open_sealed(&cfg.data_dir.join("control"), sealer.clone()).map_err(locked)?;
    let path = out.join("control.jsonl");
    let mut w = create_private(&path)?;
    for (ks, k, v) in control.export_rows().map_err(|e| e.to_string())? {
        let json = if ks == "meta" { None } else { serde_json::from_slice(&v).ok() };
        let line = ControlLine {
            keyspace: ks.into(),
            key_b64: B64.encode(&k),
            value_b64: json.is_none().then(|| B64.encode(&v)),
            value: json,
        };
        write_line(&mut w, &path, &line)?;
        m.control_rows += 1;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;

    let path = out.join("sessions.jsonl");
    let mut w = create_private(&path)?;
    let mut all = Vec::new();
    for (i, dir) in shard_dirs(&cfg.data_dir).into_iter().enumerate() {
        let st = ShardStore::open(&dir, cfg.durability, sealer.clone()).map_err(locked)?;
        all.extend(st.read_all(unix_now).map_err(|e| e.to_string())?.into_iter().map(|s| (i, s)));
    }
    // Only the live copy of a session a crash during a takeover left twice.
    let (all, _) = crate::store::newest_copies(all);
    for (_, s) in all {
        {
            let queue = s
                .queue
                .iter()
                .map(|d| {
                    let mark = s.outbound.iter().find(|m| m.seq == d.seq);
                    QueuedLine {
                        seq: d.seq,
                        qos: d.qos as u8,
                        retain: d.retain,
                        sub_ids: d.sub_ids.to_vec(),
                        received_unix_ms: d.msg.received_ms + unix_at_mono_zero,
                        publish_b64: publish_b64(&d.msg),
                        pid: mark.map(|m| m.pid),
                        released: mark.is_some_and(|m| m.released),
                    }
                })
                .collect::<Vec<_>>();
            m.queued += queue.len() as u64;
            let line = SessionLine {
                org: s.key.org.to_string(),
                client_id: s.key.client_id.as_str().to_string(),
                session: s.meta,
                queue,
                qos2: s.qos2,
            };
            write_line(&mut w, &path, &line)?;
            m.sessions += 1;
        }
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;

    let path = out.join("retained.jsonl");
    let mut w = create_private(&path)?;
    let rs = RetainedStore::open(&cfg.data_dir.join("retained"), sealer).map_err(locked)?;
    for (org, msg, seq) in rs.read_all(unix_now).map_err(|e| e.to_string())?.0 {
        let line = RetainedLine {
            org: org.to_string(),
            seq,
            received_unix_ms: msg.received_ms + unix_at_mono_zero,
            publish_b64: publish_b64(&msg),
        };
        write_line(&mut w, &path, &line)?;
        m.retained += 1;
    }
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;

    // The manifest last: an export without one is incomplete.
    let path = out.join("manifest.json");
    let mut w = create_private(&path)?;
    serde_json::to_writer_pretty(&mut w, &m).expect("serializes");
    w.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(m)
}

/// Every shard database directory under `data_dir/shards` (any shard count).
fn shard_dirs(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(data_dir.join("shards"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<usize>().ok()?, e.path())))
        .collect();
    dirs.sort();
    dirs.into_iter().map(|(_, p)| p).collect()
}

fn lines<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    mut each: impl FnMut(T) -> Result<(), String>,
) -> Result<(), String> {
    let path = dir.join(name);
    let f = File::open(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: T = serde_json::from_str(&line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        each(v).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
    }
    Ok(())
}

/// The manifest of the export in `from`, checked: its format and version, the line counts
/// of its files (a truncated export is refused before anything is written), and an empty
/// `data_dir` to import into.
fn check_import(cfg: &Config, from: &Path) -> Result<Manifest, String> {
    let mpath = from.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| {
        format!("{}: cannot read: {e} (an export without a manifest is incomplete)", mpath.display())
    })?;
    let want: Manifest = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", mpath.display()))?;
    if want.format != FORMAT {
        return Err(format!("{}: format \"{}\", expected \"{FORMAT}\"", mpath.display(), want.format));
    }
    if want.version != VERSION {
        return Err(format!(
            "{}: export format version {} (this build reads version {VERSION})",
            mpath.display(),
            want.version
        ));
    }
    for sub in ["control", "shards", "retained"] {
        let p = cfg.data_dir.join(sub);
        if p.exists() && std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?.next().is_some()
        {
            return Err(format!(
                "{}: already holds data; import into an empty data_dir (move the old one away)",
                p.display()
            ));
        }
    }
    // A truncated export is refused before anything is written.
    for (name, n) in [
        ("control.jsonl", want.control_rows),
        ("sessions.jsonl", want.sessions),
        ("retained.jsonl", want.retained),
    ] {
        let path = from.join(name);
        let f = File::open(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let have =
            BufReader::new(f).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).count() as u64;
        if have != n {
            return Err(format!(
                "{}: {have} lines, the manifest says {n} (incomplete export?)",
                path.display()
            ));
        }
    }
    Ok(want)
}

/// A session of `sessions.jsonl` as the store writes it (the messages' times against
/// `unix_now`).
fn session_of(l: SessionLine, unix_now: u64) -> Result<RestoredSession, String> {
    if l.session.v != 1 {
        return Err(format!("session record version {} (this build reads 1)", l.session.v));
    }
    let client_id = stored_client_id(&l.client_id).ok_or("client_id: not a valid MQTT string")?;
    let key = SessionKey { org: Arc::from(l.org.as_str()), client_id };
    let mut queue = Vec::with_capacity(l.queue.len());
    let mut outbound = Vec::new();
    for q in &l.queue {
        let raw = B64.decode(&q.publish_b64).map_err(|e| format!("queue seq {}: publish_b64: {e}", q.seq))?;
        if q.qos > 2 {
            return Err(format!("queue seq {}: qos {}", q.seq, q.qos));
        }
        let msg = format::decode_publish(&raw, q.received_unix_ms, unix_now)
            .map_err(|e| format!("queue seq {}: {e}", q.seq))?;
        if let Some(msg) = msg {
            queue.push(stored_delivery(msg, q.qos, q.retain, &q.sub_ids, q.seq));
            match q.pid {
                Some(0) => return Err(format!("queue seq {}: pid 0", q.seq)),
                Some(pid) => outbound.push(OutboundMark { seq: q.seq, pid, released: q.released }),
                None => {}
            }
        }
    }
    // Inbound ids only: a QoS 2 message a crash left pending on other shards is not
    // exported (docs/durability.md).
    Ok(RestoredSession {
        key,
        meta: l.session,
        queue,
        outbound,
        qos2: l.qos2,
        forwards: Vec::new(),
        generation: 0,
    })
}

/// Reads an export from `from` into `cfg.data_dir`, which must hold no stores yet. Sessions go
/// to their home shard for `cfg.shards`; values are sealed with the configured keys.
pub fn import(cfg: &Config, from: &Path) -> Result<Manifest, String> {
    let want = check_import(cfg, from)?;
    let sealer = Arc::new(Sealer::load(&cfg.encryption)?);
    sealer.verify(&cfg.data_dir)?;
    let unix_now = crate::clock::unix_ms();
    let unix_at_mono_zero = unix_now.saturating_sub(crate::clock::mono_ms());
    let mut got = Manifest { control_rows: 0, sessions: 0, queued: 0, retained: 0, ..want };

    let control = Store::open_sealed(&cfg.data_dir.join("control"), sealer.clone()).map_err(locked)?;
    lines(from, "control.jsonl", |l: ControlLine| {
        let key = B64.decode(&l.key_b64).map_err(|e| format!("key_b64: {e}"))?;
        let value = match (l.value, l.value_b64) {
            (Some(v), None) => serde_json::to_vec(&v).expect("serializes"),
            (None, Some(b)) => B64.decode(b).map_err(|e| format!("value_b64: {e}"))?,
            _ => return Err("exactly one of value and value_b64 is expected".into()),
        };
        control.import_row(&l.keyspace, &key, value).map_err(|e| e.to_string())?;
        got.control_rows += 1;
        Ok(())
    })?;
    control.sync().map_err(|e| e.to_string())?;

    let nr = cfg.shards;
    let stores = (0..nr)
        .map(|i| {
            ShardStore::open(&cfg.data_dir.join("shards").join(i.to_string()), cfg.durability, sealer.clone())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(locked)?;
    lines(from, "sessions.jsonl", |l: SessionLine| {
        let s = session_of(l, unix_now)?;
        got.queued += s.queue.len() as u64;
        let home = home_shard(&s.key, nr as u8) as usize;
        stores[home].write_session(&s, unix_at_mono_zero).map_err(|e| e.to_string())?;
        got.sessions += 1;
        Ok(())
    })?;
    for st in &stores {
        st.persist().map_err(|e| e.to_string())?;
    }

    let rs = RetainedStore::open(&cfg.data_dir.join("retained"), sealer).map_err(locked)?;
    lines(from, "retained.jsonl", |l: RetainedLine| {
        let raw = B64.decode(&l.publish_b64).map_err(|e| format!("publish_b64: {e}"))?;
        if let Some(msg) = format::decode_publish(&raw, l.received_unix_ms, unix_now)? {
            rs.put(&l.org, &msg, l.seq, unix_at_mono_zero).map_err(|e| e.to_string())?;
            got.retained += 1;
        }
        Ok(())
    })?;
    rs.persist(cfg.durability).map_err(|e| e.to_string())?;
    Ok(got)
}
