//! The configuration file (SPEC §12), validated: a [`Config`] that exists is valid. Unknown keys
//! are refused with their name and line (serde's `deny_unknown_fields` through `toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::identity::valid_org_id;
use crate::limits;
use crate::transport::tls::TlsSettings;
use raw::*;

mod listener;
mod org;
mod raw;
#[cfg(test)]
mod tests;

pub(crate) use org::fetchable_url;
use org::{check_env_name, parse_encryption, parse_org};

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
    /// Synced (fdatasync) as soon as writes are applied and no sync runs; writes arriving
    /// during one go into the next (group commit).
    #[default]
    Group,
    /// As `Group`, with a full fsync (file metadata too).
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
            listeners.push(listener::parse_listener(i, l, shards, &mut orgs, base)?);
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
