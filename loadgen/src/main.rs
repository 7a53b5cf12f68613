//! coremq-loadgen: end-to-end load against any MQTT broker (coremq, Mosquitto, rumqttd, ...).
//!
//! Scenarios: `p2p`, `qos1`, `qos2`, `latency` (open loop, coordinated omission corrected),
//! `fanin`, `fanout`, `multi-tenant`, `noisy-neighbour`, `durable` (QoS 1 into offline
//! persistent sessions), `conn` (idle connections, RSS per
//! connection) and `handshake` (TLS handshakes per second); `--transport tls|ws|wss` on each.
//! Every run prints sent / received / lost / duplicated / out-of-order, throughput, latency
//! percentiles (HDR histogram), the broker's and our own CPU seconds (flagging runs where we
//! were the bottleneck), a human table and one JSON line; `--report DIR` adds an HTML page with
//! charts. The client side uses the `mqttbytes` codec, independent of the broker's.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

mod client;
mod conn;
mod durable;
mod flows;
mod handshake;
mod report;
mod stats;
mod transport;

use client::Target;
use flows::{Group, PubSpec, SubSpec};
use stats::{CpuMeter, Progress};
use transport::Kind;

/// Errors are messages for the operator.
pub type Res<T> = Result<T, String>;

#[derive(Parser, Debug)]
#[command(name = "coremq-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Publisher -> subscriber pairs on distinct topics.
    P2p(P2p),
    /// p2p at QoS 1 (PUBACK both ways, a window of --inflight per publisher).
    Qos1(P2p),
    /// p2p at QoS 2 (the four-packet handshake both ways).
    Qos2(P2p),
    /// Open-loop p2p at --rate msg/s (default 50000): latency from the intended send time.
    Latency(P2p),
    /// N publishers -> one subscriber on a wildcard.
    Fanin(Fanin),
    /// One (or a few) publishers -> N subscribers of the same topic.
    Fanout(Fanout),
    /// p2p pairs spread over many organizations (`user@org` logins), identical topic names in
    /// every org: any cross-org delivery is counted as `foreign`.
    MultiTenant(MultiTenant),
    /// A victim org's open-loop latency run alone, then again while a noisy org floods.
    NoisyNeighbour(Noisy),
    /// Idle connections opened at a bounded rate: connect rate, failures, broker RSS per connection.
    Conn(conn::ConnArgs),
    /// Full TLS handshakes per second (no session resumption), optionally with MQTT CONNECT.
    Handshake(handshake::Handshake),
    /// QoS 1 into offline persistent sessions: stored-then-acknowledged rate and ack latency.
    Durable(durable::Durable),
}

/// Options every scenario shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Port the subscribers connect to (default: `--port`). With two listeners pinned to
    /// different shards, every message crosses shards.
    #[arg(long)]
    sub_port: Option<u16>,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Kind::Tcp)]
    transport: Kind,
    /// CA certificate (PEM) for tls and wss.
    #[arg(long)]
    cafile: Option<String>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Broker process id, to report its CPU seconds (and RSS for `conn`).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A label for the JSON line (e.g. the broker's name).
    #[arg(long, default_value = "")]
    label: String,
    /// User name for every client (`user@org` for coremq).
    #[arg(long)]
    username: Option<String>,
    /// Password for every client.
    #[arg(long, default_value = "")]
    password: String,
    /// Write an HTML report with charts (and result.json) into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl Common {
    fn target(&self) -> Res<Target> {
        let mut t = Target::new(&self.host, self.port, self.transport, self.cafile.as_deref())?;
        t.sub_port = self.sub_port.unwrap_or(self.port);
        Ok(t)
    }

    fn login(&self) -> flows::Login {
        self.username.as_ref().map(|u| (u.clone(), self.password.clone()))
    }
}

/// Message shape shared by the publish scenarios.
#[derive(Args, Debug, Clone)]
struct Msg {
    /// Payload bytes (at least 20: publisher id, sequence number, send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// QoS 0, 1 or 2 (qos1/qos2 scenarios set it).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Open-loop total rate in msg/s (0: closed loop, as fast as the broker accepts).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher (brokers bound this: coremq's receive
    /// maximum is 128, EMQX's max_awaiting_rel 100).
    #[arg(long, default_value_t = 100)]
    inflight: usize,
    /// Subscribers keep persistent sessions (Clean Session off): a broker with a store then
    /// stores every QoS 1/2 delivery until it is acknowledged.
    #[arg(long)]
    persistent_subscribers: bool,
}

#[derive(Args, Debug, Clone)]
struct P2p {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    msg: Msg,
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
}

#[derive(Args, Debug, Clone)]
struct Fanin {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    msg: Msg,
    /// Publishers, each on its own topic under one wildcard.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
}

#[derive(Args, Debug, Clone)]
struct Fanout {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    msg: Msg,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 8)]
    subscribers: usize,
    /// Publishers to that one topic.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
}

#[derive(Args, Debug, Clone)]
struct MultiTenant {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    msg: Msg,
    /// Organizations.
    #[arg(long, default_value_t = 4)]
    orgs: usize,
    /// Pairs in each organization.
    #[arg(long, default_value_t = 2)]
    pairs_per_org: usize,
    /// Login template: `{org}` becomes the org index (every org has this user and password).
    #[arg(long, default_value = "lg@org{org}")]
    user_template: String,
}

#[derive(Args, Debug, Clone)]
struct Noisy {
    #[command(flatten)]
    common: Common,
    /// Victim org login (`user@orgB`), password.
    #[arg(long)]
    victim_user: Option<String>,
    #[arg(long, default_value = "")]
    victim_password: String,
    /// Noisy org login (`user@orgA`), password.
    #[arg(long)]
    noisy_user: Option<String>,
    #[arg(long, default_value = "")]
    noisy_password: String,
    /// Victim open-loop rate, msg/s (total over its pairs).
    #[arg(long, default_value_t = 10_000)]
    victim_rate: u64,
    /// Victim pairs.
    #[arg(long, default_value_t = 1)]
    victim_pairs: usize,
    /// Noisy rate, msg/s (0: closed loop, as fast as the broker accepts).
    #[arg(long, default_value_t = 0)]
    noisy_rate: u64,
    /// Noisy publishers (each with a subscriber).
    #[arg(long, default_value_t = 2)]
    noisy_pairs: usize,
    /// QoS of the noisy flood.
    #[arg(long, default_value_t = 0)]
    noisy_qos: u8,
    /// Run the noisy clients' threads under SCHED_IDLE: where the load generator has fewer
    /// cores than clients, keeps the flood's own client threads from adding client-side delay
    /// to the victim's latency.
    #[arg(long)]
    noisy_background: bool,
    /// The noisy org's topics have no subscribers: a flood that costs the broker CPU (decode,
    /// route, ACL, quota) but no output, so the broker's own scheduling is what is measured.
    #[arg(long)]
    noisy_unsubscribed: bool,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Target: the victim's p99 with the flood at most this many times its solo p99.
    #[arg(long, default_value_t = 1.25)]
    max_p99_ratio: f64,
    /// Target: the victim's throughput with the flood within this fraction of its solo run.
    #[arg(long, default_value_t = 0.05)]
    max_throughput_loss: f64,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.scenario {
        Scenario::P2p(a) => p2p("p2p", a, None),
        Scenario::Qos1(a) => p2p("qos1", a, Some(1)),
        Scenario::Qos2(a) => p2p("qos2", a, Some(2)),
        Scenario::Latency(mut a) => {
            if a.msg.rate == 0 {
                a.msg.rate = 50_000;
            }
            p2p("latency", a, None)
        }
        Scenario::Fanin(a) => fanin(a),
        Scenario::Fanout(a) => fanout(a),
        Scenario::MultiTenant(a) => multi_tenant(a),
        Scenario::NoisyNeighbour(a) => noisy(a),
        Scenario::Conn(a) => conn::run(a),
        Scenario::Handshake(a) => handshake::run(a),
        Scenario::Durable(a) => durable::run(a),
    };
    if let Err(e) = r {
        eprintln!("coremq-loadgen: {e}");
        std::process::exit(1);
    }
}

fn group(name: &str, m: &Msg, qos: u8, pubs: Vec<PubSpec>, subs: Vec<SubSpec>) -> Res<Group> {
    Ok(Group {
        name: name.into(),
        qos: client::qos(qos)?,
        size: m.size,
        rate: m.rate as f64,
        inflight: m.inflight,
        pubs,
        subs,
        background: false,
        persistent_subscribers: m.persistent_subscribers,
    })
}

fn pairs(prefix: &str, n: usize, login: &flows::Login) -> (Vec<PubSpec>, Vec<SubSpec>) {
    let pubs = (0..n).map(|i| PubSpec { topic: format!("{prefix}/{i}"), login: login.clone() }).collect();
    let subs = (0..n)
        .map(|i| SubSpec { filters: vec![format!("{prefix}/{i}")], login: login.clone(), expects: vec![i] })
        .collect();
    (pubs, subs)
}

fn p2p(name: &str, a: P2p, qos: Option<u8>) -> Res<()> {
    let (pubs, subs) = pairs("lg/p2p", a.pairs, &a.common.login());
    let g = group(name, &a.msg, qos.unwrap_or(a.msg.qos), pubs, subs)?;
    run_and_report(name, &a.common, vec![g], json!({"pairs": a.pairs, "size": a.msg.size}))
}

fn fanin(a: Fanin) -> Res<()> {
    let login = a.common.login();
    let pubs =
        (0..a.publishers).map(|i| PubSpec { topic: format!("lg/fanin/{i}"), login: login.clone() }).collect();
    let subs =
        vec![SubSpec { filters: vec!["lg/fanin/+".into()], login, expects: (0..a.publishers).collect() }];
    let g = group("fanin", &a.msg, a.msg.qos, pubs, subs)?;
    run_and_report("fanin", &a.common, vec![g], json!({"publishers": a.publishers, "size": a.msg.size}))
}

fn fanout(a: Fanout) -> Res<()> {
    let login = a.common.login();
    let pubs =
        (0..a.publishers).map(|_| PubSpec { topic: "lg/fanout".into(), login: login.clone() }).collect();
    let subs = (0..a.subscribers)
        .map(|_| SubSpec {
            filters: vec!["lg/fanout".into()],
            login: login.clone(),
            expects: (0..a.publishers).collect(),
        })
        .collect();
    let g = group("fanout", &a.msg, a.msg.qos, pubs, subs)?;
    let extra = json!({"publishers": a.publishers, "subscribers": a.subscribers, "size": a.msg.size});
    run_and_report("fanout", &a.common, vec![g], extra)
}

fn multi_tenant(a: MultiTenant) -> Res<()> {
    let (mut pubs, mut subs) = (Vec::new(), Vec::new());
    for org in 0..a.orgs {
        let login = Some((a.user_template.replace("{org}", &org.to_string()), a.common.password.clone()));
        // Identical topic names in every org: isolation keeps them apart.
        let (p, s) = pairs("lg/mt", a.pairs_per_org, &login);
        let base = pubs.len();
        pubs.extend(p);
        subs.extend(s.into_iter().map(|mut s| {
            s.expects = s.expects.iter().map(|i| i + base).collect();
            s
        }));
    }
    let g = group("multi-tenant", &a.msg, a.msg.qos, pubs, subs)?;
    let extra = json!({"orgs": a.orgs, "pairs_per_org": a.pairs_per_org, "size": a.msg.size});
    run_and_report("multi-tenant", &a.common, vec![g], extra)
}

/// Runs the groups once and prints the table, the JSON line and (optionally) the report.
fn run_and_report(scenario: &str, c: &Common, groups: Vec<Group>, extra: Value) -> Res<()> {
    let t = c.target()?;
    let cpu = CpuMeter::start(c.broker_pid);
    let r = flows::run(
        &t,
        &groups,
        Duration::from_secs(c.duration),
        Duration::from_secs(3),
        &Progress::new(scenario),
    )?;
    let cpu = cpu.stop();
    let mut out = format!(
        "scenario {scenario}  transport {:?}  duration {:.1} s  {}\n",
        c.transport,
        r.elapsed,
        extra.to_string().trim_matches(|ch| ch == '{' || ch == '}')
    );
    let mut gj = Vec::new();
    for g in &r.groups {
        let (text, v) = stats::group_report(g, r.elapsed, &cpu, &json!({}));
        out.push_str(&text);
        gj.push(v);
    }
    let (cpu_text, cpu_json) = stats::cpu_report(&cpu);
    out.push_str(&cpu_text);
    let mut j = json!({"label": c.label, "scenario": scenario, "transport": format!("{:?}", c.transport).to_lowercase(), "elapsed_s": r.elapsed});
    stats::merge(&mut j, &extra);
    stats::merge(&mut j, &cpu_json);
    if let [one] = gj.as_slice() {
        stats::merge(&mut j, one); // single-group runs: the figures at top level too
    }
    j["groups"] = Value::Array(gj);
    print!("{out}");
    println!("{j}");
    if let Some(dir) = &c.report {
        let series: Vec<report::Series<'_>> =
            r.groups.iter().map(|g| report::Series { label: g.name.clone(), group: g }).collect();
        report::write(dir, &format!("coremq-loadgen {scenario} {}", c.label), &series, &j)?;
        eprintln!("report: {}", dir.join("index.html").display());
    }
    Ok(())
}

fn noisy(a: Noisy) -> Res<()> {
    let c = &a.common;
    let t = c.target()?;
    let login = |u: &Option<String>, p: &str| u.as_ref().map(|u| (u.clone(), p.to_string()));
    let victim_login = login(&a.victim_user, &a.victim_password);
    let noisy_login = login(&a.noisy_user, &a.noisy_password);
    let (vp, vs) = pairs("lg/victim", a.victim_pairs, &victim_login);
    let victim = Group {
        name: "victim".into(),
        qos: mqttbytes::QoS::AtMostOnce,
        size: a.size,
        rate: a.victim_rate as f64,
        inflight: 100,
        pubs: vp,
        subs: vs,
        background: false,
        persistent_subscribers: false,
    };
    let (np, mut ns) = pairs("lg/noisy", a.noisy_pairs, &noisy_login);
    if a.noisy_unsubscribed {
        ns.clear();
    }
    let noisy = Group {
        name: "noisy".into(),
        qos: client::qos(a.noisy_qos)?,
        size: a.size,
        rate: a.noisy_rate as f64,
        inflight: 100,
        pubs: np,
        subs: ns,
        background: a.noisy_background,
        persistent_subscribers: false,
    };
    let d = Duration::from_secs(c.duration);
    let solo_cpu = CpuMeter::start(c.broker_pid);
    let solo =
        flows::run(&t, std::slice::from_ref(&victim), d, Duration::from_secs(3), &Progress::new("solo"))?;
    let solo_cpu = solo_cpu.stop();
    std::thread::sleep(Duration::from_millis(500));
    let shared_cpu = CpuMeter::start(c.broker_pid);
    let shared = flows::run(&t, &[victim, noisy], d, Duration::from_secs(3), &Progress::new("shared"))?;
    let shared_cpu = shared_cpu.stop();
    let mut out = format!(
        "scenario noisy-neighbour  transport {:?}  duration {} s each phase\n",
        c.transport, c.duration
    );
    let mut gj = Vec::new();
    for (phase, r, cpu) in [("solo", &solo, &solo_cpu), ("shared", &shared, &shared_cpu)] {
        out.push_str(&format!("phase {phase}\n"));
        for g in &r.groups {
            let (text, v) = stats::group_report(g, r.elapsed, cpu, &json!({"phase": phase}));
            out.push_str(&text);
            gj.push(v);
        }
        out.push_str(&stats::cpu_report(cpu).0);
    }
    let (vs_, vsh) = (&solo.groups[0], &shared.groups[0]);
    let p99_solo = stats::us(&vs_.hist, 0.99);
    let p99_shared = stats::us(&vsh.hist, 0.99);
    let p99_ratio = p99_shared / p99_solo.max(1.0);
    let tp_solo = vs_.received as f64 / solo.elapsed;
    let tp_shared = vsh.received as f64 / shared.elapsed;
    let tp_loss = 1.0 - tp_shared / tp_solo.max(1.0);
    let pass = p99_ratio <= a.max_p99_ratio && tp_loss <= a.max_throughput_loss;
    out.push_str(&format!(
        "victim p99 {p99_solo:.0} us solo -> {p99_shared:.0} us shared ({p99_ratio:.2}x, target <= {:.2}x)\n\
         victim throughput {tp_solo:.0} -> {tp_shared:.0} msg/s ({:+.1}%, target loss <= {:.0}%)\n\
         isolation {}\n",
        a.max_p99_ratio,
        -tp_loss * 100.0,
        a.max_throughput_loss * 100.0,
        if pass { "PASS" } else { "FAIL" }
    ));
    let j = json!({
        "label": c.label, "scenario": "noisy-neighbour", "victim_rate": a.victim_rate, "noisy_rate": a.noisy_rate,
        "victim_p99_solo_us": p99_solo, "victim_p99_shared_us": p99_shared, "p99_ratio": p99_ratio,
        "victim_msg_per_s_solo": tp_solo, "victim_msg_per_s_shared": tp_shared, "throughput_loss": tp_loss,
        "noisy_sent": shared.groups[1].sent, "noisy_received": shared.groups[1].received,
        "pass": pass, "groups": gj,
    });
    print!("{out}");
    println!("{j}");
    if let Some(dir) = &c.report {
        let series = vec![
            report::Series { label: "victim solo".into(), group: vs_ },
            report::Series { label: "victim shared".into(), group: vsh },
            report::Series { label: "noisy".into(), group: &shared.groups[1] },
        ];
        report::write(dir, &format!("coremq-loadgen noisy-neighbour {}", c.label), &series, &j)?;
        eprintln!("report: {}", dir.join("index.html").display());
    }
    Ok(())
}
