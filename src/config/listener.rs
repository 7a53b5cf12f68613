//! `[[listener]]`: kind, address, TLS settings, WebSocket path, anonymous org, shards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::raw::RawListener;
use super::{ConfigError, Listener, ListenerKind, OrgConfig};
use crate::identity::valid_org_id;
use crate::transport::tls::{ClientAuth, TlsSettings};

/// Validates `[[listener]]` number `i`; an undeclared anonymous org is added to `orgs`.
pub(super) fn parse_listener(
    i: usize,
    l: &RawListener,
    shards: usize,
    orgs: &mut Vec<OrgConfig>,
    base: &Path,
) -> Result<Listener, ConfigError> {
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
    let web = matches!(kind, ListenerKind::Ws | ListenerKind::Wss);
    let tls = parse_tls(i, l, kind, base)?;
    let path = match (&l.path, web) {
        (Some(p), true) if p.starts_with('/') => p.clone(),
        (Some(p), true) => {
            return Err(ConfigError(format!("listener[{i}].path: must start with /, got \"{p}\"")))
        }
        (Some(_), false) => return Err(ConfigError(format!("listener[{i}].path: only for kind ws or wss"))),
        (None, _) => "/mqtt".to_string(),
    };
    let bind = l.bind.as_deref().unwrap_or(kind.default_bind());
    let bind: SocketAddr = bind
        .parse()
        .map_err(|_| ConfigError(format!("listener[{i}].bind: \"{bind}\" is not an IP:port address")))?;
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
    Ok(Listener {
        kind,
        bind,
        anonymous_org: l.anonymous_org.clone(),
        shards: only,
        tls,
        path,
        proxy_protocol: l.proxy_protocol,
    })
}

/// The TLS settings of `[[listener]]` number `i` (`None` for tcp and ws, which must set none).
fn parse_tls(
    i: usize,
    l: &RawListener,
    kind: ListenerKind,
    base: &Path,
) -> Result<Option<TlsSettings>, ConfigError> {
    let secure = matches!(kind, ListenerKind::Tls | ListenerKind::Wss);
    let web = matches!(kind, ListenerKind::Ws | ListenerKind::Wss);
    Ok(if secure {
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
    })
}
