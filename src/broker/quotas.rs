//! The org's limits as the core reads them: quota, retention ages, retained-message cap, and
//! the count of offline sessions.

use super::*;

impl ShardCore {
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
}
