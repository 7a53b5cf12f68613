//! Organizations and their API keys (operator and org scope).

use super::*;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrg {
    /// `[a-z0-9_-]{1,64}`; generated when absent.
    id: Option<String>,
    /// Default token lifetime, seconds.
    token_ttl: Option<u64>,
    /// Longest token lifetime, seconds.
    token_ttl_max: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedOrg {
    id: String,
    /// The org's first API key; shown once.
    api_key: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct OrgView {
    id: String,
    created_at: String,
    token_ttl: u64,
    token_ttl_max: u64,
    source: String,
}

fn org_view(o: OrgRecord) -> OrgView {
    OrgView {
        id: o.id,
        created_at: rfc3339(o.created_unix_ms),
        token_ttl: o.token_ttl_secs,
        token_ttl_max: o.token_ttl_max_secs,
        source: o.source,
    }
}

/// Creates an organization and its first API key (operator key).
#[utoipa::path(post, path = "/v2/orgs", request_body = CreateOrg,
    responses((status = 201, body = CreatedOrg), (status = 409, body = ErrorBody)))]
pub(super) async fn create_org(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let who = operator(&ctl, &headers)?;
    let req: CreateOrg = body(b, true)?;
    let id = match req.id {
        Some(id) if !valid_org_id(&id) => {
            return Err(ApiError::bad(format!("id: \"{id}\" is not [a-z0-9_-]{{1,64}}")))
        }
        Some(id) => id,
        None => secret::new_org_id(),
    };
    let ttl_max = req.token_ttl_max.unwrap_or(limits::TOKEN_TTL_MAX_SECS);
    let ttl = req.token_ttl.unwrap_or(limits::TOKEN_TTL_DEFAULT_SECS.min(ttl_max));
    if ttl_max == 0 || ttl == 0 || ttl > ttl_max {
        return Err(ApiError::bad("token_ttl must be 1..=token_ttl_max seconds"));
    }
    let key = change(&ctl, Publish::Org(&id), || {
        if ctl.store.org(&id)?.is_some() {
            return Err(ApiError::conflict(format!("org \"{id}\" exists")));
        }
        if ctl.store.purge_pending(&id)? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "deletion_incomplete",
                format!("org \"{id}\" is still being deleted; DELETE /v2/orgs/{id} again to finish"),
            ));
        }
        ctl.store.put_org(&OrgRecord {
            id: id.clone(),
            created_unix_ms: unix_ms(),
            token_ttl_secs: ttl,
            token_ttl_max_secs: ttl_max,
            source: "api".into(),
        })?;
        let (key, _) = ctl.mint_api_key(&id, "api")?;
        Ok(key)
    })?;
    ctl.audit_admin(&id, &who.actor(), "org.create", &id);
    Ok((StatusCode::CREATED, Json(CreatedOrg { id, api_key: key })))
}

/// Lists organizations (operator key).
#[utoipa::path(get, path = "/v2/orgs", responses((status = 200, body = [OrgView])))]
pub(super) async fn list_orgs(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    operator(&ctl, &headers)?;
    Ok(Json(ctl.store.orgs()?.into_iter().map(org_view).collect::<Vec<_>>()))
}

/// One organization (operator key, or that org's key).
#[utoipa::path(get, path = "/v2/orgs/{id}", responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_org(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &OrgQuery { org: Some(id) })?;
    let o = ctl.store.org(&org)?.ok_or_else(|| ApiError::not_found("no such org"))?;
    Ok(Json(org_view(o)))
}

/// Deletes an organization with everything it owns — users, keys, tokens, policy, quotas,
/// audit, and on every shard its connections (closed, no will), sessions, queued and
/// in-flight messages and retained messages, in memory and on disk — before it answers
/// (operator key). The id cannot be used again until that is done; 503 `deletion_incomplete`
/// when a shard did not confirm in time: DELETE again (or restart) to finish.
#[utoipa::path(delete, path = "/v2/orgs/{id}", responses((status = 204), (status = 404, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
pub(super) async fn delete_org(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    operator(&ctl, &headers)?;
    change(&ctl, Publish::Org(&id), || {
        match ctl.store.org(&id)? {
            None if ctl.store.purge_pending(&id)? => return Ok(()), // finish an earlier attempt
            None => return Err(ApiError::not_found(format!("org \"{id}\" does not exist"))),
            Some(o) if o.source == "config" => {
                return Err(ApiError::conflict(format!(
                    "org \"{id}\" is declared in the config file; remove it there"
                )))
            }
            Some(_) => {}
        }
        // Marked first: a crash from here on finishes the deletion at the next start.
        ctl.store.mark_purge(&id)?;
        Ok(ctl.store.delete_org(&id)?)
    })?;
    ctl.quotas.lock().expect("quotas lock").remove(&id);
    ctl.auth.cache.forget_org(&id);
    if !ctl.purge_org(&id).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "deletion_incomplete",
            format!("org \"{id}\" is deleted but not yet removed from every shard; DELETE again to finish"),
        ));
    }
    ctl.store.purge_done(&id)?;
    // Not in the org's audit log: that went with the org.
    tracing::info!(org = %id, "org deleted with everything it owned");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApiKey {
    /// The org (operator key); an org key mints for its own org.
    org: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(super) struct CreatedApiKey {
    /// Shown once.
    api_key: String,
    id: String,
    org: String,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ApiKeyView {
    id: String,
    org: String,
    created_at: String,
    source: String,
}

/// Mints an API key for an org.
#[utoipa::path(post, path = "/v2/api-keys", request_body = CreateApiKey, responses((status = 201, body = CreatedApiKey)))]
pub(super) async fn create_api_key(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let req: CreateApiKey = body(b, true)?;
    let (who, org) = scope(&ctl, &headers, &OrgQuery { org: req.org })?;
    let (key, id) = change(&ctl, Publish::Nothing, || Ok(ctl.mint_api_key(&org, "api")?))?;
    ctl.audit_admin(&org, &who.actor(), "api_key.create", &id);
    Ok((StatusCode::CREATED, Json(CreatedApiKey { api_key: key, id, org })))
}

/// Lists an org's API keys (ids only; keys are never shown again).
#[utoipa::path(get, path = "/v2/api-keys", responses((status = 200, body = [ApiKeyView])))]
pub(super) async fn list_api_keys(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let keys = ctl.store.api_keys_of(&org)?;
    Ok(Json(
        keys.into_iter()
            .map(|(_, k)| ApiKeyView {
                id: k.id,
                org: k.org,
                created_at: rfc3339(k.created_unix_ms),
                source: k.source,
            })
            .collect::<Vec<_>>(),
    ))
}

/// Revokes an API key by id.
#[utoipa::path(delete, path = "/v2/api-keys/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_api_key(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<OrgQuery>,
) -> ApiResult<StatusCode> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    change(&ctl, Publish::Nothing, || {
        let Some((mac, k)) = ctl.store.api_keys_of(&org)?.into_iter().find(|(_, k)| k.id == id) else {
            return Err(ApiError::not_found(format!("no API key {id} in org {org}")));
        };
        if k.source == "config" {
            return Err(ApiError::config_owned(format!("API key {id} (api_key_env of org {org})")));
        }
        Ok(ctl.store.delete_api_key(&mac)?)
    })?;
    ctl.audit_admin(&org, &who.actor(), "api_key.delete", &id);
    Ok(StatusCode::NO_CONTENT)
}
