//! The credential directory: an immutable snapshot of orgs, users and tokens that the control
//! plane builds and publishes to shards through `arc-swap` (lock-free reads on CONNECT).

use std::collections::HashMap;
use std::sync::Arc;

pub use super::principal::{Attrs, Identity, Method};
use super::secret::Mac;

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
    pub retention: crate::quota::Retention,
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
