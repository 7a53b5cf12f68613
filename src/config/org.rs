//! `[[org]]` (users, JWT providers, policy, quota, retention) and `[encryption]`.

use std::path::Path;

use super::*;

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

pub(super) fn parse_encryption(
    raw: Option<&RawEncryption>,
    base: &Path,
) -> Result<EncryptionConfig, ConfigError> {
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

pub(super) fn check_env_name(key: &str, name: &str) -> Result<(), ConfigError> {
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

pub(super) fn parse_org(
    i: usize,
    o: &RawOrg,
    seen: &[OrgConfig],
    base: &Path,
) -> Result<OrgConfig, ConfigError> {
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
