//! Messages between shards (the catalog lives in docs/architecture.md). Every message is
//! addressed to one shard and travels over a bounded single-producer queue per ordered pair.

use std::sync::Arc;

use smallvec::SmallVec;

use super::exactly_once::FwdAck;
use super::msg::Msg;
use super::session::SessionState;
use super::ConnId;
use crate::codec::MqStr;

/// Identity of a session: organization and client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// Organization id.
    pub org: Arc<str>,
    /// Client identifier.
    pub client_id: MqStr,
}

/// One cross-shard message.
#[derive(Debug)]
pub enum MeshMsg {
    /// A PUBLISH matched remote interest: route it to local non-shared subscribers, and to one
    /// local member of each shared group in `shared`.
    Forward {
        /// Organization.
        org: Arc<str>,
        /// The message (borrowing the sender's read buffer until processed).
        msg: Msg,
        /// Shared groups (`$share/g/f`) this shard was picked to deliver.
        shared: SmallVec<[Arc<str>; 2]>,
        /// With durability gating: origin shard and token (the publisher's acknowledgement
        /// waits for a [`MeshMsg::Stored`] with this token, sent once what this shard stored
        /// for the message is durable), and the origin id of a recorded QoS 2 forward.
        ack: Option<FwdAck>,
    },
    /// What a shard stored for a forwarded message is durable (`ok`), or its store failed.
    Stored {
        /// Token of the [`MeshMsg::Forward`].
        token: u64,
        /// False: the store failed; the acknowledgement is refused.
        ok: bool,
    },
    /// `shard` gained or lost its local interest in `filter`.
    Interest {
        /// Organization.
        org: Arc<str>,
        /// Filter, possibly `$share/g/f`.
        filter: Arc<str>,
        /// The shard whose interest changed.
        shard: u8,
        /// Gained (true) or lost.
        add: bool,
        /// Token to acknowledge (SUBACK waits for every peer), if any.
        ack: Option<(ConnId, u64)>,
    },
    /// Acknowledges an `Interest` with a token.
    InterestAck {
        /// Connection whose SUBACK waits.
        conn: ConnId,
        /// Token.
        token: u64,
    },
    /// Replicates a retained message set (or delete, when the payload is empty).
    Retain {
        /// Organization.
        org: Arc<str>,
        /// Owned message.
        msg: Msg,
        /// Global order of retained writes: the highest sequence wins on every shard.
        seq: u64,
    },
    /// To the home shard: a connection on `shard` wants the session `key`.
    Claim {
        /// Session.
        key: SessionKey,
        /// Claiming shard.
        shard: u8,
        /// Claiming connection.
        conn: ConnId,
        /// Clean Start of the new connection.
        clean_start: bool,
    },
    /// From the home shard to the previous owner: hand the session to `to_shard`.
    Takeover {
        /// Session.
        key: SessionKey,
        /// Generation the previous owner holds.
        old_generation: u64,
        /// Connection of the previous owner's claim (it may still await its grant).
        old_conn: ConnId,
        /// New owner shard.
        to_shard: u8,
        /// New owner connection.
        conn: ConnId,
        /// New generation.
        generation: u64,
        /// Clean Start of the new connection (discard state).
        clean_start: bool,
    },
    /// To the claiming shard: the session is yours, with its state if it existed.
    Granted {
        /// Session.
        key: SessionKey,
        /// Claiming connection.
        conn: ConnId,
        /// Generation assigned by the home shard.
        generation: u64,
        /// Previous state (None: start fresh).
        state: Option<Box<SessionState>>,
        /// The previous connection's quota slot is handed over with the session (a takeover
        /// keeps the org's connection count, SPEC §4).
        slot: bool,
    },
    /// To the shard whose store still holds a moved (or discarded) session: the copy of epoch
    /// `epoch` is durable elsewhere (or the session is gone), forget yours if older.
    Forget {
        /// Session.
        key: SessionKey,
        /// Older copies than this go.
        epoch: u64,
    },
    /// To the home shard: the session ended (clean end or expiry).
    Release {
        /// Session.
        key: SessionKey,
        /// Generation that ended.
        generation: u64,
    },
}
