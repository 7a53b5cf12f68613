//! Shard-core tests on the in-memory cluster with a simulated clock: timers, takeovers and
//! their races (staged by holding mesh messages), backpressure bounds.

use bytes::{Bytes, BytesMut};

use super::testing::{Client, Cluster};
use super::{ReadVerdict, ShardCore};
use crate::codec::encode::to_bytes;
use crate::codec::*;
use crate::limits;

fn s(x: &str) -> MqStr {
    MqStr::copy_from(x).unwrap()
}

fn connect_pkt(
    v: Protocol,
    id: &str,
    clean: bool,
    expiry: Option<u32>,
    will: Option<Will>,
    ka: u16,
) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: clean,
        keep_alive: ka,
        props: Properties { session_expiry_interval: expiry, ..Default::default() },
        client_id: s(id),
        will,
        username: None,
        password: None,
    }))
}

fn subscribe(cl: &mut Cluster, c: Client, f: &str, qos: QoS) {
    let p = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        props: Properties::default(),
        filters: vec![(s(f), SubOptions { qos, ..Default::default() })],
    });
    cl.send(c, &p);
    assert!(cl.recv(c).iter().any(|p| matches!(p, Packet::SubAck(_))));
}

fn publish(cl: &mut Cluster, c: Client, t: &str, payload: &str, qos: QoS, pid: u16) {
    let p = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: s(t),
        packet_id: (qos != QoS::AtMostOnce).then(|| PacketId::new(pid).unwrap()),
        props: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    });
    cl.send(c, &p);
    cl.recv(c);
}

fn payloads(ps: &[Packet]) -> Vec<String> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(String::from_utf8(p.payload.to_vec()).unwrap()),
            _ => None,
        })
        .collect()
}

fn connack(ps: &[Packet]) -> &ConnAck {
    match &ps[0] {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn keep_alive_closes_after_one_and_a_half_intervals() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, Protocol::V5);
    cl.send(c, &connect_pkt(Protocol::V5, "ka", true, None, None, 10));
    cl.recv(c);
    cl.advance(14_000);
    assert!(!cl.shards[0].is_closing(c.conn));
    cl.advance(1_500);
    assert!(cl.shards[0].is_closing(c.conn));
    let out = cl.recv(c);
    assert!(matches!(&out[0], Packet::Disconnect(d) if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT));
}

#[test]
fn will_delay_and_session_expiry_on_simulated_clock() {
    let mut cl = Cluster::new(1);
    let (w, _) = cl.connect(0, Protocol::V5, "watch", true, Properties::default());
    subscribe(&mut cl, w, "will/#", QoS::AtMostOnce);
    let will = Will {
        topic: s("will/x"),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtMostOnce,
        retain: false,
        props: Properties { will_delay_interval: Some(30), ..Default::default() },
    };
    let c = cl.open(0, Protocol::V5);
    cl.send(c, &connect_pkt(Protocol::V5, "dying", true, Some(10), Some(will), 0));
    cl.drop_conn(c);
    cl.advance(9_000);
    assert!(payloads(&cl.recv(w)).is_empty(), "will waits");
    // The session expires at 10 s, before the 30 s will delay: the will goes then.
    cl.advance(1_500);
    assert_eq!(payloads(&cl.recv(w)), vec!["late"]);
}

#[test]
fn offline_queue_is_bounded_oldest_dropped() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, Protocol::V311);
    cl.send(c, &connect_pkt(Protocol::V311, "slowpoke", false, None, None, 0));
    cl.recv(c);
    subscribe(&mut cl, c, "q", QoS::AtLeastOnce);
    cl.drop_conn(c);
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    let n = crate::limits::SESSION_QUEUE_MAX + 50;
    for i in 0..n {
        publish(&mut cl, p, "q", &i.to_string(), QoS::AtLeastOnce, (i % 60000 + 1) as u16);
    }
    let c2 = cl.open(0, Protocol::V311);
    cl.send(c2, &connect_pkt(Protocol::V311, "slowpoke", false, None, None, 0));
    let out = cl.recv(c2);
    assert!(connack(&out).session_present);
    let got = payloads(&out);
    assert_eq!(got.len(), crate::limits::INFLIGHT_MAX as usize, "window-limited");
    assert_eq!(got[0], "50", "the 50 oldest were dropped");
}

#[test]
fn takeover_race_with_pending_claim_passes_session_on() {
    // Shard 0 and 1 both claim client "x" before any grant arrives: the home shard orders the
    // claims; the loser is closed and the session (with its subscription) reaches the winner.
    let mut cl = Cluster::new(2);
    let key_home =
        super::home_shard(&super::mesh::SessionKey { org: "local".into(), client_id: s("x") }, 2) as usize;
    let other = 1 - key_home;
    let (first, _) = cl.connect(other, Protocol::V311, "x", false, Properties::default());
    subscribe(&mut cl, first, "keep/#", QoS::AtLeastOnce);
    // Two new connections for "x", one per shard, claims held in the mesh.
    let a = cl.open(other, Protocol::V311);
    let b = cl.open(key_home, Protocol::V311);
    assert_eq!(
        cl.send_raw_held(
            a,
            &to_bytes(Protocol::V311, &connect_pkt(Protocol::V311, "x", false, None, None, 0))
        ),
        ReadVerdict::Wait
    );
    assert_eq!(
        cl.send_raw_held(
            b,
            &to_bytes(Protocol::V311, &connect_pkt(Protocol::V311, "x", false, None, None, 0))
        ),
        ReadVerdict::Wait
    );
    cl.pump();
    let out_a = cl.recv(a);
    let out_b = cl.recv(b);
    // Exactly one of the two got a CONNACK with the session, the other was closed.
    let winners: Vec<&Vec<Packet>> = [&out_a, &out_b].into_iter().filter(|o| !o.is_empty()).collect();
    assert_eq!(winners.len(), 1, "a: {out_a:?} b: {out_b:?}");
    assert!(connack(winners[0]).session_present);
    let winner = if out_a.is_empty() { b } else { a };
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    publish(&mut cl, p, "keep/1", "still subscribed", QoS::AtLeastOnce, 1);
    assert_eq!(payloads(&cl.recv(winner)), vec!["still subscribed"]);
    assert!(cl.shards[0].is_closing(first.conn) || cl.shards[other].is_closing(first.conn));
}

#[test]
fn output_for_a_slow_subscriber_is_bounded() {
    let mut cl = Cluster::new(1);
    let (slow, _) = cl.connect(0, Protocol::V311, "slow", true, Properties::default());
    subscribe(&mut cl, slow, "big", QoS::AtMostOnce);
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    let payload = "x".repeat(10_000);
    for _ in 0..2_000 {
        // 20 MB to a subscriber whose output is never drained.
        let pk = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("big"),
            packet_id: None,
            props: Properties::default(),
            payload: Bytes::from(payload.clone()),
        });
        cl.send_raw_held(p, &to_bytes(Protocol::V311, &pk));
    }
    assert!(cl.shards[0].stats.dropped_slow > 0);
    let raw = cl.recv_raw(slow);
    assert!(raw.len() <= crate::limits::CONN_OUTPUT_BYTES_MAX + 20_000, "{}", raw.len());
}

#[test]
fn a_slow_reader_keeps_slowing_publishers_one_that_stops_is_declared_stalled() {
    use std::task::Waker;
    let mut cl = Cluster::new(1);
    let (sub, _) = cl.connect(0, Protocol::V311, "sub", true, Properties::default());
    subscribe(&mut cl, sub, "t", QoS::AtMostOnce);
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    let one = big_qos0_publish();
    // Fill the subscriber's output past the pressure mark; nothing drains it.
    while cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()) {
        cl.send_raw_held(p, &one);
    }
    // Its writer keeps making (slow) progress: publishers stay paused, nothing is dropped.
    for _ in 0..10 {
        cl.advance(crate::limits::OUTPUT_STALL_MS / 2);
        cl.shards[0].handle_output_progress(sub.conn, cl.now_ms);
        assert!(!cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()), "slow reader: still paused");
    }
    assert_eq!(cl.shards[0].stats.dropped_slow, 0);
    // A new client still gets its CONNECT read and answered while publishers are paused.
    let late = cl.open(0, Protocol::V311);
    assert!(cl.shards[0].can_read(late.conn, cl.now_ms, Waker::noop()), "a CONNECT is never held back");
    assert!(!cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()));
    // It stops reading: after the stall time it no longer holds anyone back.
    cl.advance(crate::limits::OUTPUT_STALL_MS);
    assert!(cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()), "stalled reader released");
}

#[test]
fn a_live_qos1_subscriber_with_a_full_window_slows_publishers_instead_of_losing() {
    use std::task::Waker;
    let mut cl = Cluster::new(1);
    let (sub, _) = cl.connect(0, Protocol::V311, "sub", true, Properties::default());
    subscribe(&mut cl, sub, "q", QoS::AtLeastOnce);
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    let mut sent = 0u16;
    while cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()) {
        sent += 1;
        let pk = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: s("q"),
            packet_id: PacketId::new(sent),
            props: Properties::default(),
            payload: Bytes::from_static(b"x"),
        });
        cl.send_raw_held(p, &to_bytes(Protocol::V311, &pk));
        assert!((sent as usize) < crate::limits::SESSION_QUEUE_MAX, "publisher never paused");
    }
    // Paused once the queue reached the mark, with nothing dropped.
    assert!(sent as usize >= crate::limits::QUEUE_PRESSURE);
    assert_eq!(cl.shards[0].stats.dropped_slow, 0);
    // A subscriber that stops acknowledging is declared stalled and stops slowing others.
    cl.advance(crate::limits::OUTPUT_STALL_MS + 100);
    assert!(cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()));
}

#[test]
fn interest_is_acknowledged_before_suback() {
    let mut cl = Cluster::new(2);
    let (c, _) = cl.connect(1, Protocol::V311, "s", true, Properties::default());
    let p = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(3).unwrap(),
        props: Properties::default(),
        filters: vec![(s("a/b"), SubOptions::default())],
    });
    cl.send_raw_held(c, &to_bytes(Protocol::V311, &p));
    assert!(cl.recv_raw(c).is_empty(), "SUBACK waits for shard 0 to learn the interest");
    cl.pump_pair(1, 0);
    cl.pump_pair(0, 1);
    assert!(matches!(cl.recv(c)[0], Packet::SubAck(_)));
}

#[test]
fn takeover_of_a_session_that_ends_with_its_connection_on_the_same_shard() {
    // Session expiry 0: closing the old connection ends the session before the takeover
    // collects it (this panicked: "caller checked").
    for (protocol, shards, at) in [(Protocol::V5, 1, 0), (Protocol::V311, 1, 0), (Protocol::V5, 2, 1)] {
        let mut cl = Cluster::new(shards);
        let (old, _) = cl.connect(0, protocol, "dev", true, Properties::default());
        let (_new, acks) = cl.connect(at, protocol, "dev", false, Properties::default());
        let ack = connack(&acks);
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        assert!(!ack.session_present, "the old session ended with its connection");
        if protocol == Protocol::V5 {
            let out = cl.recv(old);
            assert!(out
                .iter()
                .any(|p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER)));
        }
    }
}

#[test]
fn one_orgs_slow_subscriber_does_not_pause_another_orgs_publishers() {
    use std::task::Waker;
    let mut cl = Cluster::new(1);
    let (sub, _) = cl.connect(0, Protocol::V311, "sub", true, Properties::default());
    subscribe(&mut cl, sub, "t", QoS::AtMostOnce);
    let (p, _) = cl.connect(0, Protocol::V311, "pub", true, Properties::default());
    // A client of another org, on the same shard.
    cl.listener = std::sync::Arc::new(super::ListenerCtx {
        anonymous_org: Some(std::sync::Arc::from("other")),
        transport: "test",
    });
    let (q, _) = cl.connect(0, Protocol::V311, "pub-other", true, Properties::default());
    let one = big_qos0_publish();
    while cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()) {
        cl.send_raw_held(p, &one);
    }
    assert!(!cl.shards[0].can_read(p.conn, cl.now_ms, Waker::noop()), "same org: paused");
    assert!(cl.shards[0].can_read(q.conn, cl.now_ms, Waker::noop()), "other org: not paused");
}

/// A 10 KB QoS 0 PUBLISH on `t` (3.1.1), to fill a subscriber's output quickly.
fn big_qos0_publish() -> Bytes {
    let pk = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        packet_id: None,
        props: Properties::default(),
        payload: Bytes::from("x".repeat(10_000)),
    });
    to_bytes(Protocol::V311, &pk)
}

#[test]
fn a_flooding_org_yields_the_shard_to_another_org_every_turn() {
    use std::task::Waker;
    let budget = limits::FAIR_BUDGET as usize;
    let mut cl = Cluster::new(1);
    let (noisy, _) = cl.connect(0, Protocol::V311, "noisy", true, Properties::default());
    let one = |t: &str| {
        to_bytes(
            Protocol::V311,
            &Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: s(t),
                packet_id: None,
                props: Properties::default(),
                payload: Bytes::from_static(b"x"),
            }),
        )
    };
    let flood: Vec<u8> = (0..10 * budget).flat_map(|_| one("n").to_vec()).collect();
    // Alone on the shard, an org is never held back: the whole flood in one read.
    let mut buf = BytesMut::from(&flood[..]);
    assert_eq!(cl.shards[0].handle_read(noisy.conn, cl.now_ms, &mut buf), ReadVerdict::Continue);
    assert!(buf.is_empty());
    cl.set_policy("victim", crate::acl::Policy::permit_all());
    cl.listener = std::sync::Arc::new(super::ListenerCtx {
        anonymous_org: Some(std::sync::Arc::from("victim")),
        transport: "test",
    });
    let (vsub, _) = cl.connect(0, Protocol::V311, "vsub", true, Properties::default());
    subscribe(&mut cl, vsub, "v", QoS::AtMostOnce);
    let (victim, _) = cl.connect(0, Protocol::V311, "victim", true, Properties::default());
    let received = |cl: &ShardCore| cl.stats.received as usize;
    // With the victim org active in this turn, the flood stops at its org's share.
    cl.send_raw(victim, &one("v"));
    let before = received(&cl.shards[0]);
    let mut buf = BytesMut::from(&flood[..]);
    assert_eq!(cl.shards[0].handle_read(noisy.conn, cl.now_ms, &mut buf), ReadVerdict::Wait);
    assert!(received(&cl.shards[0]) - before <= budget, "at most one share per turn");
    assert!(!cl.shards[0].can_read(noisy.conn, cl.now_ms, Waker::noop()), "waits for the next turn");
    // The victim is read at once, within the same turn.
    assert!(cl.shards[0].can_read(victim.conn, cl.now_ms, Waker::noop()));
    cl.send_raw(victim, &one("v"));
    assert_eq!(payloads(&cl.recv(vsub)).len(), 2);
    // The shell starts the next turn; the flood goes on where it stopped, nothing lost.
    assert!(cl.shards[0].turn_wanted(Waker::noop()));
    cl.shards[0].next_turn();
    assert!(cl.shards[0].can_read(noisy.conn, cl.now_ms, Waker::noop()));
    let left = buf.len();
    assert_eq!(cl.shards[0].handle_read(noisy.conn, cl.now_ms, &mut buf), ReadVerdict::Wait);
    assert!(buf.len() < left && left - buf.len() <= budget * one("n").len());
    // The victim went quiet: after one more contended turn the flood runs free again.
    let mut turns = 0;
    loop {
        if !cl.shards[0].can_read(noisy.conn, cl.now_ms, Waker::noop()) {
            assert!(cl.shards[0].turn_wanted(Waker::noop()));
            cl.shards[0].next_turn();
            turns += 1;
        }
        if cl.shards[0].handle_read(noisy.conn, cl.now_ms, &mut buf) == ReadVerdict::Continue {
            break;
        }
    }
    assert_eq!(turns, 1, "one contended turn after the victim's last packet, then free");
    assert!(buf.is_empty(), "all of the flood processed, nothing dropped");
    assert_eq!(received(&cl.shards[0]) - before, 10 * budget + 1);
}

fn puback(cl: &mut Cluster, c: Client, pid: u16, kind: fn(PubResp) -> Packet) {
    let r = PubResp {
        packet_id: PacketId::new(pid).unwrap(),
        reason: ReasonCode::SUCCESS,
        props: Properties::default(),
    };
    cl.send(c, &kind(r));
    cl.pump();
}

fn publish_ids(ps: &[Packet]) -> Vec<u16> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => p.packet_id.map(|i| i.get()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_persistent_subscribers_messages_stay_stored_until_acknowledged_online_too() {
    use super::persist::StoreOp;
    let mut cl = Cluster::with_store(1);
    let expiry = Properties { session_expiry_interval: Some(600), ..Default::default() };
    let (sub, _) = cl.connect(0, Protocol::V5, "sub", false, expiry);
    subscribe(&mut cl, sub, "t", QoS::ExactlyOnce);
    let (p, _) = cl.connect(0, Protocol::V5, "pub", true, Properties::default());
    cl.take_store_log();
    publish(&mut cl, p, "t", "one", QoS::AtLeastOnce, 1);
    let pid = publish_ids(&cl.recv(sub))[0];
    let ops = cl.take_store_log().remove(0);
    assert!(
        matches!(&ops[..], [StoreOp::Queued { seq: 1, .. }, StoreOp::Outbound { seq: 1, pid: i, released: false, .. }] if *i == pid),
        "{ops:?}"
    );
    puback(&mut cl, sub, pid, Packet::PubAck);
    let ops = cl.take_store_log().remove(0);
    assert!(matches!(&ops[..], [StoreOp::Unqueued { seq: 1, .. }]), "{ops:?}");
    // QoS 2: stored, released at PUBREC (PUBREL follows once that is durable), gone at PUBCOMP.
    publish(&mut cl, p, "t", "two", QoS::ExactlyOnce, 2);
    let pid = publish_ids(&cl.recv(sub))[0];
    cl.take_store_log();
    puback(&mut cl, sub, pid, Packet::PubRec);
    assert!(cl.recv(sub).iter().any(|p| matches!(p, Packet::PubRel(r) if r.packet_id.get() == pid)));
    let ops = cl.take_store_log().remove(0);
    assert!(matches!(&ops[..], [StoreOp::Outbound { seq: 2, released: true, .. }]), "{ops:?}");
    puback(&mut cl, sub, pid, Packet::PubComp);
    let ops = cl.take_store_log().remove(0);
    assert!(matches!(&ops[..], [StoreOp::Unqueued { seq: 2, .. }]), "{ops:?}");
    // A clean session stores nothing.
    let (clean, _) = cl.connect(0, Protocol::V5, "clean", true, Properties::default());
    subscribe(&mut cl, clean, "c", QoS::AtLeastOnce);
    cl.take_store_log();
    publish(&mut cl, p, "c", "x", QoS::AtLeastOnce, 3);
    assert_eq!(payloads(&cl.recv(clean)), vec!["x"]);
    assert!(cl.take_store_log()[0].is_empty());
}

#[test]
fn a_session_moving_shards_is_written_whole_there_before_the_old_copy_is_forgotten() {
    use super::persist::StoreOp;
    let mut cl = Cluster::with_store(2);
    let expiry = || Properties { session_expiry_interval: Some(600), ..Default::default() };
    let (sub, _) = cl.connect(0, Protocol::V5, "mover", false, expiry());
    subscribe(&mut cl, sub, "t", QoS::AtLeastOnce);
    let (p, _) = cl.connect(0, Protocol::V5, "pub", true, Properties::default());
    publish(&mut cl, p, "t", "held", QoS::AtLeastOnce, 1);
    let pid = publish_ids(&cl.recv(sub))[0];
    cl.drop_conn(sub);
    cl.take_store_log();
    // Resumed on shard 1: the message is resent under its packet id.
    let (sub, got) = cl.connect(1, Protocol::V5, "mover", false, expiry());
    assert!(connack(&got).session_present);
    assert_eq!(publish_ids(&got), vec![pid]);
    let log = cl.take_store_log();
    let new_epoch = match &log[1][..] {
        [StoreOp::Forget { .. }, StoreOp::Queued { seq: 1, .. }, StoreOp::Outbound { seq: 1, pid: i, .. }, StoreOp::Session { meta, .. }]
            if *i == pid =>
        {
            meta.epoch
        }
        other => panic!("shard 1 wrote {other:?}"),
    };
    assert!(new_epoch > 0);
    // Shard 0 forgets its copy only after shard 1's writes were durable, and only if older.
    assert!(
        matches!(&log[0][..], [StoreOp::ForgetBefore { epoch, .. }] if *epoch == new_epoch),
        "{:?}",
        log[0]
    );
    // Back on shard 1 again (same shard): nothing is rewritten but the record.
    cl.drop_conn(sub);
    cl.take_store_log();
    let (_, got) = cl.connect(1, Protocol::V5, "mover", false, expiry());
    assert_eq!(publish_ids(&got), vec![pid]);
    let log = cl.take_store_log();
    assert!(log[0].is_empty(), "{:?}", log[0]);
    assert!(log[1].iter().all(|op| matches!(op, StoreOp::Session { .. })), "{:?}", log[1]);
}

#[test]
fn the_record_moves_its_scan_cursor_past_acknowledged_messages() {
    use super::persist::{StoreOp, RECORD_CURSOR_EVERY};
    let mut cl = Cluster::with_store(1);
    let expiry = Properties { session_expiry_interval: Some(600), ..Default::default() };
    let (sub, _) = cl.connect(0, Protocol::V5, "sub", false, expiry);
    subscribe(&mut cl, sub, "t", QoS::AtLeastOnce);
    let (p, _) = cl.connect(0, Protocol::V5, "pub", true, Properties::default());
    cl.take_store_log();
    let mut cursors = Vec::new();
    for i in 0..RECORD_CURSOR_EVERY + 2 {
        publish(&mut cl, p, "t", "m", QoS::AtLeastOnce, (i % 60_000 + 1) as u16);
        for pid in publish_ids(&cl.recv(sub)) {
            puback(&mut cl, sub, pid, Packet::PubAck);
        }
        for op in cl.take_store_log().remove(0) {
            if let StoreOp::Session { meta, .. } = op {
                cursors.push((i, meta.first_seq));
            }
        }
    }
    // Rewritten once, after RECORD_CURSOR_EVERY acknowledgements, past all of them.
    let n = RECORD_CURSOR_EVERY as u64;
    assert_eq!(cursors, vec![(RECORD_CURSOR_EVERY - 1, n + 1)]);
}

#[test]
fn a_qos2_message_reaches_another_shards_subscribers_only_once_its_inbound_id_is_durable() {
    let mut cl = Cluster::with_store(2);
    let expiry = || Properties { session_expiry_interval: Some(600), ..Default::default() };
    let (sub, _) = cl.connect(1, Protocol::V5, "sub", false, expiry());
    subscribe(&mut cl, sub, "t", QoS::ExactlyOnce);
    let (p, _) = cl.connect(0, Protocol::V5, "pub", false, expiry());
    cl.hold_durable = true;
    let publish = |qos, pid, text: &str| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: s("t"),
            packet_id: PacketId::new(pid),
            props: Properties::default(),
            payload: Bytes::copy_from_slice(text.as_bytes()),
        })
    };
    cl.send(p, &publish(QoS::ExactlyOnce, 1, "two"));
    cl.send(p, &publish(QoS::AtLeastOnce, 2, "one after"));
    cl.pump();
    // Nothing left shard 0 yet: the QoS 2 forward waits for the inbound id, the QoS 1 one
    // behind it (order kept); the publisher has no PUBREC/PUBACK either.
    assert!(cl.recv(sub).is_empty());
    assert!(cl.recv(p).is_empty());
    cl.make_durable(1);
    assert!(cl.recv(sub).is_empty(), "shard 0's inbound id is not durable yet");
    cl.make_durable(0);
    // Forwarded now; shard 1 stored it and holds the QoS 2 PUBLISH for its own commit.
    assert!(cl.recv(sub).is_empty());
    cl.make_durable(1);
    assert_eq!(payloads(&cl.recv(sub)), vec!["two", "one after"]);
    cl.make_durable(0);
    let acks = cl.recv(p);
    assert!(matches!(&acks[..], [Packet::PubRec(_), Packet::PubAck(_)]), "{acks:?}");
}

#[test]
fn a_connect_arriving_after_shutdown_began_is_refused() {
    // Issue 14.10: a socket accepted just before the listeners closed must not be served.
    let mut cl = Cluster::new(1);
    cl.shards[0].shutdown_all(cl.now_ms);
    for v in [Protocol::V5, Protocol::V311] {
        let c = cl.open(0, v); // accepted while the listeners were closing
        cl.send(c, &connect_pkt(v, "late", true, None, None, 30));
        let got = cl.recv(c);
        let code = match got.first() {
            Some(Packet::ConnAck(a)) => a.reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(code, ReasonCode::SERVER_UNAVAILABLE, "{v:?}");
    }
}

/// The `disconnect` audit events of `shard`: (client id, reason, reason code).
fn disconnects(cl: &mut Cluster, shard: usize) -> Vec<(String, String, Option<u64>)> {
    cl.shards[shard]
        .poll_audit()
        .into_iter()
        .filter(|r| r.kind == crate::audit::AuditKind::Disconnect)
        .map(|r| {
            let reason = r.detail["reason"].as_str().unwrap_or_default().to_string();
            (r.client_id.unwrap_or_default(), reason, r.detail.get("reason_code").and_then(|v| v.as_u64()))
        })
        .collect()
}

#[test]
fn each_close_cause_is_sent_and_audited_under_its_own_name() {
    let mut cl = Cluster::new(2);
    let (a, _) = cl.connect(0, Protocol::V5, "taken", true, Properties::default());
    let (_b, _) = cl.connect(1, Protocol::V5, "taken", true, Properties::default());
    let got = cl.recv(a);
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER),
        "{got:?}"
    );
    cl.drop_conn(a);
    assert_eq!(disconnects(&mut cl, 0), [("taken".into(), "session_taken_over".into(), Some(0x8E))]);

    let (c, _) = cl.connect(0, Protocol::V5, "rude", true, Properties::default());
    cl.send_raw(c, &[0x20, 0x02, 0x00, 0x00]); // CONNACK from a client: malformed (0x81)
    cl.drop_conn(c);
    assert_eq!(disconnects(&mut cl, 0), [("rude".into(), "protocol_error".into(), Some(0x81))]);

    let (d, _) = cl.connect(0, Protocol::V311, "gone", true, Properties::default());
    cl.drop_conn(d);
    assert_eq!(disconnects(&mut cl, 0), [("gone".into(), "connection_lost".into(), None)]);

    let (e, _) = cl.connect(0, Protocol::V5, "quiet", true, Properties::default());
    cl.advance(91_000); // keep-alive 60 s: closed after 90 s of silence
    cl.drop_conn(e);
    assert_eq!(disconnects(&mut cl, 0), [("quiet".into(), "keep_alive_timeout".into(), Some(0x8D))]);
}

/// Interest updates reach a peer in the order the shard produced them, in the same batches as
/// the messages that depend on them: a client that unsubscribes and subscribes again in one
/// read still hears a publish from another shard (reordered, the peer ends up believing it
/// left), and a client that subscribes to its reply topic and publishes a request in one read
/// gets the reply of a responder on another shard.
#[test]
fn interest_updates_keep_their_order_across_shards() {
    let mut cl = Cluster::new(2);
    let (publisher, _) = cl.connect(0, Protocol::V5, "publisher", true, Properties::default());
    let (c, _) = cl.connect(1, Protocol::V5, "c", true, Properties::default());
    subscribe(&mut cl, c, "t", QoS::AtMostOnce);
    let unsub = Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(2).unwrap(),
        props: Properties::default(),
        filters: vec![s("t")],
    });
    let sub = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(3).unwrap(),
        props: Properties::default(),
        filters: vec![(s("t"), SubOptions::default())],
    });
    let mut bytes = to_bytes(Protocol::V5, &unsub).to_vec();
    bytes.extend_from_slice(&to_bytes(Protocol::V5, &sub));
    cl.send_raw(c, &bytes);
    cl.recv(c);
    publish(&mut cl, publisher, "t", "after", QoS::AtMostOnce, 0);
    assert_eq!(payloads(&cl.recv(c)), ["after"], "shard 0 knows the client is subscribed again");

    let (responder, _) = cl.connect(0, Protocol::V5, "responder", true, Properties::default());
    subscribe(&mut cl, responder, "req", QoS::AtMostOnce);
    let (asker, _) = cl.connect(1, Protocol::V5, "asker", true, Properties::default());
    let sub = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        props: Properties::default(),
        filters: vec![(s("reply/asker"), SubOptions::default())],
    });
    let req = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("req"),
        packet_id: None,
        props: Properties::default(),
        payload: Bytes::from_static(b"ping"),
    };
    let mut bytes = to_bytes(Protocol::V5, &sub).to_vec();
    bytes.extend_from_slice(&to_bytes(Protocol::V5, &Packet::Publish(req.clone())));
    cl.send_raw_held(asker, &bytes);
    cl.pump_pair(1, 0);
    assert_eq!(payloads(&cl.recv(responder)), ["ping"], "the request arrived");
    // The responder answers before anything else moves between the shards.
    let reply = Publish { topic: s("reply/asker"), payload: Bytes::from_static(b"pong"), ..req };
    cl.send_raw_held(responder, &to_bytes(Protocol::V5, &Packet::Publish(reply)));
    cl.pump();
    assert_eq!(payloads(&cl.recv(asker)), ["pong"], "the reply reached the asker's new subscription");
}
