//! ACL v2 policy, quotas, and the REST publish bridge.

use super::*;

fn policy_error(e: crate::acl::PolicyError) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string())
}

/// The org's quota limits (`null`: unlimited) and its usage now.
#[utoipa::path(get, path = "/v2/quotas", responses((status = 200, description = "{org, limits, usage}")))]
pub(super) async fn get_quotas(
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
pub(super) async fn put_quotas(
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
pub(super) async fn get_acl(
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
pub(super) async fn put_acl(
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
pub(super) async fn validate_acl(
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
pub(super) struct SimulateBody {
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
pub(super) async fn simulate_acl(
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
pub(super) struct PublishBody {
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
pub(super) async fn rest_publish(
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
pub(super) async fn diff_acl(
    State(ctl): State<Arc<Ctl>>,
    headers: HeaderMap,
    Query(q): Query<OrgQuery>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let (_, org) = scope(&ctl, &headers, &q)?;
    let doc: serde_json::Value = body(b, false)?;
    let policy = Arc::new(crate::acl::Policy::from_value(doc).map_err(policy_error)?);
    let org: Arc<str> = org.into();
    let mut removed = ctl
        .ask_shards(|tx| ShardCommand::DiffPolicy { org: org.clone(), policy: policy.clone(), reply: tx })
        .await
        .concat();
    removed.sort();
    let removed: Vec<_> = removed.into_iter().map(|(c, f)| json!({ "client_id": c, "filter": f })).collect();
    Ok(Json(json!({ "removed": removed })))
}
