//! `conn`: opens idle MQTT connections at a bounded rate and holds them. Reports the connect
//! rate, failures, connect latency, the broker's RSS growth per connection (from
//! `/proc/PID/status`), and whether every held connection still answers a PINGREQ at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Args;
use hdrhistogram::Histogram;
use mqttbytes::v4;
use serde_json::json;

use crate::stats::{rss_bytes, CpuMeter, Progress};
use crate::transport::Conn;
use crate::{Common, Res};

/// Options of the `conn` scenario (`--duration` is how long the connections are held).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections per second over all threads (0: as fast as the broker accepts).
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Connecting threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Keep-alive sent in CONNECT, seconds.
    #[arg(long, default_value_t = 300)]
    keep_alive: u16,
}

/// Runs the scenario.
pub fn run(a: ConnArgs) -> Res<()> {
    let c = &a.common;
    let t = Arc::new(c.target()?);
    // One descriptor per connection: lift our soft limit to the hard one.
    let _ = rlimit::increase_nofile_limit(a.connections as u64 + 1024);
    let rss0 = c.broker_pid.and_then(rss_bytes);
    let cpu = CpuMeter::start(c.broker_pid);
    let failed = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let threads = a.threads.clamp(1, a.connections.max(1));
    let per_thread_rate = if a.rate > 0 { a.rate as f64 / threads as f64 } else { 0.0 };
    let start = Instant::now();
    let progress = Progress::new("conn");
    progress.start(Duration::from_secs_f64(a.connections as f64 / a.rate.max(1) as f64));
    let mut handles = Vec::new();
    for th in 0..threads {
        let (t, failed, opened, first_error, login) =
            (t.clone(), failed.clone(), opened.clone(), first_error.clone(), c.login());
        let n = a.connections / threads + usize::from(th < a.connections % threads);
        let keep_alive = a.keep_alive;
        handles.push(std::thread::spawn(move || {
            let mut held: Vec<Conn> = Vec::with_capacity(n);
            let mut hist = Histogram::<u64>::new(3).expect("valid precision");
            let pid = std::process::id();
            for i in 0..n {
                if per_thread_rate > 0.0 {
                    let due = start + Duration::from_secs_f64(i as f64 / per_thread_rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let t0 = Instant::now();
                let login = login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                match t.connect(&format!("lg-conn-{pid}-{th}-{i}"), login, keep_alive) {
                    Ok((s, _)) => {
                        let _ = hist.record(t0.elapsed().as_micros() as u64);
                        held.push(s);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert(e);
                        }
                    }
                }
            }
            (held, hist)
        }));
    }
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let (o, f) = (opened.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        progress.update_msg(start.elapsed(), format!("opened {o}  failed {f}"));
    }
    progress.finish();
    let mut held = Vec::new();
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for h in handles {
        let (conns, h) = h.join().map_err(|_| "a connecting thread panicked")?;
        held.extend(conns);
        hist.add(&h).map_err(|e| e.to_string())?;
    }
    let open_secs = start.elapsed().as_secs_f64();
    let open_cpu = cpu.stop();
    // Let the broker settle, then read its RSS with every connection open.
    std::thread::sleep(Duration::from_secs(1));
    let rss_early = c.broker_pid.and_then(rss_bytes);
    // The steady-state figure is taken at the end of the hold: allocators keep memory freed
    // after the connect burst for a while before giving it back.
    std::thread::sleep(Duration::from_secs(c.duration.saturating_sub(1)));
    let rss1 = c.broker_pid.and_then(rss_bytes);
    let alive = ping_all(&mut held);
    let ok = held.len() as u64;
    drop(held);
    let failed = failed.load(Ordering::Relaxed);
    let per_conn = match (rss0, rss1) {
        (Some(a0), Some(a1)) if ok > 0 => Some(a1.saturating_sub(a0) as f64 / ok as f64),
        _ => None,
    };
    let rate = ok as f64 / open_secs;
    let per_cpu = open_cpu.broker.filter(|x| *x > 0.0).map(|x| ok as f64 / x);
    println!(
        "scenario conn  transport {:?}  connections {}  target rate {}/s  threads {threads}",
        c.transport, a.connections, a.rate
    );
    println!("opened {ok}  failed {failed}  still answering PINGREQ after {} s: {alive}", c.duration);
    println!(
        "connect rate {rate:.0}/s  per broker CPU-second {}  latency us p50 {} p99 {} max {}",
        per_cpu.map_or("n/a".into(), |v| format!("{v:.0}")),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!(
        "broker RSS {} -> {} (1 s after the burst) -> {} (end of hold)  per connection {}",
        rss0.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1048576.0)),
        rss_early.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1048576.0)),
        rss1.map_or("n/a".into(), |v| format!("{:.1} MiB", v as f64 / 1048576.0)),
        per_conn.map_or("n/a".into(), |v| format!("{v:.0} B"))
    );
    print!("{}", crate::stats::cpu_report(&open_cpu).0);
    if let Ok(f) = first_error.lock() {
        if let Some(e) = f.as_ref() {
            println!("first failure: {e}");
        }
    }
    let j = json!({
        "label": c.label, "scenario": "conn", "transport": format!("{:?}", c.transport).to_lowercase(),
        "connections": a.connections, "rate_target": a.rate, "opened": ok, "failed": failed, "alive": alive,
        "connect_per_s": rate, "connect_per_broker_cpu_s": per_cpu, "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99), "broker_rss_before": rss0, "broker_rss_after_burst": rss_early, "broker_rss_after": rss1,
        "rss_per_conn_bytes": per_conn, "broker_cpu_s": open_cpu.broker, "loadgen_cpu_s": open_cpu.loadgen,
        "loadgen_bound": open_cpu.loadgen_bound,
    });
    println!("{j}");
    if failed > 0 && ok == 0 {
        return Err("no connection succeeded".into());
    }
    Ok(())
}

/// Sends PINGREQ on every connection and counts PINGRESPs (2 s to answer, all in parallel).
fn ping_all(held: &mut [Conn]) -> u64 {
    let mut ping = BytesMut::new();
    let _ = v4::PingReq.write(&mut ping);
    let mut sent = vec![false; held.len()];
    for (i, s) in held.iter_mut().enumerate() {
        sent[i] = s.write_all(&ping).is_ok();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive = 0;
    let mut buf = [0u8; 64];
    for (i, s) in held.iter_mut().enumerate() {
        if !sent[i] {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left));
        // PINGRESP is 0xD0 0x00.
        if matches!(s.read(&mut buf), Ok(n) if n >= 2 && buf[0] == 0xD0) {
            alive += 1;
        }
    }
    alive
}
