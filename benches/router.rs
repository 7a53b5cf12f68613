//! Subscription matching by number of filters and wildcard mix, and whole-core fan-out
//! (decode + route + encode into every subscriber's output) for 1 -> N.
//! Run: `cargo bench --bench router`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use coremq::broker::testing::Cluster;
use coremq::codec::encode::to_bytes;
use coremq::codec::{MqStr, Packet, PacketId, Properties, Protocol, Publish, QoS, SubOptions, Subscribe};
use coremq::router::{Matches, Router, SessionRef, Sub};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn sub(i: u32) -> Sub {
    Sub { session: SessionRef(i), opts: SubOptions::default(), sub_id: None, checked: false }
}

/// `n` filters: `exact` = one per device; `mixed` = 1/3 exact, 1/3 `+`, 1/3 `#`.
fn router(n: u32, mix: &str) -> Router {
    let mut r = Router::new(0);
    let org: Arc<str> = Arc::from("acme");
    for i in 0..n {
        let f = match (mix, i % 3) {
            ("exact", _) | (_, 0) => format!("fleet/dev-{i}/telemetry"),
            (_, 1) => format!("fleet/+/telemetry/{}", i % 100),
            _ => format!("fleet/dev-{i}/#"),
        };
        r.subscribe(&org, &f, sub(i));
    }
    r
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10u32, 1_000, 100_000] {
        for mix in ["exact", "mixed"] {
            let mut r = router(n, mix);
            let mut m = Matches::default();
            g.bench_function(BenchmarkId::new(mix, n), |b| {
                b.iter(|| {
                    r.route("acme", "fleet/dev-3/telemetry", true, &mut m);
                    m.subs.len()
                })
            });
        }
    }
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_qos0_64B");
    for n in [1usize, 10, 100, 1000] {
        let mut cl = Cluster::new(1);
        let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
        let mut subs = Vec::new();
        for i in 0..n {
            let (s, _) = cl.connect(0, Protocol::V311, &format!("s{i}"), true, Properties::default());
            let pk = Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(1).unwrap(),
                props: Properties::default(),
                filters: vec![(MqStr::from_static("t/+"), SubOptions::default())],
            });
            cl.send(s, &pk);
            cl.recv(s);
            subs.push(s);
        }
        let raw = to_bytes(
            Protocol::V311,
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: MqStr::from_static("t/x"),
                packet_id: None,
                props: Properties::default(),
                payload: Bytes::from_static(&[1u8; 64]),
            }),
        );
        let mut buf = BytesMut::with_capacity(4096);
        let mut spare = BytesMut::with_capacity(1 << 16);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                buf.extend_from_slice(&raw);
                cl.shards[0].handle_read(p.conn, 0, &mut buf);
                for s in &subs {
                    cl.shards[0].poll_output(s.conn, &mut spare, Waker::noop());
                    spare.clear();
                }
            })
        });
    }
    g.finish();
}

/// The deepest topic and filter accepted (`limits::TOPIC_LEVELS_MAX` levels) against a trie of
/// 1,000 filters: routing a maximal topic, and subscribing then unsubscribing a maximal
/// filter, take a bounded time (issue 14.5).
fn max_depth(c: &mut Criterion) {
    let max = coremq::limits::TOPIC_LEVELS_MAX;
    let mut g = c.benchmark_group("max_depth");
    let mut r = router(1_000, "mixed");
    let org: Arc<str> = Arc::from("acme");
    let deep_filter = format!("{}/#", vec!["+"; max - 1].join("/"));
    r.subscribe(&org, &deep_filter, sub(1_000_001));
    let topic = vec!["l"; max].join("/");
    let mut m = Matches::default();
    g.bench_function("route", |b| {
        b.iter(|| {
            r.route("acme", &topic, true, &mut m);
            m.subs.len()
        })
    });
    let filter = vec!["+"; max].join("/");
    g.bench_function("subscribe_unsubscribe", |b| {
        b.iter(|| {
            r.subscribe(&org, &filter, sub(2_000_000));
            r.unsubscribe(&org, &filter, SessionRef(2_000_000))
        })
    });
    g.finish();
}

criterion_group!(benches, matching, fanout, max_depth);
criterion_main!(benches);
