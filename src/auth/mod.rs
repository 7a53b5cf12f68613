//! Authentication of CONNECT (SPEC §2), shard side: parse `local@org`, then anonymous,
//! temporary token or permanent user. Tokens are checked inline (an HMAC); passwords go to the
//! [`password::HashPool`] unless this shard's verified-credential cache already knows the
//! answer, so a reconnect storm does not become a hashing storm.
//!
//! Sans-IO like the broker core: [`Authenticator::check`] either decides or asks for an
//! Argon2id verification, whose verdict comes back through [`Authenticator::verified`].

pub mod cache;
pub mod directory;
pub mod jwt;
pub mod password;
pub mod principal;
pub mod secret;

use std::collections::HashMap;
use std::sync::Arc;

use ahash::RandomState;
use arc_swap::ArcSwap;

use crate::identity::parse_username;
use directory::{Directory, Identity, Method, UserDir};
use secret::{Mac, Pepper};

/// MAC domain of token secrets.
pub const TOKEN_DOMAIN: &str = "token";
/// MAC domain of API keys.
pub const API_KEY_DOMAIN: &str = "api_key";
const CACHE_DOMAIN: &str = "credential_cache";

/// Argon2id checks one user may have in flight on one shard; more are refused as busy.
const PER_USER_INFLIGHT_MAX: u8 = 4;
/// Decoy checks (unknown users) in flight on one shard; beyond this, unknown users are refused
/// at once: a storm of random user names cannot occupy the hashing pool (the price is that,
/// during such a storm only, an unknown user is answered faster than a known one).
const DECOY_INFLIGHT_MAX: u16 = 8;

/// What shards share: the published directory and the pepper for token MACs.
#[derive(Debug)]
pub struct AuthShared {
    /// The current directory; replaced whole by the control plane.
    pub directory: ArcSwap<Directory>,
    /// Key of token and API-key MACs.
    pub pepper: Pepper,
    /// A PHC string checked for unknown users, so they take as long as known ones.
    pub decoy_phc: Arc<str>,
    /// Verdicts on known users' credentials, per org (see [`cache`]).
    pub cache: cache::CredentialCache,
}

impl AuthShared {
    /// Shared state over `directory`.
    pub fn new(directory: Directory, pepper: Pepper) -> AuthShared {
        AuthShared {
            directory: ArcSwap::from_pointee(directory),
            pepper,
            decoy_phc: password::hash_password(&secret::random_bytes::<16>()).into(),
            cache: cache::CredentialCache::default(),
        }
    }
}

/// Why a CONNECT was refused (audit detail; never a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No user name and the listener has no `anonymous_org`.
    AnonymousRefused,
    /// The user name is not `local@org` (SPEC §2).
    BadUsername,
    /// No such organization.
    UnknownOrg,
    /// No such user or token.
    UnknownUser,
    /// Wrong password or token secret, or none.
    BadPassword,
    /// The user is disabled.
    Disabled,
    /// The token has expired.
    Expired,
    /// Too many password checks are queued.
    Busy,
    /// A JWT was refused (the reason names the check that failed).
    Jwt(&'static str),
}

impl Denied {
    /// Name in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::AnonymousRefused => "anonymous_refused",
            Denied::BadUsername => "bad_username",
            Denied::UnknownOrg => "unknown_org",
            Denied::UnknownUser => "unknown_user",
            Denied::BadPassword => "bad_password",
            Denied::Disabled => "disabled",
            Denied::Expired => "expired",
            Denied::Busy => "busy",
            Denied::Jwt(r) => r,
        }
    }
}

/// The outcome of [`Authenticator::check`].
#[derive(Debug)]
pub enum Verdict {
    /// Authenticated.
    Allow(Identity),
    /// Refused; `org` is set when the user name named an existing org (for its audit log).
    Deny(Denied, Option<Arc<str>>),
    /// An Argon2id check is needed: hand `phc` and the password to the hashing pool, then call
    /// [`Authenticator::verified`] with this ticket and the result.
    Verify(VerifyTicket),
    /// The JWT names a key the provider's published set lacks: ask the control plane to
    /// refresh that provider's keys, then check again with `may_fetch = false`.
    FetchKeys {
        /// Organization.
        org: Arc<str>,
        /// Provider name.
        provider: Arc<str>,
    },
}

/// A pending password check.
#[derive(Debug)]
pub struct VerifyTicket {
    /// The stored hash to check against.
    pub phc: Arc<str>,
    /// The password sent (the broker moves it into the hashing job).
    pub password: Vec<u8>,
    org: Arc<str>,
    local: Arc<str>,
    /// `None` for an unknown user (the decoy check): always refused.
    user: Option<Arc<UserDir>>,
    /// Already refused (a disabled user, a refused JWT): the hash only makes the refusal take
    /// as long as any other, and its result is ignored.
    refusal: Option<Denied>,
    fingerprint: Mac,
}

impl VerifyTicket {
    /// The org the user name named.
    pub fn org(&self) -> &Arc<str> {
        &self.org
    }
}

/// One shard's authenticator: the shared directory and cache, plus this shard's bounds on
/// checks in flight.
#[derive(Debug)]
pub struct Authenticator {
    shared: Arc<AuthShared>,
    inflight: HashMap<(Arc<str>, Arc<str>), u8, RandomState>,
    decoys: u16,
}

impl Authenticator {
    /// An authenticator reading `shared`.
    pub fn new(shared: Arc<AuthShared>) -> Authenticator {
        Authenticator { shared, inflight: HashMap::default(), decoys: 0 }
    }

    /// Authenticates a CONNECT's user name and password at Unix time `unix_now`.
    /// `may_fetch`: a JWT with an unknown key may ask for a key refresh (once per CONNECT).
    pub fn check(
        &mut self,
        username: Option<&str>,
        password: Option<&[u8]>,
        anonymous_org: Option<&Arc<str>>,
        unix_now: u64,
        may_fetch: bool,
    ) -> Verdict {
        let Some(username) = username else {
            return match anonymous_org {
                Some(org) => Verdict::Allow(Identity::anonymous(org.clone())),
                None => Verdict::Deny(Denied::AnonymousRefused, None),
            };
        };
        let Ok(u) = parse_username(username) else { return Verdict::Deny(Denied::BadUsername, None) };
        let dir = self.shared.directory.load();
        let Some((org, od)) = dir.orgs.get_key_value(u.org) else {
            return Verdict::Deny(Denied::UnknownOrg, None);
        };
        let deny = |d| Verdict::Deny(d, Some(org.clone()));
        if u.local.starts_with("tok_") {
            let Some(t) = od.tokens.get(u.local) else { return deny(Denied::UnknownUser) };
            let Some(secret) = password else { return deny(Denied::BadPassword) };
            if !self.shared.pepper.verify(TOKEN_DOMAIN, secret, &t.mac) {
                return deny(Denied::BadPassword);
            }
            if t.expires_unix_ms <= unix_now {
                return deny(Denied::Expired);
            }
            return Verdict::Allow(Identity {
                org: org.clone(),
                method: Method::Token,
                name: u.local.into(),
                attrs: t.attrs.clone(),
                roles: Arc::new([]),
                expires_unix_ms: Some(t.expires_unix_ms),
                user_publish: Arc::new([]),
                user_subscribe: Arc::new([]),
            });
        }
        let Some(password) = password else { return deny(Denied::BadPassword) };
        let user = od.users.get(u.local).cloned();
        // An IdP JWT as the password (the local part is not trusted: any name but a
        // permanent user's selects the JWT path).
        let mut refusal = None;
        if user.is_none() && !od.jwt.is_empty() && jwt::looks_like_jwt(password) {
            match jwt::verify(org, &od.jwt, password, may_fetch) {
                jwt::JwtCheck::Valid(identity) => return Verdict::Allow(identity),
                jwt::JwtCheck::UnknownKey { provider } => {
                    return Verdict::FetchKeys { org: org.clone(), provider }
                }
                // Refused after a decoy hash, like any wrong password: no timing oracle on
                // which names are users.
                jwt::JwtCheck::Invalid(why) => refusal = Some(Denied::Jwt(why)),
            }
        }
        if password.len() > jwt::JWT_BYTES_MAX {
            return deny(refusal.unwrap_or(Denied::BadPassword)); // never hash megabytes
        }
        let (phc, version) = match &user {
            Some(user) if user.disabled => {
                refusal = Some(Denied::Disabled); // refused after the same hash as the others
                (user.phc.clone(), user.version)
            }
            Some(user) => (user.phc.clone(), user.version),
            None => (self.shared.decoy_phc.clone(), 0),
        };
        let user = user.filter(|_| refusal.is_none());
        let mut ctx = Vec::with_capacity(org.len() + u.local.len() + password.len() + 10);
        ctx.extend_from_slice(org.as_bytes());
        ctx.push(0);
        ctx.extend_from_slice(u.local.as_bytes());
        ctx.push(0);
        ctx.extend_from_slice(&version.to_le_bytes());
        ctx.extend_from_slice(password);
        let fingerprint = self.shared.pepper.mac(CACHE_DOMAIN, &ctx);
        if let Some(user) = &user {
            match self.shared.cache.get(org, &fingerprint) {
                Some(true) => return Verdict::Allow(user_identity(org, user)),
                Some(false) => return deny(Denied::BadPassword),
                None => {}
            }
        } else {
            if self.decoys >= DECOY_INFLIGHT_MAX {
                return deny(refusal.unwrap_or(Denied::UnknownUser));
            }
            self.decoys += 1;
        }
        let local: Arc<str> = u.local.into();
        let n = self.inflight.entry((org.clone(), local.clone())).or_insert(0);
        if *n >= PER_USER_INFLIGHT_MAX {
            if user.is_none() {
                self.decoys -= 1;
            }
            return deny(Denied::Busy);
        }
        *n += 1;
        Verdict::Verify(VerifyTicket {
            phc,
            password: password.to_vec(),
            org: org.clone(),
            local,
            user,
            refusal,
            fingerprint,
        })
    }

    /// The hashing pool's answer for `ticket` (`None`: it could not be queued).
    pub fn verified(&mut self, ticket: VerifyTicket, ok: Option<bool>) -> Verdict {
        let key = (ticket.org.clone(), ticket.local.clone());
        if let Some(n) = self.inflight.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.inflight.remove(&key);
            }
        }
        if ticket.user.is_none() {
            self.decoys = self.decoys.saturating_sub(1);
        }
        let deny = |d| Verdict::Deny(d, Some(ticket.org.clone()));
        if let Some(why) = ticket.refusal {
            return deny(why);
        }
        let Some(ok) = ok else { return deny(Denied::Busy) };
        if ticket.user.is_some() {
            self.shared.cache.put(&ticket.org, ticket.fingerprint, ok);
        }
        match (&ticket.user, ok) {
            (None, _) => deny(Denied::UnknownUser),
            (Some(_), false) => deny(Denied::BadPassword),
            (Some(user), true) => {
                // The user may have changed while the hash was checked.
                let dir = self.shared.directory.load();
                let current = dir.orgs.get(&ticket.org).and_then(|o| o.users.get(&*user.name));
                match current {
                    Some(cur) if cur.version == user.version && !cur.disabled => {
                        Verdict::Allow(user_identity(&ticket.org, cur))
                    }
                    _ => deny(Denied::BadPassword),
                }
            }
        }
    }

    /// Verifies a JWT for `org` with the published keys only (re-authentication).
    pub fn verify_jwt(&self, org: &Arc<str>, token: &[u8]) -> Result<Identity, &'static str> {
        let dir = self.shared.directory.load();
        let Some(od) = dir.orgs.get(org) else { return Err("unknown_org") };
        if od.jwt.is_empty() {
            return Err("jwt_no_provider");
        }
        match jwt::verify(org, &od.jwt, token, false) {
            jwt::JwtCheck::Valid(i) => Ok(i),
            jwt::JwtCheck::Invalid(r) => Err(r),
            jwt::JwtCheck::UnknownKey { .. } => Err("jwt_unknown_key"),
        }
    }
}

fn user_identity(org: &Arc<str>, user: &UserDir) -> Identity {
    Identity {
        org: org.clone(),
        method: Method::Password,
        name: user.name.clone(),
        attrs: Arc::default(),
        roles: user.roles.clone(),
        expires_unix_ms: None,
        user_publish: user.publish.clone(),
        user_subscribe: user.subscribe.clone(),
    }
}

#[cfg(test)]
mod tests;
