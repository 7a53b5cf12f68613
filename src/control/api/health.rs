//! Liveness (`/healthz`) and Prometheus figures (`/metrics`).

use super::*;

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "alive, every store writable"),
    (status = 503, description = "alive, a shard's store is failing (a full disk): publishes that need it are refused until it recovers")
), security(()))]
pub(super) async fn healthz(State(ctl): State<Arc<Ctl>>) -> impl IntoResponse {
    let failing = ctl.sys.stores_failing();
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ok", "store": "ok" })))
    } else {
        let body = json!({ "status": "degraded", "store": "failing", "failing_shards": failing });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct ShardLabel {
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct OrgLabel {
    org: String,
}

/// Labels of a per-org, per-quota series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct QuotaLabel {
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
pub(super) async fn metrics(State(ctl): State<Arc<Ctl>>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
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
