//! The audit log writer (SPEC §10): events from shards and the admin API are aggregated
//! (identical events within a window become one entry with a count, so a misbehaving client
//! cannot flood the log) and appended to the store, per org, in time order.
//!
//! Failed logins are aggregated by what an attacker cannot vary freely — org, reason, method,
//! transport and source network (IPv4 /24, IPv6 /64) — never by client id or user name (the
//! entry keeps those of the first attempt), and an org gets at most [`AUTH_ROWS_PER_WINDOW`]
//! such entries a window: further failures are counted into one `folded` entry.

use std::collections::HashMap;

use crate::audit::AuditRecord;

use super::store::{AuditEntry, Store, StoreError};

/// Identical events closer than this to the first one are counted into it.
const AGGREGATE_WINDOW_MS: u64 = 60_000;
/// Distinct recent events remembered for aggregation before the memory is reset.
const RECENT_MAX: usize = 16_384;
/// `auth_failure` entries an org gets per window before failures fold into one entry.
pub const AUTH_ROWS_PER_WINDOW: u32 = 32;

/// Aggregates and appends audit events.
#[derive(Debug, Default)]
pub struct AuditWriter {
    recent: HashMap<String, (Vec<u8>, AuditEntry)>,
    /// Per org: when its current `auth_failure` window began, and the entries made in it.
    auth_rows: HashMap<std::sync::Arc<str>, (u64, u32)>,
    seq: u32,
    /// Writes not yet synced.
    pub dirty: bool,
}

/// The source network of `ip:port` or `[ip]:port`: `a.b.c.0/24` or the IPv6 `/64`.
fn network(remote: &str) -> String {
    match remote.parse::<std::net::SocketAddr>().map(|a| a.ip()) {
        Ok(std::net::IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
        Err(_) => remote.to_string(),
    }
}

/// The aggregation identity of a failed login: org, reason, method, transport, network.
fn auth_fingerprint(r: &AuditRecord) -> String {
    let d = |k: &str| r.detail.get(k).cloned().unwrap_or_default();
    let net = r.detail.get("remote").and_then(|v| v.as_str()).map(network).unwrap_or_default();
    serde_json::json!([&*r.org, "auth_failure", d("reason"), d("method"), d("transport"), net]).to_string()
}

/// The aggregation identity of an event: everything but time and the client's source port.
fn fingerprint(r: &AuditRecord) -> String {
    if r.kind == crate::audit::AuditKind::AuthFailure {
        return auth_fingerprint(r);
    }
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
    pub fn record(&mut self, store: &Store, mut r: AuditRecord) -> Result<(), StoreError> {
        let mut fp = fingerprint(&r);
        if self.count_into(store, &fp, &r)?.is_some() {
            return Ok(());
        }
        if r.kind == crate::audit::AuditKind::AuthFailure && self.auth_rows_spent(&r) {
            // Over the org's share: one `folded` entry counts the rest of the window.
            fp = serde_json::json!([&*r.org, "auth_failure", "folded"]).to_string();
            if self.count_into(store, &fp, &r)?.is_some() {
                return Ok(());
            }
            r.client_id = None;
            r.username = None;
            r.detail = [("folded".to_string(), serde_json::Value::Bool(true))].into_iter().collect();
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

    /// Counts `r` into the recent entry `fp` if it is within the window: `Some(())` if so.
    fn count_into(&mut self, store: &Store, fp: &str, r: &AuditRecord) -> Result<Option<()>, StoreError> {
        let Some((key, e)) = self.recent.get_mut(fp) else { return Ok(None) };
        if r.unix_ms >= e.unix_ms + AGGREGATE_WINDOW_MS {
            return Ok(None);
        }
        e.count += 1;
        e.last_unix_ms = e.last_unix_ms.max(r.unix_ms);
        store.put_audit(&r.org, key, e)?;
        self.dirty = true;
        Ok(Some(()))
    }

    /// Takes one of the org's `auth_failure` entries for this window; true when none is left.
    fn auth_rows_spent(&mut self, r: &AuditRecord) -> bool {
        let w = self.auth_rows.entry(r.org.clone()).or_insert((r.unix_ms, 0));
        if r.unix_ms >= w.0 + AGGREGATE_WINDOW_MS {
            *w = (r.unix_ms, 0);
        }
        w.1 += 1;
        w.1 > AUTH_ROWS_PER_WINDOW
    }

    /// Forgets aggregation state older than the window.
    pub fn prune(&mut self, unix_now: u64) {
        self.recent.retain(|_, (_, e)| e.unix_ms + AGGREGATE_WINDOW_MS > unix_now);
        self.auth_rows.retain(|_, (start, _)| *start + AGGREGATE_WINDOW_MS > unix_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditKind;

    fn failure(user: &str, remote: &str, t: u64) -> AuditRecord {
        let detail =
            [("reason", "unknown_user"), ("method", "password"), ("transport", "tcp"), ("remote", remote)];
        AuditRecord {
            org: "acme".into(),
            kind: AuditKind::AuthFailure,
            client_id: Some(format!("c-{user}")),
            username: Some(format!("{user}@acme")),
            detail: detail.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect(),
            unix_ms: t,
        }
    }

    fn entries(store: &Store) -> Vec<AuditEntry> {
        store.audit_page("acme", b"", 10_000, |_| true).unwrap().0
    }

    #[test]
    fn fresh_names_and_ids_fold_into_one_entry_per_network() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = AuditWriter::default();
        for i in 0..600 {
            w.record(
                &store,
                failure(&format!("u{i}"), &format!("10.1.2.{}:{}", i % 250, 1000 + i), 1_000 + i),
            )
            .unwrap();
        }
        let e = entries(&store);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].count, 600);
        assert_eq!(e[0].username.as_deref(), Some("u0@acme"), "the first attempt's name is kept");
    }

    #[test]
    fn an_org_gets_a_bounded_number_of_entries_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = AuditWriter::default();
        for i in 0..100u64 {
            w.record(&store, failure("x", &format!("[2001:db8:{i:x}::1]:5000"), 1_000 + i)).unwrap();
        }
        let e = entries(&store);
        assert_eq!(e.len(), AUTH_ROWS_PER_WINDOW as usize + 1, "{e:?}");
        assert_eq!(e.iter().map(|x| x.count).sum::<u64>(), 100, "every failure is counted");
        assert!(e.iter().any(|x| x.detail.get("folded") == Some(&serde_json::Value::Bool(true))));
        // A new window gives the org its share again.
        w.record(&store, failure("x", "[2001:db8:ffff::1]:5000", 1_000 + AGGREGATE_WINDOW_MS + 1)).unwrap();
        assert_eq!(entries(&store).len(), AUTH_ROWS_PER_WINDOW as usize + 2);
    }

    #[test]
    fn networks_are_prefixes() {
        assert_eq!(network("192.0.2.77:1883"), "192.0.2.0/24");
        assert_eq!(network("[2001:db8:1:2:3:4:5:6]:1883"), "2001:db8:1:2::/64");
        assert_eq!(network("unix"), "unix");
    }
}
