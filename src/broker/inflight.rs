//! A session's outbound QoS 1/2 messages awaiting acknowledgement: a ring in the order they
//! were sent, with the packet ids in a ring of their own (a lookup scans at most the window,
//! 128 ids in 256 bytes; acknowledgements mostly match the oldest). No allocation once the
//! rings reached the window's size, and a resend after a reconnect goes out in the original
//! order [MQTT-4.6.0-1], also after packet ids wrapped.

use std::collections::VecDeque;

use super::session::InFlight;

/// Outbound messages in flight, by packet id, in send order.
#[derive(Debug, Default, Clone)]
pub struct Inflight {
    pids: VecDeque<u16>,
    entries: VecDeque<InFlight>,
}

impl Inflight {
    fn position(&self, pid: u16) -> Option<usize> {
        self.pids.iter().position(|p| *p == pid)
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.pids.len()
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// Whether `pid` is in flight.
    pub fn contains_key(&self, pid: &u16) -> bool {
        self.position(*pid).is_some()
    }

    /// The message in flight under `pid`.
    pub fn get(&self, pid: &u16) -> Option<&InFlight> {
        self.position(*pid).map(|i| &self.entries[i])
    }

    /// The message in flight under `pid`, mutably.
    pub fn get_mut(&mut self, pid: &u16) -> Option<&mut InFlight> {
        self.position(*pid).map(|i| &mut self.entries[i])
    }

    /// Adds a message sent (or restored) under `pid`, which must not be in flight, as the
    /// newest.
    pub fn insert(&mut self, pid: u16, f: InFlight) {
        debug_assert!(!self.contains_key(&pid), "packet id {pid} is in flight already");
        self.pids.push_back(pid);
        self.entries.push_back(f);
    }

    /// Removes the message under `pid` (acknowledged, or dropped).
    pub fn remove(&mut self, pid: &u16) -> Option<InFlight> {
        let i = self.position(*pid)?;
        self.pids.remove(i);
        self.entries.remove(i)
    }

    /// (packet id, message), oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&u16, &InFlight)> {
        self.pids.iter().zip(self.entries.iter())
    }

    /// (packet id, message), oldest first, the messages mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u16, &mut InFlight)> {
        self.pids.iter().zip(self.entries.iter_mut())
    }

    /// The messages, oldest first.
    pub fn values(&self) -> impl Iterator<Item = &InFlight> {
        self.entries.iter()
    }

    /// The packet id sent last, if any.
    pub fn newest_pid(&self) -> Option<u16> {
        self.pids.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::msg::Msg;
    use crate::broker::session::{Delivery, OutState};
    use crate::codec::{MqStr, QoS};

    fn f(seq: u64) -> InFlight {
        let msg = Msg {
            topic: MqStr::from_static("t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: Default::default(),
            received_ms: 0,
        };
        let delivery = Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Default::default(),
            seq,
        };
        InFlight { delivery, state: OutState::Published }
    }

    #[test]
    fn keeps_send_order_across_a_packet_id_wrap_and_out_of_order_acks() {
        let mut w = Inflight::default();
        for (seq, pid) in [(1, 65534u16), (2, 65535), (3, 1), (4, 2)] {
            w.insert(pid, f(seq));
        }
        assert_eq!(w.remove(&65535).map(|x| x.delivery.seq), Some(2), "an ack out of order");
        assert!(w.remove(&65535).is_none(), "gone");
        assert!(w.contains_key(&1) && !w.contains_key(&3));
        w.get_mut(&1).expect("in flight").state = OutState::Released;
        let order: Vec<(u16, u64)> = w.iter().map(|(p, x)| (*p, x.delivery.seq)).collect();
        assert_eq!(order, [(65534, 1), (1, 3), (2, 4)], "resend order is send order, not id order");
        assert_eq!(w.get(&1).map(|x| x.state), Some(OutState::Released));
        assert_eq!((w.len(), w.newest_pid()), (3, Some(2)));
    }
}
