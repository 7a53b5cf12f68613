//! The credential directory: an immutable snapshot of orgs, users and tokens that the control
//! plane builds and publishes to shards through `arc-swap` (lock-free reads on CONNECT), and
//! the identity a connection authenticates as.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::secret::Mac;

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

/// A permanent user as shards see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDir {
    /// Local part of the user name.
    pub name: Arc<str>,
    /// Argon2id PHC string.
    pub phc: Arc<str>,
    /// Bumped on every change of password or state: invalidates verified-credential caches.
    pub version: u64,
    /// Disabled users cannot connect.
    pub disabled: bool,
    /// Roles (ACL).
    pub roles: Arc<[String]>,
    /// Per-user publish rules (ACL).
    pub publish: Arc<[String]>,
    /// Per-user subscribe rules (ACL).
    pub subscribe: Arc<[String]>,
}

/// A temporary token as shards see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDir {
    /// MAC of the token's secret (`tkn_…`).
    pub mac: Mac,
    /// Expiry, Unix ms.
    pub expires_unix_ms: u64,
    /// Identity attributes.
    pub attrs: Arc<Attrs>,
}

/// One organization's credentials.
#[derive(Debug, Clone, Default)]
pub struct OrgDir {
    /// Permanent users by name.
    pub users: HashMap<Box<str>, Arc<UserDir>>,
    /// Temporary tokens by id (`tok_…`).
    pub tokens: HashMap<Box<str>, Arc<TokenDir>>,
    /// IdP JWT providers with their current keys.
    pub jwt: Vec<Arc<super::jwt::ProviderDir>>,
    /// The org's ACL v2 policy (`None`: blank, deny-all).
    pub policy: Option<Arc<crate::acl::Policy>>,
    /// The org's quota (`None`: unlimited).
    pub quota: Option<Arc<crate::quota::OrgQuota>>,
    /// Maximum ages of the org's stored messages (`[org.retention]`).
    pub retention: crate::config::Retention,
}

/// Everything shards need to authenticate a CONNECT. Immutable once published.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Organizations by id.
    pub orgs: HashMap<Arc<str>, Arc<OrgDir>>,
}

impl Directory {
    /// A directory of empty orgs (the embedded default and tests).
    pub fn with_orgs<'a>(ids: impl IntoIterator<Item = &'a str>) -> Directory {
        let permit = Arc::new(crate::acl::Policy::permit_all());
        let org = Arc::new(OrgDir { policy: Some(permit), ..OrgDir::default() });
        Directory { orgs: ids.into_iter().map(|id| (Arc::from(id), org.clone())).collect() }
    }
}
