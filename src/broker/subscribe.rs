//! SUBSCRIBE and UNSUBSCRIBE: ACL checks, the router on every shard (a SUBACK waits for the
//! other shards' acknowledgements of the interest), retained messages sent on subscribe.

use super::*;

impl ShardCore {
    pub(super) fn handle_subscribe(&mut self, id: ConnId, now_ms: u64, s: Subscribe) {
        let c = self.conn(id).expect("caller checked");
        let v5 = c.proto.protocol == Some(Protocol::V5);
        let sref = c.attach.session.expect("active");
        let org = c.attach.key.as_ref().expect("active").org.clone();
        let sub_id = s.props.subscription_identifiers.first().copied();
        let max_subs = c
            .share
            .quota
            .as_ref()
            .and_then(|q| q.max_subscriptions())
            .map_or(limits::SUBSCRIPTIONS_PER_SESSION_MAX, |m| {
                (m as usize).min(limits::SUBSCRIPTIONS_PER_SESSION_MAX)
            });
        self.next_token += 1;
        let token = self.next_token;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut waiting = 0;
        for (filter, opts) in &s.filters {
            let f = filter.as_str();
            let kind = if valid_filter(f) { classify(f) } else { FilterKind::InvalidShared };
            let shared = match kind {
                FilterKind::Plain(_) => false,
                FilterKind::Shared(_) => true,
                FilterKind::InvalidShared => {
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if shared && opts.no_local && v5 {
                return self.close_conn(id, CloseCause::Protocol(ReasonCode::PROTOCOL_ERROR), now_ms);
                // [MQTT-3.8.3-4]
            }
            let inner = match kind {
                FilterKind::Shared(sf) => sf.filter,
                _ => f,
            };
            let acl = self.conn(id).and_then(|c| c.login.acl.clone());
            let d = match &acl {
                Some(acl) => acl.check_subscribe(inner, opts.qos as u8),
                None => crate::acl::SubDecision {
                    decision: crate::acl::Decision { allow: false, origin: None, rule: None },
                    granted: 0,
                    checked: false,
                },
            };
            if !d.decision.allow {
                self.acl_denied(id, now_ms, "subscribe", f, d.decision);
                // 5.0: Not authorized; 3.1.1: the only failure code, 0x80.
                reasons.push(if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode::UNSPECIFIED_ERROR });
                continue;
            }
            let mut opts = *opts;
            opts.qos = match d.granted {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            }
            .min(opts.qos);
            let opts = &opts;
            let st = &mut self.session_mut(sref).expect("active").state;
            if !st.subs.contains_key(f) && st.subs.len() >= max_subs {
                // 5.0: Quota exceeded; 3.1.1: the only failure code, 0x80.
                reasons.push(if v5 { ReasonCode::QUOTA_EXCEEDED } else { ReasonCode::UNSPECIFIED_ERROR });
                if let Some(q) = self.conn(id).and_then(|c| c.share.quota.as_ref()) {
                    q.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                }
                self.quota_hit(id, now_ms, "max_subscriptions_per_client");
                continue;
            }
            st.subs.insert(f.into(), SubEntry { opts: *opts, sub_id, checked: d.checked });
            let ch = self.router.subscribe(
                &org,
                f,
                Sub { session: sref, opts: *opts, sub_id, checked: d.checked },
            );
            if ch.interest_changed {
                waiting += self.announce(&org, f, true, Some((id, token)));
            }
            reasons.push(ReasonCode(opts.qos as u8));
            let send = match opts.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !ch.existed,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions [MQTT-4.8.2-?; 5.0 §4.8.2].
            if send && !shared {
                retained.push((Box::<str>::from(f), opts.qos, sub_id));
            }
        }
        let c = self.conn_mut(id).expect("caller checked");
        c.attach.pending_subacks.push_back(PendingSubAck {
            token,
            waiting,
            packet_id: s.packet_id,
            reasons,
            retained,
        });
        self.release_subacks(id, now_ms);
    }

    pub(super) fn handle_interest_ack(&mut self, id: ConnId, token: u64, now_ms: u64) {
        let Some(c) = self.conn_mut(id) else { return };
        if let Some(p) = c.attach.pending_subacks.iter_mut().find(|p| p.token == token) {
            p.waiting = p.waiting.saturating_sub(1);
        }
        self.release_subacks(id, now_ms);
    }

    /// Sends, in order, every SUBACK whose interest announcements all peers have acknowledged,
    /// followed by its retained messages.
    fn release_subacks(&mut self, id: ConnId, now_ms: u64) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if c.attach.pending_subacks.front().is_none_or(|p| p.waiting > 0) {
                return;
            }
            let p = c.attach.pending_subacks.pop_front().expect("checked");
            let Some(sref) = c.attach.session else { return };
            let org = c.attach.key.as_ref().expect("active").org.clone();
            let ack = Packet::SubAck(SubAck {
                packet_id: p.packet_id,
                props: Properties::default(),
                reasons: p.reasons,
            });
            self.write(id, &ack);
            let max_age = self.retention(&org).retained_max_age_ms.unwrap_or(u64::MAX);
            for (filter, qos, sub_id) in p.retained {
                let msgs: Vec<Arc<Msg>> = self
                    .retained
                    .matching(&org, &filter)
                    .filter(|m| now_ms.saturating_sub(m.received_ms) <= max_age)
                    .cloned()
                    .collect();
                let checked =
                    self.session(sref).and_then(|s| s.state.subs.get(&*filter)).is_some_and(|e| e.checked);
                for m in msgs {
                    if checked && !self.delivery_allowed(sref, m.topic.as_str()) {
                        continue;
                    }
                    let q = qos.min(m.qos);
                    let ids: SmallVec<[u32; 2]> = sub_id.into_iter().collect();
                    // Retained messages keep RETAIN=1 when sent because of a subscribe [MQTT-3.3.1-8].
                    let mut stored = Some(m.clone());
                    self.deliver(sref, &m, q, true, &ids, &mut stored, now_ms);
                }
            }
        }
    }

    pub(super) fn handle_unsubscribe(&mut self, id: ConnId, now_ms: u64, u: Unsubscribe) {
        let _ = now_ms;
        let c = self.conn(id).expect("caller checked");
        let sref = c.attach.session.expect("active");
        let org = c.attach.key.as_ref().expect("active").org.clone();
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let f = f.as_str();
            if !valid_filter(f) {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID); // MQTT 5 §3.11.3
                continue;
            }
            let st = &mut self.session_mut(sref).expect("active").state;
            if st.subs.remove(f).is_none() {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                continue;
            }
            let ch = self.router.unsubscribe(&org, f, sref);
            if ch.interest_changed {
                self.announce(&org, f, false, None);
            }
            reasons.push(ReasonCode::SUCCESS);
        }
        let ack =
            Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, props: Properties::default(), reasons });
        self.write(id, &ack);
    }
}
