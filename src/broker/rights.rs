//! Rights that change under a session: a takeover by another identity, a policy or per-user
//! rule change, a session read back after a restart. What the session already holds — its
//! subscriptions, and its queued and in-flight messages — is checked against the new ACL, so
//! nothing reaches an identity that may not read it (SPEC §3; the class of Mosquitto
//! CVE-2021-34434). Stored messages are re-checked only when the ACL differs from the one the
//! session was held under: sessions whose rights did not change pay nothing per message.

use std::sync::Arc;

use super::session::Delivery;
use super::ShardCore;
use crate::acl::CompiledAcl;
use crate::audit::AuditKind;
use crate::router::SessionRef;

impl ShardCore {
    /// Makes `acl` the ACL that session `sref` is held under: removes the subscriptions it no
    /// longer allows (from the router too when `live`) and, when it differs from the previous
    /// holder's, drops the queued and in-flight messages it may not read (from the store too).
    /// Returns how many messages were dropped.
    pub(super) fn hold_under(
        &mut self,
        sref: SessionRef,
        acl: Arc<CompiledAcl>,
        now_ms: u64,
        live: bool,
    ) -> usize {
        let Some(s) = self.session_mut(sref) else { return 0 };
        let changed = s.state.holder_acl.as_deref() != Some(&*acl);
        s.state.holder_acl = Some(acl.clone());
        self.prune_subs(sref, &acl, now_ms, live);
        if !changed {
            return 0;
        }
        let dropped = self.drop_unreadable(sref, &acl);
        if !dropped.is_empty() {
            for d in &dropped {
                self.persist_unqueued(sref, d);
            }
            let s = self.session(sref).expect("present");
            let (org, client_id) = (s.org.clone(), s.client_id.clone());
            let detail = [
                ("action", "deliver".into()),
                ("topic", dropped[0].msg.topic.as_str().into()),
                ("dropped", dropped.len().into()),
            ];
            self.audit(now_ms, org, AuditKind::AclDenied, Some(&client_id), None, &detail);
        }
        dropped.len()
    }

    /// Takes out of `sref`'s queue and in-flight window every message `acl` may not read.
    fn drop_unreadable(&mut self, sref: SessionRef, acl: &CompiledAcl) -> Vec<Delivery> {
        let st = &mut self.session_mut(sref).expect("present").state;
        let mut dropped = Vec::new();
        if st.queue.iter().any(|d| !acl.may_read(d.msg.topic.as_str())) {
            for d in std::mem::take(&mut st.queue) {
                if acl.may_read(d.msg.topic.as_str()) {
                    st.queue.push_back(d);
                } else {
                    dropped.push(d);
                }
            }
        }
        let pids: Vec<u16> = st
            .inflight
            .iter()
            .filter(|(_, f)| !acl.may_read(f.delivery.msg.topic.as_str()))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            dropped.extend(st.inflight.remove(&pid).map(|f| f.delivery));
        }
        dropped
    }
}
