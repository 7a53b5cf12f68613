//! The admin API's HTTP/1 server: hyper driven directly, for the limits `axum::serve` lacks.
//! A request head must arrive within [`HEAD_TIMEOUT`] (also the next one on a kept-alive
//! connection), and at most [`CONNECTIONS_MAX`] connections are open at once: more are closed
//! at accept, so unauthenticated idle sockets cannot take the descriptors the MQTT listeners
//! share. Bodies have their own time and size limits ([`read_body`]), and one bearer key has
//! at most [`PER_KEY_INFLIGHT_MAX`] requests in progress ([`KeyGate`]), so one tenant's admin
//! load cannot take the control plane from the others.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Time for a whole request head (and for the first byte of the next on a kept-alive one).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections open at once.
pub const CONNECTIONS_MAX: usize = 128;
/// Requests one bearer key may have in progress; more answer 429 `busy`.
pub const PER_KEY_INFLIGHT_MAX: u32 = 4;

/// Requests in progress per bearer key (by a keyed hash: no secret is kept).
#[derive(Clone, Default)]
pub(crate) struct KeyGate {
    inflight: Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>,
    hasher: ahash::RandomState,
}

/// Releases a request's place in its key's count, also when the request is dropped.
struct Place {
    gate: KeyGate,
    key: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut m = self.gate.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Middleware: at most [`PER_KEY_INFLIGHT_MAX`] requests per bearer key at once (429 beyond).
pub(crate) async fn per_key(gate: KeyGate, req: Request, next: Next) -> Response {
    let Some(auth) = req.headers().get(axum::http::header::AUTHORIZATION) else {
        return next.run(req).await;
    };
    let key = gate.hasher.hash_one(auth.as_bytes());
    {
        let mut m = gate.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= PER_KEY_INFLIGHT_MAX {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "too many requests in progress for this key; retry",
            );
        }
        *n += 1;
    }
    let _place = Place { gate, key };
    next.run(req).await
}

/// Serves `app` on `l` until the listener fails.
pub(crate) async fn serve(l: tokio::net::TcpListener, app: axum::Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut refused_logged = 0u64;
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::warn!(error = %e, "admin API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let now = crate::clock::unix_ms() / 1000;
            if now != refused_logged {
                refused_logged = now;
                tracing::info!(%peer, max = CONNECTIONS_MAX, "admin API connection refused: too many open");
            }
            drop(stream);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin API connection ended");
            }
            drop(permit);
        });
    }
}

/// Middleware: reads the whole body within [`BODY_TIMEOUT`] and `limit` bytes before the
/// handler runs (408 / 413 as JSON otherwise), on every route.
pub(crate) async fn read_body(limit: usize, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => error(StatusCode::REQUEST_TIMEOUT, "request_timeout", "request body not received in time"),
        Ok(Err(_)) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("request body over {limit} bytes"),
        ),
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, axum::Json(body)).into_response()
}
