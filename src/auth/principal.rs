//! Who a connection authenticated as: its [`Identity`] (org, name, method, attributes, roles),
//! whatever the source (password, token, JWT, anonymous).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// How a client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// No user name, on a listener with `anonymous_org`.
    Anonymous,
    /// A permanent user's password.
    Password,
    /// A temporary token (`tok_…@org`).
    Token,
    /// An IdP JWT verified by the broker.
    Jwt,
}

impl Method {
    /// Name in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Anonymous => "anonymous",
            Method::Password => "password",
            Method::Token => "token",
            Method::Jwt => "jwt",
        }
    }
}

/// Identity attributes that ACL variables bind to (SPEC §2, §3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    /// `{user_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `{email}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `{agent_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// `{role}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `{session_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Any further string claims, `{claims.NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Organization.
    pub org: Arc<str>,
    /// How it authenticated.
    pub method: Method,
    /// The permanent user's name, the token id (`tok_…`), the JWT's `sub`, or `anonymous`.
    pub name: Arc<str>,
    /// Attributes for ACL variables (tokens and JWTs; empty for users and anonymous).
    pub attrs: Arc<Attrs>,
    /// Roles (permanent users).
    pub roles: Arc<[String]>,
    /// When the credential stops being valid (Unix ms): the connection is closed then.
    pub expires_unix_ms: Option<u64>,
    /// A permanent user's own publish rules (allow-only ACL rules).
    pub user_publish: Arc<[String]>,
    /// A permanent user's own subscribe rules.
    pub user_subscribe: Arc<[String]>,
}

impl Identity {
    /// The user name audit events record: `name@org`, none for anonymous clients.
    pub fn audit_name(&self) -> Option<String> {
        (self.method != Method::Anonymous).then(|| format!("{}@{}", self.name, self.org))
    }

    /// What ACL variables and selectors read, for this identity on `client_id`.
    pub fn acl_identity(&self, client_id: &str, cert_cn: Option<&str>) -> crate::acl::AclIdentity {
        let a = &self.attrs;
        crate::acl::AclIdentity {
            // Tokens and JWTs never take a permanent user's {username} (SPEC §12).
            username: (self.method == Method::Password).then(|| self.name.to_string()),
            org_id: Some(self.org.to_string()),
            client_id: Some(client_id.to_string()),
            user_id: a.user_id.clone(),
            email: a.email.clone(),
            agent_id: a.agent_id.clone(),
            session_id: a.session_id.clone(),
            role: a.role.clone(),
            roles: self.roles.to_vec(),
            cert_cn: cert_cn.map(str::to_string),
            claims: a.claims.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        }
    }
}

impl Identity {
    /// The anonymous identity in `org`.
    pub fn anonymous(org: Arc<str>) -> Identity {
        Identity {
            org,
            method: Method::Anonymous,
            name: "anonymous".into(),
            attrs: Arc::default(),
            roles: Arc::new([]),
            expires_unix_ms: None,
            user_publish: Arc::new([]),
            user_subscribe: Arc::new([]),
        }
    }
}
