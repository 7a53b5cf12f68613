//! ACL v2 check cost per message at 10, 100 and 1,000 rules: a publish check (the match is the
//! last allow rule, so every rule is walked) and the per-delivery check of a subscription that
//! a deny rule overlaps. Run: `cargo bench --bench acl`.

// criterion_group! generates public functions without docs.
#![allow(missing_docs)]

use coremq::acl::{AclIdentity, CompiledAcl, Policy};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

fn policy(n: usize) -> Policy {
    let mut rules: Vec<String> = (0..n - 2)
        .map(|i| format!(r#"{{"topic": "fleet/{{agent_id}}/r{i}/+/#", "action": "all", "effect": "allow"}}"#))
        .collect();
    rules.push(r#"{"topic": "agents/+/secret/#", "action": "all", "effect": "deny"}"#.into());
    rules.push(
        r#"{"topic": "agents/{agent_id}/#", "action": "all", "effect": "allow", "qos": [0, 1]}"#.into(),
    );
    Policy::parse(&format!(
        r#"{{"version": "2.0", "default_action": "deny", "rules": [{}]}}"#,
        rules.join(",")
    ))
    .expect("valid")
}

fn bench(c: &mut Criterion) {
    let id =
        AclIdentity { agent_id: Some("agent-7".into()), client_id: Some("c7".into()), ..Default::default() };
    let mut g = c.benchmark_group("acl");
    for n in [10usize, 100, 1000] {
        let acl = CompiledAcl::compile(&policy(n), &id, &[], &[]);
        assert!(acl.check_publish("agents/agent-7/state/cpu", 1, false).allow);
        g.bench_with_input(BenchmarkId::new("publish", n), &acl, |b, acl| {
            b.iter(|| acl.check_publish(black_box("agents/agent-7/state/cpu"), 1, false))
        });
        g.bench_with_input(BenchmarkId::new("delivery", n), &acl, |b, acl| {
            b.iter(|| acl.check_delivery(black_box("agents/agent-7/state/cpu")))
        });
        g.bench_with_input(BenchmarkId::new("compile", n), &n, |b, &n| {
            let p = policy(n);
            b.iter(|| CompiledAcl::compile(black_box(&p), &id, &[], &[]))
        });
    }
    g.finish();
}

/// A maximal topic (`limits::TOPIC_LEVELS_MAX` levels) against 100 rules (issue 14.5).
fn max_depth(c: &mut Criterion) {
    let id = AclIdentity { agent_id: Some("agent-7".into()), ..Default::default() };
    let acl = CompiledAcl::compile(&policy(100), &id, &[], &[]);
    let max = coremq::limits::TOPIC_LEVELS_MAX;
    let topic = format!("agents/agent-7/{}", vec!["l"; max - 2].join("/"));
    let filter = format!("agents/agent-7/{}", vec!["+"; max - 2].join("/"));
    let mut g = c.benchmark_group("acl_max_depth");
    g.bench_function("publish_100_rules", |b| b.iter(|| acl.check_publish(black_box(&topic), 1, false)));
    g.bench_function("subscribe_100_rules", |b| b.iter(|| acl.check_subscribe(black_box(&filter), 1)));
    g.finish();
}

criterion_group!(benches, bench, max_depth);
criterion_main!(benches);
