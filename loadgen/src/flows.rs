//! The publish/subscribe engine behind every message scenario: groups of publishers and
//! subscribers, each a thread with its own connection, all started together after every client
//! is connected and subscribed.
//!
//! Every payload starts with a 20-byte header: publisher id (u32), sequence number (u64) and
//! the *intended* send time (u64 ns since the run's epoch). Open-loop publishers stamp the time
//! the schedule says, not the time they got to send, so latency includes any queueing the
//! broker caused (coordinated omission corrected). Subscribers track each publisher's sequence
//! to count loss, duplicates, reordering, and messages from publishers they should never see.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use mqttbytes::v4::{self, Packet};
use mqttbytes::QoS;

use crate::client::{self, Target};
use crate::stats::{Progress, Timeline};
use crate::transport::Conn;
use crate::Res;

/// Bytes of the header every payload carries.
pub const HEADER: usize = 20;
/// Width of a timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// A login: user name and password.
pub type Login = Option<(String, String)>;

/// One publisher: its topic and credentials.
#[derive(Clone, Debug)]
pub struct PubSpec {
    /// Topic it publishes to.
    pub topic: String,
    /// Credentials.
    pub login: Login,
}

/// One subscriber: its filters, credentials and the group's publishers it must hear from.
#[derive(Clone, Debug)]
pub struct SubSpec {
    /// Topic filters.
    pub filters: Vec<String>,
    /// Credentials.
    pub login: Login,
    /// Indices into the group's publishers whose every message this subscriber should get.
    pub expects: Vec<usize>,
}

/// A set of publishers and subscribers with one QoS, payload size and rate.
#[derive(Clone, Debug)]
pub struct Group {
    /// Name in reports (`p2p`, `noisy`, `victim`, ...).
    pub name: String,
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload bytes (at least [`HEADER`]).
    pub size: usize,
    /// Total msg/s over the group's publishers; 0 is closed loop (as fast as accepted).
    pub rate: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub inflight: usize,
    /// Publishers.
    pub pubs: Vec<PubSpec>,
    /// Subscribers.
    pub subs: Vec<SubSpec>,
    /// Run this group's client threads under `SCHED_IDLE`: on a machine where the load
    /// generator shares a core between groups, a background flood then never delays the
    /// measured group's sends and receives on the client side.
    pub background: bool,
    /// Subscribers connect with Clean Session off (persistent sessions).
    pub persistent_subscribers: bool,
}

/// What one group did.
pub struct GroupResult {
    /// The group's name.
    pub name: String,
    /// Publishers and subscribers.
    pub pubs: usize,
    /// Subscribers.
    pub subs: usize,
    /// QoS.
    pub qos: u8,
    /// Target rate (0: closed loop).
    pub rate: f64,
    /// Messages written to the broker.
    pub sent: u64,
    /// QoS 1/2 messages the broker completed (PUBACK, PUBCOMP).
    pub acked: u64,
    /// Messages delivered to subscribers (deliveries, for fan-out).
    pub received: u64,
    /// Expected deliveries that never came.
    pub lost: u64,
    /// Deliveries of a message already delivered.
    pub duplicated: u64,
    /// Deliveries after a later message of the same publisher.
    pub out_of_order: u64,
    /// Deliveries from publishers the subscriber must not hear from (isolation failures).
    pub foreign: u64,
    /// End-to-end latency, ns.
    pub hist: Histogram<u64>,
    /// Deliveries per bucket.
    pub received_timeline: Timeline,
    /// Messages sent per bucket.
    pub sent_timeline: Timeline,
}

/// A whole run.
pub struct RunResult {
    /// Seconds of publishing.
    pub elapsed: f64,
    /// Per group.
    pub groups: Vec<GroupResult>,
}

struct Connected {
    pubs: Vec<Vec<(Conn, BytesMut)>>,
    subs: Vec<Vec<(Conn, BytesMut)>>,
}

/// Connects every subscriber (and subscribes), then every publisher.
fn connect_all(t: &Target, groups: &[Group], tag: &str) -> Res<Connected> {
    fn login(l: &Login) -> Option<(&str, &str)> {
        l.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
    let mut subs = Vec::new();
    let st = t.for_subscribers();
    for g in groups {
        let mut v = Vec::new();
        for (i, s) in g.subs.iter().enumerate() {
            let id = format!("lg-{tag}-{}-s{i}", g.name);
            let connected = if g.persistent_subscribers {
                client::mqtt_connect_session(&st, &id, login(&s.login), 60, false)
            } else {
                st.connect(&id, login(&s.login), 60)
            };
            let (mut c, mut rb) = connected.map_err(|e| format!("{id}: {e}"))?;
            client::subscribe(&mut c, &mut rb, &s.filters, g.qos).map_err(|e| format!("{id}: {e}"))?;
            v.push((c, rb));
        }
        subs.push(v);
    }
    let mut pubs = Vec::new();
    for g in groups {
        let mut v = Vec::new();
        for (i, p) in g.pubs.iter().enumerate() {
            let id = format!("lg-{tag}-{}-p{i}", g.name);
            v.push(t.connect(&id, login(&p.login), 60).map_err(|e| format!("{id}: {e}"))?);
        }
        pubs.push(v);
    }
    Ok(Connected { pubs, subs })
}

/// Counters the progress display and the drain logic read while the run goes on.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    received: AtomicU64,
}

/// Runs `groups` for `duration`: connect everything, start all publishers at once, stop them,
/// wait until deliveries stop (at most `drain`), and collect.
pub fn run(
    t: &Target,
    groups: &[Group],
    duration: Duration,
    drain: Duration,
    progress: &Progress,
) -> Res<RunResult> {
    for g in groups {
        if g.size < HEADER {
            return Err(format!("--size must be at least {HEADER} (the payload header)"));
        }
        if g.qos != QoS::AtMostOnce && t.kind != crate::transport::Kind::Tcp {
            return Err("QoS 1 and 2 runs use --transport tcp (the ack reader needs a second handle)".into());
        }
    }
    let tag = format!("{}", std::process::id());
    let conns = connect_all(t, groups, &tag)?;
    let epoch = Instant::now();
    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let live: Vec<Arc<Live>> = groups.iter().map(|_| Arc::new(Live::default())).collect();
    let mut pub_base = 0u32;
    let mut sub_threads = Vec::new();
    let mut pub_threads = Vec::new();
    let start = epoch + Duration::from_millis(20);
    for ((g, (subs, pubs)), live) in groups.iter().zip(conns.subs.into_iter().zip(conns.pubs)).zip(&live) {
        for (spec, (c, rb)) in g.subs.iter().zip(subs) {
            let expects: Vec<u32> = spec.expects.iter().map(|i| pub_base + *i as u32).collect();
            let ctx = SubCtx { epoch, start, stop: stop_sub.clone(), live: live.clone(), expects };
            let background = g.background;
            sub_threads.push(std::thread::spawn(move || {
                set_background(background);
                subscriber(c, rb, ctx)
            }));
        }
        let per_pub = if g.rate > 0.0 { g.rate / g.pubs.len().max(1) as f64 } else { 0.0 };
        for (i, (spec, (c, rb))) in g.pubs.iter().zip(pubs).enumerate() {
            let ctx = PubCtx {
                id: pub_base + i as u32,
                topic: spec.topic.clone(),
                qos: g.qos,
                size: g.size,
                rate: per_pub,
                inflight: g.inflight.clamp(1, 32_000),
                epoch,
                start,
                stop: stop_pub.clone(),
                live: live.clone(),
            };
            let background = g.background;
            pub_threads.push(std::thread::spawn(move || {
                set_background(background);
                publisher(c, rb, ctx)
            }));
        }
        pub_base += g.pubs.len() as u32;
    }
    progress.start(duration);
    while epoch.elapsed() < duration + Duration::from_millis(20) {
        std::thread::sleep(Duration::from_millis(100).min(duration));
        let (s, r) = live.iter().fold((0, 0), |(s, r), l| {
            (s + l.sent.load(Ordering::Relaxed), r + l.received.load(Ordering::Relaxed))
        });
        progress.update(epoch.elapsed().saturating_sub(Duration::from_millis(20)), s, r);
    }
    stop_pub.store(true, Ordering::Relaxed);
    let mut pub_out = Vec::new();
    for p in pub_threads {
        pub_out.push(p.join().map_err(|_| "a publisher panicked")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Drain: wait until deliveries stop for 300 ms (or `drain` passes).
    let drain_end = Instant::now() + drain;
    let mut last = u64::MAX;
    let mut quiet_since = Instant::now();
    while Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(50));
        let r: u64 = live.iter().map(|l| l.received.load(Ordering::Relaxed)).sum();
        if r != last {
            last = r;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    progress.finish();
    stop_sub.store(true, Ordering::Relaxed);
    let mut sub_out = Vec::new();
    for s in sub_threads {
        sub_out.push(s.join().map_err(|_| "a subscriber panicked")?);
    }
    // Collect per group. Publisher sent counts are global by id.
    let sent_by_id: Vec<u64> = pub_out.iter().map(|p| p.sent).collect();
    let mut results = Vec::new();
    let mut pi = 0usize;
    let mut si = 0usize;
    for g in groups {
        let mut r = GroupResult {
            name: g.name.clone(),
            pubs: g.pubs.len(),
            subs: g.subs.len(),
            qos: g.qos as u8,
            rate: g.rate,
            sent: 0,
            acked: 0,
            received: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
            hist: Histogram::new(3).map_err(|e| e.to_string())?,
            received_timeline: Timeline::default(),
            sent_timeline: Timeline::default(),
        };
        for p in &pub_out[pi..pi + g.pubs.len()] {
            r.sent += p.sent;
            r.acked += p.acked;
            r.sent_timeline.add(&p.timeline);
        }
        for s in &sub_out[si..si + g.subs.len()] {
            r.received += s.received;
            r.duplicated += s.dup;
            r.out_of_order += s.reordered;
            r.foreign += s.foreign;
            r.hist.add(&s.hist).map_err(|e| e.to_string())?;
            r.received_timeline.add(&s.timeline);
            for (id, st) in s.expects.iter().zip(&s.streams) {
                let unique = st.received - st.dup;
                r.lost += sent_by_id[*id as usize].saturating_sub(unique);
            }
        }
        pi += g.pubs.len();
        si += g.subs.len();
        results.push(r);
    }
    Ok(RunResult { elapsed, groups: results })
}

/// Moves the calling thread to `SCHED_IDLE` (Linux schedules threads individually): it runs
/// only when no normal thread wants its core.
fn set_background(on: bool) {
    if on {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain syscall on the calling thread (pid 0), with a valid parameter.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            eprintln!("warning: SCHED_IDLE refused: {}", std::io::Error::last_os_error());
        }
    }
}

struct PubCtx {
    id: u32,
    topic: String,
    qos: QoS,
    size: usize,
    rate: f64,
    inflight: usize,
    epoch: Instant,
    start: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
}

struct PubOut {
    sent: u64,
    acked: u64,
    timeline: Timeline,
}

/// What the ack reader of a QoS 1/2 publisher tells the writer.
struct Acks {
    completed: AtomicU64,
    /// The ack reader saw the connection end.
    closed: AtomicBool,
}

fn publisher(mut s: Conn, _rb: BytesMut, cx: PubCtx) -> Res<PubOut> {
    // Encode one PUBLISH with mqttbytes, then patch header and packet id in place.
    let mut p = v4::Publish::new(cx.topic.clone(), cx.qos, vec![0u8; cx.size]);
    if cx.qos != QoS::AtMostOnce {
        p.pkid = 1;
    }
    let mut tmpl = BytesMut::new();
    p.write(&mut tmpl).map_err(|e| format!("{e:?}"))?;
    let tmpl = tmpl.to_vec();
    let at = tmpl.len() - cx.size;
    let pid_at = at - 2;
    tmpl_check(&tmpl, at)?;
    let acks = Arc::new(Acks { completed: AtomicU64::new(0), closed: AtomicBool::new(false) });
    let (rel_tx, rel_rx) = mpsc::channel::<u16>();
    let reader = if cx.qos != QoS::AtMostOnce {
        let mut r = s.try_clone_tcp()?;
        let acks = acks.clone();
        let qos2 = cx.qos == QoS::ExactlyOnce;
        Some(std::thread::spawn(move || {
            let mut rb = BytesMut::new();
            while let Ok(p) = client::read_packet(&mut r, &mut rb) {
                match p {
                    Packet::PubAck(_) | Packet::PubComp(_) => {
                        acks.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Packet::PubRec(rec) if qos2 => {
                        let _ = rel_tx.send(rec.pkid);
                    }
                    _ => {}
                }
            }
            acks.closed.store(true, Ordering::Relaxed);
        }))
    } else {
        None
    };
    let mut timeline = Timeline::default();
    while Instant::now() < cx.start {
        std::hint::spin_loop();
    }
    let mut out = Vec::with_capacity(tmpl.len() * 64);
    let mut seq: u64 = 0;
    let write_rels = |out: &mut Vec<u8>| {
        while let Ok(pkid) = rel_rx.try_recv() {
            let mut b = BytesMut::new();
            let _ = v4::PubRel::new(pkid).write(&mut b);
            out.extend_from_slice(&b);
        }
    };
    while !cx.stop.load(Ordering::Relaxed) {
        out.clear();
        let batch = if cx.rate > 0.0 {
            // Open loop: send what is due now, stamped with its scheduled time.
            let due = (cx.start.elapsed().as_secs_f64() * cx.rate) as u64 + 1;
            if due <= seq {
                std::thread::sleep(Duration::from_micros(20));
                continue;
            }
            (due - seq).min(64)
        } else {
            64
        };
        let mut n = 0;
        while n < batch {
            if cx.qos != QoS::AtMostOnce && seq - acks.completed.load(Ordering::Relaxed) >= cx.inflight as u64
            {
                // Window full: flush what we have (and PUBRELs), then wait.
                write_rels(&mut out);
                if !out.is_empty() {
                    break;
                }
                if cx.stop.load(Ordering::Relaxed) {
                    break;
                }
                if acks.closed.load(Ordering::Relaxed) {
                    return Err(format!(
                        "{}: the broker closed the connection after {seq} messages ({} acknowledged; \
                         a window of {} may exceed its receive maximum)",
                        cx.topic,
                        acks.completed.load(Ordering::Relaxed),
                        cx.inflight
                    ));
                }
                std::thread::sleep(Duration::from_micros(20));
                continue;
            }
            let intended = if cx.rate > 0.0 {
                cx.start + Duration::from_secs_f64(seq as f64 / cx.rate)
            } else {
                Instant::now()
            };
            let ns = intended.duration_since(cx.epoch).as_nanos() as u64;
            let o = out.len();
            out.extend_from_slice(&tmpl);
            out[o + at..o + at + 4].copy_from_slice(&cx.id.to_be_bytes());
            out[o + at + 4..o + at + 12].copy_from_slice(&seq.to_be_bytes());
            out[o + at + 12..o + at + 20].copy_from_slice(&ns.to_be_bytes());
            if cx.qos != QoS::AtMostOnce {
                let pid = (seq % 65535 + 1) as u16;
                out[o + pid_at..o + pid_at + 2].copy_from_slice(&pid.to_be_bytes());
            }
            seq += 1;
            n += 1;
        }
        write_rels(&mut out);
        if out.is_empty() {
            continue;
        }
        s.write_all(&out).map_err(|e| {
            format!("{}: publish: {e} (after {seq} messages; the broker closed the connection)", cx.topic)
        })?;
        cx.live.sent.fetch_add(n, Ordering::Relaxed);
        timeline.bump(cx.start.elapsed(), n);
    }
    if let Some(r) = reader {
        // Let outstanding acknowledgements (and the QoS 2 handshakes) finish.
        let until = Instant::now() + Duration::from_secs(3);
        while acks.completed.load(Ordering::Relaxed) < seq && Instant::now() < until {
            let mut o = Vec::new();
            write_rels(&mut o);
            if !o.is_empty() {
                let _ = s.write_all(&o);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        s.shutdown();
        let _ = r.join();
    }
    Ok(PubOut { sent: seq, acked: acks.completed.load(Ordering::Relaxed), timeline })
}

/// The template's payload must be where we patch it.
fn tmpl_check(tmpl: &[u8], at: usize) -> Res<()> {
    if tmpl[at..].iter().all(|b| *b == 0) {
        Ok(())
    } else {
        Err("internal: PUBLISH template layout".into())
    }
}

struct SubCtx {
    epoch: Instant,
    start: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    expects: Vec<u32>,
}

#[derive(Default, Clone)]
struct Stream {
    next: u64,
    gaps: u64,
    received: u64,
    dup: u64,
}

struct SubOut {
    received: u64,
    dup: u64,
    reordered: u64,
    foreign: u64,
    hist: Histogram<u64>,
    timeline: Timeline,
    expects: Vec<u32>,
    streams: Vec<Stream>,
}

fn subscriber(mut s: Conn, mut rb: BytesMut, cx: SubCtx) -> SubOut {
    s.set_read_timeout(Some(Duration::from_millis(100)));
    // Publisher id -> index into `streams` (ids are small and dense).
    let max_id = cx.expects.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut index = vec![u32::MAX; max_id];
    for (i, id) in cx.expects.iter().enumerate() {
        index[*id as usize] = i as u32;
    }
    let mut o = SubOut {
        received: 0,
        dup: 0,
        reordered: 0,
        foreign: 0,
        hist: Histogram::new(3).expect("valid precision"),
        timeline: Timeline::default(),
        streams: vec![Stream::default(); cx.expects.len()],
        expects: cx.expects.clone(),
    };
    let mut chunk = vec![0u8; 1 << 16];
    let mut reply = BytesMut::new();
    let mut stop_seen: Option<Instant> = None;
    loop {
        let before = o.received;
        loop {
            match v4::read(&mut rb, 1 << 24) {
                Ok(Packet::Publish(p)) => {
                    match p.qos {
                        QoS::AtLeastOnce => {
                            let _ = v4::PubAck::new(p.pkid).write(&mut reply);
                        }
                        QoS::ExactlyOnce => {
                            let _ = v4::PubRec::new(p.pkid).write(&mut reply);
                        }
                        QoS::AtMostOnce => {}
                    }
                    if p.payload.len() < HEADER {
                        continue;
                    }
                    let id = u32::from_be_bytes(p.payload[..4].try_into().expect("4 bytes"));
                    let seq = u64::from_be_bytes(p.payload[4..12].try_into().expect("8 bytes"));
                    let ns = u64::from_be_bytes(p.payload[12..20].try_into().expect("8 bytes"));
                    let now = cx.epoch.elapsed().as_nanos() as u64;
                    let _ = o.hist.record(now.saturating_sub(ns).max(1));
                    o.received += 1;
                    let Some(st) = index
                        .get(id as usize)
                        .filter(|i| **i != u32::MAX)
                        .map(|i| &mut o.streams[*i as usize])
                    else {
                        o.foreign += 1;
                        continue;
                    };
                    st.received += 1;
                    if seq == st.next {
                        st.next += 1;
                    } else if seq > st.next {
                        st.gaps += seq - st.next;
                        st.next = seq + 1;
                    } else if st.gaps > 0 {
                        // Fills a gap: late, not lost.
                        st.gaps -= 1;
                        o.reordered += 1;
                    } else {
                        st.dup += 1;
                        o.dup += 1;
                    }
                }
                Ok(Packet::PubRel(r)) => {
                    let _ = v4::PubComp::new(r.pkid).write(&mut reply);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if o.received > before {
            cx.live.received.fetch_add(o.received - before, Ordering::Relaxed);
            o.timeline.bump(cx.start.elapsed(), o.received - before);
        }
        if !reply.is_empty() {
            // One write for every acknowledgement of this read.
            let _ = s.write_all(&reply);
            reply.clear();
        }
        let stopping = cx.stop.load(Ordering::Relaxed);
        if stopping && *stop_seen.get_or_insert_with(Instant::now) + Duration::from_secs(1) < Instant::now() {
            break; // still flooded a second after the end: stop counting
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => rb.extend_from_slice(&chunk[..n]),
            Err(_) if stopping => break,
            Err(_) => {}
        }
    }
    o
}
