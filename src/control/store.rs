//! The control plane's own fjall database under `data_dir/control`: organizations, users, API
//! keys (as MACs), temporary tokens (as MACs) and the audit log. Values are JSON records; keys
//! start with the org id and a NUL, so one org's rows are one prefix scan.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::auth::directory::Attrs;
pub use crate::store::keys::StoreError;
use crate::store::keys::{org_key, row_aad};
use crate::store::seal::{OpenError, Sealer};

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

/// The control plane's database.
#[derive(Clone)]
pub struct Store {
    db: Database,
    sealer: Arc<Sealer>,
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

/// The org whose key seals a control row (`None`: no org's), from its keyspace and key; for an
/// API key, from its record `v` (plain JSON; a sealed one names its key itself).
fn row_org(ks: &str, key: &[u8], v: &[u8]) -> Option<String> {
    match ks {
        "meta" => None,
        "orgs" | "policies" | "quotas" => Some(String::from_utf8_lossy(key).into_owned()),
        "api_keys" => serde_json::from_slice::<ApiKeyRecord>(v).ok().map(|r| r.org),
        _ => key.split(|b| *b == 0).next().map(|o| String::from_utf8_lossy(o).into_owned()),
    }
}

/// Prefix of the `meta` rows that mark a deletion in progress.
const PURGE_PREFIX: &[u8] = b"purge\0";

fn purge_key(org: &str) -> Vec<u8> {
    [PURGE_PREFIX, org.as_bytes()].concat()
}

/// A control-store row read for export: keyspace, key, plain value.
pub type ExportedRow = (&'static str, Vec<u8>, Vec<u8>);

impl Store {
    /// Opens (or creates) the database in `dir`, plain (no encryption keys).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_sealed(dir, Arc::new(Sealer::plain()))
    }

    /// Opens (or creates) the database in `dir`; values are sealed and opened by `sealer`, and
    /// rows sealed with a destroyed key are deleted.
    pub fn open_sealed(dir: &Path, sealer: Arc<Sealer>) -> Result<Store, StoreError> {
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
            sealer,
        })
        .and_then(|s| s.drop_destroyed().map(|_| s))
        .and_then(|s| s.seal_plain_rows().map(|_| s))
    }

    /// A key used for the first time ([`Sealer::request_reseal`]): seals the plain rows it
    /// covers, so they are not refused as planted later.
    fn seal_plain_rows(&self) -> Result<(), StoreError> {
        if !self.sealer.reseal_requested() {
            return Ok(());
        }
        let mut sealed = 0;
        for (name, ks) in self.keyspaces() {
            let mut rows = Vec::new();
            for g in ks.iter() {
                let (k, v) = g.into_inner()?;
                let pepper = name == "meta" && &*k == b"pepper"; // `pepper()` seals it
                if !pepper && Sealer::is_plain(&v) {
                    let org = row_org(name, &k, &v);
                    if self.sealer.seals(org.as_deref()) {
                        let sealed = self.sealer.seal(org.as_deref(), &row_aad(name, &k), v.to_vec());
                        rows.push((k, sealed));
                    }
                }
            }
            sealed += rows.len();
            for (k, v) in rows {
                ks.insert(k, v)?;
            }
        }
        if sealed > 0 {
            self.sync()?;
            tracing::info!(rows = sealed, "control store: plain rows sealed with the new encryption key");
        }
        Ok(())
    }

    fn keyspaces(&self) -> [(&'static str, &Keyspace); 8] {
        [
            ("meta", &self.meta),
            ("orgs", &self.orgs),
            ("users", &self.users),
            ("api_keys", &self.api_keys),
            ("tokens", &self.tokens),
            ("audit", &self.audit),
            ("policies", &self.policies),
            ("quotas", &self.quotas),
        ]
    }

    /// Deletes rows sealed with a key listed in `destroyed_keys` (crypto-shredding).
    fn drop_destroyed(&self) -> Result<(), StoreError> {
        let mut dropped = 0;
        for (_, ks) in self.keyspaces() {
            let mut dead = Vec::new();
            for g in ks.iter() {
                let (k, v) = g.into_inner()?;
                if self.sealer.is_destroyed(&v) {
                    dead.push(k);
                }
            }
            dropped += dead.len();
            for k in dead {
                ks.remove(k)?;
            }
        }
        if dropped > 0 {
            self.sync()?;
            tracing::warn!(rows = dropped, "control store: dropped rows sealed with destroyed keys");
        }
        Ok(())
    }

    /// Every row, opened: (keyspace, key, plain value), for `coremq data export`.
    pub fn export_rows(&self) -> Result<Vec<ExportedRow>, StoreError> {
        let mut out = Vec::new();
        for (name, ks) in self.keyspaces() {
            for g in ks.iter() {
                let (k, v) = g.into_inner()?;
                let plain = if name == "meta" && v.len() == 32 {
                    v.to_vec() // the plain pepper
                } else {
                    // Export reads plain values wherever they are (a way out of them).
                    let org = row_org(name, &k, &v);
                    match self.sealer.open(org.as_deref(), &row_aad(name, &k), &v) {
                        Err(OpenError::Plain(_)) => v.to_vec(),
                        r => {
                            r.map_err(|e| StoreError(format!("control store: {name} row: {e}")))?.into_owned()
                        }
                    }
                };
                out.push((name, k.to_vec(), plain));
            }
        }
        Ok(out)
    }

    /// Writes one exported row, sealed for the org it belongs to (`coremq data import`).
    pub fn import_row(&self, ks: &str, key: &[u8], plain: Vec<u8>) -> Result<(), StoreError> {
        let Some((name, _)) = self.keyspaces().into_iter().find(|(n, _)| *n == ks) else {
            return Err(StoreError(format!("unknown control keyspace \"{ks}\"")));
        };
        let org = row_org(name, key, &plain);
        if name != "meta" {
            // Refuse what this build cannot read back.
            serde_json::from_slice::<serde_json::Value>(&plain)
                .map_err(|e| StoreError(format!("control store: corrupt {name} record: {e}")))?;
        }
        let sealed = self.sealer.seal(org.as_deref(), &row_aad(name, key), plain);
        Ok(self.keyspace(name).insert(key, sealed)?)
    }

    /// Stores `v` as JSON under `key`, sealed for `org`.
    fn put<T: Serialize>(&self, ks: &str, key: &[u8], org: Option<&str>, v: &T) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(v).expect("records serialize");
        let sealed = self.sealer.seal(org, &row_aad(ks, key), plain);
        Ok(self.keyspace(ks).insert(key, sealed)?)
    }

    fn keyspace(&self, name: &str) -> &Keyspace {
        self.keyspaces().into_iter().find(|(n, _)| *n == name).map(|(_, k)| k).expect("known keyspace")
    }

    /// Opens and decodes the value stored under `key`.
    fn decode<T: DeserializeOwned>(&self, ks: &str, key: &[u8], v: &[u8]) -> Result<T, StoreError> {
        let org = if Sealer::is_plain(v) { row_org(ks, key, v) } else { None };
        let plain = self
            .sealer
            .open(org.as_deref(), &row_aad(ks, key), v)
            .map_err(|e| StoreError(format!("control store: {ks} row: {e}")))?;
        serde_json::from_slice(&plain)
            .map_err(|e| StoreError(format!("control store: corrupt {ks} record: {e}")))
    }

    fn get<T: DeserializeOwned>(&self, ks: &str, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.keyspace(ks).get(key)?.map(|v| self.decode(ks, key, &v)).transpose()
    }

    fn scan<T: DeserializeOwned>(&self, ks: &str, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for g in self.keyspace(ks).prefix(prefix) {
            let (k, v) = g.into_inner()?;
            out.push(self.decode(ks, &k, &v)?);
        }
        Ok(out)
    }

    /// Makes every write so far durable (admin changes are acknowledged after this).
    pub fn sync(&self) -> Result<(), StoreError> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// The pepper for credential MACs, created on first use and kept forever.
    pub fn pepper(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(v) = self.meta.get("pepper")? {
            // A plain pepper is exactly 32 bytes; a sealed one is longer. A key configured
            // since it was created seals it now.
            if v.len() == 32 {
                if self.sealer.seals(None) {
                    let sealed = self.sealer.seal(None, &row_aad("meta", b"pepper"), v.to_vec());
                    self.meta.insert("pepper", sealed)?;
                    self.sync()?;
                    tracing::info!("the credential pepper is now sealed with the encryption key");
                }
                return Ok(v.to_vec());
            }
            let p = self
                .sealer
                .open(None, &row_aad("meta", b"pepper"), &v)
                .map_err(|e| StoreError(format!("control store: pepper: {e}")))?;
            return Ok(p.into_owned());
        }
        let p = crate::auth::secret::random_bytes::<32>().to_vec();
        self.meta.insert("pepper", self.sealer.seal(None, &row_aad("meta", b"pepper"), p.clone()))?;
        self.sync()?;
        Ok(p)
    }

    // ---------------------------------------------------------------- orgs

    /// Stores an organization.
    pub fn put_org(&self, o: &OrgRecord) -> Result<(), StoreError> {
        self.put("orgs", o.id.as_bytes(), Some(&o.id), o)
    }

    /// One organization.
    pub fn org(&self, id: &str) -> Result<Option<OrgRecord>, StoreError> {
        self.get("orgs", id.as_bytes())
    }

    /// All organizations, by id.
    pub fn orgs(&self) -> Result<Vec<OrgRecord>, StoreError> {
        self.scan("orgs", b"")
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

    /// Marks `org` as being deleted: its id cannot be used again until every shard has
    /// removed what it owns ([`Store::purge_done`]); a start finishes pending deletions.
    pub fn mark_purge(&self, org: &str) -> Result<(), StoreError> {
        self.put("meta", &purge_key(org), None, &org)
    }

    /// Orgs whose deletion has not finished on every shard.
    pub fn pending_purges(&self) -> Result<Vec<String>, StoreError> {
        self.scan("meta", PURGE_PREFIX)
    }

    /// Whether `org`'s deletion is still pending.
    pub fn purge_pending(&self, org: &str) -> Result<bool, StoreError> {
        Ok(self.meta.get(purge_key(org))?.is_some())
    }

    /// `org`'s deletion finished everywhere.
    pub fn purge_done(&self, org: &str) -> Result<(), StoreError> {
        self.meta.remove(purge_key(org))?;
        self.sync()
    }

    // ---------------------------------------------------------------- policies

    /// Stores an org's ACL document (validated by the caller).
    pub fn put_policy(&self, org: &str, doc: &serde_json::Value) -> Result<(), StoreError> {
        self.put("policies", org.as_bytes(), Some(org), doc)
    }

    /// An org's ACL document.
    pub fn policy(&self, org: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.get("policies", org.as_bytes())
    }

    /// Stores an org's quota limits (set through the admin API).
    pub fn put_quotas(&self, org: &str, q: &crate::quota::QuotaLimits) -> Result<(), StoreError> {
        self.put("quotas", org.as_bytes(), Some(org), q)
    }

    /// An org's stored quota limits.
    pub fn quotas(&self, org: &str) -> Result<Option<crate::quota::QuotaLimits>, StoreError> {
        self.get("quotas", org.as_bytes())
    }

    // ---------------------------------------------------------------- users

    /// Stores a user.
    pub fn put_user(&self, org: &str, u: &UserRecord) -> Result<(), StoreError> {
        self.put("users", &org_key(org, u.name.as_bytes()), Some(org), u)
    }

    /// One user.
    pub fn user(&self, org: &str, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.get("users", &org_key(org, name.as_bytes()))
    }

    /// An org's users.
    pub fn users(&self, org: &str) -> Result<Vec<UserRecord>, StoreError> {
        self.scan("users", &org_key(org, b""))
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
        self.put("api_keys", mac_hex.as_bytes(), Some(&k.org), k)
    }

    /// The API key whose MAC is `mac_hex`.
    pub fn api_key(&self, mac_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get("api_keys", mac_hex.as_bytes())
    }

    /// An org's API keys, with their row keys.
    pub fn api_keys_of(&self, org: &str) -> Result<Vec<(String, ApiKeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for g in self.api_keys.iter() {
            let (k, v) = g.into_inner()?;
            let r: ApiKeyRecord = self.decode("api_keys", &k, &v)?;
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
        self.put("tokens", &org_key(org, t.id.as_bytes()), Some(org), t)
    }

    /// An org's tokens.
    pub fn tokens(&self, org: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.scan("tokens", &org_key(org, b""))
    }

    /// Deletes a token; whether it existed.
    pub fn delete_token(&self, org: &str, id: &str) -> Result<bool, StoreError> {
        let k = org_key(org, id.as_bytes());
        let existed = self.tokens.contains_key(&k)?;
        self.tokens.remove(k)?;
        Ok(existed)
    }

    /// Deletes every token that expired before `unix_now`; how many.
    pub fn purge_tokens(&self, unix_now: u64) -> Result<usize, StoreError> {
        let mut dead = Vec::new();
        for g in self.tokens.iter() {
            let (k, v) = g.into_inner()?;
            let t: TokenRecord = self.decode("tokens", &k, &v)?;
            if t.expires_unix_ms <= unix_now {
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
        self.put("audit", &org_key(org, key), Some(org), e)
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
            let e: AuditEntry = self.decode("audit", &k, &v)?;
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
            let e: AuditEntry = self.decode("audit", &k, &v)?;
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
