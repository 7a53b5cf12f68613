//! Delivery to subscribers: to a connected session's window and output, to its queue when
//! the window is full or it is offline, and the pump that refills the window. Allocates
//! nothing in steady state (proved by `tests/no_alloc.rs`).

use super::*;

impl ShardCore {
    /// Delivers to one session: straight into its connection's output when possible, else into
    /// its bounded queue. `stored` is the owned copy shared by all QoS 1/2 deliveries of `msg`.
    #[allow(clippy::too_many_arguments)] // One call site per kind of delivery; a struct would add noise.
    pub(super) fn deliver(
        &mut self,
        sref: SessionRef,
        msg: &Msg,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        stored: &mut Option<Arc<Msg>>,
        now_ms: u64,
    ) {
        if msg.expiry(now_ms) == Expiry::Expired {
            return;
        }
        let Some(s) = self.session_mut(sref) else { return };
        let conn = s.conn;
        if qos == QoS::AtMostOnce {
            let Some(id) = conn else { return }; // QoS 0 is not queued for offline sessions
            let full = self.conn(id).is_none_or(|c| c.link.out.len() >= limits::CONN_OUTPUT_BYTES_MAX);
            if full {
                self.stats.dropped_slow += 1;
                if let Some(c) = self.conn_mut(id) {
                    c.link.dropped += 1;
                }
                return;
            }
            let po = PublishOut {
                dup: false,
                qos,
                retain,
                topic: msg.topic.as_bytes(),
                packet_id: None,
                props: msg.props.get(),
                sub_ids: ids,
                topic_alias: None,
                expiry_left: None,
                payload: &msg.payload,
            };
            self.write_publish(id, po, &msg.topic, msg, now_ms);
            return;
        }
        let arc = stored.get_or_insert_with(|| Arc::new(msg.to_owned_copy())).clone();
        let mut d = Delivery { msg: arc, qos, retain, sub_ids: ids.iter().copied().collect(), seq: 0 };
        if conn.is_none() {
            return self.enqueue_offline(sref, d);
        }
        // A persistent session keeps it stored until it is acknowledged.
        self.persist_queued(sref, &mut d);
        let s = self.session_mut(sref).expect("checked above");
        if let Some(old) = s.state.enqueue(d) {
            self.persist_unqueued(sref, &old);
        }
        if let Some(id) = conn {
            self.pump(sref, now_ms);
            if self.session(sref).is_some_and(|s| s.state.queue.len() >= limits::QUEUE_PRESSURE) {
                self.note_pressure(id, now_ms);
            }
        }
    }

    /// Queues for an offline session, keeping its org's session storage within the quota:
    /// the session's oldest messages go first (counted); a message that cannot fit alone is
    /// dropped itself.
    fn enqueue_offline(&mut self, sref: SessionRef, mut d: Delivery) {
        let org = match self.session(sref) {
            Some(s) => s.org.clone(),
            None => return,
        };
        let quota = self.org_quota(&org);
        let persistent = self.session(sref).is_some_and(|s| s.state.expiry_secs != 0);
        let mut gone: SmallVec<[Delivery; 2]> = SmallVec::new();
        self.persist_queued(sref, &mut d);
        let s = self.session_mut(sref).expect("checked above");
        let (Some(q), true) = (quota, persistent) else {
            if let Some(old) = s.state.enqueue(d) {
                self.persist_unqueued(sref, &old);
            }
            return;
        };
        let b = d.bytes();
        if let Some(limit) = q.session_storage_limit() {
            while q.stored_bytes.load(Ordering::Relaxed) + b > limit {
                let Some(old) = s.state.queue.pop_front() else { break };
                let ob = old.bytes();
                q.release_bytes(ob);
                s.state.stored_bytes = s.state.stored_bytes.saturating_sub(ob);
                s.state.dropped += 1;
                q.stored_dropped.fetch_add(1, Ordering::Relaxed);
                gone.push(old);
            }
            if q.stored_bytes.load(Ordering::Relaxed) + b > limit {
                s.state.dropped += 1;
                q.stored_dropped.fetch_add(1, Ordering::Relaxed);
                gone.push(d);
                for old in gone {
                    self.persist_unqueued(sref, &old);
                }
                return;
            }
        }
        q.store_bytes(b);
        s.state.stored_bytes += b;
        if let Some(old) = s.state.enqueue(d) {
            let ob = old.bytes();
            q.release_bytes(ob);
            s.state.stored_bytes = s.state.stored_bytes.saturating_sub(ob);
            gone.push(old);
        }
        for old in gone {
            self.persist_unqueued(sref, &old);
        }
    }

    /// An acknowledgement from a subscriber under queue pressure: it is alive (the stall clock
    /// restarts), and once its queue is short again it stops slowing publishers.
    pub(super) fn queue_progress(&mut self, id: ConnId, sref: SessionRef, now_ms: u64) {
        let queued = self.session(sref).map_or(0, |s| s.state.queue.len());
        let Some(c) = self.conn_mut(id) else { return };
        if c.link.pressure_since.is_none() {
            return;
        }
        if queued < limits::QUEUE_PRESSURE && c.link.out.len() < limits::OUTPUT_PRESSURE_BYTES {
            self.clear_pressure(id);
        } else {
            c.link.pressure_since = Some(now_ms);
        }
    }

    /// Moves queued messages into the in-flight window while it and the output have room.
    pub(super) fn pump(&mut self, sref: SessionRef, now_ms: u64) {
        let Some(s) = self.session(sref) else { return };
        let Some(id) = s.conn else { return };
        let Some(c) = self.conn(id) else { return };
        if c.phase != Phase::Active {
            return;
        }
        let window = c.proto.send_window as usize;
        if s.state.queue.is_empty() {
            return;
        }
        let max_age = self.retention(&s.org).queued_max_age_ms.unwrap_or(u64::MAX);
        loop {
            let out_full = self.conn(id).is_none_or(|c| c.link.out.len() >= limits::CONN_OUTPUT_BYTES_MAX);
            let s = self.session_mut(sref).expect("checked above");
            if out_full || s.state.inflight.len() >= window {
                return;
            }
            let Some(d) = s.state.queue.pop_front() else { return };
            if d.msg.expiry(now_ms) == Expiry::Expired || now_ms.saturating_sub(d.msg.received_ms) > max_age {
                self.persist_unqueued(sref, &d);
                continue;
            }
            let Some(pid) = s.state.alloc_pid() else {
                s.state.queue.push_front(d);
                return;
            };
            let sent = self.encode_delivery(id, &d, PacketId::new(pid), false, now_ms);
            if sent {
                self.persist_outbound(sref, d.seq, pid, false);
                if d.qos == QoS::ExactlyOnce && d.seq != 0 {
                    // Exactly once across a crash: a receiver may hand the message on at once,
                    // so it leaves only when the inbound QoS 2 state that makes the publisher's
                    // resend a duplicate, and this copy, are on disk.
                    self.gate_output(id, self.dur.durable_upto());
                }
                let s = self.session_mut(sref).expect("checked above");
                s.state.inflight.insert(pid, InFlight { delivery: d, state: OutState::Published });
            } else {
                self.persist_unqueued(sref, &d);
            }
        }
    }

    /// Encodes a stored delivery; false when it could not be sent (too large for the client).
    pub(super) fn encode_delivery(
        &mut self,
        id: ConnId,
        d: &Delivery,
        pid: Option<PacketId>,
        dup: bool,
        now_ms: u64,
    ) -> bool {
        let msg = &d.msg;
        let po = PublishOut {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: msg.topic.as_bytes(),
            packet_id: if d.qos == QoS::AtMostOnce { None } else { pid },
            props: msg.props.get(),
            sub_ids: &d.sub_ids,
            topic_alias: None,
            expiry_left: None,
            payload: &msg.payload,
        };
        self.write_publish(id, po, &msg.topic, msg, now_ms)
    }

    /// Writes a PUBLISH to a connection, applying message expiry, the client's maximum packet
    /// size and outbound topic aliases. False if it was not sent.
    fn write_publish(
        &mut self,
        id: ConnId,
        mut po: PublishOut<'_>,
        topic: &MqStr,
        msg: &Msg,
        now_ms: u64,
    ) -> bool {
        let Some(c) = self.conn_mut(id) else { return false };
        let Some(v) = c.proto.protocol else { return false };
        match msg.expiry(now_ms) {
            Expiry::Expired => return false,
            Expiry::Left(s) => po.expiry_left = Some(s),
            Expiry::Never => {}
        }
        if v == Protocol::V5 && c.proto.client_alias_max > 0 {
            if let Some(a) = c.proto.aliases_out.get(topic) {
                po.topic_alias = Some(*a);
                po.topic = b"";
            } else if c.proto.aliases_out.len() < c.proto.client_alias_max as usize {
                let a = c.proto.aliases_out.len() as u16 + 1;
                c.proto.aliases_out.insert(topic.to_owned_copy(), a);
                po.topic_alias = Some(a);
            }
        }
        if po.encoded_len(v) > c.proto.client_max_packet as usize {
            // Too large for the client: not sent, treated as delivered [MQTT-3.1.2-25].
            c.link.dropped += 1;
            return false;
        }
        encode_publish(&mut c.link.out, v, &po);
        c.link.tx_msgs += 1;
        let pressure = c.link.out.len() >= limits::OUTPUT_PRESSURE_BYTES;
        wake(&mut c.link.writer);
        self.stats.sent += 1;
        if pressure {
            self.note_pressure(id, now_ms);
        }
        true
    }
}
