//! The TOML file as written: serde shapes, checked field by field in the parent module.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) data_dir: Option<PathBuf>,
    pub(super) shards: Option<RawShards>,
    pub(super) durability: Option<String>,
    pub(super) sys_interval: Option<RawDuration>,
    pub(super) max_packet_size: Option<u32>,
    pub(super) max_keepalive: Option<u16>,
    #[serde(default)]
    pub(super) listener: Vec<RawListener>,
    #[serde(default)]
    pub(super) org: Vec<RawOrg>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) audit_retention: Option<RawDuration>,
    pub(super) encryption: Option<RawEncryption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    #[serde(default)]
    pub(super) key: Vec<RawKey>,
    #[serde(default)]
    pub(super) destroyed_keys: Vec<String>,
    #[serde(default)]
    pub(super) accept_plain: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) id: String,
    pub(super) org: Option<String>,
    pub(super) file: Option<PathBuf>,
    pub(super) env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) queued_max_age: Option<RawDuration>,
    pub(super) retained_max_age: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) bind: Option<String>,
    pub(super) operator_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawShards {
    Auto(String),
    Count(i64),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Text(String),
    Secs(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) kind: String,
    pub(super) bind: Option<String>,
    pub(super) anonymous_org: Option<String>,
    /// Explicit opt-in to anonymous clients on a non-loopback address.
    #[serde(default)]
    pub(super) danger_allow_anonymous_non_loopback: bool,
    pub(super) shards: Option<Vec<i64>>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) min_tls: Option<String>,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) client_auth: Option<String>,
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrg {
    pub(super) id: String,
    pub(super) policy: Option<PathBuf>,
    pub(super) token_ttl: Option<RawDuration>,
    pub(super) token_ttl_max: Option<RawDuration>,
    pub(super) api_key_env: Option<String>,
    #[serde(default)]
    pub(super) user: Vec<RawUser>,
    pub(super) quotas: Option<crate::quota::QuotaLimits>,
    pub(super) retention: Option<RawRetention>,
    #[serde(default)]
    pub(super) jwt: Vec<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    pub(super) preset: String,
    pub(super) name: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<RawStrings>,
    pub(super) project_id: Option<String>,
    pub(super) jwks_url: Option<String>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) hs256_secret_env: Option<String>,
    #[serde(default)]
    pub(super) claims: std::collections::BTreeMap<String, String>,
    pub(super) leeway: Option<RawDuration>,
    pub(super) key_grace: Option<RawDuration>,
    pub(super) refresh_min: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStrings {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: String,
    pub(super) password_hash: String,
    #[serde(default)]
    pub(super) publish: Vec<String>,
    #[serde(default)]
    pub(super) subscribe: Vec<String>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
}
