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

mod acl;
mod audit;
mod health;
mod orgs;
mod sessions;
mod tokens;
mod users;

use acl::*;
use audit::*;
use health::*;
use orgs::*;
use sessions::*;
use tokens::*;
use users::*;

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
