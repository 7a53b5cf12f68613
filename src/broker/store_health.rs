//! The store's health as the core sees it: a failing store (a full disk, an I/O error) makes
//! the core refuse what needs it; a recovered one (`shard/durable.rs` reopens it) lets it
//! acknowledge again. Both transitions are audited in every org.

use std::sync::Arc;

use super::durable::AfterDurable;
use super::*;
use crate::broker::mesh::MeshMsg;

impl ShardCore {
    /// The store failed (a full disk, an I/O error): what waited for it is refused, and so is
    /// every later acknowledgement that would depend on it. Nothing is acknowledged as stored
    /// that was not.
    pub fn store_failed(&mut self, now_ms: u64) {
        self.dur.store_broken = true;
        while let Some((_, to, what)) = self.dur.stored_replies.pop_front() {
            match what {
                AfterDurable::Stored(token) => self.send(to, MeshMsg::Stored { token, ok: false }),
                // A moved session's old copy stays: its new copy may not be on disk.
                AfterDurable::Forget(..) => {}
                // Delivered as the local subscribers' copies were (the publisher is refused).
                AfterDurable::Forward(m) => {
                    self.dur.deferred_forwards[to as usize] -= 1;
                    self.send(to, *m);
                }
            }
        }
        // A CONNACK or SUBACK that promised a stored session must not go out: close without it
        // (the client reconnects and is told then).
        for id in std::mem::take(&mut self.dur.gated) {
            if let Some(c) = self.conn_mut(id) {
                c.link.out_gate = 0;
                c.link.out.clear();
                self.close_conn(id, CloseCause::StoreFailing, now_ms);
            }
        }
        while let Some(h) = self.dur.held_acks.pop_front() {
            self.dur.remote_waits.remove(&h.token);
            if let Some(c) = self.conn_mut(h.id) {
                c.link.held_acks -= 1;
                self.refuse_ack(h.id, h.p, now_ms);
            }
        }
    }

    /// Whether the store failed.
    pub fn store_is_broken(&self) -> bool {
        self.dur.store_broken
    }

    /// The store works again and every write up to `upto` is durable: acknowledgements that
    /// need the store go out again.
    pub fn store_recovered(&mut self, upto: u64, now_ms: u64) {
        self.dur.store_broken = false;
        self.durable(upto, now_ms);
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
