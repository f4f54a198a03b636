//! The admin endpoint on `[admin] listen`: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` answers 200 while the process serves at all: a liveness probe.
//! - `/readyz` answers 200 when every part of the daemon ([`crate::parts::Parts`]: each
//!   source, each sink, the embedded registry) is running, 503 otherwise; the JSON body names
//!   each part, its state and its error, so the answer to "why not ready" is in the probe.
//! - `/metrics` is the Prometheus (OpenMetrics) text of [`crate::metrics`].
//!
//! The listener is bound by the daemon before any part starts, so an address in use is a
//! named error at start rather than a missing probe later. The server is plain HTTP/1.1: it
//! exposes no data beyond states and counters, and belongs on a private interface.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::parts::{PartState, Parts};

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The listen address could not be bound.
    #[error("admin.listen = \"{address}\": cannot listen: {source}. hint: another process (or another walcast) uses this port; set [admin] listen to a free address")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Binds `address` (`[admin] listen`).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind { address, source })
}

/// Serves the endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, parts: Parts, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let parts = parts.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let parts = parts.clone();
                async move { Ok::<_, Infallible>(respond(&parts, &req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin: connection ended with an error");
            }
        });
    }
}

fn respond(parts: &Parts, req: &hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let (ready, body) = readiness(parts);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body.to_string())
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::get().render(parts),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz or /metrics\n",
        ),
    }
}

/// Whether every part runs, and the body of `/readyz`:
/// `{"ready": bool, "parts": [{"part", "state", "error"}]}`.
fn readiness(parts: &Parts) -> (bool, serde_json::Value) {
    let parts = parts.snapshot();
    let ready = !parts.is_empty() && parts.iter().all(|(_, state)| *state == PartState::Running);
    let list: Vec<_> = parts
        .iter()
        .map(|(name, state)| {
            let (state, error) = state.describe();
            serde_json::json!({ "part": name, "state": state, "error": error })
        })
        .collect();
    (ready, serde_json::json!({ "ready": ready, "parts": list }))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_part_yet_is_not_ready() {
        assert!(!readiness(&Parts::default()).0);
    }

    #[test]
    fn ready_only_when_every_part_runs() {
        let parts = Parts::default();
        parts.set("source users", PartState::Running);
        parts.set("sink cache", PartState::Running);
        assert!(readiness(&parts).0);
        parts.set("sink cache", PartState::Failed("table gone".into()));
        let (ready, body) = readiness(&parts);
        assert!(!ready);
        assert_eq!(body["parts"][1]["part"], "sink cache");
        assert_eq!(body["parts"][1]["state"], "failed");
        assert_eq!(body["parts"][1]["error"], "table gone");
        assert_eq!(body["parts"][0]["error"], serde_json::Value::Null);
    }
}
