//! What the core reports to the control plane: audit records (with Unix time), and quota hits
//! folded to one event per second per org and quota.

use super::*;

/// Audit records waiting for the control plane, and what keeps reports to a rate.
#[derive(Debug, Default)]
pub(super) struct Reports {
    pub(super) audit_out: Vec<AuditRecord>,
    /// Last quota audit event per (org, quota) on this shard, and hits since: one event per
    /// second at most, carrying the count.
    pub(super) quota_audits: HashMap<(Arc<str>, &'static str), crate::ratelog::EverySecond>,
    /// Refused logins get one log line a second (with the count of the others).
    pub(super) refusal_log: crate::ratelog::EverySecond,
}

impl ShardCore {
    /// Audit events raised since the last call, for the control plane.
    pub fn poll_audit(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.reports.audit_out)
    }

    /// Whether audit events are waiting.
    pub fn has_audit(&self) -> bool {
        !self.reports.audit_out.is_empty()
    }

    pub(super) fn unix_ms(&self, now_ms: u64) -> u64 {
        self.cfg.unix_at_mono_zero + now_ms
    }

    pub(super) fn audit(
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

    /// Binds the org's current policy (blank when it has none) to `identity`.
    /// Counts a quota hit and records a `quota_exceeded` audit event: the first at once, then
    /// at most one per second per (org, quota) on this shard, carrying the hits since.
    pub(crate) fn quota_hit(&mut self, id: ConnId, now_ms: u64, quota: &'static str) {
        let Some(c) = self.conn(id) else { return };
        let Some(key) = c.attach.key.clone() else { return };
        let who = c.login.identity.as_ref().and_then(|i| i.audit_name());
        let every = self.reports.quota_audits.entry((key.org.clone(), quota)).or_default();
        let Some(folded) = every.tick(now_ms) else { return };
        let count = folded + 1;
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

    /// Records in every org's audit log that this shard's store failed (`ok` false: from now
    /// on, publishes that need it are refused) or works again.
    pub fn audit_store_health(&mut self, ok: bool, now_ms: u64) {
        let action = if ok { "store_recovered" } else { "store_failing" };
        let orgs: Vec<Arc<str>> = self.cfg.auth.directory.load().orgs.keys().cloned().collect();
        for org in orgs {
            let detail = [("action", action.into()), ("shard", self.shard.into())];
            self.audit(now_ms, org, crate::audit::AuditKind::Admin, None, Some("broker"), &detail);
        }
    }

    /// The board `/metrics` and `$SYS` read.
    pub fn sys(&self) -> &crate::broker::sys::SysBoard {
        &self.cfg.sys
    }

    /// This shard's index.
    pub fn shard_id(&self) -> u8 {
        self.shard
    }
}
