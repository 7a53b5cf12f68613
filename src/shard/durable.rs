//! The shard shell's side of durability: applying the core's store writes, making them
//! durable on the blocking pool, and recovering from a failing store (issue 14.8).
//!
//! Writes applied to the store stay in `Shard::unpersisted` until a persist covers them. When
//! a write or a persist fails (a full disk), the core refuses what needs the store, writes
//! keep collecting in `unpersisted`, and the commit task retries with backoff (1 s doubling
//! to 30 s): it opens the store again (fjall refuses writes after a failed persist), applies
//! every write not known durable, in order (writes are idempotent), and persists. Once that
//! succeeds, the core acknowledges again; nothing acknowledged before or after is lost.

use std::rc::Rc;
use std::time::Duration;

use super::Shard;
use crate::broker::persist::StoreOp;
use crate::clock::mono_ms;
use crate::config::Durability;

/// First and longest wait between two recovery attempts.
const RETRY_FIRST_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 30_000;

impl Shard {
    /// Applies the core's store writes (staged; durable at the next persist). While the store
    /// is failing they only collect, for the recovery to apply.
    pub(super) fn apply_store_ops(&self) {
        let mut ops = self.store_ops.borrow_mut();
        let seq = self.core.borrow_mut().poll_store(&mut ops);
        if ops.is_empty() {
            return;
        }
        self.store_applied.set(seq);
        if self.store_failed.get() {
            self.unpersisted.borrow_mut().append(&mut ops);
            return;
        }
        if ops.iter().any(StoreOp::touches_retained) {
            self.retained_dirty.set(true);
        }
        let r =
            self.store.with(|st| self.retained_store.with(|rs| st.apply(&ops, rs, self.unix_at_mono_zero)));
        if self.durability == Durability::None && r.is_ok() {
            ops.clear(); // nothing is promised durable: nothing to apply again
        } else {
            self.unpersisted.borrow_mut().append(&mut ops);
        }
        match r {
            Ok(()) => self.store_dirty.set(true),
            Err(e) => self.store_failure("write", &e),
        }
        if self.durability != Durability::None || self.store_failed.get() {
            if let Some(w) = self.commit_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Makes the applied writes durable (on the blocking pool), if any.
    pub(super) async fn persist_stores(self: &Rc<Self>) {
        if self.store_failed.get() || !self.store_dirty.replace(false) {
            return;
        }
        let upto = self.store_applied.get();
        // Two persists may overlap (the commit task's and a purge's or the shutdown's): each
        // drops what it covered, by position since start.
        let end = self.unpersisted_base.get() + self.unpersisted.borrow().len() as u64;
        let (st, rs, gen) = (self.store.clone(), self.retained_store.clone(), self.retained_gen.get());
        let d = self.durability;
        // The retained store is synced only after this shard wrote to it (each shard syncs its
        // own writes there): one sync per commit instead of two.
        let retained = self.retained_dirty.replace(false);
        // A reopen of the retained store by another shard's recovery may have dropped writes of
        // this shard not durable yet: that refuses this persist, and the recovery applies them.
        let r = glommio::executor()
            .spawn_blocking(move || {
                st.with(|s| s.persist())?;
                if retained {
                    rs.with_at(gen, |r| r.persist(d))?;
                }
                Ok(())
            })
            .await;
        match r {
            Ok(()) => {
                if !self.store_failed.get() {
                    let mut un = self.unpersisted.borrow_mut();
                    let k = (end.saturating_sub(self.unpersisted_base.get()) as usize).min(un.len());
                    un.drain(..k);
                    self.unpersisted_base.set(self.unpersisted_base.get() + k as u64);
                }
                // The acknowledgements that waited for these writes go out.
                self.core.borrow_mut().durable(upto, mono_ms());
                self.drain_core();
            }
            Err(e) => {
                self.store_failure("persist", &e);
                self.drain_core();
            }
        }
    }

    /// A store write or persist failed: refuse what needs the store, once, until recovered.
    fn store_failure(&self, what: &str, e: &crate::store::StoreError) {
        if self.store_failed.replace(true) {
            return;
        }
        let mut core = self.core.borrow_mut();
        core.store_failed(mono_ms());
        core.audit_store_health(false, mono_ms());
        core.sys().set_store_failing(core.shard_id(), true);
        tracing::error!(error = %e, shard = core.shard_id(), "store {what} failed: acknowledgements that need the store are refused; retrying");
    }

    /// While the store is failing: reopen it, apply every write not known durable, persist;
    /// with backoff until that succeeds.
    pub(super) async fn recover_store(self: &Rc<Self>) {
        let mut wait = RETRY_FIRST_MS;
        let mut attempts = 0u64;
        while self.store_failed.get() {
            glommio::timer::sleep(Duration::from_millis(wait)).await;
            attempts += 1;
            let upto = self.store_applied.get();
            let ops = std::mem::take(&mut *self.unpersisted.borrow_mut());
            let (st, rs, epoch) = (self.store.clone(), self.retained_store.clone(), self.unix_at_mono_zero);
            let d = self.durability;
            let (ops, r) = glommio::executor()
                .spawn_blocking(move || {
                    let r = (|| -> Result<u64, crate::store::StoreError> {
                        st.reopen()?;
                        // The retained store is shared: opened again only if it fails here too.
                        if rs.with(|r| r.persist(d)).is_err() {
                            rs.reopen()?;
                        }
                        st.with(|s| rs.with(|r| s.apply(&ops, r, epoch)))?;
                        if d != Durability::None {
                            st.with(|s| s.persist())?;
                            rs.with(|r| r.persist(d))?;
                        }
                        Ok(rs.generation())
                    })();
                    (ops, r)
                })
                .await;
            match r {
                Ok(gen) => {
                    self.retained_gen.set(gen);
                    self.unpersisted_base.set(self.unpersisted_base.get() + ops.len() as u64);
                    self.store_failed.set(false);
                    {
                        let mut core = self.core.borrow_mut();
                        core.store_recovered(upto, mono_ms());
                        core.audit_store_health(true, mono_ms());
                        core.sys().set_store_failing(core.shard_id(), false);
                        tracing::info!(
                            shard = core.shard_id(),
                            attempts,
                            writes = ops.len(),
                            "store recovered: acknowledging again"
                        );
                    }
                    // Writes the core made during the attempt go first into the next apply
                    // (below), ahead of what the core writes from now on.
                    let later = std::mem::take(&mut *self.unpersisted.borrow_mut());
                    *self.store_ops.borrow_mut() = later;
                }
                Err(e) => {
                    let mut later = std::mem::take(&mut *self.unpersisted.borrow_mut());
                    let mut all = ops;
                    all.append(&mut later);
                    *self.unpersisted.borrow_mut() = all;
                    tracing::warn!(error = %e, attempts, retry_in_ms = wait.min(RETRY_MAX_MS), "store still failing");
                    wait = (wait * 2).min(RETRY_MAX_MS);
                }
            }
        }
        // What the core wrote during the attempt (and since) is applied now.
        self.apply_store_ops();
        self.drain_core();
    }
}
