//! Figures behind `$SYS/broker/...`: each shard reports its own per-org figures at every
//! `sys_interval`; shard 0 sums them and publishes into each org, so an org only ever sees its
//! own numbers. The board is touched once per interval per shard, never on the message path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use ahash::RandomState;

/// One org's figures on one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OrgFigures {
    /// Connected clients.
    pub connected: u64,
    /// Messages received from clients.
    pub received: u64,
    /// Messages sent to clients.
    pub sent: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Retained messages (replicated: taken from shard 0's replica, not summed).
    pub retained: u64,
}

type Figures = HashMap<Arc<str>, OrgFigures, RandomState>;

/// Per-shard reports, summed on demand, and the health of each shard's store.
#[derive(Debug)]
pub struct SysBoard {
    shards: Mutex<Vec<Figures>>,
    /// Bit `i`: shard `i`'s store is failing.
    store_failing: AtomicU64,
    /// Times a store started failing, since start.
    store_failures: AtomicU64,
}

impl SysBoard {
    /// A board for `n` shards.
    pub fn new(n: usize) -> SysBoard {
        SysBoard {
            shards: Mutex::new((0..n).map(|_| HashMap::default()).collect()),
            store_failing: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
        }
    }

    /// Marks shard `shard`'s store failing or working.
    pub fn set_store_failing(&self, shard: u8, failing: bool) {
        if failing {
            self.store_failing.fetch_or(1 << shard, Ordering::AcqRel);
            self.store_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.store_failing.fetch_and(!(1 << shard), Ordering::AcqRel);
        }
    }

    /// The shards whose store is failing.
    pub fn stores_failing(&self) -> Vec<u8> {
        let bits = self.store_failing.load(Ordering::Acquire);
        (0..64).filter(|i| bits & (1 << i) != 0).collect()
    }

    /// Times a store started failing since start.
    pub fn store_failures(&self) -> u64 {
        self.store_failures.load(Ordering::Relaxed)
    }

    /// Replaces shard `shard`'s report.
    pub fn report(&self, shard: usize, figures: Figures) {
        // Invariant: the lock is never held across a panic-prone call.
        self.shards.lock().expect("sys board lock")[shard] = figures;
    }

    /// Sums of every shard's latest report, per org.
    pub fn totals(&self) -> Vec<(Arc<str>, OrgFigures)> {
        let shards = self.shards.lock().expect("sys board lock");
        let mut sum: Figures = HashMap::default();
        for (i, fig) in shards.iter().enumerate() {
            for (org, f) in fig {
                let t = sum.entry(org.clone()).or_default();
                t.connected += f.connected;
                t.received += f.received;
                t.sent += f.sent;
                t.subscriptions += f.subscriptions;
                if i == 0 {
                    t.retained = f.retained;
                }
            }
        }
        let mut v: Vec<_> = sum.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

impl ShardCore {
    pub(super) fn report_figures(&mut self) {
        let mut figures: HashMap<Arc<str>, sys::OrgFigures, RandomState> = HashMap::default();
        for o in self.cfg.auth.directory.load().orgs.keys() {
            figures.entry(o.clone()).or_default();
        }
        for (_, c) in self.conns.iter() {
            if let Some(k) = &c.attach.key {
                let f = figures.entry(k.org.clone()).or_default();
                f.connected += (c.phase == Phase::Active) as u64;
                f.received += c.link.rx_msgs;
                f.sent += c.link.tx_msgs;
            }
        }
        for (org, (rx, tx)) in &self.closed_rx {
            let f = figures.entry(org.clone()).or_default();
            f.received += rx;
            f.sent += tx;
        }
        for (org, f) in figures.iter_mut() {
            f.subscriptions = self.router.local_subscription_count(org) as u64;
            f.retained = self.retained.count(org) as u64;
        }
        self.cfg.sys.report(self.shard as usize, figures);
    }

    pub(super) fn publish_sys(&mut self, now_ms: u64) {
        self.report_figures();
        if self.shard != 0 {
            return;
        }
        let uptime = now_ms.saturating_sub(self.timers.start_ms) / 1000;
        for (org, f) in self.cfg.sys.totals() {
            let items = [
                ("$SYS/broker/version", concat!("coremq ", env!("CARGO_PKG_VERSION")).to_string()),
                ("$SYS/broker/uptime", format!("{uptime} seconds")),
                ("$SYS/broker/clients/connected", f.connected.to_string()),
                ("$SYS/broker/messages/received", f.received.to_string()),
                ("$SYS/broker/messages/sent", f.sent.to_string()),
                ("$SYS/broker/subscriptions/count", f.subscriptions.to_string()),
                ("$SYS/broker/retained/count", f.retained.to_string()),
            ];
            for (topic, value) in items {
                let msg = Msg {
                    topic: MqStr::from_static(topic),
                    payload: Bytes::from(value),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    props: Default::default(),
                    received_ms: now_ms,
                };
                self.publish_internal(&org, msg, now_ms);
            }
        }
    }
}
