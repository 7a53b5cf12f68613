//! `handshake`: full TLS handshakes (no resumption) per second and per broker CPU-second,
//! optionally with MQTT CONNECT/CONNACK on each connection (any login method).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;

use crate::client::mqtt_connect;
use crate::stats::cpu_secs;
use crate::transport::{self, Conn, Kind};
use crate::Res;

/// Options of the `handshake` scenario.
#[derive(Parser, Debug, Clone)]
pub struct Handshake {
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

/// Runs the scenario.
pub fn run(a: Handshake) -> Res<()> {
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
                        mqtt_connect(c, &format!("hs-{t}-{n}"), login, 60).map(|_| ())
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
