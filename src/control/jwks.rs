//! JWT provider key sets on the control plane: fetched from `jwks_url` (or found through OIDC
//! discovery) with reqwest, cached, refreshed when the `Cache-Control: max-age` runs out and on
//! demand for an unknown `kid` (single-flight per provider, at most one fetch per
//! `refresh_min`), keys that leave the set honoured for `key_grace`; or read once from a file or
//! an HS256 secret. Published to shards inside the credential directory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};

use crate::auth::jwt::{ProviderDir, VerifyKey};
use crate::config::{JwtConfig, KeySource};

/// Largest JWKS or discovery document accepted.
const DOC_BYTES_MAX: usize = 1024 * 1024;
/// Bounds on how long a fetched key set is trusted without a refresh.
const MAX_AGE_MIN: Duration = Duration::from_secs(10);
const MAX_AGE_MAX: Duration = Duration::from_secs(24 * 3600);
const MAX_AGE_DEFAULT: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct RingState {
    current: Vec<Jwk>,
    /// Keys that left the set, with when (Unix ms).
    retired: Vec<(Jwk, u64)>,
    secret: Option<Vec<u8>>,
    last_fetch: Option<Instant>,
    next_refresh: Option<Instant>,
    /// The JWKS URL found through discovery.
    discovered: Option<String>,
    fetches: u64,
}

/// One provider's keys.
#[derive(Debug)]
pub struct Ring {
    /// Its org.
    pub org: String,
    /// Its configuration.
    pub cfg: JwtConfig,
    state: Mutex<RingState>,
    fetching: tokio::sync::Mutex<()>,
}

impl Ring {
    /// A ring for `cfg`; file and secret keys are loaded now (errors name the field).
    pub fn new(org: &str, cfg: &JwtConfig) -> Result<Ring, String> {
        let mut st = RingState::default();
        match &cfg.keys {
            KeySource::File(p) => {
                let text = std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
                let set: JwkSet =
                    serde_json::from_slice(&text).map_err(|e| format!("{}: not a JWKS: {e}", p.display()))?;
                if set.keys.iter().all(|k| VerifyKey::from_jwk(k).is_none()) {
                    return Err(format!("{}: no usable signature key", p.display()));
                }
                st.current = set.keys;
            }
            KeySource::SecretEnv(var) => {
                let s = std::env::var(var).map_err(|_| {
                    format!("org \"{org}\" jwt \"{}\": environment variable {var} is not set", cfg.name)
                })?;
                if s.len() < 32 {
                    return Err(format!(
                        "org \"{org}\" jwt \"{}\": {var} must hold at least 32 bytes",
                        cfg.name
                    ));
                }
                st.secret = Some(s.into_bytes());
            }
            KeySource::Url(_) | KeySource::Discovery(_) => {}
        }
        Ok(Ring {
            org: org.into(),
            cfg: cfg.clone(),
            state: Mutex::new(st),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether its keys come from the network.
    pub fn fetchable(&self) -> bool {
        matches!(self.cfg.keys, KeySource::Url(_) | KeySource::Discovery(_))
    }

    /// The provider as shards see it, with the keys valid at `unix_now`.
    pub fn provider_dir(&self, unix_now: u64) -> ProviderDir {
        let st = self.state.lock().expect("ring lock");
        let grace_ms = self.cfg.key_grace_secs * 1000;
        let mut keys = HashMap::new();
        let mut unnamed = Vec::new();
        let live = st
            .current
            .iter()
            .chain(st.retired.iter().filter(|(_, at)| at + grace_ms > unix_now).map(|(k, _)| k));
        for jwk in live {
            let Some(vk) = VerifyKey::from_jwk(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.entry(kid.clone()).or_insert_with(|| Arc::new(vk));
                }
                None => unnamed.push(Arc::new(vk)),
            }
        }
        if let Some(s) = &st.secret {
            unnamed.push(Arc::new(VerifyKey::hs256(s)));
        }
        ProviderDir {
            name: self.cfg.name.as_str().into(),
            issuer: self.cfg.issuer.clone(),
            audience: self.cfg.audience.iter().cloned().collect(),
            leeway_secs: self.cfg.leeway_secs,
            claims: self.cfg.claims.clone(),
            keys,
            unnamed,
            fetchable: self.fetchable(),
        }
    }

    /// Whether a scheduled refresh is due.
    pub fn due(&self, now: Instant) -> bool {
        let st = self.state.lock().expect("ring lock");
        self.fetchable() && st.next_refresh.is_none_or(|t| now >= t)
    }

    /// Fetches the key set now, unless one was fetched less than `refresh_min` ago (`forced`
    /// fetches, for unknown `kid`s, obey that limit; scheduled ones are due by construction).
    /// Concurrent callers share one fetch. Returns whether a fetch happened.
    pub async fn refresh(&self, http: &reqwest::Client, on_demand: bool) -> Result<bool, String> {
        let _one = self.fetching.lock().await;
        let url = {
            let st = self.state.lock().expect("ring lock");
            let min = Duration::from_secs(self.cfg.refresh_min_secs);
            if on_demand && st.last_fetch.is_some_and(|t| t.elapsed() < min) {
                return Ok(false);
            }
            match &self.cfg.keys {
                KeySource::Url(u) => u.clone(),
                KeySource::Discovery(d) => match &st.discovered {
                    Some(u) => u.clone(),
                    None => d.clone(),
                },
                _ => return Ok(false),
            }
        };
        let result = self.fetch(http, url).await;
        let mut st = self.state.lock().expect("ring lock");
        st.last_fetch = Some(Instant::now());
        st.fetches += 1;
        let (set, max_age) = match result {
            Ok(v) => v,
            Err(e) => {
                // Retry sooner than a full max-age, but not in a loop.
                st.next_refresh = Some(Instant::now() + MAX_AGE_MIN);
                return Err(e);
            }
        };
        st.next_refresh = Some(Instant::now() + max_age);
        let now = crate::clock::unix_ms();
        let grace_ms = self.cfg.key_grace_secs * 1000;
        let old = std::mem::take(&mut st.current);
        for k in old {
            if !set.keys.iter().any(|n| n.common.key_id == k.common.key_id) {
                st.retired.push((k, now)); // honoured for key_grace
            }
        }
        st.retired.retain(|(k, at)| {
            at + grace_ms > now && !set.keys.iter().any(|n| n.common.key_id == k.common.key_id)
        });
        st.current = set.keys;
        Ok(true)
    }

    async fn fetch(&self, http: &reqwest::Client, url: String) -> Result<(JwkSet, Duration), String> {
        let url = if let KeySource::Discovery(doc_url) = &self.cfg.keys {
            if url == *doc_url {
                let (doc, _) = get(http, &url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|e| format!("{url}: not JSON: {e}"))?;
                let jwks = doc["jwks_uri"].as_str().ok_or_else(|| format!("{url}: no jwks_uri"))?.to_string();
                if !crate::config::fetchable_url(&jwks) {
                    return Err(format!(
                        "{url}: jwks_uri {jwks} is not https (http only to a loopback address)"
                    ));
                }
                self.state.lock().expect("ring lock").discovered = Some(jwks.clone());
                jwks
            } else {
                url
            }
        } else {
            url
        };
        let (body, max_age) = get(http, &url).await?;
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS: {e}"))?;
        Ok((set, max_age))
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> u64 {
        self.state.lock().expect("ring lock").fetches
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<(Vec<u8>, Duration), String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let max_age = resp
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age=").and_then(|n| n.trim().parse::<u64>().ok()))
        })
        .map_or(MAX_AGE_DEFAULT, |s| Duration::from_secs(s).clamp(MAX_AGE_MIN, MAX_AGE_MAX));
    if resp.content_length().is_some_and(|n| n as usize > DOC_BYTES_MAX) {
        return Err(format!("{url}: document over {DOC_BYTES_MAX} bytes"));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > DOC_BYTES_MAX {
            return Err(format!("{url}: document over {DOC_BYTES_MAX} bytes"));
        }
    }
    Ok((body, max_age))
}

/// All providers' rings, by (org, provider name).
#[derive(Debug, Default)]
pub struct Rings {
    /// The rings.
    pub by_org: HashMap<String, Vec<Arc<Ring>>>,
}

impl Rings {
    /// The ring of `org`'s provider `name`.
    pub fn get(&self, org: &str, name: &str) -> Option<&Arc<Ring>> {
        self.by_org.get(org)?.iter().find(|r| r.cfg.name == name)
    }

    /// Every ring.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Ring>> {
        self.by_org.values().flatten()
    }
}
