//! Quota checks: the per-publish rate check (a connection-local decrement, leasing a chunk from
//! the org's token bucket now and then), a lease from the shared bucket, and a connection slot
//! taken and given back (compare-and-swap). Run: `cargo bench --bench quota`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use coremq::quota::{Lease, OrgQuota, QuotaLimits};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    let unlimited = OrgQuota::new(&QuotaLimits::default(), 0);
    let limited = OrgQuota::new(
        &QuotaLimits { messages_per_minute: Some(u64::MAX / 1_000_000), ..Default::default() },
        0,
    );
    let conns = OrgQuota::new(&QuotaLimits { max_connections: Some(1_000_000), ..Default::default() }, 0);
    let mut lease = Lease::default();
    g.bench_function("publish_check/unlimited_org", |b| b.iter(|| lease.take(&unlimited, 1)));
    let mut lease = Lease::default();
    let mut t = 0u64;
    g.bench_function("publish_check/rate_limited_org", |b| {
        b.iter(|| {
            t += 1;
            lease.take(&limited, t / 1000)
        })
    });
    let mut t = 0u64;
    g.bench_function("bucket_lease", |b| {
        b.iter(|| {
            t += 1;
            limited.lease(t)
        })
    });
    g.bench_function("connection_slot", |b| {
        b.iter(|| {
            let ok = conns.try_connect();
            conns.disconnect();
            ok
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
