//! Deleting an organization (`DELETE /v2/orgs/{id}`): everything it owns on this shard goes,
//! in memory and in the store — connections (closed with 0x98, no will), live and offline
//! sessions with their subscriptions, queued and in-flight messages and inbound QoS 2 state,
//! home-registry entries, retained messages — so that an org created later with the same id
//! starts empty. Late mesh traffic of a deleted org (a claim granted after the purge) installs
//! nothing while the org is absent from the directory.

use std::sync::Arc;

use super::mesh::SessionKey;
use super::persist::StoreOp;
use super::CloseCause;
use super::ShardCore;
use crate::router::SessionRef;

impl ShardCore {
    /// Removes everything `org` owns on this shard (the store rows through
    /// [`StoreOp::PurgeOrg`]); returns how many connections were closed.
    pub fn purge_org(&mut self, now_ms: u64, org: &str) -> usize {
        let org: Arc<str> = org.into();
        self.deleted_orgs.insert(org.clone());
        let ids = self.conns_where(|c| {
            let of_org = c.login.identity.as_ref().is_some_and(|x| x.org == org)
                || c.attach.key.as_ref().is_some_and(|k| k.org == org);
            of_org && !c.link.closing
        });
        for id in &ids {
            if let Some(c) = self.conn_mut(*id) {
                c.attach.will = None; // the org is gone: nothing is published on its behalf
            }
            self.close_conn(*id, CloseCause::OrgDeleted, now_ms);
        }
        let srefs: Vec<SessionRef> =
            self.sessions.iter().filter(|(_, s)| s.org == org).map(|(sref, _)| sref).collect();
        for sref in srefs {
            if let Some(s) = self.session_mut(sref) {
                s.delayed_will = None;
            }
            let _ = self.take_session(sref, true, now_ms);
        }
        self.registry.retain(|k, _| k.org != org);
        self.retained.purge(&org);
        self.closed_rx.remove(&org);
        self.push_op(StoreOp::PurgeOrg { org });
        self.drain_self(now_ms);
        ids.len()
    }

    /// Whether `key`'s org was deleted (and not created again): nothing of it may be installed.
    pub(super) fn org_deleted(&self, key: &SessionKey) -> bool {
        self.deleted_orgs.contains(&key.org) && !self.cfg.auth.directory.load().orgs.contains_key(&key.org)
    }
}
