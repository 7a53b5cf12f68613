//! Codec benchmarks: PUBLISH decode and encode by payload size, both protocol versions.
//! Run: `cargo bench --bench codec`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use coremq::codec::encode::{encode_publish, to_bytes, PublishOut};
use coremq::codec::{decode_packet, frame, MqStr, Packet, Properties, Protocol, Publish, QoS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn publish(size: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: MqStr::from_static("fleet/device-0042/telemetry/temperature"),
        packet_id: Some(7.try_into().unwrap()),
        props: Properties::default(),
        payload: Bytes::from(vec![0xA5; size]),
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    for size in [16usize, 256, 4096, 65536] {
        for v in [Protocol::V311, Protocol::V5] {
            let raw = to_bytes(v, &publish(size));
            g.throughput(Throughput::Bytes(raw.len() as u64));
            g.bench_with_input(BenchmarkId::new(format!("decode/{v:?}"), size), &raw, |b, raw| {
                b.iter(|| {
                    let f = frame(raw, u32::MAX).unwrap().unwrap();
                    decode_packet(raw.clone(), &f, Some(v)).unwrap()
                })
            });
            let p = match publish(size) {
                Packet::Publish(p) => p,
                _ => unreachable!(),
            };
            let mut out = BytesMut::with_capacity(size + 256);
            g.bench_with_input(BenchmarkId::new(format!("encode/{v:?}"), size), &p, |b, p| {
                b.iter(|| {
                    out.clear();
                    let po = PublishOut::from_publish(p);
                    encode_publish(&mut out, v, &po);
                    out.len()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
