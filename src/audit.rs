//! Audit events (SPEC §10): what shards and the admin API record, per org. The control plane
//! aggregates repeated identical events and persists them (`control::audit`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Event types (SPEC §13 `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A client authenticated.
    AuthSuccess,
    /// A client was refused at authentication.
    AuthFailure,
    /// A session started (CONNACK sent).
    Connect,
    /// A connection ended.
    Disconnect,
    /// An ACL check denied an action.
    AclDenied,
    /// A quota was hit.
    QuotaExceeded,
    /// An administrative change (admin API).
    Admin,
}

impl AuditKind {
    /// The name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AuthSuccess => "auth_success",
            AuditKind::AuthFailure => "auth_failure",
            AuditKind::Connect => "connect",
            AuditKind::Disconnect => "disconnect",
            AuditKind::AclDenied => "acl_denied",
            AuditKind::QuotaExceeded => "quota_exceeded",
            AuditKind::Admin => "admin",
        }
    }

    /// Parses [`AuditKind::as_str`].
    pub fn parse(s: &str) -> Option<AuditKind> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One event as it is raised (before aggregation). Never holds a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Organization whose log receives it.
    pub org: Arc<str>,
    /// Type.
    pub kind: AuditKind,
    /// Client id, where there is one.
    pub client_id: Option<String>,
    /// User name as sent (or the admin actor).
    pub username: Option<String>,
    /// Type-specific fields (method, reason, transport, remote, …).
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// When, Unix ms.
    pub unix_ms: u64,
}
