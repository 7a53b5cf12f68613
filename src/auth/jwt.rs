//! IdP JWTs verified by the broker (SPEC §2.3), shard side: pick the provider by the token's
//! `iss`, the key by `kid` from the provider's published key set, and let jsonwebtoken (aws-lc-rs)
//! check the signature and `exp`/`nbf`/`iss`/`aud`. The accepted algorithms come from the key
//! (its JWK `alg`, else its type), never from the token: `alg: none`, HS/RS confusion and
//! header-supplied keys (`jku`, `x5u`, `jwk`, `x5c`) are refused before any verification.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::principal::{Attrs, Identity, Method};

/// Longest JWT accepted (a 1 MB "token" is refused before any parsing).
pub const JWT_BYTES_MAX: usize = 16 * 1024;

/// A key a provider signs with, and the algorithms it may be used with.
pub struct VerifyKey {
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("algs", &self.algs).finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// A key from a JWK; `None` for keys we never accept (symmetric keys in a JWKS, encryption
    /// keys, unsupported curves, an `alg` that does not fit the key type).
    pub fn from_jwk(jwk: &Jwk) -> Option<VerifyKey> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let by_type: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                _ => return None,
            },
            // HS keys come only from a configured secret, never from a key set.
            _ => return None,
        };
        let algs = match jwk.common.key_algorithm {
            None => by_type,
            Some(a) => {
                let a = key_alg(a)?;
                if !by_type.contains(&a) {
                    return None;
                }
                vec![a]
            }
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(VerifyKey { key, algs })
    }

    /// An HS256 key from a shared secret (providers configured with `hs256_secret_env`).
    pub fn hs256(secret: &[u8]) -> VerifyKey {
        VerifyKey { key: DecodingKey::from_secret(secret), algs: vec![Algorithm::HS256] }
    }
}

fn key_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One provider of one org, as shards see it.
#[derive(Debug)]
pub struct ProviderDir {
    /// Provider name (`auth0`, or the configured `name`).
    pub name: Arc<str>,
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audience: HashSet<String>,
    /// Clock skew allowed on `exp`/`nbf`, seconds.
    pub leeway_secs: u64,
    /// ACL variable ← claim path.
    pub claims: Vec<(String, String)>,
    /// Keys by `kid`.
    pub keys: HashMap<String, Arc<VerifyKey>>,
    /// Keys without a `kid` (a shared secret, a key file without kids).
    pub unnamed: Vec<Arc<VerifyKey>>,
    /// Whether its keys come from a URL (an unknown `kid` may be fetched).
    pub fetchable: bool,
}

/// The outcome of [`verify`].
#[derive(Debug)]
pub enum JwtCheck {
    /// Valid: the identity.
    Valid(Identity),
    /// Refused, with the audit reason.
    Invalid(&'static str),
    /// The token names a key the provider's published set lacks; fetching may find it.
    UnknownKey {
        /// Provider name.
        provider: Arc<str>,
    },
}

/// Whether a password looks like a compact JWS (three base64url parts, a JSON header).
pub fn looks_like_jwt(p: &[u8]) -> bool {
    p.starts_with(b"eyJ") && p.iter().filter(|b| **b == b'.').count() == 2
}

/// Looks a claim up by path: first as an exact name (URL-style names are common), then split
/// on dots through nested objects (SPEC §12). Only a string binds: a number, boolean, array or
/// object is unbindable, exactly like a missing claim (SPEC §3: variables fail closed).
pub fn claim(claims: &Value, path: &str) -> Option<String> {
    let v = claims.get(path).or_else(|| path.split('.').try_fold(claims, |v, part| v.get(part)))?;
    v.as_str().map(str::to_string)
}

/// A NumericDate (RFC 7519 §2): seconds, possibly with a fraction; `None` if not a finite,
/// non-negative number.
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|s| s.is_finite() && *s >= 0.0)
}

/// Verifies `token` against `org`'s providers. `may_fetch`: report an unknown `kid` as
/// [`JwtCheck::UnknownKey`] instead of refusing.
pub fn verify(org: &Arc<str>, providers: &[Arc<ProviderDir>], token: &[u8], may_fetch: bool) -> JwtCheck {
    use JwtCheck::Invalid;
    if token.len() > JWT_BYTES_MAX {
        return Invalid("jwt_too_large");
    }
    let Ok(header) = jsonwebtoken::decode_header(token) else { return Invalid("jwt_malformed") };
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() || header.x5c.is_some() {
        return Invalid("jwt_header_key_refused");
    }
    let Ok(peek) = jsonwebtoken::dangerous::insecure_decode_claims::<Value>(token) else {
        return Invalid("jwt_malformed");
    };
    let Some(iss) = peek.get("iss").and_then(Value::as_str) else { return Invalid("jwt_missing_iss") };
    let Some(p) = providers.iter().find(|p| p.issuer == iss) else { return Invalid("jwt_unknown_issuer") };
    let key = match &header.kid {
        Some(kid) => match p.keys.get(kid) {
            Some(k) => k.clone(),
            None if p.fetchable && may_fetch => return JwtCheck::UnknownKey { provider: p.name.clone() },
            None => return Invalid("jwt_unknown_key"),
        },
        None => match (p.unnamed.as_slice(), p.keys.len()) {
            ([k], _) => k.clone(),
            ([], 1) => p.keys.values().next().expect("one key").clone(),
            _ => return Invalid("jwt_no_kid"),
        },
    };
    if !key.algs.contains(&header.alg) {
        return Invalid("jwt_algorithm_refused");
    }
    let mut v = Validation::new(header.alg);
    v.algorithms = key.algs.clone();
    v.leeway = p.leeway_secs;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.iss = Some(HashSet::from([p.issuer.clone()]));
    v.aud = Some(p.audience.clone());
    let data = match jsonwebtoken::decode::<Value>(token, &key.key, &v) {
        Ok(d) => d,
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind as K;
            return Invalid(match e.kind() {
                K::ExpiredSignature => "jwt_expired",
                K::ImmatureSignature => "jwt_not_yet_valid",
                K::InvalidIssuer => "jwt_wrong_issuer",
                K::InvalidAudience => "jwt_wrong_audience",
                K::InvalidSignature => "jwt_bad_signature",
                K::InvalidAlgorithm => "jwt_algorithm_refused",
                K::MissingRequiredClaim(_) => "jwt_missing_claim",
                K::InvalidClaimFormat(_) => "jwt_invalid_date",
                _ => "jwt_invalid",
            });
        }
    };
    let c = data.claims;
    let Some(sub) = c.get("sub").and_then(Value::as_str) else { return Invalid("jwt_missing_claim") };
    let Some(exp) = c.get("exp") else { return Invalid("jwt_missing_claim") };
    let Some(exp) = numeric_date(exp) else { return Invalid("jwt_invalid_date") };
    if ["nbf", "iat"].iter().any(|k| c.get(*k).is_some_and(|v| numeric_date(v).is_none())) {
        return Invalid("jwt_invalid_date");
    }
    let mut attrs = Attrs::default();
    for (var, path) in &p.claims {
        let Some(val) = claim(&c, path) else { continue };
        if val.is_empty() || val.len() > 256 || val.contains(['+', '#', '/', '\0']) {
            // A value that would widen a topic pattern is never bound.
            continue;
        }
        match var.as_str() {
            "user_id" => attrs.user_id = Some(val),
            "email" => attrs.email = Some(val),
            "agent_id" => attrs.agent_id = Some(val),
            "role" => attrs.role = Some(val),
            "session_id" => attrs.session_id = Some(val),
            other => {
                attrs.claims.insert(other.to_string(), val);
            }
        }
    }
    JwtCheck::Valid(Identity {
        org: org.clone(),
        method: Method::Jwt,
        name: sub.into(),
        attrs: Arc::new(attrs),
        roles: Arc::new([]),
        expires_unix_ms: Some((exp * 1000.0) as u64), // saturates
        user_publish: Arc::new([]),
        user_subscribe: Arc::new([]),
    })
}
