//! The typed contract between the shards and the control plane: commands a shard runs for
//! the control plane, requests a shard makes of it, and what they exchange.
//!
//! Both sides depend on this module; neither depends on the other's internals through it.

use std::sync::Arc;

/// Whose connections to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickTarget {
    /// A permanent user (deleted, disabled or its password changed).
    User(String),
    /// A temporary token (revoked).
    Token(String),
    /// Every connection of the org (org deleted).
    All,
    /// The connection with this client id (admin disconnect).
    ClientId(String),
}

/// A live connection, for `GET /v2/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// Client id.
    pub client_id: String,
    /// Identity name (user, token id, `anonymous`).
    pub identity: String,
    /// `password`, `token` or `anonymous`.
    pub method: String,
    /// `tcp`, `tls`, `ws`, `wss`.
    pub transport: String,
    /// Client address.
    pub remote: String,
    /// MQTT protocol level (4 or 5).
    pub protocol: u8,
    /// Shard serving it.
    pub shard: u8,
}

/// A command for one shard.
#[derive(Debug)]
pub enum ShardCommand {
    /// Close matching connections of `org` (5.0: DISCONNECT 0x98); replies with the count.
    Kick {
        /// Organization.
        org: Arc<str>,
        /// Whose connections.
        target: KickTarget,
        /// Count of connections closed.
        reply: Option<flume::Sender<usize>>,
    },
    /// Which live subscriptions of `org` a candidate policy would remove: (client id, filter).
    DiffPolicy {
        /// Organization.
        org: Arc<str>,
        /// The candidate.
        policy: Arc<crate::acl::Policy>,
        /// The list.
        reply: flume::Sender<Vec<(String, String)>>,
    },
    /// `org`'s policy changed: recompile ACLs, drop subscriptions it no longer allows.
    PolicyChanged {
        /// Organization.
        org: Arc<str>,
    },
    /// Publish into `org` as a service identity (REST bridge), after the ACL check.
    Publish {
        /// Organization.
        org: Arc<str>,
        /// Topic.
        topic: String,
        /// Payload.
        payload: bytes::Bytes,
        /// QoS (0 or 1).
        qos: u8,
        /// Retain flag.
        retain: bool,
        /// User properties (5.0 subscribers see them).
        user_properties: Vec<(String, String)>,
    },
    /// `org` was deleted: remove everything it owns on the shard, in memory and on disk;
    /// replies once the store's deletion is durable (false: the store failed).
    PurgeOrg {
        /// Organization.
        org: Arc<str>,
        /// Done.
        reply: flume::Sender<bool>,
    },
    /// List `org`'s live connections.
    Sessions {
        /// Organization.
        org: Arc<str>,
        /// The list.
        reply: flume::Sender<Vec<SessionInfo>>,
    },
}

/// A request from a shard to the control plane.
pub enum ControlRequest {
    /// Refresh a JWT provider's keys (an unknown `kid` was seen); `reply` runs when done.
    RefreshKeys {
        /// Organization.
        org: Arc<str>,
        /// Provider name.
        provider: Arc<str>,
        /// Called when the refresh finished or was skipped.
        reply: Box<dyn FnOnce() + Send>,
    },
}

impl std::fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlRequest::RefreshKeys { org, provider, .. } => {
                write!(f, "RefreshKeys({org}, {provider})")
            }
        }
    }
}
