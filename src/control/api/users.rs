//! Permanent users: create, list, read, update (password, attributes, rules), delete.

use super::*;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    name: String,
    password: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedUser {
    /// `name@org`.
    username: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateUser {
    /// A new password: the user's live sessions are closed.
    password: Option<String>,
    roles: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    /// Disabling closes the user's live sessions.
    disabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct UserView {
    username: String,
    name: String,
    roles: Vec<String>,
    publish: Vec<String>,
    subscribe: Vec<String>,
    disabled: bool,
    source: String,
}

fn user_view(org: &str, u: UserRecord) -> UserView {
    UserView {
        username: format!("{}@{org}", u.name),
        name: u.name,
        roles: u.roles,
        publish: u.publish,
        subscribe: u.subscribe,
        disabled: u.disabled,
        source: u.source,
    }
}

fn check_password(p: &str) -> ApiResult<()> {
    if p.is_empty() || p.len() > 1024 {
        return Err(ApiError::bad("password: 1 to 1024 bytes"));
    }
    Ok(())
}

/// A user's own rules are checked exactly like a policy rule's topic (unknown variables,
/// wildcards, depth).
fn check_rules(field: &str, rules: &[String]) -> ApiResult<()> {
    for (i, r) in rules.iter().enumerate() {
        crate::acl::policy::parse_pattern(r)
            .map_err(|e| ApiError::bad(format!("{field}[{i}]: \"{r}\": {e}")))?;
    }
    Ok(())
}

/// Hashes a new password on the bounded hashing pool (Argon2id takes tens of ms and 19 MiB):
/// 429 `busy` when its queue is full, so concurrent requests cannot multiply the memory.
pub(super) async fn hash(ctl: &Ctl, password: String) -> ApiResult<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = Box::new(move |phc| {
        let _ = tx.send(phc);
    });
    if !ctl.pool.hash(password.into_bytes(), reply) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many password hashes queued; retry",
        ));
    }
    rx.await.map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "hashing failed"))
}

/// Creates a permanent user.
#[utoipa::path(post, path = "/v2/users", request_body = CreateUser,
    responses((status = 201, body = CreatedUser), (status = 409, body = ErrorBody)))]
pub(super) async fn create_user(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let req: CreateUser = body(b, false)?;
    if parse_username(&format!("{}@{org}", req.name)).is_err() || req.name.starts_with("tok_") {
        return Err(ApiError::bad(format!(
            "name: \"{}\" is not a valid user name (1-128 bytes, no @ + # / or control characters, not tok_…)",
            req.name
        )));
    }
    check_password(&req.password)?;
    check_rules("publish", &req.publish)?;
    check_rules("subscribe", &req.subscribe)?;
    let phc = hash(&ctl, req.password).await?;
    change(&ctl, Publish::Org(&org), || {
        if ctl.store.user(&org, &req.name)?.is_some() {
            return Err(ApiError::conflict(format!("user \"{}\" exists in org {org}", req.name)));
        }
        Ok(ctl.store.put_user(
            &org,
            &UserRecord {
                name: req.name.clone(),
                phc,
                roles: req.roles,
                publish: req.publish,
                subscribe: req.subscribe,
                disabled: false,
                version: 1,
                source: "api".into(),
            },
        )?)
    })?;
    ctl.audit_admin(&org, &who.actor(), "user.create", &req.name);
    Ok((StatusCode::CREATED, Json(CreatedUser { username: format!("{}@{org}", req.name) })))
}

/// Lists an org's users (never their hashes).
#[utoipa::path(get, path = "/v2/users", responses((status = 200, body = [UserView])))]
pub(super) async fn list_users(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    Ok(Json(ctl.store.users(&org)?.into_iter().map(|u| user_view(&org, u)).collect::<Vec<_>>()))
}

/// One user.
#[utoipa::path(get, path = "/v2/users/{name}", responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_user(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let u = ctl.store.user(&org, &name)?.ok_or_else(|| ApiError::not_found(format!("no user \"{name}\"")))?;
    Ok(Json(user_view(&org, u)))
}

/// Changes a user's password, rules, roles or state; a password change or disable closes
/// the user's live sessions.
#[utoipa::path(patch, path = "/v2/users/{name}", request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
pub(super) async fn update_user(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let req: UpdateUser = body(b, false)?;
    if let Some(p) = &req.password {
        check_password(p)?;
    }
    if let Some(r) = &req.publish {
        check_rules("publish", r)?;
    }
    if let Some(r) = &req.subscribe {
        check_rules("subscribe", r)?;
    }
    let phc = match req.password {
        Some(p) => Some(hash(&ctl, p).await?),
        None => None,
    };
    let kick = phc.is_some() || req.disabled == Some(true);
    let mut changed = serde_json::Map::new();
    changed.insert("password_changed".into(), phc.is_some().into());
    for (k, set) in [
        ("roles", req.roles.is_some()),
        ("publish", req.publish.is_some()),
        ("subscribe", req.subscribe.is_some()),
    ] {
        if set {
            changed.insert(format!("{k}_changed"), true.into());
        }
    }
    if let Some(d) = req.disabled {
        changed.insert("disabled".into(), d.into());
    }
    let u = change(&ctl, Publish::Org(&org), || {
        let mut u =
            ctl.store.user(&org, &name)?.ok_or_else(|| ApiError::not_found(format!("no user \"{name}\"")))?;
        if u.source == "config" {
            return Err(ApiError::config_owned(format!("user \"{name}\" of org {org}")));
        }
        if let Some(p) = phc {
            u.phc = p;
        }
        if let Some(r) = req.roles {
            u.roles = r;
        }
        if let Some(r) = req.publish {
            u.publish = r;
        }
        if let Some(r) = req.subscribe {
            u.subscribe = r;
        }
        if let Some(d) = req.disabled {
            u.disabled = d;
        }
        u.version += 1;
        ctl.store.put_user(&org, &u)?;
        Ok(u)
    })?;
    if kick {
        ctl.kick(&org, KickTarget::User(name.clone())).await;
    }
    ctl.audit_admin_with(&org, &who.actor(), "user.update", &name, changed);
    Ok(Json(user_view(&org, u)))
}

/// Deletes a user and closes its live sessions.
#[utoipa::path(delete, path = "/v2/users/{name}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_user(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<OrgQuery>,
) -> ApiResult<StatusCode> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    change(&ctl, Publish::Org(&org), || {
        if ctl.store.user(&org, &name)?.is_some_and(|u| u.source == "config") {
            return Err(ApiError::config_owned(format!("user \"{name}\" of org {org}")));
        }
        if !ctl.store.delete_user(&org, &name)? {
            return Err(ApiError::not_found(format!("no user \"{name}\"")));
        }
        Ok(())
    })?;
    ctl.kick(&org, KickTarget::User(name.clone())).await;
    ctl.audit_admin(&org, &who.actor(), "user.delete", &name);
    Ok(StatusCode::NO_CONTENT)
}
