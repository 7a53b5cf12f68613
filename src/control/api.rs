//! The admin HTTP API (SPEC §8, §13) on axum: bearer keys (operator or org), JSON errors
//! `{ "error": { "code", "message" } }`, and the OpenAPI document at `/v2/openapi.json`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{OpenApi, ToSchema};

use super::store::{OrgRecord, TokenRecord, UserRecord};
use super::Ctl;
use crate::auth::directory::Attrs;
use crate::auth::secret;
use crate::auth::{API_KEY_DOMAIN, TOKEN_DOMAIN};
use crate::clock::{rfc3339, unix_ms};
use crate::identity::{parse_username, valid_org_id};
use crate::limits;
use crate::plane::{KickTarget, SessionInfo, ShardCommand};

/// Largest request body accepted.
const BODY_MAX: usize = 64 * 1024;
/// Longest identity attribute or claim value.
const ATTR_MAX: usize = 256;
/// Most extra claims on a token.
const CLAIMS_MAX: usize = 32;

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// The config file declares this setting: it owns it (it would replace an API change at
    /// the next start).
    fn config_owned(what: String) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "config_owned",
            format!("{what} is declared in the config file, which owns it: change it there (or remove it there to manage it through the API)"),
        )
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        tracing::error!(error = %e, "admin API store error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "storage error; see the broker log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } })))
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who is calling.
#[derive(Debug, Clone)]
enum Caller {
    Operator,
    Org { org: String, key_id: String },
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Operator => "operator".into(),
            Caller::Org { key_id, .. } => format!("api_key:{key_id}"),
        }
    }
}

fn caller(ctl: &Ctl, headers: &HeaderMap) -> ApiResult<Caller> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let h = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <key>"))?;
    let key = h
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| unauthorized("Authorization must be \"Bearer <key>\""))?;
    if let Some(op) = &ctl.operator_key {
        if aws_lc_rs::constant_time::verify_slices_are_equal(op.as_bytes(), key.as_bytes()).is_ok() {
            return Ok(Caller::Operator);
        }
    }
    let mac = secret::hex(&ctl.auth.pepper.mac(API_KEY_DOMAIN, key.as_bytes()));
    match ctl.store.api_key(&mac)? {
        Some(k) => Ok(Caller::Org { org: k.org, key_id: k.id }),
        None => Err(unauthorized("unknown key")),
    }
}

fn operator(ctl: &Ctl, headers: &HeaderMap) -> ApiResult<Caller> {
    match caller(ctl, headers)? {
        Caller::Operator => Ok(Caller::Operator),
        Caller::Org { .. } => Err(ApiError::forbidden("this needs the operator key")),
    }
}

/// `?org=` for operator calls to org-scoped endpoints.
#[derive(Debug, Deserialize, Default)]
struct OrgQuery {
    org: Option<String>,
}

/// The org an org-scoped call acts on: the key's org, or `?org=` for the operator.
fn scope(ctl: &Ctl, headers: &HeaderMap, q: &OrgQuery) -> ApiResult<(Caller, String)> {
    let c = caller(ctl, headers)?;
    let org = match (&c, &q.org) {
        (Caller::Org { org, .. }, Some(o)) if o != org => {
            return Err(ApiError::forbidden("an org API key acts only on its own org"))
        }
        (Caller::Org { org, .. }, _) => org.clone(),
        (Caller::Operator, Some(o)) => o.clone(),
        (Caller::Operator, None) => return Err(ApiError::bad("the operator key needs ?org=<id> here")),
    };
    if ctl.store.org(&org)?.is_none() {
        return Err(ApiError::not_found(format!("org \"{org}\" does not exist")));
    }
    Ok((c, org))
}

/// Runs one change to the store under the write lock, makes it durable before the API answers,
/// and (`republish`) rebuilds the credential directory the shards read. An error from `f`
/// returns before anything is synced or published.
/// What of the published credential directory a change touches.
enum Publish<'a> {
    /// Nothing the shards read.
    Nothing,
    /// This org's part (users, policy, the org itself).
    Org(&'a str),
    /// One token of an org: added, or (`None`) removed.
    Token(&'a str, &'a str, Option<crate::auth::directory::TokenDir>),
}

/// Runs one admin change under the write lock, makes it durable, then republishes what it
/// touched.
fn change<T>(ctl: &Ctl, publish: Publish<'_>, f: impl FnOnce() -> ApiResult<T>) -> ApiResult<T> {
    let _w = ctl.write.lock().expect("write lock");
    let out = f()?;
    ctl.store.sync()?;
    match publish {
        Publish::Nothing => {}
        Publish::Org(org) => ctl.publish_org(org)?,
        Publish::Token(org, id, t) => ctl.publish_token(org, id, t),
    }
    Ok(out)
}

fn body<T: DeserializeOwned>(b: Result<Bytes, BytesRejection>, empty_ok: bool) -> ApiResult<T> {
    let b = b.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body over {BODY_MAX} bytes"),
        ),
        other => ApiError::bad(other.body_text()),
    })?;
    let b: &[u8] = if b.is_empty() && empty_ok { b"{}" } else { &b };
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("body: {e}")))
}

// ------------------------------------------------------------------------ router

/// The admin API's routes over `ctl`.
pub fn router(ctl: Arc<Ctl>) -> Router {
    let gate = super::http::KeyGate::default();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v2/openapi.json", get(openapi))
        .route("/v2/orgs", post(create_org).get(list_orgs))
        .route("/v2/orgs/{id}", get(get_org).delete(delete_org))
        .route("/v2/api-keys", post(create_api_key).get(list_api_keys))
        .route("/v2/api-keys/{id}", delete(delete_api_key))
        .route("/v2/users", post(create_user).get(list_users))
        .route("/v2/users/{name}", get(get_user).patch(update_user).delete(delete_user))
        .route("/v2/tokens", post(create_token).get(list_tokens))
        .route("/v2/tokens/{username}", delete(revoke_token))
        .route("/v2/token-exchange", post(token_exchange))
        .route("/v2/sessions", get(list_sessions))
        .route("/v2/sessions/{client_id}", delete(disconnect_session))
        .route("/v2/audit", get(audit))
        .route("/v2/acl", get(get_acl).put(put_acl))
        .route("/v2/acl/validate", post(validate_acl))
        .route("/v2/acl/simulate", post(simulate_acl))
        .route("/v2/acl/diff", post(diff_acl))
        .route("/v2/publish", post(rest_publish))
        .route("/v2/quotas", get(get_quotas).put(put_quotas))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint has no such method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_MAX))
        .layer(axum::middleware::from_fn(|req, next| super::http::read_body(BODY_MAX, req, next)))
        .layer(axum::middleware::from_fn(move |req, next| super::http::per_key(gate.clone(), req, next)))
        .with_state(ctl)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "coremq admin API", description = "Organizations, users, API keys, tokens, sessions and audit (SPEC §8)."),
    paths(
        healthz, create_org, list_orgs, get_org, delete_org, create_api_key, list_api_keys, delete_api_key,
        create_user, list_users, get_user, update_user, delete_user, create_token, list_tokens, revoke_token,
        token_exchange, get_acl, put_acl, validate_acl, simulate_acl, diff_acl, rest_publish, get_quotas, put_quotas,
        list_sessions, disconnect_session, audit
    ),
    components(schemas(
        CreateOrg, CreatedOrg, OrgView, CreateApiKey, CreatedApiKey, ApiKeyView, CreateUser, CreatedUser, UpdateUser,
        UserView, CreateToken, CreatedToken, TokenView, TokenExchange, AuditPage, ErrorBody
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// `{ "error": { "code", "message" } }`.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    error: serde_json::Value,
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "alive, every store writable"),
    (status = 503, description = "alive, a shard's store is failing (a full disk): publishes that need it are refused until it recovers")
), security(()))]
async fn healthz(State(ctl): State<Arc<Ctl>>) -> impl IntoResponse {
    let failing = ctl.sys.stores_failing();
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ok", "store": "ok" })))
    } else {
        let body = json!({ "status": "degraded", "store": "failing", "failing_shards": failing });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OrgLabel {
    org: String,
}

/// Labels of a per-org, per-quota series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct QuotaLabel {
    org: String,
    quota: String,
}

/// A metric (family) of type `F`, registered under `name`.
fn registered<F>(reg: &mut prometheus_client::registry::Registry, name: &str, help: &str) -> F
where
    F: prometheus_client::registry::Metric + Clone + Default,
{
    let f = F::default();
    reg.register(name, help, f.clone());
    f
}

/// Prometheus text exposition of per-org figures (operator key: org ids are not public).
async fn metrics(State(ctl): State<Arc<Ctl>>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    operator(&ctl, &headers)?;
    let mut reg = prometheus_client::registry::Registry::with_prefix("coremq");
    let connected: Family<OrgLabel, Gauge> = registered(&mut reg, "clients_connected", "Connected clients");
    let subs: Family<OrgLabel, Gauge> = registered(&mut reg, "subscriptions", "Subscriptions");
    let retained: Family<OrgLabel, Gauge> = registered(&mut reg, "retained_messages", "Retained messages");
    let received: Family<OrgLabel, Counter> =
        registered(&mut reg, "messages_received", "Messages received from clients");
    let sent: Family<OrgLabel, Counter> = registered(&mut reg, "messages_sent", "Messages sent to clients");
    let healthy: Family<ShardLabel, Gauge> = registered(
        &mut reg,
        "store_healthy",
        "1 while the shard's store accepts writes, 0 while it is failing",
    );
    let failing = ctl.sys.stores_failing();
    for shard in 0..ctl.shards.len() {
        healthy
            .get_or_create(&ShardLabel { shard: shard.to_string() })
            .set(!failing.contains(&(shard as u8)) as i64);
    }
    let failures: Counter = Counter::default();
    failures.inc_by(ctl.sys.store_failures());
    reg.register("store_failures", "Times a shard's store started failing since start", failures);
    for (org, f) in ctl.sys.totals() {
        let l = OrgLabel { org: org.to_string() };
        connected.get_or_create(&l).set(f.connected as i64);
        subs.get_or_create(&l).set(f.subscriptions as i64);
        retained.get_or_create(&l).set(f.retained as i64);
        received.get_or_create(&l).inc_by(f.received);
        sent.get_or_create(&l).inc_by(f.sent);
    }
    // Quotas: one series per org (and per set limit): at most 14 per org (docs/quotas.md).
    let slots: Family<OrgLabel, Gauge> =
        registered(&mut reg, "org_connections", "Connection slots held (exact, all shards)");
    let limit: Family<QuotaLabel, Gauge> =
        registered(&mut reg, "org_quota_limit", "Quota limits (absent: unlimited)");
    let rate_limited: Family<OrgLabel, Counter> =
        registered(&mut reg, "org_rate_limited", "PUBLISH packets refused or dropped over the org's rate");
    let conn_refused: Family<OrgLabel, Counter> =
        registered(&mut reg, "org_connections_refused", "CONNECTs refused at the connection limit");
    let ret_refused: Family<OrgLabel, Counter> =
        registered(&mut reg, "org_retained_refused", "Retained publishes not retained over the limit");
    let sub_refused: Family<OrgLabel, Counter> =
        registered(&mut reg, "org_subscriptions_refused", "Subscriptions refused over the per-client limit");
    let stored: Family<OrgLabel, Gauge> =
        registered(&mut reg, "org_session_storage_bytes", "Bytes held for offline persistent sessions");
    let stored_dropped: Family<OrgLabel, Counter> = registered(
        &mut reg,
        "org_session_storage_dropped",
        "Messages dropped over the session storage limit",
    );
    let quotas: Vec<(String, Arc<crate::quota::OrgQuota>)> = ctl
        .quotas
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (org, q) in quotas {
        let l = OrgLabel { org: org.clone() };
        let u = q.usage();
        slots.get_or_create(&l).set(u.connections as i64);
        rate_limited.get_or_create(&l).inc_by(u.rate_limited);
        conn_refused.get_or_create(&l).inc_by(u.connections_refused);
        ret_refused.get_or_create(&l).inc_by(u.retained_refused);
        sub_refused.get_or_create(&l).inc_by(u.subscriptions_refused);
        stored.get_or_create(&l).set(u.session_storage_bytes.min(i64::MAX as u64) as i64);
        stored_dropped.get_or_create(&l).inc_by(u.session_storage_dropped);
        if let serde_json::Value::Object(m) = serde_json::to_value(q.limits()).unwrap_or_default() {
            for (k, v) in m {
                if let Some(v) = v.as_u64() {
                    limit
                        .get_or_create(&QuotaLabel { org: org.clone(), quota: k })
                        .set(v.min(i64::MAX as u64) as i64);
                }
            }
        }
    }
    let dropped = Counter::<u64>::default();
    dropped.inc_by(ctl.audit_dropped.load(std::sync::atomic::Ordering::Relaxed));
    reg.register("audit_events_dropped", "Audit events dropped because the writer fell behind", dropped);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &reg).map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "metrics encoding failed")
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        body,
    ))
}

// ------------------------------------------------------------------------ orgs

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    /// `[a-z0-9_-]{1,64}`; generated when absent.
    id: Option<String>,
    /// Default token lifetime, seconds.
    token_ttl: Option<u64>,
    /// Longest token lifetime, seconds.
    token_ttl_max: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct CreatedOrg {
    id: String,
    /// The org's first API key; shown once.
    api_key: String,
}

#[derive(Serialize, ToSchema)]
struct OrgView {
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
async fn create_org(
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
async fn list_orgs(State(ctl): State<Arc<Ctl>>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    operator(&ctl, &headers)?;
    Ok(Json(ctl.store.orgs()?.into_iter().map(org_view).collect::<Vec<_>>()))
}

/// One organization (operator key, or that org's key).
#[utoipa::path(get, path = "/v2/orgs/{id}", responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn get_org(
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
async fn delete_org(
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

// ------------------------------------------------------------------------ API keys

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct CreateApiKey {
    /// The org (operator key); an org key mints for its own org.
    org: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct CreatedApiKey {
    /// Shown once.
    api_key: String,
    id: String,
    org: String,
}

#[derive(Serialize, ToSchema)]
struct ApiKeyView {
    id: String,
    org: String,
    created_at: String,
    source: String,
}

/// Mints an API key for an org.
#[utoipa::path(post, path = "/v2/api-keys", request_body = CreateApiKey, responses((status = 201, body = CreatedApiKey)))]
async fn create_api_key(
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
async fn list_api_keys(
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
async fn delete_api_key(
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

// ------------------------------------------------------------------------ users

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUser {
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
struct CreatedUser {
    /// `name@org`.
    username: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct UpdateUser {
    /// A new password: the user's live sessions are closed.
    password: Option<String>,
    roles: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    subscribe: Option<Vec<String>>,
    /// Disabling closes the user's live sessions.
    disabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
struct UserView {
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
async fn hash(ctl: &Ctl, password: String) -> ApiResult<String> {
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
async fn create_user(
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
async fn list_users(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    Ok(Json(ctl.store.users(&org)?.into_iter().map(|u| user_view(&org, u)).collect::<Vec<_>>()))
}

/// One user.
#[utoipa::path(get, path = "/v2/users/{name}", responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn get_user(
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
async fn update_user(
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
async fn delete_user(
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

// ------------------------------------------------------------------------ tokens

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
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
struct CreatedToken {
    /// `tok_…@org`.
    username: String,
    /// `tkn_…`; shown once.
    password: String,
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
struct TokenView {
    username: String,
    created_at: String,
    expires_at: String,
    #[schema(value_type = Object)]
    attrs: Attrs,
}

/// Mints a temporary token.
#[utoipa::path(post, path = "/v2/tokens", request_body = CreateToken, responses((status = 201, body = CreatedToken)))]
async fn create_token(
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
struct TokenExchange {
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
async fn token_exchange(
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
async fn list_tokens(
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
async fn revoke_token(
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

// ------------------------------------------------------------------------ sessions

/// Lists the org's live connections, from every shard.
#[utoipa::path(get, path = "/v2/sessions", responses((status = 200, description = "live connections")))]
async fn list_sessions(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let org: Arc<str> = org.into();
    let mut rxs = Vec::new();
    for s in &ctl.shards {
        let (tx, rx) = flume::bounded(1);
        if s.try_send(ShardCommand::Sessions { org: org.clone(), reply: tx }).is_ok() {
            rxs.push(rx);
        }
    }
    let mut all: Vec<SessionInfo> = Vec::new();
    for rx in rxs {
        if let Ok(Ok(v)) = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv_async()).await {
            all.extend(v);
        }
    }
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(Json(json!({ "sessions": all })))
}

/// Disconnects the live connection with this client id (5.0: DISCONNECT 0x98).
#[utoipa::path(delete, path = "/v2/sessions/{client_id}", responses((status = 204), (status = 404, body = ErrorBody)))]
async fn disconnect_session(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    Query(q): Query<OrgQuery>,
) -> ApiResult<StatusCode> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let n = ctl.kick(&org, KickTarget::ClientId(client_id.clone())).await;
    if n == 0 {
        return Err(ApiError::not_found(format!("no live connection with client id \"{client_id}\"")));
    }
    ctl.audit_admin(&org, &who.actor(), "session.disconnect", &client_id);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------------ audit

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    org: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    client_id: Option<String>,
    limit: Option<usize>,
    /// The `next` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
    next: Option<String>,
}

fn parse_time(field: &str, s: &str) -> ApiResult<u64> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| ApiError::bad(format!("{field}: \"{s}\" is not an RFC 3339 time")))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// The org's audit log, oldest first, filtered and paged.
#[utoipa::path(get, path = "/v2/audit", params(
    ("type" = Option<String>, Query, description = "auth_success, auth_failure, connect, disconnect, acl_denied, quota_exceeded, admin"),
    ("since" = Option<String>, Query, description = "RFC 3339"),
    ("until" = Option<String>, Query, description = "RFC 3339"),
    ("client_id" = Option<String>, Query, description = "only this client id"),
    ("limit" = Option<usize>, Query, description = "1..=1000, default 100"),
    ("cursor" = Option<String>, Query, description = "`next` of the previous page"),
), responses((status = 200, body = AuditPage)))]
async fn audit(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (_, org) = scope(&ctl, &headers, &OrgQuery { org: q.org.clone() })?;
    if let Some(k) = &q.kind {
        if crate::audit::AuditKind::parse(k).is_none() {
            return Err(ApiError::bad(format!("type: unknown event type \"{k}\"")));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("limit: 1..=1000"));
    }
    let since = q.since.as_deref().map(|s| parse_time("since", s)).transpose()?;
    let until = q.until.as_deref().map(|s| parse_time("until", s)).transpose()?;
    let start = match (&q.cursor, since) {
        (Some(c), _) => unhex(c).ok_or_else(|| ApiError::bad("cursor: not a cursor from this API"))?,
        (None, Some(t)) => t.to_be_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    // Aggregation has already flushed to the store (writes are visible before sync).
    let (events, next) = ctl.store.audit_page(&org, &start, limit, |e| {
        q.kind.as_ref().is_none_or(|k| &e.kind == k)
            && q.client_id.as_ref().is_none_or(|c| e.client_id.as_ref() == Some(c))
            && since.is_none_or(|s| e.last_unix_ms >= s)
            && until.is_none_or(|u| e.unix_ms <= u)
    })?;
    let events = events
        .into_iter()
        .map(|e| {
            json!({
                "time": rfc3339(e.unix_ms),
                "last_time": rfc3339(e.last_unix_ms),
                "type": e.kind,
                "client_id": e.client_id,
                "username": e.username,
                "detail": e.detail,
                "count": e.count,
            })
        })
        .collect();
    Ok(Json(AuditPage { events, next: next.map(|n| secret::hex(&n)) }))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

// ------------------------------------------------------------------------ ACL v2

fn policy_error(e: crate::acl::PolicyError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string())
}

/// The org's quota limits (`null`: unlimited) and its usage now.
#[utoipa::path(get, path = "/v2/quotas", responses((status = 200, description = "{org, limits, usage}")))]
async fn get_quotas(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    if ctl.store.org(&org)?.is_none() {
        return Err(ApiError::not_found(format!("org \"{org}\" does not exist")));
    }
    let quota = ctl.quota(&org);
    Ok(Json(json!({ "org": org, "limits": quota.limits(), "usage": quota.usage() })))
}

/// Changes an org's limits (operator key): keys present replace the current value, `null`
/// makes a limit unlimited, absent keys stay. Stored: kept across restarts unless the config
/// has an `[org.quotas]` table for the org. Live connections see the change at their next
/// check; connections above a lowered limit stay connected.
#[utoipa::path(put, path = "/v2/quotas", request_body(content = Object, description = "{org, max_connections, messages_per_minute, ...}"), responses((status = 200, description = "{org, limits, usage}"), (status = 400, body = ErrorBody)))]
async fn put_quotas(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let who = operator(&ctl, &headers)?;
    let doc: serde_json::Map<String, serde_json::Value> = body(b, false)?;
    let org = doc
        .get("org")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApiError::bad("org: required (the organization whose quotas change)"))?
        .to_string();
    if ctl.store.org(&org)?.is_none() {
        return Err(ApiError::not_found(format!("org \"{org}\" does not exist")));
    }
    if ctl.config_owned.quotas.contains(&org) {
        return Err(ApiError::config_owned(format!("the quotas of org {org} ([org.quotas])")));
    }
    let quota = ctl.quota(&org);
    let mut merged = serde_json::to_value(quota.limits()).unwrap_or_default();
    for (k, v) in &doc {
        if k == "org" {
            continue;
        }
        if merged.get(k).is_none() {
            return Err(ApiError::bad(format!("{k}: unknown quota (known: max_connections, messages_per_minute, max_retained_messages, session_storage_bytes, max_subscriptions_per_client, max_packet_size, max_inflight, max_live_tokens)")));
        }
        if !(v.is_null() || v.as_u64().is_some()) {
            return Err(ApiError::bad(format!("{k}: expected a non-negative integer or null")));
        }
        merged[k] = v.clone();
    }
    let limits: crate::quota::QuotaLimits =
        serde_json::from_value(merged).map_err(|e| ApiError::bad(e.to_string()))?;
    if limits.max_inflight.is_some_and(|v| v == 0 || v > 65_535) {
        return Err(ApiError::bad("max_inflight: must be 1..=65535"));
    }
    if limits.max_packet_size.is_some_and(|v| v < 64) {
        return Err(ApiError::bad("max_packet_size: must be at least 64 bytes"));
    }
    change(&ctl, Publish::Nothing, || Ok(ctl.store.put_quotas(&org, &limits)?))?;
    quota.set_limits(&limits);
    let mut d = serde_json::Map::new();
    d.insert("limits".into(), serde_json::to_value(limits).unwrap_or_default());
    ctl.audit_admin_with(&org, &who.actor(), "quotas.update", &org, d);
    Ok(Json(json!({ "org": org, "limits": quota.limits(), "usage": quota.usage() })))
}

/// The org's policy document (the blank preset when none was set).
#[utoipa::path(get, path = "/v2/acl", responses((status = 200, description = "the ACL v2 document")))]
async fn get_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let doc = match ctl.store.policy(&org)? {
        Some(d) => d,
        None => crate::acl::Policy::blank().source,
    };
    Ok(Json(doc))
}

/// Replaces the org's policy: new checks use it at once, and live subscriptions it no longer
/// allows are removed.
#[utoipa::path(put, path = "/v2/acl", request_body(content = Object, description = "ACL v2 document"), responses((status = 200, description = "applied"), (status = 400, body = ErrorBody)))]
async fn put_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (who, org) = scope(&ctl, &headers, &q)?;
    let doc: serde_json::Value = body(b, false)?;
    let policy = crate::acl::Policy::from_value(doc).map_err(policy_error)?;
    if ctl.config_owned.policies.contains(&org) {
        return Err(ApiError::config_owned(format!("the policy of org {org}")));
    }
    change(&ctl, Publish::Org(&org), || Ok(ctl.store.put_policy(&org, &policy.source)?))?;
    ctl.policy_changed(&org);
    let mut d = serde_json::Map::new();
    d.insert("rules".into(), policy.rules.len().into());
    ctl.audit_admin_with(&org, &who.actor(), "acl.update", &org, d);
    Ok(Json(
        json!({ "rules": policy.rules.len(), "default_action": if policy.default_allow { "allow" } else { "deny" } }),
    ))
}

/// Validates a policy document without applying it.
#[utoipa::path(post, path = "/v2/acl/validate", request_body(content = Object, description = "ACL v2 document"), responses((status = 200, description = "{valid, errors}")))]
async fn validate_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    scope(&ctl, &headers, &q)?;
    let doc: serde_json::Value = body(b, false)?;
    Ok(Json(match crate::acl::Policy::from_value(doc) {
        Ok(p) => json!({ "valid": true, "errors": [], "rules": p.rules.len() }),
        Err(e) => json!({ "valid": false, "errors": [{ "path": e.path, "message": e.message }] }),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateBody {
    #[serde(default)]
    identity: crate::acl::AclIdentity,
    action: String,
    topic: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    /// A policy to try instead of the org's.
    policy: Option<serde_json::Value>,
}

/// One check against the org's policy (or a given one): verdict, deciding rule, bound pattern.
#[utoipa::path(post, path = "/v2/acl/simulate", request_body(content = Object, description = "{identity, action, topic, qos, retain, policy?}"), responses((status = 200, description = "{verdict, rule, pattern}")))]
async fn simulate_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let req: SimulateBody = body(b, false)?;
    let policy = match req.policy {
        Some(doc) => crate::acl::Policy::from_value(doc).map_err(policy_error)?,
        None => match ctl.store.policy(&org)? {
            Some(doc) => crate::acl::Policy::from_value(doc).map_err(policy_error)?,
            None => crate::acl::Policy::blank(),
        },
    };
    let mut identity = req.identity;
    identity.org_id.get_or_insert_with(|| org.clone());
    // A permanent user's own rules apply to that user (allow-only).
    let user = match &identity.username {
        Some(u) => ctl.store.user(&org, u)?,
        None => None,
    };
    let (p, s) = user.map_or((Vec::new(), Vec::new()), |u| (u.publish, u.subscribe));
    let sim = crate::acl::simulate::SimRequest {
        identity,
        action: req.action,
        topic: req.topic,
        qos: req.qos,
        retain: req.retain,
        expect: None,
    };
    Ok(Json(crate::acl::simulate::simulate(&policy, &sim, (&p, &s))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    topic: String,
    /// UTF-8 payload (or `payload_base64`).
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    /// User properties (MQTT 5 subscribers receive them).
    #[serde(default)]
    user_properties: std::collections::BTreeMap<String, String>,
}

/// Publishes into the org as the service account `rest_publisher`, subject to the ACL.
#[utoipa::path(post, path = "/v2/publish", request_body = PublishBody,
    responses((status = 200, description = "{delivered: true}"), (status = 403, body = ErrorBody)))]
async fn rest_publish(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    use base64::Engine as _;
    let (who, org) = scope(&ctl, &headers, &q)?;
    let req: PublishBody = body(b, false)?;
    if req.qos > 1 {
        return Err(ApiError::bad("qos: 0 or 1"));
    }
    let t = &req.topic;
    if !crate::codec::topic::valid_name(t) || t.len() > 65535 || t.contains('\0') || t.starts_with('$') {
        return Err(ApiError::bad(format!("topic: \"{t}\" is not a topic this API may publish to")));
    }
    let payload = match (req.payload, req.payload_base64) {
        (Some(p), None) => Bytes::from(p.into_bytes()),
        (None, Some(b)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ApiError::bad(format!("payload_base64: {e}")))?,
        ),
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => return Err(ApiError::bad("payload and payload_base64 are exclusive")),
    };
    let policy = match ctl.store.policy(&org)? {
        Some(doc) => crate::acl::Policy::from_value(doc).map_err(policy_error)?,
        None => crate::acl::Policy::blank(),
    };
    let identity = crate::acl::AclIdentity {
        username: Some("rest_publisher".into()),
        org_id: Some(org.clone()),
        client_id: Some("rest_publisher".into()),
        ..Default::default()
    };
    let acl = crate::acl::CompiledAcl::compile(&policy, &identity, &[], &[]);
    let d = acl.check_publish(t, req.qos, req.retain);
    if !d.allow {
        let mut det = serde_json::Map::new();
        det.insert("action".into(), "publish".into());
        det.insert("topic".into(), t.clone().into());
        det.insert("rule".into(), d.policy_rule_json());
        ctl.audit(crate::audit::AuditRecord {
            org: org.as_str().into(),
            kind: crate::audit::AuditKind::AclDenied,
            client_id: Some("rest_publisher".into()),
            username: Some(who.actor()),
            detail: det,
            unix_ms: unix_ms(),
        });
        return Err(ApiError::forbidden(format!("the policy denies rest_publisher publishing to \"{t}\"")));
    }
    // Any shard may route it; spread by topic.
    let n = ctl.shards.len().max(1);
    let shard = t.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % n;
    let cmd = ShardCommand::Publish {
        org: org.as_str().into(),
        topic: t.clone(),
        payload,
        qos: req.qos,
        retain: req.retain,
        user_properties: req.user_properties.into_iter().collect(),
    };
    ctl.shards[shard]
        .try_send(cmd)
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "the broker is busy; retry"))?;
    Ok(Json(json!({ "delivered": true })))
}

/// Which live subscriptions a candidate policy would remove (nothing is changed).
#[utoipa::path(post, path = "/v2/acl/diff", request_body(content = Object, description = "candidate ACL v2 document"),
    responses((status = 200, description = "{removed: [{client_id, filter}]}")))]
async fn diff_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let doc: serde_json::Value = body(b, false)?;
    let policy = Arc::new(crate::acl::Policy::from_value(doc).map_err(policy_error)?);
    let mut rxs = Vec::new();
    for s in &ctl.shards {
        let (tx, rx) = flume::bounded(1);
        let cmd = ShardCommand::DiffPolicy { org: org.as_str().into(), policy: policy.clone(), reply: tx };
        if s.try_send(cmd).is_ok() {
            rxs.push(rx);
        }
    }
    let mut removed = Vec::new();
    for rx in rxs {
        if let Ok(Ok(v)) = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv_async()).await {
            removed.extend(v);
        }
    }
    removed.sort();
    let removed: Vec<_> = removed.into_iter().map(|(c, f)| json!({ "client_id": c, "filter": f })).collect();
    Ok(Json(json!({ "removed": removed })))
}
