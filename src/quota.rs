//! Per-organization quotas (SPEC §4): the limits, and the shared counters every shard checks.
//!
//! - **Connections** are counted exactly: one `AtomicU64` per org, taken with a
//!   compare-and-swap that never passes the limit, released when the connection closes.
//! - **Message rate** is a token bucket per org holding at most 15% of the per-minute limit and
//!   refilled at limit/60 per second, so the messages accepted in *any* 60-second window are at
//!   most 115% of the limit. Connections lease small chunks from it (about 100 ms of refill):
//!   the per-publish check is a decrement of a connection-local counter, and unused leased
//!   tokens are lost, never re-spent (undershoot, never overshoot).
//! - Limits are atomics, so `PUT /v2/quotas` changes them for live connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The limits of one org. `None`: unlimited (the default for every key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Concurrent connections.
    pub max_connections: Option<u64>,
    /// Inbound PUBLISH packets accepted per minute (over all the org's connections).
    pub messages_per_minute: Option<u64>,
    /// Retained messages held for the org.
    pub max_retained_messages: Option<u64>,
    /// Queued + in-flight bytes (topic + payload) of the org's offline persistent sessions;
    /// beyond it, an offline session's oldest queued messages are dropped (counted).
    pub session_storage_bytes: Option<u64>,
    /// Subscriptions per session.
    pub max_subscriptions_per_client: Option<u64>,
    /// Largest packet a client may send, bytes (never above the listener's).
    pub max_packet_size: Option<u64>,
    /// Unacknowledged QoS 1/2 messages towards a client.
    pub max_inflight: Option<u64>,
    /// Temporary tokens alive at once (`None`: [`LIVE_TOKENS_DEFAULT`]); a mint beyond it is
    /// refused (409), so one tenant cannot grow the credential directory without bound.
    pub max_live_tokens: Option<u64>,
}

/// Live temporary tokens an org may hold when `max_live_tokens` is not set.
pub const LIVE_TOKENS_DEFAULT: u64 = 10_000;

const UNLIMITED: u64 = u64::MAX;

fn load(a: &AtomicU64) -> Option<u64> {
    match a.load(Ordering::Relaxed) {
        UNLIMITED => None,
        v => Some(v),
    }
}

fn store(a: &AtomicU64, v: Option<u64>) {
    a.store(v.unwrap_or(UNLIMITED), Ordering::Relaxed);
}

/// A token bucket in milli-tokens (so refills of less than one token per ms add up).
#[derive(Debug)]
struct Bucket {
    milli: u64,
    last_ms: u64,
}

/// One org's limits and live counters, shared by every shard.
#[derive(Debug)]
pub struct OrgQuota {
    max_connections: AtomicU64,
    messages_per_minute: AtomicU64,
    max_retained: AtomicU64,
    session_storage_bytes: AtomicU64,
    max_subscriptions: AtomicU64,
    max_packet_size: AtomicU64,
    max_inflight: AtomicU64,
    max_live_tokens: AtomicU64,
    connections: AtomicU64,
    bucket: Mutex<Bucket>,
    /// PUBLISH packets refused or dropped over the rate.
    pub rate_limited: AtomicU64,
    /// CONNECTs refused at the connection limit.
    pub connections_refused: AtomicU64,
    /// Retained publishes delivered but not retained.
    pub retained_refused: AtomicU64,
    /// SUBSCRIBE filters refused over the per-client limit.
    pub subscriptions_refused: AtomicU64,
    /// Bytes (topic + payload) queued or in flight for the org's offline persistent sessions.
    pub stored_bytes: AtomicU64,
    /// Messages dropped (oldest first) to keep `stored_bytes` within the limit.
    pub stored_dropped: AtomicU64,
}

/// What an org's usage looks like now (`GET /v2/quotas`, metrics).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Live connections.
    pub connections: u64,
    /// PUBLISH packets refused or dropped over the rate, since start.
    pub rate_limited: u64,
    /// CONNECTs refused at the connection limit, since start.
    pub connections_refused: u64,
    /// Retained publishes not retained over the limit, since start.
    pub retained_refused: u64,
    /// SUBSCRIBE filters refused over the per-client limit, since start.
    pub subscriptions_refused: u64,
    /// Bytes held for offline persistent sessions now.
    pub session_storage_bytes: u64,
    /// Messages dropped over the session storage limit, since start.
    pub session_storage_dropped: u64,
}

impl OrgQuota {
    /// An org's quota with `limits`, full bucket.
    pub fn new(limits: &QuotaLimits, now_ms: u64) -> OrgQuota {
        let q = OrgQuota {
            max_connections: AtomicU64::new(UNLIMITED),
            messages_per_minute: AtomicU64::new(UNLIMITED),
            max_retained: AtomicU64::new(UNLIMITED),
            session_storage_bytes: AtomicU64::new(UNLIMITED),
            max_subscriptions: AtomicU64::new(UNLIMITED),
            max_packet_size: AtomicU64::new(UNLIMITED),
            max_inflight: AtomicU64::new(UNLIMITED),
            max_live_tokens: AtomicU64::new(UNLIMITED),
            connections: AtomicU64::new(0),
            bucket: Mutex::new(Bucket { milli: 0, last_ms: now_ms }),
            rate_limited: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            retained_refused: AtomicU64::new(0),
            subscriptions_refused: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            stored_dropped: AtomicU64::new(0),
        };
        q.set_limits(limits);
        if let Ok(mut b) = q.bucket.lock() {
            b.milli = capacity_milli(limits.messages_per_minute.unwrap_or(0));
        }
        q
    }

    /// Replaces the limits (live connections see them at their next check).
    pub fn set_limits(&self, l: &QuotaLimits) {
        store(&self.max_connections, l.max_connections);
        store(&self.messages_per_minute, l.messages_per_minute);
        store(&self.max_retained, l.max_retained_messages);
        store(&self.session_storage_bytes, l.session_storage_bytes);
        store(&self.max_subscriptions, l.max_subscriptions_per_client);
        store(&self.max_packet_size, l.max_packet_size);
        store(&self.max_inflight, l.max_inflight);
        store(&self.max_live_tokens, l.max_live_tokens);
    }

    /// Live tokens the org may hold.
    pub fn max_live_tokens(&self) -> u64 {
        load(&self.max_live_tokens).unwrap_or(LIVE_TOKENS_DEFAULT)
    }

    /// The limits now.
    pub fn limits(&self) -> QuotaLimits {
        QuotaLimits {
            max_connections: load(&self.max_connections),
            messages_per_minute: load(&self.messages_per_minute),
            max_retained_messages: load(&self.max_retained),
            session_storage_bytes: load(&self.session_storage_bytes),
            max_subscriptions_per_client: load(&self.max_subscriptions),
            max_packet_size: load(&self.max_packet_size),
            max_inflight: load(&self.max_inflight),
            max_live_tokens: load(&self.max_live_tokens),
        }
    }

    /// Counters now.
    pub fn usage(&self) -> QuotaUsage {
        QuotaUsage {
            connections: self.connections.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            retained_refused: self.retained_refused.load(Ordering::Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Ordering::Relaxed),
            session_storage_bytes: self.stored_bytes.load(Ordering::Relaxed),
            session_storage_dropped: self.stored_dropped.load(Ordering::Relaxed),
        }
    }

    /// Takes a connection slot; `false` at the limit. Exact under any number of concurrent
    /// callers: the count never passes the limit.
    pub fn try_connect(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        let mut cur = self.connections.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return false;
            }
            match self.connections.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Counts a CONNECT refused at the connection limit.
    pub fn refused_connection(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives a slot back (the connection that took it closed).
    pub fn disconnect(&self) {
        let _ = self.connections.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| c.checked_sub(1));
    }

    /// Whether the org has a message rate limit.
    pub fn rate_limited_org(&self) -> bool {
        self.messages_per_minute.load(Ordering::Relaxed) != UNLIMITED
    }

    /// Leases up to one chunk of message tokens (about 100 ms of refill, at least 1). Returns
    /// how many were granted; 0 means the org is over its rate now.
    pub fn lease(&self, now_ms: u64) -> u64 {
        let per_min = self.messages_per_minute.load(Ordering::Relaxed);
        if per_min == UNLIMITED {
            return 0; // callers check `rate_limited_org` first
        }
        let Ok(mut b) = self.bucket.lock() else { return 0 };
        // Refill: per_min tokens per 60,000 ms = per_min milli-tokens per 60 ms.
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.last_ms = b.last_ms.max(now_ms);
        let cap = capacity_milli(per_min);
        b.milli = (b.milli + (elapsed as u128 * per_min as u128 / 60) as u64).min(cap);
        let chunk = (per_min / 600).clamp(1, 1000);
        let n = (b.milli / 1000).min(chunk);
        b.milli -= n * 1000;
        n
    }

    /// Offline session storage cap, bytes (None: unlimited).
    pub fn session_storage_limit(&self) -> Option<u64> {
        load(&self.session_storage_bytes)
    }

    /// Counts `n` more bytes held for offline sessions.
    pub fn store_bytes(&self, n: u64) {
        self.stored_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes no longer held for offline sessions.
    pub fn release_bytes(&self, n: u64) {
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(n)));
    }

    /// Largest retained count (None: unlimited).
    pub fn max_retained(&self) -> Option<u64> {
        load(&self.max_retained)
    }

    /// Subscriptions per session (None: unlimited).
    pub fn max_subscriptions(&self) -> Option<u64> {
        load(&self.max_subscriptions)
    }

    /// Packet size cap (None: the listener's).
    pub fn max_packet_size(&self) -> Option<u64> {
        load(&self.max_packet_size)
    }

    /// Outbound window cap (None: the broker's).
    pub fn max_inflight(&self) -> Option<u64> {
        load(&self.max_inflight)
    }
}

/// Bucket capacity: 15% of the per-minute limit (at least one token), in milli-tokens.
fn capacity_milli(per_min: u64) -> u64 {
    (per_min.saturating_mul(150)).max(1000)
}

/// A connection's leased message tokens (the per-publish check, allocation-free).
#[derive(Debug, Default, Clone, Copy)]
pub struct Lease {
    left: u64,
}

impl Lease {
    /// Takes one message token, leasing a new chunk from `q` when empty. `false`: over the rate.
    #[inline]
    pub fn take(&mut self, q: &OrgQuota, now_ms: u64) -> bool {
        if !q.rate_limited_org() {
            return true;
        }
        if self.left == 0 {
            self.left = q.lease(now_ms);
            if self.left == 0 {
                q.rate_limited.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        self.left -= 1;
        true
    }

    /// Whether a token is at hand or can be leased now (consumes nothing when it cannot).
    pub fn available(&mut self, q: &OrgQuota, now_ms: u64) -> bool {
        if !q.rate_limited_org() {
            return true;
        }
        if self.left == 0 {
            self.left = q.lease(now_ms);
        }
        self.left > 0
    }
}

/// `[org.retention]`: how long an org's stored messages are kept at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Queued messages older than this (since received) are dropped, not delivered.
    pub queued_max_age_ms: Option<u64>,
    /// Retained messages older than this (since set) are dropped.
    pub retained_max_age_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn limits(f: impl FnOnce(&mut QuotaLimits)) -> QuotaLimits {
        let mut l = QuotaLimits::default();
        f(&mut l);
        l
    }

    #[test]
    fn connections_never_pass_the_limit_under_a_storm() {
        let q = Arc::new(OrgQuota::new(&limits(|l| l.max_connections = Some(100)), 0));
        let got = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (q, got, peak) = (q.clone(), got.clone(), peak.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        if q.try_connect() {
                            got.fetch_add(1, Ordering::Relaxed);
                            peak.fetch_max(q.usage().connections, Ordering::Relaxed);
                            if i % 3 == 0 {
                                q.disconnect();
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 100);
        assert_eq!(q.usage().connections, 100, "the last slots stay taken");
    }

    #[test]
    fn accepted_messages_in_any_60s_window_stay_within_115_percent() {
        // Several connections leasing greedily at random times for 10 minutes.
        let per_min = 6_000u64;
        let q = OrgQuota::new(&limits(|l| l.messages_per_minute = Some(per_min)), 0);
        let mut leases = [Lease::default(); 5];
        let mut accepted_at = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = 0u64;
        while t < 600_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 7;
            let c = (x >> 8) as usize % leases.len();
            for _ in 0..(x >> 16) % 50 {
                if leases[c].take(&q, t) {
                    accepted_at.push(t);
                }
            }
        }
        let mut lo = 0;
        let mut worst = 0;
        for hi in 0..accepted_at.len() {
            while accepted_at[hi] - accepted_at[lo] >= 60_000 {
                lo += 1;
            }
            worst = worst.max(hi - lo + 1);
        }
        assert!(worst as u64 <= per_min * 115 / 100, "worst 60 s window: {worst}");
        // And the limit is usable: over 10 minutes at least 95% of 10 × the limit went through.
        assert!(accepted_at.len() as u64 >= per_min * 10 * 95 / 100, "{}", accepted_at.len());
    }

    #[test]
    fn an_exhausted_bucket_refills_with_time_and_limits_change_live() {
        let q = OrgQuota::new(&limits(|l| l.messages_per_minute = Some(60)), 0);
        let mut l = Lease::default();
        let burst = (0..100).filter(|_| l.take(&q, 0)).count();
        assert_eq!(burst, 9, "15% of 60 per minute");
        assert!(!l.take(&q, 500));
        assert!(l.take(&q, 1_600), "one token per second");
        q.set_limits(&QuotaLimits::default());
        assert!((0..10_000).all(|_| l.take(&q, 1_700)), "unlimited after the change");
        assert_eq!(q.limits(), QuotaLimits::default());
    }
}
