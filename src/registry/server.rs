//! HTTP/1.1 plumbing of the registry: accept, authenticate, decode the request, encode the
//! response. Everything the API means lives in [`super::api`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{header, Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::api::{Api, Request};
use super::error::ApiError;
use super::RegistryError;

/// Confluent's response content type.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// Request bodies larger than this are refused.
const MAX_BODY_BYTES: usize = 16 << 20;

/// Serves `api` on `listener` until `shutdown` completes; HTTPS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    auth: Option<String>,
    tls: Option<tokio_native_tls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegistryError> {
    tokio::pin!(shutdown);
    let auth = Arc::new(auth);
    let tls = tls.map(Arc::new);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "registry: accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (api, auth, tls) = (api.clone(), auth.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (api, auth) = (api.clone(), auth.clone());
                async move { Ok::<_, Infallible>(respond(&api, auth.as_deref(), req, peer).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                None => http.serve_connection(TokioIo::new(stream), service).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                    Err(e) => {
                        // A client that does not trust the certificate, or speaks plain HTTP.
                        tracing::info!(%peer, error = %e, "registry: TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "registry: connection ended with an error");
            }
        });
    }
}

async fn respond(
    api: &Api,
    auth: Option<&str>,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let result = async {
        if let Some(expected) = auth {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !given.is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())) {
                return Err(ApiError::unauthorized());
            }
        }
        if matches!(method, Method::POST | Method::PUT) {
            check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
            .to_bytes();
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::new(413, 413, "Request body too large"));
        }
        let request = Request {
            method: method.as_str(),
            path: uri
                .path()
                .split('/')
                .filter(|s| !s.is_empty())
                .map(percent_decode)
                .collect(),
            query: uri.query().map(parse_query).unwrap_or_default(),
            body: &body,
        };
        api.handle(&request).await
    }
    .await;
    let (status, body) = match result {
        Ok(value) => (200, value),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(%peer, %method, %uri, error = %e, "registry request failed");
            }
            (
                e.status,
                serde_json::json!({ "error_code": e.code, "message": e.message }),
            )
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    if status == 401 {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"walcast-registry\""),
        );
    }
    response
}

/// Confluent's content types and plain JSON are accepted; a missing type is taken as JSON.
fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else { return Ok(()) };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/vnd.schemaregistry.v1+json"
        | "application/vnd.schemaregistry+json"
        | "application/json"
        | "application/octet-stream" => Ok(()),
        other => Err(ApiError::new(
            415,
            415,
            format!("HTTP 415 Unsupported Media Type {other}; send application/vnd.schemaregistry.v1+json or application/json"),
        )),
    }
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` in queries is left as is: Confluent clients escape spaces).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares in time that depends only on the lengths, so response timing does not tell how
/// much of a guessed password was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The `Authorization` header value that basic auth with these credentials sends.
pub fn basic_auth_header(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries_are_percent_decoded() {
        assert_eq!(
            percent_decode("users.user-com.acme%2FUser"),
            "users.user-com.acme/User"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        let q = parse_query("permanent=True&deleted=&x=%41");
        assert_eq!(q["permanent"], "True");
        assert_eq!(q["deleted"], "");
        assert_eq!(q["x"], "A");
    }
}
