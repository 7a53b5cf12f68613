//! QoS 1 and 2 acknowledgements from clients: PUBACK, PUBREC, PUBREL, PUBCOMP, and the
//! answers the core sends for them.

use super::*;

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body.
pub(super) fn pubresp(packet_id: PacketId, reason: ReasonCode) -> PubResp {
    PubResp { packet_id, reason, props: Properties::default() }
}

impl ShardCore {
    pub(super) fn handle_puback(&mut self, id: ConnId, now_ms: u64, r: PubResp, comp: bool) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let st = &mut self.session_mut(sref).expect("live session").state;
        let want = if comp { OutState::Released } else { OutState::Published };
        let pid = r.packet_id.get();
        match st.inflight.get(&pid) {
            Some(f) if f.state == want && (comp || f.delivery.qos == QoS::AtLeastOnce) => {
                let done = st.inflight.remove(&pid).expect("just found");
                self.persist_unqueued(sref, &done.delivery);
                self.pump(sref, now_ms);
                self.queue_progress(id, sref, now_ms);
            }
            // Unknown or out-of-state acknowledgements are ignored, as most brokers do.
            _ => {}
        }
    }

    pub(super) fn handle_pubrec(&mut self, id: ConnId, now_ms: u64, r: PubResp) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let since = self.store_seq();
        let st = &mut self.session_mut(sref).expect("live session").state;
        let pid = r.packet_id.get();
        let reply = match st.inflight.get_mut(&pid) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                if r.reason.is_error() {
                    // The receiver refused it: the flow ends here [MQTT-4.3.3-?].
                    let done = st.inflight.remove(&pid).expect("just found");
                    self.persist_unqueued(sref, &done.delivery);
                    return;
                }
                f.state = OutState::Released;
                let seq = f.delivery.seq;
                self.persist_outbound(sref, seq, pid, true);
                ReasonCode::SUCCESS
            }
            _ => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        // Durable before PUBREL: resending the PUBLISH after a crash, once the receiver has
        // released the id, would deliver it twice.
        self.ack(id, Packet::PubRel(pubresp(r.packet_id, reply)), since, now_ms);
    }

    pub(super) fn handle_pubrel(&mut self, id: ConnId, now_ms: u64, r: PubResp) {
        let Some(sref) = self.conn(id).and_then(|c| c.attach.session) else { return };
        let since = self.store_seq();
        let st = &mut self.session_mut(sref).expect("live session").state;
        let reason = if st.inbound_qos2.remove(&r.packet_id.get()) {
            // Durable before PUBCOMP: a release lost in a crash would make the id's next
            // message look like a resend.
            self.persist_qos2(sref, r.packet_id.get(), false);
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.ack(id, Packet::PubComp(pubresp(r.packet_id, reason)), since, now_ms);
    }
}
