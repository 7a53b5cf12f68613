//! `durable`: QoS 1 publishers streaming into the queues of offline persistent subscribers,
//! the case where a broker must store each message before it acknowledges it. Reports
//! acknowledged msg/s, acknowledgement latency (PUBLISH written to PUBACK read) and msg per
//! broker CPU-second; then each subscriber reconnects and the messages it gets back are
//! counted (a session queue is bounded, so at most its bound per subscriber).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;

use crate::client::{mqtt_connect_session, read_packet, subscribe, Target};
use crate::stats::cpu_secs;
use crate::transport::Kind;
use crate::Res;

/// Options of the `durable` scenario.
#[derive(Parser, Debug, Clone)]
pub struct Durable {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Publishers, each with its own offline persistent subscriber.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// User name for CONNECT.
    #[arg(long)]
    username: Option<String>,
    #[arg(long, default_value = "")]
    password: String,
    #[arg(long)]
    broker_pid: Option<u32>,
    #[arg(long, default_value = "")]
    label: String,
}

/// Runs the scenario.
pub fn run(a: Durable) -> Res<()> {
    let t = Target::new(&a.host, a.port, Kind::Tcp, None)?;
    let login = a.username.as_deref().map(|u| (u, a.password.as_str()));
    let tag = std::process::id();
    let sub_id = |i: usize| format!("lg-durable-sub-{tag}-{i}");
    let topic = |i: usize| format!("lg/durable/{tag}/{i}");
    // Persistent subscribers: subscribe, then go offline.
    for i in 0..a.publishers {
        let (mut s, mut rb) = mqtt_connect_session(&t, &sub_id(i), login, 60, false)?;
        subscribe(&mut s, &mut rb, &[topic(i)], QoS::AtLeastOnce)?;
        let mut b = BytesMut::new();
        v4::Disconnect.write(&mut b).map_err(|e| format!("{e:?}"))?;
        s.write_all(&b).map_err(|e| e.to_string())?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).map_err(|e| e.to_string())?));
    let broker_cpu0 = a.broker_pid.map(|p| cpu_secs(&p.to_string()));
    let self_cpu0 = cpu_secs("self");
    let start = Instant::now();
    let mut threads = Vec::new();
    for i in 0..a.publishers {
        let (w, _) = mqtt_connect_session(&t, &format!("lg-durable-pub-{tag}-{i}"), login, 60, true)?;
        let mut r = w.try_clone_tcp()?;
        let (stop, acked, hist, a2, topic) = (stop.clone(), acked.clone(), hist.clone(), a.clone(), topic(i));
        threads.push(std::thread::spawn(move || -> Res<u64> {
            let mine = Arc::new(AtomicU64::new(0));
            let window = a2.inflight.max(1);
            let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..=window).map(|_| AtomicU64::new(0)).collect());
            let outstanding = Arc::new(AtomicU64::new(0));
            let epoch = Instant::now();
            let reader = {
                let (sent_at, outstanding, acked, mine) =
                    (sent_at.clone(), outstanding.clone(), acked.clone(), mine.clone());
                std::thread::spawn(move || {
                    let mut local = Histogram::<u64>::new(3).expect("valid precision");
                    let mut rb = BytesMut::new();
                    while let Ok(p) = read_packet(&mut r, &mut rb) {
                        if let Packet::PubAck(ack) = p {
                            let t0 = sent_at[ack.pkid as usize].load(Ordering::Relaxed);
                            let now = epoch.elapsed().as_micros() as u64;
                            let _ = local.record(now.saturating_sub(t0).max(1));
                            acked.fetch_add(1, Ordering::Relaxed);
                            mine.fetch_add(1, Ordering::Relaxed);
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    local
                })
            };
            let mut w = w;
            let mut pkid: u16 = 0;
            let mut buf = BytesMut::new();
            while !stop.load(Ordering::Relaxed) {
                if outstanding.load(Ordering::Relaxed) >= window as u64 {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                pkid = pkid % window + 1;
                let mut p = v4::Publish::new(topic.clone(), QoS::AtLeastOnce, vec![b'd'; a2.size]);
                p.pkid = pkid;
                buf.clear();
                p.write(&mut buf).map_err(|e| format!("{e:?}"))?;
                sent_at[pkid as usize].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                outstanding.fetch_add(1, Ordering::Relaxed);
                w.write_all(&buf).map_err(|e| e.to_string())?;
            }
            // Wait for the last acknowledgements (bounded), then close.
            let until = Instant::now() + Duration::from_secs(5);
            while outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            w.shutdown();
            let local = reader.join().map_err(|_| "reader panicked")?;
            hist.lock().map_err(|_| "poisoned")?.add(&local).map_err(|e| e.to_string())?;
            Ok(mine.load(Ordering::Relaxed))
        }));
    }
    std::thread::sleep(Duration::from_secs(a.duration));
    stop.store(true, Ordering::Relaxed);
    let mut acked_each = Vec::new();
    for th in threads {
        acked_each.push(th.join().map_err(|_| "publisher panicked")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let broker_cpu = a.broker_pid.map(|p| cpu_secs(&p.to_string()) - broker_cpu0.unwrap_or(0.0));
    let self_cpu = cpu_secs("self") - self_cpu0;
    // The subscribers come back: count what their queues give back, then end their sessions.
    // A session queue holds at most QUEUE_BOUND messages (coremq's bound, and Mosquitto's
    // max_queued_messages in durable.sh): what it can give back is min(acked, bound).
    const QUEUE_BOUND: u64 = 10_000;
    let mut delivered = 0u64;
    let mut missing = 0u64;
    for i in 0..a.publishers {
        let (mut s, mut rb) = mqtt_connect_session(&t, &sub_id(i), login, 60, false)?;
        s.set_read_timeout(Some(Duration::from_millis(3000)));
        let mut b = BytesMut::new();
        let mut got = 0u64;
        while let Ok(Packet::Publish(p)) = read_packet(&mut s, &mut rb) {
            got += 1;
            if p.qos != QoS::AtMostOnce {
                b.clear();
                v4::PubAck::new(p.pkid).write(&mut b).map_err(|e| format!("{e:?}"))?;
                s.write_all(&b).map_err(|e| e.to_string())?;
            }
        }
        let _ = mqtt_connect_session(&t, &sub_id(i), login, 60, true)?; // discard the session
        delivered += got;
        missing += acked_each.get(i).copied().unwrap_or(0).min(QUEUE_BOUND).saturating_sub(got);
    }
    let acked = acked.load(Ordering::Relaxed);
    let h = hist.lock().map_err(|_| "poisoned")?;
    let rate = acked as f64 / elapsed;
    let per_cpu = broker_cpu.filter(|c| *c > 0.0).map(|c| acked as f64 / c);
    println!(
        "scenario durable  publishers {}  inflight {}  size {}  duration {elapsed:.1} s",
        a.publishers, a.inflight, a.size
    );
    println!(
        "acked {acked}  rate {rate:.0}/s  per broker CPU-second {}  delivered after reconnect {delivered}  missing {missing}",
        per_cpu.map_or("n/a".into(), |v| format!("{v:.0}"))
    );
    println!(
        "ack latency us  p50 {}  p99 {}  p99.9 {}  max {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    println!(
        "cpu s  broker {}  loadgen {self_cpu:.2}",
        broker_cpu.map_or("n/a".into(), |c| format!("{c:.2}"))
    );
    let json = serde_json::json!({
        "label": a.label, "scenario": "durable", "publishers": a.publishers, "inflight": a.inflight, "size": a.size,
        "elapsed_s": elapsed, "acked": acked, "per_s": rate, "per_broker_cpu_s": per_cpu, "delivered": delivered, "missing": missing,
        "ack_p50_us": h.value_at_quantile(0.5), "ack_p99_us": h.value_at_quantile(0.99), "ack_p999_us": h.value_at_quantile(0.999),
        "broker_cpu_s": broker_cpu, "loadgen_cpu_s": self_cpu,
    });
    println!("{json}");
    Ok(())
}
