//! The audit log writer (SPEC §10): events from shards and the admin API are aggregated
//! (identical events within a window become one entry with a count, so a misbehaving client
//! cannot flood the log) and appended to the store, per org, in time order.

use std::collections::HashMap;

use crate::audit::AuditRecord;

use super::store::{AuditEntry, Store, StoreError};

/// Identical events closer than this to the first one are counted into it.
const AGGREGATE_WINDOW_MS: u64 = 60_000;
/// Distinct recent events remembered for aggregation before the memory is reset.
const RECENT_MAX: usize = 16_384;

/// Aggregates and appends audit events.
#[derive(Debug, Default)]
pub struct AuditWriter {
    recent: HashMap<String, (Vec<u8>, AuditEntry)>,
    seq: u32,
    /// Writes not yet synced.
    pub dirty: bool,
}

/// The aggregation identity of an event: everything but time and the client's source port.
fn fingerprint(r: &AuditRecord) -> String {
    let mut detail = r.detail.clone();
    if let Some(serde_json::Value::String(remote)) = detail.get_mut("remote") {
        if let Some((ip, _port)) = remote.rsplit_once(':') {
            *remote = ip.to_string();
        }
    }
    serde_json::json!([&*r.org, r.kind.as_str(), r.client_id, r.username, detail]).to_string()
}

impl AuditWriter {
    /// Records one event.
    pub fn record(&mut self, store: &Store, r: AuditRecord) -> Result<(), StoreError> {
        let fp = fingerprint(&r);
        if let Some((key, e)) = self.recent.get_mut(&fp) {
            if r.unix_ms < e.unix_ms + AGGREGATE_WINDOW_MS {
                e.count += 1;
                e.last_unix_ms = e.last_unix_ms.max(r.unix_ms);
                store.put_audit(&r.org, key, e)?;
                self.dirty = true;
                return Ok(());
            }
        }
        if self.recent.len() >= RECENT_MAX {
            self.recent.clear();
        }
        self.seq = self.seq.wrapping_add(1);
        let mut key = Vec::with_capacity(12);
        key.extend_from_slice(&r.unix_ms.to_be_bytes());
        key.extend_from_slice(&self.seq.to_be_bytes());
        let e = AuditEntry {
            unix_ms: r.unix_ms,
            last_unix_ms: r.unix_ms,
            kind: r.kind.as_str().to_string(),
            client_id: r.client_id,
            username: r.username,
            detail: r.detail,
            count: 1,
        };
        store.put_audit(&r.org, &key, &e)?;
        self.recent.insert(fp, (key, e));
        self.dirty = true;
        Ok(())
    }

    /// Forgets aggregation state older than the window.
    pub fn prune(&mut self, now_unix_ms: u64) {
        self.recent.retain(|_, (_, e)| e.unix_ms + AGGREGATE_WINDOW_MS > now_unix_ms);
    }
}
