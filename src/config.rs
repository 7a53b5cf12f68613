//! The configuration file (SPEC §12), validated: a [`Config`] that exists is valid. Unknown keys
//! are refused with their name and line (serde's `deny_unknown_fields` through `toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::valid_org_id;
use crate::limits;
use crate::transport::tls::{ClientAuth, TlsSettings};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where durable state will live (the persistence issue uses it).
    pub data_dir: PathBuf,
    /// Number of shards (executors).
    pub shards: usize,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Declared organizations (anonymous orgs included), applied at start-up.
    pub orgs: Vec<OrgConfig>,
    /// The admin HTTP API, if configured (`[admin]`).
    pub admin: Option<AdminConfig>,
    /// How long audit events are kept.
    pub audit_retention_ms: u64,
    /// `$SYS` interval in ms (0 disables).
    pub sys_interval_ms: u64,
    /// Largest packet accepted.
    pub max_packet_size: u32,
    /// Longest keep-alive a client may ask for, seconds (Mosquitto's `max_keepalive`; 65535:
    /// no cap). 5.0: a client asking more, or 0, gets Server Keep Alive = this; 3.1.1: refused.
    pub max_keepalive: u16,
    /// When stored messaging state reaches the disk (docs/durability.md).
    pub durability: Durability,
    /// Encryption at rest (`[encryption]`); no keys: values are stored plain.
    pub encryption: EncryptionConfig,
}

/// `[encryption]`: keys that seal stored values (docs/durability.md, "Encryption at rest").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionConfig {
    /// `[[encryption.key]]`, in order: the last global key and the last key of each org seal
    /// new values; all of them open stored ones.
    pub keys: Vec<KeyConfig>,
    /// Ids of deleted keys: values they sealed are dropped at start (crypto-shredding).
    pub destroyed_keys: Vec<String>,
    /// Read values stored plain where a key would have sealed them (a migration switch; off:
    /// such a value is refused, since anyone who can write the data directory could plant it).
    pub accept_plain: bool,
}

/// One encryption key (`[[encryption.key]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    /// Id stored with each value it seals (`[A-Za-z0-9_.-]{1,64}`).
    pub id: String,
    /// The org whose values it seals (`None`: every org without a key of its own).
    pub org: Option<String>,
    /// Where the 64 hex digits are.
    pub material: KeyMaterial,
}

/// Where a key's material is read from (never the config file itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A file (mode 0600) holding 64 hex digits.
    File(PathBuf),
    /// An environment variable holding 64 hex digits.
    Env(String),
}

pub use crate::quota::Retention;

/// `durability`: when writes to the shards' stores reach the disk (docs/durability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Synced at least every 10 ms (group commit).
    #[default]
    Group,
    /// Synced before each acknowledgement that depends on it.
    Always,
    /// Left to the OS: a crash loses what it had not written back.
    None,
}

/// `[admin]`: the admin HTTP API (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the HTTP listener.
    pub bind: SocketAddr,
    /// Environment variable holding the operator key (`None`: no operator key).
    pub operator_key_env: Option<String>,
}

/// A declared organization (`[[org]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgConfig {
    /// Organization id.
    pub id: String,
    /// Default lifetime of temporary tokens, seconds.
    pub token_ttl_secs: u64,
    /// Longest lifetime a token may ask for, seconds.
    pub token_ttl_max_secs: u64,
    /// Environment variable holding this org's API key.
    pub api_key_env: Option<String>,
    /// Permanent users declared here.
    pub users: Vec<UserConfig>,
    /// IdP JWT providers (`[[org.jwt]]`).
    pub jwt: Vec<JwtConfig>,
    /// The ACL v2 policy from `policy` (a file, or `preset:NAME`); `None`: the stored one, else
    /// blank (deny-all).
    pub policy: Option<crate::acl::Policy>,
    /// `[org.quotas]`; `None`: the limits last set through the admin API, else unlimited.
    pub quotas: Option<crate::quota::QuotaLimits>,
    /// `[org.retention]`.
    pub retention: Retention,
}

/// Where a JWT provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS URL, fetched and cached by the control plane.
    Url(String),
    /// OIDC discovery: `<issuer>/.well-known/openid-configuration` names the JWKS URL.
    Discovery(String),
    /// A JWKS file, read at start-up.
    File(PathBuf),
    /// An HS256 shared secret from this environment variable.
    SecretEnv(String),
}

/// One IdP JWT provider of an org (`[[org.jwt]]`, SPEC §2.3, §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// Name used by token exchange (`provider`); defaults to the preset.
    pub name: String,
    /// `supabase`, `firebase`, `auth0`, `clerk`, `oidc` or `custom`.
    pub preset: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audience: Vec<String>,
    /// Where the keys come from.
    pub keys: KeySource,
    /// ACL variable ← claim path (`sub` → `user_id` unless mapped otherwise).
    pub claims: Vec<(String, String)>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    pub leeway_secs: u64,
    /// How long a key that left the JWKS is still honoured, seconds.
    pub key_grace_secs: u64,
    /// Least time between two fetches of the JWKS triggered by unknown `kid`s, seconds.
    pub refresh_min_secs: u64,
}

impl OrgConfig {
    /// An org with defaults and no users (anonymous orgs).
    pub fn new(id: &str) -> OrgConfig {
        OrgConfig {
            id: id.to_string(),
            token_ttl_secs: limits::TOKEN_TTL_DEFAULT_SECS,
            token_ttl_max_secs: limits::TOKEN_TTL_MAX_SECS,
            api_key_env: None,
            users: Vec::new(),
            jwt: Vec::new(),
            policy: None,
            quotas: None,
            retention: Retention::default(),
        }
    }
}

/// A permanent user declared in the config (`[[org.user]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// Local part of the user name.
    pub name: String,
    /// Argon2id PHC string (from `coremq passwd`).
    pub password_hash: String,
    /// Per-user publish rules.
    pub publish: Vec<String>,
    /// Per-user subscribe rules.
    pub subscribe: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
}

/// Listener kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Plain MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// The transport name used in logs and audit events.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    fn default_bind(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "127.0.0.1:1883",
            ListenerKind::Tls => "127.0.0.1:8883",
            ListenerKind::Ws => "127.0.0.1:8083",
            ListenerKind::Wss => "127.0.0.1:8084",
        }
    }
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Kind.
    pub kind: ListenerKind,
    /// Address.
    pub bind: SocketAddr,
    /// Org for anonymous clients.
    pub anonymous_org: Option<String>,
    /// Shards that bind this listener (`None`: all). Pins a port to chosen cores, e.g. to
    /// keep a latency-critical port on its own core, or to test cross-shard behaviour.
    pub shards: Option<Vec<usize>>,
    /// TLS settings (`tls`, `wss`).
    pub tls: Option<TlsSettings>,
    /// HTTP path of the WebSocket endpoint (`ws`, `wss`).
    pub path: String,
    /// Expect a PROXY protocol v2 header before anything else.
    pub proxy_protocol: bool,
}

/// A configuration error, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    shards: Option<RawShards>,
    durability: Option<String>,
    sys_interval: Option<RawDuration>,
    max_packet_size: Option<u32>,
    max_keepalive: Option<u16>,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    org: Vec<RawOrg>,
    admin: Option<RawAdmin>,
    audit_retention: Option<RawDuration>,
    encryption: Option<RawEncryption>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    #[serde(default)]
    key: Vec<RawKey>,
    #[serde(default)]
    destroyed_keys: Vec<String>,
    #[serde(default)]
    accept_plain: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    org: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    queued_max_age: Option<RawDuration>,
    retained_max_age: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<String>,
    operator_key_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawShards {
    Auto(String),
    Count(i64),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Text(String),
    Secs(i64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    kind: String,
    bind: Option<String>,
    anonymous_org: Option<String>,
    /// Explicit opt-in to anonymous clients on a non-loopback address.
    #[serde(default)]
    danger_allow_anonymous_non_loopback: bool,
    shards: Option<Vec<i64>>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    min_tls: Option<String>,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
    path: Option<String>,
    #[serde(default)]
    proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrg {
    id: String,
    policy: Option<PathBuf>,
    token_ttl: Option<RawDuration>,
    token_ttl_max: Option<RawDuration>,
    api_key_env: Option<String>,
    #[serde(default)]
    user: Vec<RawUser>,
    quotas: Option<crate::quota::QuotaLimits>,
    retention: Option<RawRetention>,
    #[serde(default)]
    jwt: Vec<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    preset: String,
    name: Option<String>,
    issuer: Option<String>,
    audience: Option<RawStrings>,
    project_id: Option<String>,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    hs256_secret_env: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
    leeway: Option<RawDuration>,
    key_grace: Option<RawDuration>,
    refresh_min: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStrings {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
}

impl Config {
    /// The embedded default: 127.0.0.1:1883, anonymous clients in org `local`, one shard per core.
    pub fn embedded_default() -> Config {
        Config {
            data_dir: PathBuf::from("./data"),
            shards: auto_shards(),
            listeners: vec![Listener {
                kind: ListenerKind::Tcp,
                bind: "127.0.0.1:1883".parse().expect("literal address"),
                anonymous_org: Some("local".into()),
                shards: None,
                tls: None,
                path: "/mqtt".into(),
                proxy_protocol: false,
            }],
            orgs: vec![OrgConfig {
                policy: Some(crate::acl::Policy::permit_all()),
                ..OrgConfig::new("local")
            }],
            admin: None,
            audit_retention_ms: limits::AUDIT_RETENTION_DEFAULT_MS,
            sys_interval_ms: 10_000,
            max_packet_size: limits::PACKET_BYTES_MAX_DEFAULT,
            max_keepalive: u16::MAX,
            durability: Durability::Group,
            encryption: EncryptionConfig::default(),
        }
    }

    /// Reads and validates a file. Errors name the file, and the key and line where known.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError(e.to_string().trim_end().to_string()))?;
        let data_dir = base.join(raw.data_dir.unwrap_or_else(|| PathBuf::from("./data")));
        let shards = match raw.shards {
            None => auto_shards(),
            Some(RawShards::Auto(s)) if s == "auto" => auto_shards(),
            Some(RawShards::Auto(s)) => {
                return Err(ConfigError(format!("shards: expected \"auto\" or a number, got \"{s}\"")))
            }
            Some(RawShards::Count(n)) if n >= 1 && n as usize <= limits::SHARDS_MAX => n as usize,
            Some(RawShards::Count(n)) => {
                return Err(ConfigError(format!("shards: must be 1..={}, got {n}", limits::SHARDS_MAX)))
            }
        };
        let durability = match raw.durability.as_deref() {
            None | Some("group") => Durability::Group,
            Some("always") => Durability::Always,
            Some("none") => Durability::None,
            Some(d) => {
                return Err(ConfigError(format!(
                    "durability: expected \"always\", \"group\" or \"none\", got \"{d}\""
                )))
            }
        };
        let sys_interval_ms = match raw.sys_interval {
            None => 10_000,
            Some(d) => parse_duration_ms(&d).map_err(|e| ConfigError(format!("sys_interval: {e}")))?,
        };
        let max_packet_size = raw.max_packet_size.unwrap_or(limits::PACKET_BYTES_MAX_DEFAULT);
        if !(64..=limits::PACKET_BYTES_MAX_CEILING).contains(&max_packet_size) {
            return Err(ConfigError(format!(
                "max_packet_size: must be 64..={}, got {max_packet_size}",
                limits::PACKET_BYTES_MAX_CEILING
            )));
        }
        let max_keepalive = raw.max_keepalive.unwrap_or(u16::MAX);
        if max_keepalive == 0 {
            return Err(ConfigError("max_keepalive: must be 1..=65535 seconds".into()));
        }
        let mut orgs: Vec<OrgConfig> = Vec::new();
        for (i, o) in raw.org.iter().enumerate() {
            orgs.push(parse_org(i, o, &orgs, base)?);
        }
        let mut listeners = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let kind = match l.kind.as_str() {
                "tcp" => ListenerKind::Tcp,
                "tls" => ListenerKind::Tls,
                "ws" => ListenerKind::Ws,
                "wss" => ListenerKind::Wss,
                other => {
                    return Err(ConfigError(format!(
                        "listener[{i}].kind: expected tcp, tls, ws or wss, got \"{other}\""
                    )))
                }
            };
            let secure = matches!(kind, ListenerKind::Tls | ListenerKind::Wss);
            let web = matches!(kind, ListenerKind::Ws | ListenerKind::Wss);
            let tls = if secure {
                let need = |v: &Option<PathBuf>, key: &str| -> Result<PathBuf, ConfigError> {
                    let p = v.as_ref().ok_or_else(|| {
                        ConfigError(format!("listener[{i}].{key}: required for kind = \"{}\"", l.kind))
                    })?;
                    let p = base.join(p);
                    if !p.is_file() {
                        return Err(ConfigError(format!(
                            "listener[{i}].{key}: {} is not a readable file",
                            p.display()
                        )));
                    }
                    Ok(p)
                };
                let cert = need(&l.cert, "cert")?;
                let key = need(&l.key, "key")?;
                // SPEC §6: TLS 1.2+ on `tls`, TLS 1.3 by default on `wss`.
                let default_min = if kind == ListenerKind::Wss { "1.3" } else { "1.2" };
                let min_tls_13 = match l.min_tls.as_deref().unwrap_or(default_min) {
                    "1.2" => false,
                    "1.3" => true,
                    other => {
                        return Err(ConfigError(format!(
                            "listener[{i}].min_tls: expected \"1.2\" or \"1.3\", got \"{other}\""
                        )))
                    }
                };
                let client_ca = match &l.client_ca {
                    None => None,
                    Some(_) => Some(need(&l.client_ca, "client_ca")?),
                };
                let client_auth = match (l.client_auth.as_deref(), &client_ca) {
                    (None, None) | (Some("none"), _) => ClientAuth::None,
                    (None, Some(_)) | (Some("required"), Some(_)) => ClientAuth::Required,
                    (Some("optional"), Some(_)) => ClientAuth::Optional,
                    (Some("required" | "optional"), None) => {
                        return Err(ConfigError(format!("listener[{i}].client_auth: needs listener[{i}].client_ca")))
                    }
                    (Some(other), _) => {
                        return Err(ConfigError(format!(
                            "listener[{i}].client_auth: expected \"none\", \"optional\" or \"required\", got \"{other}\""
                        )))
                    }
                };
                let alpn = if web { vec![b"http/1.1".to_vec()] } else { vec![b"mqtt".to_vec()] };
                Some(TlsSettings { cert, key, min_tls_13, client_ca, client_auth, alpn })
            } else {
                for (name, set) in [
                    ("cert", l.cert.is_some()),
                    ("key", l.key.is_some()),
                    ("min_tls", l.min_tls.is_some()),
                    ("client_ca", l.client_ca.is_some()),
                    ("client_auth", l.client_auth.is_some()),
                ] {
                    if set {
                        return Err(ConfigError(format!("listener[{i}].{name}: only for kind tls or wss")));
                    }
                }
                None
            };
            let path = match (&l.path, web) {
                (Some(p), true) if p.starts_with('/') => p.clone(),
                (Some(p), true) => {
                    return Err(ConfigError(format!("listener[{i}].path: must start with /, got \"{p}\"")))
                }
                (Some(_), false) => {
                    return Err(ConfigError(format!("listener[{i}].path: only for kind ws or wss")))
                }
                (None, _) => "/mqtt".to_string(),
            };
            let bind = l.bind.as_deref().unwrap_or(kind.default_bind());
            let bind: SocketAddr = bind.parse().map_err(|_| {
                ConfigError(format!("listener[{i}].bind: \"{bind}\" is not an IP:port address"))
            })?;
            if let Some(org) = &l.anonymous_org {
                if !valid_org_id(org) {
                    return Err(ConfigError(format!(
                        "listener[{i}].anonymous_org: \"{org}\" is not [a-z0-9_-]{{1,64}}"
                    )));
                }
                if !bind.ip().is_loopback() && !l.danger_allow_anonymous_non_loopback {
                    return Err(ConfigError(format!(
                        "listener[{i}]: anonymous clients on non-loopback address {bind} are refused; \
                         bind to 127.0.0.1, remove anonymous_org, or set \
                         danger_allow_anonymous_non_loopback = true"
                    )));
                }
                if !orgs.iter().any(|o| &o.id == org) {
                    // SPEC §2: an undeclared anonymous org is created with the preset permit-all.
                    let mut o = OrgConfig::new(org);
                    o.policy = Some(crate::acl::Policy::permit_all());
                    orgs.push(o);
                }
            }
            let only = match &l.shards {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err(ConfigError(format!("listener[{i}].shards: must not be empty")))
                }
                Some(list) => {
                    let mut v = Vec::new();
                    for s in list {
                        if *s < 0 || *s as usize >= shards {
                            return Err(ConfigError(format!(
                                "listener[{i}].shards: shard {s} does not exist (shards = {shards})"
                            )));
                        }
                        v.push(*s as usize);
                    }
                    Some(v)
                }
            };
            listeners.push(Listener {
                kind,
                bind,
                anonymous_org: l.anonymous_org.clone(),
                shards: only,
                tls,
                path,
                proxy_protocol: l.proxy_protocol,
            });
        }
        if listeners.is_empty() {
            return Err(ConfigError("listener: at least one [[listener]] is required".into()));
        }
        let admin = match &raw.admin {
            None => None,
            Some(a) => {
                let bind = a.bind.as_deref().unwrap_or("127.0.0.1:8080");
                let bind: SocketAddr = bind
                    .parse()
                    .map_err(|_| ConfigError(format!("admin.bind: \"{bind}\" is not an IP:port address")))?;
                if let Some(e) = &a.operator_key_env {
                    check_env_name("admin.operator_key_env", e)?;
                }
                Some(AdminConfig { bind, operator_key_env: a.operator_key_env.clone() })
            }
        };
        let audit_retention_ms = match &raw.audit_retention {
            None => limits::AUDIT_RETENTION_DEFAULT_MS,
            Some(d) => parse_duration_ms(d).map_err(|e| ConfigError(format!("audit_retention: {e}")))?,
        };
        Ok(Config {
            data_dir,
            shards,
            listeners,
            orgs,
            admin,
            audit_retention_ms,
            sys_interval_ms,
            max_packet_size,
            max_keepalive,
            durability,
            encryption: parse_encryption(raw.encryption.as_ref(), base)?,
        })
    }

    /// The declared org `id`.
    pub fn org(&self, id: &str) -> Option<&OrgConfig> {
        self.orgs.iter().find(|o| o.id == id)
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn parse_encryption(raw: Option<&RawEncryption>, base: &Path) -> Result<EncryptionConfig, ConfigError> {
    let Some(raw) = raw else { return Ok(EncryptionConfig::default()) };
    let mut out = EncryptionConfig::default();
    for (i, k) in raw.key.iter().enumerate() {
        let key = format!("encryption.key[{i}]");
        if !valid_key_id(&k.id) {
            return Err(ConfigError(format!("{key}.id: \"{}\" is not [A-Za-z0-9_.-]{{1,64}}", k.id)));
        }
        if out.keys.iter().any(|o: &KeyConfig| o.id == k.id) || raw.destroyed_keys.contains(&k.id) {
            return Err(ConfigError(format!("{key}.id: \"{}\" is used twice", k.id)));
        }
        if let Some(org) = &k.org {
            if !valid_org_id(org) {
                return Err(ConfigError(format!("{key}.org: \"{org}\" is not [a-z0-9_-]{{1,64}}")));
            }
        }
        let material = match (&k.file, &k.env) {
            (Some(f), None) => KeyMaterial::File(base.join(f)),
            (None, Some(e)) => {
                check_env_name(&format!("{key}.env"), e)?;
                KeyMaterial::Env(e.clone())
            }
            _ => return Err(ConfigError(format!("{key}: exactly one of file or env is required"))),
        };
        out.keys.push(KeyConfig { id: k.id.clone(), org: k.org.clone(), material });
    }
    for (i, id) in raw.destroyed_keys.iter().enumerate() {
        if !valid_key_id(id) {
            return Err(ConfigError(format!(
                "encryption.destroyed_keys[{i}]: \"{id}\" is not [A-Za-z0-9_.-]{{1,64}}"
            )));
        }
    }
    out.destroyed_keys = raw.destroyed_keys.clone();
    out.accept_plain = raw.accept_plain;
    Ok(out)
}

fn check_env_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ConfigError(format!("{key}: \"{name}\" is not an environment variable name")));
    }
    Ok(())
}

/// Loads a policy from a file (relative to the config) or `preset:NAME`.
fn load_policy(key: &str, p: &Path, base: &Path) -> Result<crate::acl::Policy, ConfigError> {
    let s = p.to_string_lossy();
    let text = match s.strip_prefix("preset:") {
        Some(name) => crate::acl::presets::get(name)
            .ok_or_else(|| {
                ConfigError(format!("{key}: unknown preset \"{name}\" (see `coremq acl presets`)"))
            })?
            .to_string(),
        None => {
            let f = base.join(p);
            std::fs::read_to_string(&f)
                .map_err(|e| ConfigError(format!("{key}: {}: cannot read: {e}", f.display())))?
        }
    };
    crate::acl::Policy::parse(&text).map_err(|e| ConfigError(format!("{key}: {e}")))
}

/// Whether `url` may be fetched: `https://`, or `http://` to a loopback host (SPEC §12). The
/// URL is parsed as the HTTP client will parse it and the whole host compared, so
/// `http://localhost.evil.tld/`, `http://127.0.0.1.nip.io/` or `http://127.0.0.1@evil.tld/`
/// are refused.
pub(crate) fn fetchable_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else { return false };
    let Some(host) = u.host_str() else { return false };
    match u.scheme() {
        "https" => true,
        "http" => {
            host.eq_ignore_ascii_case("localhost")
                || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
        }
        _ => false,
    }
}

fn parse_jwt(key: &str, r: &RawJwt, base: &Path) -> Result<JwtConfig, ConfigError> {
    let err = |field: &str, m: String| ConfigError(format!("{key}.{field}: {m}"));
    let preset = r.preset.as_str();
    if !matches!(preset, "supabase" | "firebase" | "auth0" | "clerk" | "oidc" | "custom") {
        return Err(err(
            "preset",
            format!("expected supabase, firebase, auth0, clerk, oidc or custom, got \"{preset}\""),
        ));
    }
    let issuer = match (preset, &r.issuer, &r.project_id) {
        ("firebase", None, Some(p)) => format!("https://securetoken.google.com/{p}"),
        (_, Some(i), _) => i.clone(),
        ("firebase", None, None) => {
            return Err(err("project_id", "required for preset firebase (or set issuer)".into()))
        }
        (_, None, _) => return Err(err("issuer", format!("required for preset {preset}"))),
    };
    if preset == "auth0" && !issuer.ends_with('/') {
        return Err(err("issuer", format!("Auth0 issuers end with \"/\" (tokens carry \"{issuer}/\")")));
    }
    let audience = match (&r.audience, preset, &r.project_id) {
        (Some(RawStrings::One(a)), _, _) => vec![a.clone()],
        (Some(RawStrings::Many(v)), _, _) if !v.is_empty() => v.clone(),
        (None, "supabase", _) => vec!["authenticated".into()],
        (None, "firebase", Some(p)) => vec![p.clone()],
        _ => return Err(err("audience", format!("required for preset {preset} (aud is always checked)"))),
    };
    let trimmed = issuer.trim_end_matches('/');
    let keys = match (&r.jwks_url, &r.jwks_file, &r.hs256_secret_env) {
        (Some(u), None, None) => KeySource::Url(u.clone()),
        (None, Some(f), None) => {
            let p = base.join(f);
            if !p.is_file() {
                return Err(err("jwks_file", format!("{} is not a readable file", p.display())));
            }
            KeySource::File(p)
        }
        (None, None, Some(e)) => {
            check_env_name(&format!("{key}.hs256_secret_env"), e)?;
            KeySource::SecretEnv(e.clone())
        }
        (None, None, None) => match preset {
            "firebase" => KeySource::Url(
                "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
                    .into(),
            ),
            "oidc" => KeySource::Discovery(format!("{trimmed}/.well-known/openid-configuration")),
            "custom" => {
                return Err(err(
                    "jwks_url",
                    "custom providers need jwks_url, jwks_file or hs256_secret_env".into(),
                ))
            }
            _ => KeySource::Url(format!("{trimmed}/.well-known/jwks.json")),
        },
        _ => return Err(err("jwks_url", "set only one of jwks_url, jwks_file, hs256_secret_env".into())),
    };
    if let KeySource::Url(u) | KeySource::Discovery(u) = &keys {
        if !fetchable_url(u) {
            return Err(err(
                "jwks_url",
                format!("\"{u}\" must be https:// (http:// only to a loopback address)"),
            ));
        }
    }
    let mut claims: Vec<(String, String)> = vec![("user_id".into(), "sub".into())];
    match preset {
        "supabase" => {
            claims.push(("email".into(), "email".into()));
            claims.push(("role".into(), "role".into()));
        }
        "firebase" | "auth0" | "clerk" | "oidc" => claims.push(("email".into(), "email".into())),
        _ => {}
    }
    for (var, path) in &r.claims {
        if var.is_empty() || var.len() > 64 || path.is_empty() {
            return Err(err(
                &format!("claims.{var}"),
                "variable names and claim paths must not be empty".into(),
            ));
        }
        // Supabase: user_metadata is editable by the user; it must never feed authorization.
        if preset == "supabase" && (path == "user_metadata" || path.starts_with("user_metadata.")) {
            return Err(err(
                &format!("claims.{var}"),
                "Supabase user_metadata is writable by the end user and cannot feed authorization; use app_metadata".into(),
            ));
        }
        claims.retain(|(v, _)| v != var);
        claims.push((var.clone(), path.clone()));
    }
    let secs = |field: &str, d: &Option<RawDuration>, default: u64| -> Result<u64, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) => parse_duration_ms(d).map(|ms| ms / 1000).map_err(|e| err(field, e)),
        }
    };
    Ok(JwtConfig {
        name: r.name.clone().unwrap_or_else(|| preset.to_string()),
        preset: preset.to_string(),
        issuer,
        audience,
        keys,
        claims,
        leeway_secs: secs("leeway", &r.leeway, 30)?,
        // 0 by default: a key leaves the set because it must no longer be trusted, so it stops
        // being accepted at the refresh that sees it gone (the JWKS's own max-age).
        key_grace_secs: secs("key_grace", &r.key_grace, 0)?,
        refresh_min_secs: secs("refresh_min", &r.refresh_min, 10)?,
    })
}

fn parse_org(i: usize, o: &RawOrg, seen: &[OrgConfig], base: &Path) -> Result<OrgConfig, ConfigError> {
    if !valid_org_id(&o.id) {
        return Err(ConfigError(format!("org[{i}].id: \"{}\" is not [a-z0-9_-]{{1,64}}", o.id)));
    }
    if seen.iter().any(|s| s.id == o.id) {
        return Err(ConfigError(format!("org[{i}].id: \"{}\" declared twice", o.id)));
    }
    let mut org = OrgConfig::new(&o.id);
    if let Some(q) = o.quotas {
        if q.max_inflight.is_some_and(|v| v == 0 || v > 65_535) {
            return Err(ConfigError(format!("org[{i}].quotas.max_inflight: must be 1..=65535")));
        }
        if q.max_packet_size.is_some_and(|v| v < 64) {
            return Err(ConfigError(format!("org[{i}].quotas.max_packet_size: must be at least 64 bytes")));
        }
        org.quotas = Some(q);
    }
    if let Some(r) = &o.retention {
        let age = |d: &Option<RawDuration>, field: &str| -> Result<Option<u64>, ConfigError> {
            match d {
                None => Ok(None),
                Some(d) => match parse_duration_ms(d) {
                    Ok(0) => Err(ConfigError(format!("org[{i}].retention.{field}: must be above 0"))),
                    Ok(ms) => Ok(Some(ms)),
                    Err(e) => Err(ConfigError(format!("org[{i}].retention.{field}: {e}"))),
                },
            }
        };
        org.retention = Retention {
            queued_max_age_ms: age(&r.queued_max_age, "queued_max_age")?,
            retained_max_age_ms: age(&r.retained_max_age, "retained_max_age")?,
        };
    }
    if let Some(p) = &o.policy {
        org.policy = Some(load_policy(&format!("org[{i}].policy"), p, base)?);
    }
    for (j, raw) in o.jwt.iter().enumerate() {
        let p = parse_jwt(&format!("org[{i}].jwt[{j}]"), raw, base)?;
        if org.jwt.iter().any(|q: &JwtConfig| q.name == p.name || q.issuer == p.issuer) {
            return Err(ConfigError(format!(
                "org[{i}].jwt[{j}]: two providers with name \"{}\" or issuer \"{}\" (set `name`)",
                p.name, p.issuer
            )));
        }
        org.jwt.push(p);
    }
    if let Some(d) = &o.token_ttl_max {
        org.token_ttl_max_secs =
            parse_duration_ms(d).map_err(|e| ConfigError(format!("org[{i}].token_ttl_max: {e}")))? / 1000;
        if org.token_ttl_max_secs == 0 {
            return Err(ConfigError(format!("org[{i}].token_ttl_max: must be at least 1s")));
        }
    }
    if let Some(d) = &o.token_ttl {
        org.token_ttl_secs =
            parse_duration_ms(d).map_err(|e| ConfigError(format!("org[{i}].token_ttl: {e}")))? / 1000;
        if org.token_ttl_secs == 0 || org.token_ttl_secs > org.token_ttl_max_secs {
            return Err(ConfigError(format!(
                "org[{i}].token_ttl: must be 1s..={}s (token_ttl_max)",
                org.token_ttl_max_secs
            )));
        }
    }
    if let Some(e) = &o.api_key_env {
        check_env_name(&format!("org[{i}].api_key_env"), e)?;
        org.api_key_env = Some(e.clone());
    }
    for (j, u) in o.user.iter().enumerate() {
        let key = format!("org[{i}].user[{j}]");
        if crate::identity::parse_username(&format!("{}@{}", u.name, o.id)).is_err()
            || u.name.starts_with("tok_")
        {
            return Err(ConfigError(format!(
                "{key}.name: \"{}\" is not a valid user name (1-128 bytes, no @ + # / or control characters, not tok_…)",
                u.name
            )));
        }
        if org.users.iter().any(|x| x.name == u.name) {
            return Err(ConfigError(format!("{key}.name: \"{}\" declared twice", u.name)));
        }
        crate::auth::password::check_phc(&u.password_hash)
            .map_err(|e| ConfigError(format!("{key}.password_hash: {e}")))?;
        for (field, rules) in [("publish", &u.publish), ("subscribe", &u.subscribe)] {
            for (k, r) in rules.iter().enumerate() {
                // Exactly the checks of a policy rule's topic (unknown variables included).
                crate::acl::policy::parse_pattern(r)
                    .map_err(|e| ConfigError(format!("{key}.{field}[{k}]: \"{r}\": {e}")))?;
            }
        }
        org.users.push(UserConfig {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            publish: u.publish.clone(),
            subscribe: u.subscribe.clone(),
            roles: u.roles.clone(),
        });
    }
    Ok(org)
}

impl Config {
    /// The `*_env` key variables that `serve` would refuse here: unset, or under 16
    /// characters (`config check` prints these as warnings).
    pub fn env_key_warnings(&self) -> Vec<String> {
        let mut vars: Vec<(String, &str)> = Vec::new();
        if let Some(v) = self.admin.as_ref().and_then(|a| a.operator_key_env.as_deref()) {
            vars.push(("admin.operator_key_env".into(), v));
        }
        for (i, o) in self.orgs.iter().enumerate() {
            if let Some(v) = o.api_key_env.as_deref() {
                vars.push((format!("org[{i}].api_key_env"), v));
            }
        }
        vars.into_iter()
            .filter_map(|(key, var)| match std::env::var(var) {
                Err(_) => Some(format!(
                    "{key}: environment variable {var} is not set here (serve would refuse to start)"
                )),
                Ok(v) if v.len() < 16 => {
                    Some(format!("{key}: {var} holds under 16 characters (serve would refuse it)"))
                }
                Ok(_) => None,
            })
            .collect()
    }
}

/// One shard per online CPU.
pub fn auto_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(limits::SHARDS_MAX)
}

fn parse_duration_ms(d: &RawDuration) -> Result<u64, String> {
    match d {
        RawDuration::Secs(s) if *s >= 0 => Ok(*s as u64 * 1000),
        RawDuration::Secs(s) => Err(format!("must not be negative, got {s}")),
        RawDuration::Text(t) => {
            let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
            let n: u64 =
                num.parse().map_err(|_| format!("expected e.g. \"10s\", \"5m\", \"1h\", got \"{t}\""))?;
            let mult = match unit {
                "ms" => 1,
                "s" | "" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(format!("unknown unit in \"{t}\" (ms, s, m, h, d)")),
            };
            Ok(n * mult)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("/etc/coremq"))
    }

    #[test]
    fn interop_config() {
        let c = parse(
            "data_dir = \"./d\"\nshards = 1\n[[listener]]\nkind = \"tcp\"\nbind = \"127.0.0.1:1999\"\nanonymous_org = \"local\"\n",
        )
        .unwrap();
        assert_eq!(c.shards, 1);
        assert_eq!(c.data_dir, PathBuf::from("/etc/coremq/./d"));
        assert_eq!(c.orgs.len(), 1);
        assert_eq!(c.orgs[0].id, "local");
        assert_eq!(
            c.orgs[0].policy,
            Some(crate::acl::Policy::permit_all()),
            "undeclared anonymous org: permit-all"
        );
    }

    #[test]
    fn encryption_and_retention() {
        let c = parse(
            "[[listener]]\nkind=\"tcp\"\n[[org]]\nid=\"acme\"\n[org.retention]\nqueued_max_age=\"7d\"\n\
             [encryption]\ndestroyed_keys=[\"old\"]\n[[encryption.key]]\nid=\"k1\"\nfile=\"k1.key\"\n\
             [[encryption.key]]\nid=\"acme-1\"\norg=\"acme\"\nenv=\"ACME_KEY\"\n",
        )
        .unwrap();
        assert_eq!(c.encryption.keys.len(), 2);
        assert_eq!(c.encryption.keys[0].material, KeyMaterial::File(PathBuf::from("/etc/coremq/k1.key")));
        assert_eq!(c.encryption.keys[1].org.as_deref(), Some("acme"));
        assert_eq!(c.encryption.destroyed_keys, vec!["old".to_string()]);
        assert_eq!(c.org("acme").unwrap().retention.queued_max_age_ms, Some(7 * 86_400_000));
        let e = |t: &str| parse(&format!("[[listener]]\nkind=\"tcp\"\n{t}")).unwrap_err().0;
        assert!(e("[[encryption.key]]\nid=\"k\"\n").contains("encryption.key[0]: exactly one of file or env"));
        assert!(e("[[encryption.key]]\nid=\"a b\"\nenv=\"X\"\n").contains("encryption.key[0].id"));
        assert!(e("[encryption]\ndestroyed_keys=[\"k\"]\n[[encryption.key]]\nid=\"k\"\nenv=\"X\"\n")
            .contains("used twice"));
        assert!(e("[[org]]\nid=\"a\"\n[org.retention]\nqueued_max_age=0\n")
            .contains("org[0].retention.queued_max_age"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("shard = 2\n[[listener]]\nkind=\"tcp\"\n").unwrap_err();
        assert!(e.0.contains("unknown field `shard`"), "{e}");
        let e = parse("[[listener]]\nkind=\"tcp\"\nbnd=\"x\"\n").unwrap_err();
        assert!(e.0.contains("bnd") && e.0.contains("line 3"), "{e}");
    }

    #[test]
    fn refusals() {
        assert!(parse("[[listener]]\nkind=\"tcp\"\nbind=\"0.0.0.0:1883\"\nanonymous_org=\"local\"\n")
            .unwrap_err()
            .0
            .contains("non-loopback"));
        assert!(parse("shards = 0\n[[listener]]\nkind=\"tcp\"\n").unwrap_err().0.contains("shards"));
        assert!(parse("shards = \"many\"\n[[listener]]\nkind=\"tcp\"\n").unwrap_err().0.contains("shards"));
        assert!(parse("durability = \"sometimes\"\n[[listener]]\nkind=\"tcp\"\n")
            .unwrap_err()
            .0
            .contains("durability"));
        assert!(parse("[[listener]]\nkind=\"quic\"\n").unwrap_err().0.contains("listener[0].kind"));
        assert!(parse("[[listener]]\nkind=\"tls\"\n").unwrap_err().0.contains("listener[0].cert: required"));
        assert!(parse("[[listener]]\nkind=\"tls\"\ncert=\"/nope.pem\"\nkey=\"/nope.key\"\n")
            .unwrap_err()
            .0
            .contains("not a readable file"));
        assert!(parse("[[listener]]\nkind=\"tcp\"\npath=\"/mqtt\"\n")
            .unwrap_err()
            .0
            .contains("listener[0].path"));
        assert!(parse("[[listener]]\nkind=\"tcp\"\ncert=\"x\"\n")
            .unwrap_err()
            .0
            .contains("only for kind tls"));
        assert!(parse("[[listener]]\nkind=\"tcp\"\nbind=\"nope\"\n")
            .unwrap_err()
            .0
            .contains("listener[0].bind"));
        assert!(parse("[[org]]\nid=\"Bad\"\n[[listener]]\nkind=\"tcp\"\n")
            .unwrap_err()
            .0
            .contains("org[0].id"));
        assert!(parse("").unwrap_err().0.contains("listener"));
    }

    #[test]
    fn durations() {
        let c = parse("sys_interval = \"2s\"\n[[listener]]\nkind=\"tcp\"\n").unwrap();
        assert_eq!(c.sys_interval_ms, 2000);
        assert!(parse("sys_interval = \"2 parsecs\"\n[[listener]]\nkind=\"tcp\"\n").is_err());
    }

    #[test]
    fn fetchable_urls_compare_the_parsed_host() {
        for ok in [
            "https://idp.example/jwks",
            "http://localhost:8080/k",
            "http://127.0.0.1/k",
            "http://[::1]:9/k",
            "http://127.1/k",
        ] {
            assert!(fetchable_url(ok), "{ok}");
        }
        for bad in [
            "http://localhost.evil.tld/",
            "http://127.0.0.1.nip.io/",
            "http://127.0.0.1@evil.tld/",
            "http://localhost@evil.tld/",
            "http://evil.tld/",
            "ftp://localhost/",
            "http:///x",
            "not a url",
        ] {
            assert!(!fetchable_url(bad), "{bad}");
        }
    }
}
