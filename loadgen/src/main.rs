//! coremq-loadgen: end-to-end load against any MQTT broker.
//!
//! Scenarios so far: `p2p` (N publisher -> subscriber pairs; closed loop as fast as possible, or
//! open loop at `--rate` msg/s with latency measured from the *intended* send time, which
//! corrects coordinated omission). Every run reports sent/received/lost/duplicated/out-of-order,
//! throughput, latency percentiles (HDR histogram), the broker's CPU seconds (`--broker-pid`)
//! and our own, and flags runs where the load generator, not the broker, was the bottleneck.
//! The client side uses the `mqttbytes` codec: an implementation independent of the broker's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;

mod transport;
use transport::{Conn, Kind};

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
    /// Full TLS handshakes per second (no session resumption), optionally with MQTT CONNECT.
    Handshake(Handshake),
}

#[derive(Parser, Debug, Clone)]
struct Handshake {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// CA that signed the broker's certificate (tls, wss).
    #[arg(long, default_value = "")]
    cafile: String,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Also send CONNECT and wait for CONNACK on each connection.
    #[arg(long)]
    mqtt: bool,
    /// Transport (tcp gives the per-connection baseline without TLS).
    #[arg(long, value_enum, default_value_t = Kind::Tls)]
    transport: Kind,
    /// User name for CONNECT (`user@org`, `tok_…@org`, `any@org` with a JWT password).
    #[arg(long)]
    username: Option<String>,
    /// Password for CONNECT (a password, `tkn_…`, or a JWT).
    #[arg(long, default_value = "")]
    password: String,
    #[arg(long)]
    broker_pid: Option<u32>,
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Parser, Debug, Clone)]
struct P2p {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 1)]
    pairs: usize,
    /// QoS 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Open-loop total rate in msg/s (0: closed loop, as fast as the broker accepts).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged QoS 1 messages per publisher.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Broker process id, to report its CPU seconds.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A label for the JSON line (e.g. the broker's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Transport.
    #[arg(long, value_enum, default_value_t = Kind::Tcp)]
    transport: Kind,
    /// CA certificate (PEM) for tls and wss.
    #[arg(long)]
    cafile: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::P2p(a) => {
            if let Err(e) = p2p(a) {
                eprintln!("coremq-loadgen: {e}");
                std::process::exit(1);
            }
        }
        Scenario::Handshake(a) => {
            if let Err(e) = handshake(a) {
                eprintln!("coremq-loadgen: {e}");
                std::process::exit(1);
            }
        }
    }
}

type Res<T> = Result<T, String>;

fn cpu_secs(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(after) = s.rfind(')') else { return 0.0 };
    let f: Vec<&str> = s[after + 2..].split(' ').collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn connect(a: &P2p, id: &str) -> Res<Conn> {
    let tls = match (a.transport, &a.cafile) {
        (Kind::Tls | Kind::Wss, Some(ca)) => Some(transport::tls_config(ca)?),
        (Kind::Tls | Kind::Wss, None) => return Err("--cafile is required for tls and wss".into()),
        _ => None,
    };
    let s = Conn::connect(&a.host, a.port, a.transport, tls.as_ref())?;
    mqtt_connect(s, id, None)
}

fn mqtt_connect(mut s: Conn, id: &str, login: Option<(&str, &str)>) -> Res<Conn> {
    let mut buf = BytesMut::new();
    let mut c = v4::Connect::new(id);
    c.keep_alive = 60;
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    c.write(&mut buf).map_err(|e| format!("{e:?}"))?;
    s.write_all(&buf).map_err(|e| e.to_string())?;
    let mut rb = BytesMut::new();
    match read_packet(&mut s, &mut rb)? {
        Packet::ConnAck(ack) if ack.code == v4::ConnectReturnCode::Success => Ok(s),
        other => Err(format!("unexpected reply to CONNECT: {other:?}")),
    }
}

fn read_packet(s: &mut Conn, rb: &mut BytesMut) -> Res<Packet> {
    let mut chunk = [0u8; 65536];
    loop {
        match v4::read(rb, 1 << 24) {
            Ok(p) => return Ok(p),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("decode: {e:?}")),
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        rb.extend_from_slice(&chunk[..n]);
    }
}

struct SubStats {
    received: u64,
    lost: u64,
    dup: u64,
    reordered: u64,
    hist: Histogram<u64>,
}

fn p2p(a: P2p) -> Res<()> {
    if a.size < 16 {
        return Err("--size must be at least 16".into());
    }
    let qos = match a.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => return Err("--qos must be 0 or 1".into()),
    };
    if qos == QoS::AtLeastOnce && a.transport != Kind::Tcp {
        return Err("QoS 1 runs use --transport tcp (the ack reader needs a cloned socket)".into());
    }
    let epoch = Instant::now();
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let sent_total = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut subs = Vec::new();
    let mut streams = Vec::new();
    for i in 0..a.pairs {
        let mut s = connect(&a, &format!("lg-sub-{i}"))?;
        let mut buf = BytesMut::new();
        let mut sub = v4::Subscribe::new(format!("lg/{i}"), qos);
        sub.pkid = 1;
        sub.write(&mut buf).map_err(|e| format!("{e:?}"))?;
        s.write_all(&buf).map_err(|e| e.to_string())?;
        let mut rb = BytesMut::new();
        match read_packet(&mut s, &mut rb)? {
            Packet::SubAck(_) => {}
            other => return Err(format!("unexpected reply to SUBSCRIBE: {other:?}")),
        }
        streams.push((s, rb));
    }
    for (s, rb) in streams {
        let stop = stop_sub.clone();
        let results = results.clone();
        subs.push(std::thread::spawn(move || subscriber(s, rb, epoch, stop, results)));
    }
    let mut pubs = Vec::new();
    let start = Instant::now();
    for i in 0..a.pairs {
        let s = connect(&a, &format!("lg-pub-{i}"))?;
        let a2 = a.clone();
        let stop = stop_pub.clone();
        let sent = sent_total.clone();
        pubs.push(std::thread::spawn(move || publisher(s, i, a2, qos, epoch, stop, sent)));
    }
    let broker_cpu0 = a.broker_pid.map(|p| cpu_secs(&p.to_string()));
    let self_cpu0 = cpu_secs("self");
    std::thread::sleep(Duration::from_secs(a.duration));
    stop_pub.store(true, Ordering::Relaxed);
    for p in pubs {
        p.join().map_err(|_| "publisher panicked")??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Drain: give in-flight messages a moment, then stop the subscribers.
    std::thread::sleep(Duration::from_millis(500));
    stop_sub.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.join();
    }
    let broker_cpu = a.broker_pid.map(|p| cpu_secs(&p.to_string()) - broker_cpu0.unwrap_or(0.0));
    let self_cpu = cpu_secs("self") - self_cpu0;
    let sent = sent_total.load(Ordering::Relaxed);
    let r = results.lock().map_err(|_| "poisoned")?;
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut received, mut lost, mut dup, mut reordered) = (0, 0, 0, 0);
    for s in r.iter() {
        received += s.received;
        lost += s.lost;
        dup += s.dup;
        reordered += s.reordered;
        hist.add(&s.hist).map_err(|e| e.to_string())?;
    }
    let rate = received as f64 / elapsed;
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_cpu = broker_cpu.filter(|c| *c > 0.0).map(|c| received as f64 / c);
    // Our own CPU near one full core per thread pair means we may be what limits the run.
    let loadgen_bound = self_cpu / elapsed > 0.9 * (a.pairs.min(2) as f64);
    println!(
        "scenario p2p  pairs {}  qos {}  size {} B  duration {:.1} s  rate {}",
        a.pairs,
        a.qos,
        a.size,
        elapsed,
        if a.rate == 0 { "closed-loop".into() } else { a.rate.to_string() }
    );
    println!("sent {sent}  received {received}  lost {lost}  duplicated {dup}  out-of-order {reordered}");
    println!(
        "throughput {rate:.0} msg/s   per broker CPU-second {}",
        per_cpu.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "latency us  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        hist.max() as f64 / 1000.0
    );
    println!(
        "cpu s  broker {}  loadgen {self_cpu:.2}{}",
        broker_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        if loadgen_bound { "  (loadgen-bound: the load generator saturated its core)" } else { "" }
    );
    let json = serde_json::json!({
        "label": a.label, "scenario": "p2p", "pairs": a.pairs, "qos": a.qos, "size": a.size,
        "rate_target": a.rate, "elapsed_s": elapsed, "sent": sent, "received": received,
        "lost": lost, "duplicated": dup, "out_of_order": reordered, "msg_per_s": rate,
        "msg_per_broker_cpu_s": per_cpu, "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99),
        "p999_us": pct(0.999), "max_us": hist.max() as f64 / 1000.0, "broker_cpu_s": broker_cpu,
        "loadgen_cpu_s": self_cpu, "loadgen_bound": loadgen_bound,
    });
    println!("{json}");
    Ok(())
}

fn publisher(
    mut s: Conn,
    i: usize,
    a: P2p,
    qos: QoS,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Res<()> {
    // Encode one PUBLISH with mqttbytes, then patch sequence, time and packet id in place.
    let mut p = v4::Publish::new(format!("lg/{i}"), qos, vec![0u8; a.size]);
    if qos != QoS::AtMostOnce {
        p.pkid = 1;
    }
    let mut tmpl = BytesMut::new();
    p.write(&mut tmpl).map_err(|e| format!("{e:?}"))?;
    let tmpl = tmpl.to_vec();
    let payload_at = tmpl.len() - a.size;
    let pid_at = payload_at - 2;
    let acked = Arc::new(AtomicU64::new(0));
    let reader = if qos == QoS::AtLeastOnce {
        let mut r = s.try_clone_tcp()?;
        let acked = acked.clone();
        let stop = stop.clone();
        Some(std::thread::spawn(move || {
            let mut rb = BytesMut::new();
            while let Ok(p) = read_packet(&mut r, &mut rb) {
                if let Packet::PubAck(_) = p {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) && rb.is_empty() {
                    // keep draining until the socket closes
                }
            }
        }))
    } else {
        None
    };
    let per_pub_rate = if a.rate > 0 { a.rate as f64 / a.pairs as f64 } else { 0.0 };
    let start = Instant::now();
    let mut out = Vec::with_capacity(tmpl.len() * 64);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        out.clear();
        let batch = if per_pub_rate > 0.0 {
            // Open loop: send what is due now; the intended time goes in the payload.
            let due = (start.elapsed().as_secs_f64() * per_pub_rate) as u64;
            if due <= seq {
                std::thread::sleep(Duration::from_micros(20));
                continue;
            }
            (due - seq).min(64)
        } else {
            64
        };
        for _ in 0..batch {
            if qos == QoS::AtLeastOnce {
                while seq - acked.load(Ordering::Relaxed) >= a.inflight as u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
            let intended = if per_pub_rate > 0.0 {
                start + Duration::from_secs_f64(seq as f64 / per_pub_rate)
            } else {
                Instant::now()
            };
            let ns = intended.duration_since(epoch).as_nanos() as u64;
            let at = out.len();
            out.extend_from_slice(&tmpl);
            out[at + payload_at..at + payload_at + 8].copy_from_slice(&seq.to_be_bytes());
            out[at + payload_at + 8..at + payload_at + 16].copy_from_slice(&ns.to_be_bytes());
            if qos == QoS::AtLeastOnce {
                let pid = (seq % 65535 + 1) as u16;
                out[at + pid_at..at + pid_at + 2].copy_from_slice(&pid.to_be_bytes());
            }
            seq += 1;
        }
        s.write_all(&out).map_err(|e| e.to_string())?;
        sent.fetch_add(batch, Ordering::Relaxed);
    }
    if let Some(r) = reader {
        std::thread::sleep(Duration::from_millis(300));
        s.shutdown();
        let _ = r.join();
    }
    Ok(())
}

fn subscriber(
    mut s: Conn,
    mut rb: BytesMut,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<SubStats>>>,
) {
    s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut st = SubStats {
        received: 0,
        lost: 0,
        dup: 0,
        reordered: 0,
        hist: Histogram::new(3).expect("valid precision"),
    };
    let mut next: u64 = 0;
    let mut chunk = vec![0u8; 1 << 16];
    let mut ack = BytesMut::new();
    loop {
        loop {
            match v4::read(&mut rb, 1 << 24) {
                Ok(Packet::Publish(p)) => {
                    if p.payload.len() >= 16 {
                        let seq = u64::from_be_bytes(p.payload[..8].try_into().expect("8 bytes"));
                        let ns = u64::from_be_bytes(p.payload[8..16].try_into().expect("8 bytes"));
                        let now = epoch.elapsed().as_nanos() as u64;
                        let _ = st.hist.record(now.saturating_sub(ns).max(1));
                        st.received += 1;
                        if seq == next {
                            next += 1;
                        } else if seq > next {
                            st.lost += seq - next;
                            next = seq + 1;
                        } else {
                            // Either a duplicate or a late one counted as lost before.
                            if st.lost > 0 {
                                st.lost -= 1;
                                st.reordered += 1;
                            } else {
                                st.dup += 1;
                            }
                        }
                    }
                    if p.qos == QoS::AtLeastOnce {
                        let _ = v4::PubAck::new(p.pkid).write(&mut ack);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if !ack.is_empty() {
            // One write for all the acknowledgements of this read.
            let _ = s.write_all(&ack);
            ack.clear();
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => rb.extend_from_slice(&chunk[..n]),
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => {}
        }
    }
    if let Ok(mut r) = results.lock() {
        r.push(st);
    }
}

fn handshake(a: Handshake) -> Res<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = if matches!(a.transport, Kind::Tls | Kind::Wss) {
        transport::tls_config(&a.cafile)?
    } else {
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).map_err(|e| e.to_string())?));
    let broker_cpu0 = a.broker_pid.map(|p| cpu_secs(&p.to_string()));
    let self_cpu0 = cpu_secs("self");
    let start = Instant::now();
    let mut threads = Vec::new();
    for t in 0..a.threads {
        let (a, cfg, stop, ok, failed, hist) =
            (a.clone(), cfg.clone(), stop.clone(), ok.clone(), failed.clone(), hist.clone());
        threads.push(std::thread::spawn(move || {
            let mut local = Histogram::<u64>::new(3).expect("valid precision");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let r = Conn::connect(&a.host, a.port, a.transport, Some(&cfg)).and_then(|c| {
                    if a.mqtt {
                        let login = a.username.as_deref().map(|u| (u, a.password.as_str()));
                        mqtt_connect(c, &format!("hs-{t}-{n}"), login).map(|_| ())
                    } else {
                        Ok(())
                    }
                });
                n += 1;
                match r {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(a.duration));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let broker_cpu = a.broker_pid.map(|p| cpu_secs(&p.to_string()) - broker_cpu0.unwrap_or(0.0));
    let self_cpu = cpu_secs("self") - self_cpu0;
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let h = hist.lock().map_err(|_| "poisoned")?;
    let rate = ok as f64 / elapsed;
    let per_cpu = broker_cpu.filter(|c| *c > 0.0).map(|c| ok as f64 / c);
    let loadgen_bound = self_cpu / elapsed > 0.9;
    println!(
        "scenario handshake  transport {:?}  threads {}  mqtt {}  duration {elapsed:.1} s",
        a.transport, a.threads, a.mqtt
    );
    println!(
        "handshakes {ok}  failed {failed}  rate {rate:.0}/s  per broker CPU-second {}",
        per_cpu.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "handshake latency us  p50 {}  p99 {}  max {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    println!(
        "cpu s  broker {}  loadgen {self_cpu:.2}{}",
        broker_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
        if loadgen_bound { "  (loadgen-bound)" } else { "" }
    );
    let json = serde_json::json!({
        "label": a.label, "scenario": "handshake", "transport": format!("{:?}", a.transport), "mqtt": a.mqtt, "threads": a.threads, "elapsed_s": elapsed,
        "handshakes": ok, "failed": failed, "per_s": rate, "per_broker_cpu_s": per_cpu,
        "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
        "broker_cpu_s": broker_cpu, "loadgen_cpu_s": self_cpu, "loadgen_bound": loadgen_bound,
    });
    println!("{json}");
    Ok(())
}
