//! Live connections: list, disconnect.

use super::*;

/// Lists the org's live connections, from every shard.
#[utoipa::path(get, path = "/v2/sessions", responses((status = 200, description = "live connections")))]
pub(super) async fn list_sessions(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let org: Arc<str> = org.into();
    let mut all: Vec<SessionInfo> =
        ctl.ask_shards(|tx| ShardCommand::Sessions { org: org.clone(), reply: tx }).await.concat();
    all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    Ok(Json(json!({ "sessions": all })))
}

/// Disconnects the live connection with this client id (5.0: DISCONNECT 0x98).
#[utoipa::path(delete, path = "/v2/sessions/{client_id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn disconnect_session(
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
