//! The control plane's own fjall database under `data_dir/control`: organizations, users, API
//! keys (as MACs), temporary tokens (as MACs) and the audit log. Values are JSON records; keys
//! start with the org id and a NUL, so one org's rows are one prefix scan.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::directory::Attrs;

/// A stored organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// Id.
    pub id: String,
    /// Created, Unix ms.
    pub created_unix_ms: u64,
    /// Default token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Longest token lifetime, seconds.
    pub token_ttl_max_secs: u64,
    /// `config` (declared in the file; re-applied at each start) or `api`.
    pub source: String,
}

/// A stored permanent user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Local part of the user name.
    pub name: String,
    /// Argon2id PHC string.
    pub phc: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Per-user publish rules.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Per-user subscribe rules.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Disabled users cannot connect.
    #[serde(default)]
    pub disabled: bool,
    /// Bumped on every change.
    pub version: u64,
    /// `config` or `api`.
    pub source: String,
}

/// A stored API key (the key itself is not stored, only its MAC, which is the row key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id, shown in listings (`key_…`).
    pub id: String,
    /// The org it belongs to.
    pub org: String,
    /// Created, Unix ms.
    pub created_unix_ms: u64,
    /// `config` (from `api_key_env`) or `api`.
    pub source: String,
}

/// A stored temporary token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok_…`.
    pub id: String,
    /// Hex MAC of the secret.
    pub mac: String,
    /// Created, Unix ms.
    pub created_unix_ms: u64,
    /// Expiry, Unix ms.
    pub expires_unix_ms: u64,
    /// Identity attributes.
    pub attrs: Attrs,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// First occurrence, Unix ms.
    pub unix_ms: u64,
    /// Last occurrence, Unix ms (aggregated repeats).
    pub last_unix_ms: u64,
    /// Type (`auth_failure`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Client id.
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Type-specific fields.
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Occurrences aggregated into this entry.
    pub count: u64,
}

/// A storage error, with what was being done.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError(format!("control store: {e}"))
    }
}

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    db: Database,
    meta: Keyspace,
    orgs: Keyspace,
    users: Keyspace,
    api_keys: Keyspace,
    tokens: Keyspace,
    audit: Keyspace,
    policies: Keyspace,
    quotas: Keyspace,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store(..)")
    }
}

/// `org \0 rest`.
pub fn org_key(org: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(org.len() + 1 + rest.len());
    k.extend_from_slice(org.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

fn decode<T: DeserializeOwned>(v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError(format!("control store: corrupt record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

impl Store {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("{}: cannot create: {e}", dir.display())))?;
        let db = Database::builder(dir).open().map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Store {
            meta: ks("meta")?,
            orgs: ks("orgs")?,
            users: ks("users")?,
            api_keys: ks("api_keys")?,
            tokens: ks("tokens")?,
            audit: ks("audit")?,
            policies: ks("policies")?,
            quotas: ks("quotas")?,
            db,
        })
    }

    /// Makes every write so far durable (admin changes are acknowledged after this).
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// The pepper for credential MACs, created on first use and kept forever.
    pub fn pepper(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.meta.get("pepper")? {
            return Ok(v.to_vec());
        }
        let p = crate::auth::secret::random_bytes::<32>().to_vec();
        self.meta.insert("pepper", p.clone())?;
        self.sync()?;
        Ok(p)
    }

    // ---------------------------------------------------------------- orgs

    /// Stores an organization.
    pub fn put_org(&self, o: &OrgRecord) -> Result<(), StoreError> {
        Ok(self.orgs.insert(o.id.as_bytes(), encode(o))?)
    }

    /// One organization.
    pub fn org(&self, id: &str) -> Result<Option<OrgRecord>, StoreError> {
        self.orgs.get(id.as_bytes())?.map(|v| decode(&v)).transpose()
    }

    /// All organizations, by id.
    pub fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        self.orgs.iter().map(|g| decode(&g.value()?)).collect()
    }

    /// Deletes an organization and everything it owns (users, keys, tokens, audit).
    pub fn delete_org(&self, id: &str) -> Result<(), StoreError> {
        let prefix = org_key(id, b"");
        for ks in [&self.users, &self.tokens, &self.audit] {
            let keys: Vec<_> = ks.prefix(&prefix).map(|g| g.key()).collect::<Result<_, _>>()?;
            for k in keys {
                ks.remove(k)?;
            }
        }
        for (mac, k) in self.api_keys_of(id)? {
            let _ = k;
            self.api_keys.remove(mac.into_bytes())?;
        }
        self.policies.remove(id.as_bytes())?;
        self.quotas.remove(id.as_bytes())?;
        self.orgs.remove(id.as_bytes())?;
        Ok(())
    }

    // ---------------------------------------------------------------- policies

    /// Stores an org's ACL document (validated by the caller).
    pub fn put_policy(&self, org: &str, doc: &serde_json::Value) -> Result<(), StoreError> {
        Ok(self.policies.insert(org.as_bytes(), encode(doc))?)
    }

    /// An org's ACL document.
    pub fn policy(&self, org: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.policies.get(org.as_bytes())?.map(|v| decode(&v)).transpose()
    }

    /// Stores an org's quota limits (set through the admin API).
    pub fn put_quotas(&self, org: &str, q: &crate::quota::QuotaLimits) -> Result<(), StoreError> {
        Ok(self.quotas.insert(org.as_bytes(), encode(q))?)
    }

    /// An org's stored quota limits.
    pub fn quotas(&self, org: &str) -> Result<Option<crate::quota::QuotaLimits>, StoreError> {
        self.quotas.get(org.as_bytes())?.map(|v| decode(&v)).transpose()
    }

    // ---------------------------------------------------------------- users

    /// Stores a user.
    pub fn put_user(&self, org: &str, u: &UserRecord) -> Result<(), StoreError> {
        Ok(self.users.insert(org_key(org, u.name.as_bytes()), encode(u))?)
    }

    /// One user.
    pub fn user(&self, org: &str, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users.get(org_key(org, name.as_bytes()))?.map(|v| decode(&v)).transpose()
    }

    /// An org's users.
    pub fn users(&self, org: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.users.prefix(org_key(org, b"")).map(|g| decode(&g.value()?)).collect()
    }

    /// Deletes a user; whether it existed.
    pub fn delete_user(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        let k = org_key(org, name.as_bytes());
        let existed = self.users.contains_key(&k)?;
        self.users.remove(k)?;
        Ok(existed)
    }

    // ---------------------------------------------------------------- API keys

    /// Stores an API key record under the hex MAC of the key.
    pub fn put_api_key(&self, mac_hex: &str, k: &ApiKeyRecord) -> Result<(), StoreError> {
        Ok(self.api_keys.insert(mac_hex.as_bytes(), encode(k))?)
    }

    /// The API key whose MAC is `mac_hex`.
    pub fn api_key(&self, mac_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.api_keys.get(mac_hex.as_bytes())?.map(|v| decode(&v)).transpose()
    }

    /// An org's API keys, with their row keys.
    pub fn api_keys_of(&self, org: &str) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for g in self.api_keys.iter() {
            let (k, v) = g.into_inner()?;
            let r: ApiKeyRecord = decode(&v)?;
            if r.org == org {
                out.push((String::from_utf8_lossy(&k).into_owned(), r));
            }
        }
        Ok(out)
    }

    /// Deletes an API key row.
    pub fn delete_api_key(&self, mac_hex: &str) -> Result<(), StoreError> {
        Ok(self.api_keys.remove(mac_hex.as_bytes())?)
    }

    // ---------------------------------------------------------------- tokens

    /// Stores a token.
    pub fn put_token(&self, org: &str, t: &TokenRecord) -> Result<(), StoreError> {
        Ok(self.tokens.insert(org_key(org, t.id.as_bytes()), encode(t))?)
    }

    /// An org's tokens.
    pub fn tokens(&self, org: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.tokens.prefix(org_key(org, b"")).map(|g| decode(&g.value()?)).collect()
    }

    /// Deletes a token; whether it existed.
    pub fn delete_token(&self, org: &str, id: &str) -> Result<bool, StoreError> {
        let k = org_key(org, id.as_bytes());
        let existed = self.tokens.contains_key(&k)?;
        self.tokens.remove(k)?;
        Ok(existed)
    }

    /// Deletes every token that expired before `now_unix_ms`; how many.
    pub fn purge_tokens(&self, now_unix_ms: u64) -> Result<usize, StoreError> {
        let mut dead = Vec::new();
        for g in self.tokens.iter() {
            let (k, v) = g.into_inner()?;
            let t: TokenRecord = decode(&v)?;
            if t.expires_unix_ms <= now_unix_ms {
                dead.push(k);
            }
        }
        for k in &dead {
            self.tokens.remove(k.clone())?;
        }
        Ok(dead.len())
    }

    // ---------------------------------------------------------------- audit

    /// Stores (or rewrites) an audit entry under `org \0 key`.
    pub fn put_audit(&self, org: &str, key: &[u8], e: &AuditEntry) -> Result<(), StoreError> {
        Ok(self.audit.insert(org_key(org, key), encode(e))?)
    }

    /// An org's audit entries from `start` (a row key suffix; empty = oldest), oldest first, at
    /// most `limit` that pass `keep`, and the key suffix after the last one returned.
    pub fn audit_page(
        &self,
        org: &str,
        start: &[u8],
        limit: usize,
        keep: impl Fn(&AuditEntry) -> bool,
    ) -> Result<(Vec<AuditEntry>, Option<Vec<u8>>), StoreError> {
        let prefix = org_key(org, b"");
        let from = org_key(org, start);
        let mut out = Vec::new();
        for g in self.audit.range(from..) {
            let (k, v) = g.into_inner()?;
            if !k.starts_with(&prefix) {
                break;
            }
            let e: AuditEntry = decode(&v)?;
            if !keep(&e) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, Some(k[prefix.len()..].to_vec())));
            }
            out.push(e);
        }
        Ok((out, None))
    }

    /// Deletes audit entries whose last occurrence is older than `cutoff_unix_ms`.
    pub fn purge_audit(&self, cutoff_unix_ms: u64) -> Result<usize, StoreError> {
        let mut dead = Vec::new();
        for g in self.audit.iter() {
            let (k, v) = g.into_inner()?;
            let e: AuditEntry = decode(&v)?;
            if e.last_unix_ms < cutoff_unix_ms {
                dead.push(k);
            }
        }
        for k in &dead {
            self.audit.remove(k.clone())?;
        }
        Ok(dead.len())
    }
}
