//! An application message as it travels between sessions and shards.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;

use crate::codec::{MqStr, Properties, QoS};

/// A message's 5.0 properties, shared by every copy of the message (each delivery, queue entry
/// and cross-shard forward holds a pointer, not a copy). A message without properties — every
/// 3.1.1 message, most 5.0 ones — holds nothing. Reads through `Deref`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MsgProps(Option<Arc<Properties>>);

static NO_PROPS: LazyLock<Properties> = LazyLock::new(Properties::default);

impl MsgProps {
    /// Shares `p` (nothing is allocated when it holds no property).
    pub fn new(p: Properties) -> MsgProps {
        if p.is_empty() {
            MsgProps(None)
        } else {
            MsgProps(Some(Arc::new(p)))
        }
    }

    /// The properties, `None` when there are none.
    pub fn get(&self) -> Option<&Properties> {
        self.0.as_deref()
    }
}

impl From<Properties> for MsgProps {
    fn from(p: Properties) -> MsgProps {
        MsgProps::new(p)
    }
}

impl std::ops::Deref for MsgProps {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&NO_PROPS)
    }
}

/// An application message. Fresh from a read it borrows the read buffer (zero-copy slices);
/// anything that outlives the read (queued, in flight, retained) is an [`Msg::to_owned_copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Topic name.
    pub topic: MqStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// 5.0 properties to pass on (topic alias and subscription ids already removed).
    pub props: MsgProps,
    /// When the broker received it (ms on the shard clock), for message expiry.
    pub received_ms: u64,
}

/// Message expiry check outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry interval.
    Never,
    /// Seconds left, to be sent in place of the original interval [MQTT-3.3.2-6].
    Left(u32),
    /// Expired: must not be delivered [MQTT-3.3.2-5].
    Expired,
}

impl Msg {
    /// Deep copy that pins no read buffer.
    pub fn to_owned_copy(&self) -> Msg {
        let mut props = (*self.props).clone();
        let deep = |s: &mut Option<MqStr>| {
            if let Some(v) = s {
                *v = v.to_owned_copy();
            }
        };
        deep(&mut props.content_type);
        deep(&mut props.response_topic);
        if let Some(c) = &mut props.correlation_data {
            *c = Bytes::copy_from_slice(c);
        }
        for (k, v) in &mut props.user_properties {
            *k = k.to_owned_copy();
            *v = v.to_owned_copy();
        }
        Msg {
            topic: self.topic.to_owned_copy(),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            props: props.into(),
            received_ms: self.received_ms,
        }
    }

    /// Expiry state at `now_ms`.
    pub fn expiry(&self, now_ms: u64) -> Expiry {
        match self.props.message_expiry_interval {
            None => Expiry::Never,
            Some(secs) => {
                let elapsed = now_ms.saturating_sub(self.received_ms) / 1000;
                if elapsed >= secs as u64 {
                    Expiry::Expired
                } else {
                    Expiry::Left(secs - elapsed as u32)
                }
            }
        }
    }

    /// Bytes this message holds (for accounting).
    pub fn footprint(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }
}
