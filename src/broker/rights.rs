//! Rights that change under a session: a takeover by another identity, a policy or per-user
//! rule change, a session read back after a restart. What the session already holds — its
//! subscriptions, and its queued and in-flight messages — is checked against the new ACL, so
//! nothing reaches an identity that may not read it (SPEC §3; the class of Mosquitto
//! CVE-2021-34434). Stored messages are re-checked only when the ACL differs from the one the
//! session was held under: sessions whose rights did not change pay nothing per message.

use std::sync::Arc;

use super::session::Delivery;
use super::ShardCore;
use super::*;
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

    pub(super) fn compile_acl(
        &self,
        identity: &Identity,
        client_id: &str,
        cert_cn: Option<&str>,
    ) -> CompiledAcl {
        let dir = self.cfg.auth.directory.load();
        let org_policy = dir.orgs.get(&identity.org).and_then(|o| o.policy.as_deref());
        let policy: &Policy = org_policy.unwrap_or(Policy::blank_ref());
        let id = identity.acl_identity(client_id, cert_cn);
        CompiledAcl::compile(policy, &id, &identity.user_publish, &identity.user_subscribe)
    }

    /// Records an ACL denial: the first at once, then at most one event per second per
    /// connection carrying the count, so a client hammering a denied topic cannot flood the log.
    pub(super) fn acl_denied(
        &mut self,
        id: ConnId,
        now_ms: u64,
        action: &'static str,
        topic: &str,
        d: crate::acl::Decision,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        c.login.acl_denials += 1;
        if c.login.acl_reported_ms != 0 && now_ms < c.login.acl_reported_ms + 1000 {
            return;
        }
        let count = std::mem::take(&mut c.login.acl_denials);
        c.login.acl_reported_ms = now_ms.max(1);
        let (Some(key), Some(ident)) = (c.attach.key.clone(), c.login.identity.clone()) else { return };
        let who = ident.audit_name();
        let detail = [
            ("action", action.into()),
            ("topic", topic.into()),
            ("rule", d.policy_rule_json()),
            ("denials", count.into()),
        ];
        self.audit(
            now_ms,
            key.org.clone(),
            AuditKind::AclDenied,
            Some(&key.client_id),
            who.as_deref(),
            &detail,
        );
    }

    /// Re-checks every subscription of `sref` against `acl`: those no longer allowed are
    /// removed (audited when `audit`), the others get their delivery-check flag refreshed.
    fn prune_subs(&mut self, sref: SessionRef, acl: &CompiledAcl, now_ms: u64, live: bool) {
        let Some(s) = self.session(sref) else { return };
        let org = s.org.clone();
        let client_id = s.client_id.clone();
        let subs: Vec<(Box<str>, SubEntry)> = s.state.subs.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (f, e) in subs {
            let inner = match classify(&f) {
                FilterKind::Shared(sf) => sf.filter,
                _ => &f,
            };
            let d = acl.check_subscribe(inner, e.opts.qos as u8);
            if !d.decision.allow {
                self.session_mut(sref).expect("present").state.subs.remove(&f);
                if live {
                    let ch = self.router.unsubscribe(&org, &f, sref);
                    if ch.interest_changed {
                        self.announce(&org, &f, false, None);
                    }
                }
                let detail = [
                    ("action", "subscription_removed".into()),
                    ("topic", (*f).into()),
                    ("rule", d.decision.policy_rule_json()),
                ];
                self.audit(now_ms, org.clone(), AuditKind::AclDenied, Some(&client_id), None, &detail);
            } else if d.checked != e.checked {
                let st = &mut self.session_mut(sref).expect("present").state;
                if let Some(x) = st.subs.get_mut(&f) {
                    x.checked = d.checked;
                }
                if live {
                    let sub = Sub { session: sref, opts: e.opts, sub_id: e.sub_id, checked: d.checked };
                    self.router.subscribe(&org, &f, sub); // replaces the entry in place
                }
            }
        }
    }

    /// The live subscriptions of `org` on this shard that `policy` would remove.
    pub fn policy_diff(&self, org: &str, policy: &Policy) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (_, c) in self.conns.iter() {
            let (Some(ident), Some(key), Some(sref)) = (&c.login.identity, &c.attach.key, c.attach.session)
            else {
                continue;
            };
            if &*ident.org != org {
                continue;
            }
            let id = ident.acl_identity(key.client_id.as_str(), c.link.client_cn.as_deref());
            let acl = CompiledAcl::compile(policy, &id, &ident.user_publish, &ident.user_subscribe);
            let Some(s) = self.session(sref) else { continue };
            for (f, e) in &s.state.subs {
                let inner = match classify(f) {
                    FilterKind::Shared(sf) => sf.filter,
                    _ => f,
                };
                if !acl.check_subscribe(inner, e.opts.qos as u8).decision.allow {
                    out.push((key.client_id.as_str().to_string(), f.to_string()));
                }
            }
        }
        out
    }

    /// The org's policy changed: recompile the ACL of its live connections and sessions and
    /// remove the subscriptions it no longer allows (SPEC §3).
    pub fn policy_changed(&mut self, now_ms: u64, org: &str) -> usize {
        let ids = self.conns_where(|c| c.login.identity.as_ref().is_some_and(|x| &*x.org == org));
        for id in &ids {
            let c = self.conn(*id).expect("listed");
            let (Some(ident), Some(key)) = (c.login.identity.clone(), c.attach.key.clone()) else { continue };
            let acl = Arc::new(self.compile_acl(&ident, key.client_id.as_str(), c.link.client_cn.as_deref()));
            let sref = c.attach.session;
            self.conn_mut(*id).expect("listed").login.acl = Some(acl.clone());
            if let Some(sref) = sref {
                // Live: subscriptions and stored messages against the new ACL.
                self.hold_under(sref, acl, now_ms, true);
            }
        }
        // Offline sessions keep their holder's old ACL until that identity comes back (its
        // bindings are not known here): the new one is applied, and what is stored re-checked,
        // when it resumes.
        self.drain_self(now_ms);
        ids.len()
    }
}
