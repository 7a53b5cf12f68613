//! Short-lived tokens: mint, list, revoke, and the exchange of an IdP JWT for one.

use super::*;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateToken {
    /// Lifetime, seconds (default: the org's token_ttl).
    ttl: Option<u64>,
    user_id: Option<String>,
    email: Option<String>,
    agent_id: Option<String>,
    role: Option<String>,
    session_id: Option<String>,
    /// Extra string claims for ACL variables.
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedToken {
    /// `tok_…@org`.
    username: String,
    /// `tkn_…`; shown once.
    password: String,
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct TokenView {
    username: String,
    created_at: String,
    expires_at: String,
    #[schema(value_type = Object)]
    attrs: Attrs,
}

/// Mints a temporary token.
#[utoipa::path(post, path = "/v2/tokens", request_body = CreateToken, responses((status = 201, body = CreatedToken)))]
pub(super) async fn create_token(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let req: CreateToken = body(b, true)?;
    let o = ctl.store.org(&org)?.ok_or_else(|| ApiError::not_found("no such org"))?;
    let ttl = req.ttl.unwrap_or(o.token_ttl_secs);
    if ttl == 0 || ttl > o.token_ttl_max_secs {
        return Err(ApiError::bad(format!(
            "ttl: must be 1..={} seconds for org {org}",
            o.token_ttl_max_secs
        )));
    }
    for (k, v) in [
        ("user_id", &req.user_id),
        ("email", &req.email),
        ("agent_id", &req.agent_id),
        ("role", &req.role),
        ("session_id", &req.session_id),
    ] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > ATTR_MAX || v.contains(['+', '#', '/', '\0']))
        {
            return Err(ApiError::bad(format!("{k}: 1-{ATTR_MAX} bytes without + # / or NUL")));
        }
    }
    if req.claims.len() > CLAIMS_MAX {
        return Err(ApiError::bad(format!("claims: at most {CLAIMS_MAX}")));
    }
    for (k, v) in &req.claims {
        if k.is_empty() || k.len() > 64 || v.len() > ATTR_MAX || v.contains(['+', '#', '/', '\0']) {
            return Err(ApiError::bad(format!(
                "claims.{k}: names 1-64 bytes, values up to {ATTR_MAX} without + # / or NUL"
            )));
        }
    }
    let attrs = Attrs {
        user_id: req.user_id,
        email: req.email,
        agent_id: req.agent_id,
        role: req.role,
        session_id: req.session_id,
        claims: req.claims,
    };
    let created = mint_token(&ctl, &org, ttl, attrs)?;
    ctl.audit_admin(&org, &who.actor(), "token.create", created.username.split('@').next().unwrap_or(""));
    Ok((StatusCode::CREATED, Json(created)))
}

fn mint_token(ctl: &Ctl, org: &str, ttl: u64, attrs: Attrs) -> ApiResult<CreatedToken> {
    let id = format!("tok_{}", secret::random_b32(16));
    let password = format!("tkn_{}", secret::random_b32(40));
    let now = unix_ms();
    let expires = now + ttl * 1000;
    let rec = TokenRecord {
        id: id.clone(),
        mac: secret::hex(&ctl.auth.pepper.mac(TOKEN_DOMAIN, password.as_bytes())),
        created_unix_ms: now,
        expires_unix_ms: expires,
        attrs,
    };
    let published = crate::auth::directory::TokenDir {
        mac: ctl.auth.pepper.mac(TOKEN_DOMAIN, password.as_bytes()),
        expires_unix_ms: expires,
        attrs: Arc::new(rec.attrs.clone()),
    };
    change(ctl, Publish::Token(org, &id, Some(published)), || {
        // Checked under the write lock: concurrent mints cannot pass the limit together.
        let max = ctl.quota(org).max_live_tokens();
        if ctl.live_tokens(org, now) as u64 >= max {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "quota_exceeded",
                format!("org {org} holds {max} live tokens (max_live_tokens); revoke some or wait for them to expire"),
            ));
        }
        Ok(ctl.store.put_token(org, &rec)?)
    })?;
    Ok(CreatedToken { username: format!("{id}@{org}"), password, expires_at: rfc3339(expires) })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenExchange {
    /// The org's JWT provider name (`auth0`, or its configured `name`).
    provider: String,
    /// The IdP JWT.
    token: String,
    /// Lifetime of the credentials, seconds (default: the org's token_ttl).
    ttl: Option<u64>,
}

/// Verifies an IdP JWT as CONNECT would and returns temporary credentials carrying its mapped
/// claims, for clients that cannot send a JWT as their MQTT password.
#[utoipa::path(post, path = "/v2/token-exchange", request_body = TokenExchange,
    responses((status = 201, body = CreatedToken), (status = 401, body = ErrorBody)))]
pub(super) async fn token_exchange(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    use crate::auth::jwt::{verify, JwtCheck, JWT_BYTES_MAX};
    let (who, org) = scope(&ctl, &headers, &q)?;
    let req: TokenExchange = body(b, false)?;
    if req.token.len() > JWT_BYTES_MAX {
        return Err(ApiError::bad(format!("token: over {JWT_BYTES_MAX} bytes")));
    }
    let ring =
        ctl.rings.get(&org, &req.provider).cloned().ok_or_else(|| {
            ApiError::not_found(format!("org {org} has no JWT provider \"{}\"", req.provider))
        })?;
    let o = ctl.store.org(&org)?.ok_or_else(|| ApiError::not_found("no such org"))?;
    let ttl = req.ttl.unwrap_or(o.token_ttl_secs);
    if ttl == 0 || ttl > o.token_ttl_max_secs {
        return Err(ApiError::bad(format!(
            "ttl: must be 1..={} seconds for org {org}",
            o.token_ttl_max_secs
        )));
    }
    let org_arc: Arc<str> = org.as_str().into();
    let check = |may_fetch| {
        verify(&org_arc, &[Arc::new(ring.provider_dir(unix_ms()))], req.token.as_bytes(), may_fetch)
    };
    let mut result = check(true);
    if let JwtCheck::UnknownKey { .. } = result {
        ctl.refresh_ring(&org, &req.provider, true).await;
        result = check(false);
    }
    let identity = match result {
        JwtCheck::Valid(i) => i,
        JwtCheck::Invalid(why) => {
            let mut d = serde_json::Map::new();
            d.insert("method".into(), "token_exchange".into());
            d.insert("provider".into(), req.provider.clone().into());
            d.insert("reason".into(), why.into());
            ctl.audit(crate::audit::AuditRecord {
                org: org_arc.clone(),
                kind: crate::audit::AuditKind::AuthFailure,
                client_id: None,
                username: Some(who.actor()),
                detail: d,
                unix_ms: unix_ms(),
            });
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", why));
        }
        JwtCheck::UnknownKey { .. } => unreachable!("checked without fetching"),
    };
    let created = mint_token(&ctl, &org, ttl, (*identity.attrs).clone())?;
    let mut d = serde_json::Map::new();
    d.insert("provider".into(), req.provider.into());
    d.insert("subject".into(), identity.name.to_string().into());
    ctl.audit_admin_with(
        &org,
        &who.actor(),
        "token.exchange",
        created.username.split('@').next().unwrap_or(""),
        d,
    );
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists an org's live tokens (never their secrets).
#[utoipa::path(get, path = "/v2/tokens", responses((status = 200, body = [TokenView])))]
pub(super) async fn list_tokens(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let now = unix_ms();
    Ok(Json(
        ctl.store
            .tokens(&org)?
            .into_iter()
            .filter(|t| t.expires_unix_ms > now)
            .map(|t| TokenView {
                username: format!("{}@{org}", t.id),
                created_at: rfc3339(t.created_unix_ms),
                expires_at: rfc3339(t.expires_unix_ms),
                attrs: t.attrs,
            })
            .collect::<Vec<_>>(),
    ))
}

/// Revokes a token and closes its live sessions.
#[utoipa::path(delete, path = "/v2/tokens/{username}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(username): Path<String>,
    Query(q): Query<OrgQuery>,
) -> ApiResult<StatusCode> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let id = match username.split_once('@') {
        Some((id, o)) if o == org => id.to_string(),
        Some(_) => return Err(ApiError::forbidden("that token belongs to another org")),
        None => username.clone(),
    };
    change(&ctl, Publish::Token(&org, &id, None), || {
        if !ctl.store.delete_token(&org, &id)? {
            return Err(ApiError::not_found(format!("no token {id} in org {org}")));
        }
        Ok(())
    })?;
    ctl.kick(&org, KickTarget::Token(id.clone())).await;
    ctl.audit_admin(&org, &who.actor(), "token.revoke", &id);
    Ok(StatusCode::NO_CONTENT)
}
