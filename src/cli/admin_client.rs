//! The admin API clients behind `coremq org|user|apikey|token|session|audit`: one HTTP request
//! each (ureq), the JSON answer printed on standard output, API errors on standard error with a
//! non-zero exit.

use serde_json::{json, Value};

use crate::cli::{ApiArgs, ApiKeyAction, OrgAction, SessionAction, TokenAction, UserAction};

/// A client failure: message for standard error.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn request(api: &ApiArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
    let key = api.key.as_deref().ok_or_else(|| ClientError("no key: set --key or COREMQ_API_KEY".into()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut url = format!("{}{}", api.url.trim_end_matches('/'), path);
    if let Some(org) = &api.org {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("org=");
        url.push_str(org);
    }
    let auth = format!("Bearer {key}");
    let resp = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        ("POST", b) => agent.post(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
        ("PUT", b) => agent.put(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
        ("PATCH", b) => agent.patch(&url).header("Authorization", &auth).send_json(b.unwrap_or(json!({}))),
        _ => unreachable!("methods used here"),
    };
    let mut resp = resp.map_err(|e| ClientError(format!("{url}: {e}")))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        Ok(v)
    } else {
        let msg = v["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
        let code = v["error"]["code"].as_str().unwrap_or("error");
        Err(ClientError(format!("{} {code}: {msg}", status.as_u16())))
    }
}

/// Reads one password line from standard input, without echo when it is a terminal.
pub fn read_password() -> Result<String, ClientError> {
    use std::io::{BufRead, IsTerminal};
    let p = if std::io::stdin().is_terminal() {
        rpassword::read_password().map_err(|e| ClientError(format!("cannot read the password: {e}")))?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| ClientError(format!("cannot read the password: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if p.is_empty() {
        return Err(ClientError("empty password".into()));
    }
    Ok(p)
}

/// Runs one `org` action.
pub fn org(api: &ApiArgs, a: &OrgAction) -> Result<Value, ClientError> {
    match a {
        OrgAction::Create { id } => request(api, "POST", "/v2/orgs", Some(json!({ "id": id }))),
        OrgAction::List => request(api, "GET", "/v2/orgs", None),
        OrgAction::Delete { id } => request(api, "DELETE", &format!("/v2/orgs/{id}"), None),
    }
}

/// Runs one `user` action.
pub fn user(api: &ApiArgs, a: &UserAction) -> Result<Value, ClientError> {
    match a {
        UserAction::Create { name, roles, publish, subscribe } => {
            let password = read_password()?;
            let body = json!({ "name": name, "password": password, "roles": roles, "publish": publish, "subscribe": subscribe });
            request(api, "POST", "/v2/users", Some(body))
        }
        UserAction::List => request(api, "GET", "/v2/users", None),
        UserAction::Passwd { name } => {
            let password = read_password()?;
            request(api, "PATCH", &format!("/v2/users/{name}"), Some(json!({ "password": password })))
        }
        UserAction::Disable { name, enable } => {
            request(api, "PATCH", &format!("/v2/users/{name}"), Some(json!({ "disabled": !enable })))
        }
        UserAction::Delete { name } => request(api, "DELETE", &format!("/v2/users/{name}"), None),
    }
}

/// Runs one `apikey` action.
pub fn apikey(api: &ApiArgs, a: &ApiKeyAction) -> Result<Value, ClientError> {
    match a {
        ApiKeyAction::Create => request(api, "POST", "/v2/api-keys", Some(json!({}))),
        ApiKeyAction::List => request(api, "GET", "/v2/api-keys", None),
        ApiKeyAction::Delete { id } => request(api, "DELETE", &format!("/v2/api-keys/{id}"), None),
    }
}

/// Runs one `token` action.
pub fn token(api: &ApiArgs, a: &TokenAction) -> Result<Value, ClientError> {
    match a {
        TokenAction::Create { ttl, user_id, email, agent_id, role, session_id, claims } => {
            let mut c = serde_json::Map::new();
            for kv in claims {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| ClientError(format!("--claim {kv}: expected NAME=VALUE")))?;
                c.insert(k.into(), v.into());
            }
            let mut body = json!({ "claims": c });
            for (k, v) in [
                ("user_id", user_id),
                ("email", email),
                ("agent_id", agent_id),
                ("role", role),
                ("session_id", session_id),
            ] {
                if let Some(v) = v {
                    body[k] = v.clone().into();
                }
            }
            if let Some(t) = ttl {
                body["ttl"] = (*t).into();
            }
            request(api, "POST", "/v2/tokens", Some(body))
        }
        TokenAction::List => request(api, "GET", "/v2/tokens", None),
        TokenAction::Revoke { username } => request(api, "DELETE", &format!("/v2/tokens/{username}"), None),
    }
}

/// Runs one `session` action.
pub fn session(api: &ApiArgs, a: &SessionAction) -> Result<Value, ClientError> {
    match a {
        SessionAction::List => request(api, "GET", "/v2/sessions", None),
        SessionAction::Disconnect { client_id } => {
            request(api, "DELETE", &format!("/v2/sessions/{client_id}"), None)
        }
    }
}

/// Pushes a policy file (`coremq acl update`).
pub fn acl_update(api: &ApiArgs, file: &std::path::Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ClientError(format!("{}: cannot read: {e}", file.display())))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| ClientError(format!("{}: not JSON: {e}", file.display())))?;
    request(api, "PUT", "/v2/acl", Some(doc))
}

/// Asks a running broker which live subscriptions the policy in `file` would remove.
pub fn acl_diff_live(api: &ApiArgs, file: &std::path::Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ClientError(format!("{}: cannot read: {e}", file.display())))?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| ClientError(format!("{}: not JSON: {e}", file.display())))?;
    request(api, "POST", "/v2/acl/diff", Some(doc))
}

/// Queries the audit log.
pub fn audit(
    api: &ApiArgs,
    kind: Option<&str>,
    since: Option<&str>,
    limit: usize,
) -> Result<Value, ClientError> {
    let mut path = format!("/v2/audit?limit={limit}");
    if let Some(k) = kind {
        path.push_str(&format!("&type={k}"));
    }
    if let Some(s) = since {
        path.push_str(&format!("&since={s}"));
    }
    request(api, "GET", &path, None)
}
