//! The org's audit log, paged by cursor and filtered by type and time.

use super::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
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
pub(super) struct AuditPage {
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
pub(super) async fn audit(
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
