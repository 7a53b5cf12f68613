//! Measurements around a run: CPU seconds and RSS from `/proc`, throughput timelines, the
//! progress bar, and the two outputs (a human table and one JSON line).

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::flows::{GroupResult, BUCKET};

/// Counts per [`BUCKET`] since the start of publishing.
#[derive(Default, Clone, Debug)]
pub struct Timeline(pub Vec<u64>);

impl Timeline {
    /// Adds `n` at time `at` since the start.
    pub fn bump(&mut self, at: Duration, n: u64) {
        let i = (at.as_nanos() / BUCKET.as_nanos()) as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += n;
    }

    /// Adds another timeline bucket by bucket.
    pub fn add(&mut self, o: &Timeline) {
        if o.0.len() > self.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a += b;
        }
    }

    /// Rates per second, one per bucket.
    pub fn per_second(&self) -> Vec<f64> {
        let k = 1.0 / BUCKET.as_secs_f64();
        self.0.iter().map(|n| *n as f64 * k).collect()
    }
}

/// User + system CPU seconds of a process (`self` for ourselves).
pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(after) = s.rfind(')') else { return 0.0 };
    let f: Vec<&str> = s[after + 2..].split(' ').collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds of the broker and of ourselves over a stretch of time.
pub struct CpuMeter {
    broker: Option<u32>,
    broker0: f64,
    self0: f64,
    t0: Instant,
}

/// What a [`CpuMeter`] measured.
#[derive(Clone, Copy, Debug)]
pub struct CpuUse {
    /// Broker CPU seconds, if its pid was given.
    pub broker: Option<f64>,
    /// Our own CPU seconds.
    pub loadgen: f64,
    /// Wall seconds.
    pub wall: f64,
    /// Whether we, not the broker, were the bottleneck: our CPU use was near every core we
    /// may run on, or near one core per busy thread.
    pub loadgen_bound: bool,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start(broker: Option<u32>) -> CpuMeter {
        CpuMeter {
            broker,
            broker0: broker.map_or(0.0, |p| cpu_secs(&p.to_string())),
            self0: cpu_secs("self"),
            t0: Instant::now(),
        }
    }

    /// Stops and reports.
    pub fn stop(&self) -> CpuUse {
        let wall = self.t0.elapsed().as_secs_f64();
        let loadgen = cpu_secs("self") - self.self0;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuUse {
            broker: self.broker.map(|p| cpu_secs(&p.to_string()) - self.broker0),
            loadgen,
            wall,
            loadgen_bound: loadgen / wall > 0.9 * cores,
        }
    }
}

/// A progress bar on stderr while publishing (hidden when stderr is not a terminal).
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for one scenario phase.
    pub fn new(label: &str) -> Progress {
        let pb = ProgressBar::hidden();
        pb.set_prefix(label.to_string());
        Progress(pb)
    }

    /// Shows the bar for `d` of publishing.
    pub fn start(&self, d: Duration) {
        if console_is_tty() {
            self.0.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.0.set_length(d.as_millis() as u64);
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.0.set_style(style);
    }

    /// Updates with the totals so far.
    pub fn update(&self, at: Duration, sent: u64, received: u64) {
        self.update_msg(at, format!("sent {sent}  received {received}"));
    }

    /// Updates with a message of the scenario's own.
    pub fn update_msg(&self, at: Duration, msg: String) {
        self.0.set_position(at.as_millis() as u64);
        self.0.set_message(msg);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Microseconds at quantile `q` of a histogram in ns.
pub fn us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The human lines and the JSON object for one group.
pub fn group_report(g: &GroupResult, elapsed: f64, cpu: &CpuUse, json_extra: &Value) -> (String, Value) {
    let rate = g.received as f64 / elapsed;
    let sent_rate = g.sent as f64 / elapsed;
    let per_cpu = cpu.broker.filter(|c| *c > 0.0).map(|c| g.received as f64 / c);
    let mut text = String::new();
    text.push_str(&format!(
        "[{}] pubs {}  subs {}  qos {}  rate {}\n",
        g.name,
        g.pubs,
        g.subs,
        g.qos,
        if g.rate == 0.0 { "closed-loop".into() } else { format!("{:.0}/s", g.rate) }
    ));
    text.push_str(&format!(
        "  sent {}  acked {}  received {}  lost {}  duplicated {}  out-of-order {}  foreign {}\n",
        g.sent, g.acked, g.received, g.lost, g.duplicated, g.out_of_order, g.foreign
    ));
    text.push_str(&format!(
        "  throughput {rate:.0} msg/s delivered ({sent_rate:.0}/s sent)   per broker CPU-second {}\n",
        per_cpu.map_or("n/a".into(), |v| format!("{v:.0}"))
    ));
    let h = &g.hist;
    if !h.is_empty() {
        text.push_str(&format!(
            "  latency us  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}\n",
            us(h, 0.5),
            us(h, 0.9),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1000.0
        ));
    }
    let mut v = json!({
        "group": g.name, "pubs": g.pubs, "subs": g.subs, "qos": g.qos, "rate_target": g.rate,
        "sent": g.sent, "acked": g.acked, "received": g.received, "lost": g.lost,
        "duplicated": g.duplicated, "out_of_order": g.out_of_order, "foreign": g.foreign,
        "msg_per_s": rate, "sent_per_s": sent_rate, "msg_per_broker_cpu_s": per_cpu,
        "p50_us": us(h, 0.5), "p90_us": us(h, 0.9), "p99_us": us(h, 0.99), "p999_us": us(h, 0.999),
        "max_us": h.max() as f64 / 1000.0,
    });
    merge(&mut v, json_extra);
    (text, v)
}

/// The CPU line and its JSON fields.
pub fn cpu_report(cpu: &CpuUse) -> (String, Value) {
    let text = format!(
        "cpu s  broker {}  loadgen {:.2}{}\n",
        cpu.broker.map_or("n/a".into(), |c| format!("{c:.2}")),
        cpu.loadgen,
        if cpu.loadgen_bound {
            "  (loadgen-bound: the load generator saturated its cores; the broker may go faster)"
        } else {
            ""
        }
    );
    (
        text,
        json!({"broker_cpu_s": cpu.broker, "loadgen_cpu_s": cpu.loadgen, "loadgen_bound": cpu.loadgen_bound, "measured_s": cpu.wall}),
    )
}

/// Copies the fields of `extra` (an object) into `v`.
pub fn merge(v: &mut Value, extra: &Value) {
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
}
