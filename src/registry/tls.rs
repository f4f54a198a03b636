//! HTTPS for the registry, client and server, on native-tls (OpenSSL on Linux).
//!
//! One TLS library: native-tls is what the source's TLS already uses, and librdkafka's `ssl`
//! feature links the same OpenSSL, so every connection walcast makes trusts the same roots
//! the same way. No CA configured means the system's roots as OpenSSL finds them, with
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` honoured as OpenSSL and curl do. `tls_ca_file` replaces
//! them (like curl's `--cacert` and librdkafka's `ssl.ca.location`), so a registry behind a
//! private CA is trusted for exactly that CA.
//!
//! The client's connector is ours rather than a crate's so that a TLS failure comes back as a
//! typed [`HandshakeError`]: [`classify`] finds it in hyper's error chain and the client turns
//! it into a permanent error naming the key to fix, where an I/O error stays transient.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_native_tls::TlsStream;

/// A TLS handshake with the registry failed; carries OpenSSL's reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandshakeError(pub String);

/// Builds the client's TLS settings: trusted roots and an optional client certificate.
pub fn client_connector(
    ca_file: Option<&Path>,
    client_identity: Option<(&Path, &Path)>,
) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(ca) = ca_file {
        builder.disable_built_in_roots(true);
        for cert in read_certificates(ca)? {
            builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = client_identity {
        builder.identity(read_identity(cert, key)?);
    }
    builder.build().map_err(|e| e.to_string())
}

/// The server's TLS settings, from a certificate chain and its private key (both PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_native_tls::TlsAcceptor, String> {
    let identity = read_identity(cert, key)?;
    native_tls::TlsAcceptor::new(identity)
        .map(tokio_native_tls::TlsAcceptor::from)
        .map_err(|e| e.to_string())
}

pub use crate::config::pem::{read_certificates, read_identity};

/// Connects `http://` plainly and `https://` through TLS.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: tokio_native_tls::TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// A connector using `tls` for `https://` URLs.
    pub fn new(tls: native_tls::TlsConnector) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        Self {
            http,
            tls: tls.into(),
        }
    }
}

/// A connection to the registry, TLS or not.
#[derive(Debug)]
pub enum Stream {
    /// `http://`.
    Plain(TokioIo<TcpStream>),
    /// `https://`.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let connecting = self.http.call(uri);
        let connector = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await.map_err(BoxError::from)?;
            if !tls {
                return Ok(Stream::Plain(tcp));
            }
            let stream = connector
                .connect(&host, tcp.into_inner())
                .await
                .map_err(|e| BoxError::from(HandshakeError(e.to_string())))?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS alert with which a server refused the handshake (`alert bad certificate`), if it
/// is one that only a configuration change answers. With TLS 1.3 a server checks the
/// client's certificate after the client has finished its part of the handshake, so a
/// missing or unknown client certificate shows up on the first read, as an I/O error
/// carrying the alert, not as a failed handshake. librdkafka's messages carry the same text.
pub fn definite_alert(reason: &str) -> Option<&str> {
    const DEFINITE: [&str; 6] = [
        "alert bad certificate",
        "alert certificate required",
        "alert unknown ca",
        "alert certificate unknown",
        "alert handshake failure",
        "alert access denied",
    ];
    let at = DEFINITE.iter().find_map(|a| reason.find(a))?;
    let rest = &reason[at..];
    Some(&rest[..rest.find(':').unwrap_or(rest.len())])
}

/// What a failed TLS handshake means for the operator: the problem and the key to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed.
    pub problem: String,
    /// The key to fix.
    pub hint: &'static str,
}

/// The definite TLS failure in `error`'s chain, if any, explained for a client configured
/// with (`has_ca_file`, `has_client_cert`). A handshake cut short (the server restarting, a
/// reset) is not definite: it is left to the caller as an ordinary, transient I/O failure.
pub fn classify(
    error: &(dyn std::error::Error + 'static),
    host: &str,
    has_ca_file: bool,
    has_client_cert: bool,
) -> Option<Failure> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(h) = e.downcast_ref::<HandshakeError>() {
            return explain(&h.0, host, has_ca_file, has_client_cert);
        }
        if definite_alert(&e.to_string()).is_some() {
            return explain(&e.to_string(), host, has_ca_file, has_client_cert);
        }
        next = e.source();
    }
    None
}

fn explain(reason: &str, host: &str, has_ca_file: bool, has_client_cert: bool) -> Option<Failure> {
    // OpenSSL's verify result is the parenthesised tail: "(self-signed certificate …)".
    let verify = reason
        .rsplit_once(" (")
        .and_then(|(_, tail)| tail.strip_suffix(')'))
        .unwrap_or("");
    let failure = |problem: String, hint: &'static str| Some(Failure { problem, hint });
    if let Some(alert) = definite_alert(reason) {
        failure(
            format!("the registry refused the TLS handshake (TLS {alert})"),
            if has_client_cert {
                "the registry does not accept registry.tls_client_cert_file; use a certificate signed by a CA it trusts"
            } else {
                "the registry requires a client certificate: set registry.tls_client_cert_file and registry.tls_client_key_file"
            },
        )
    } else if verify.contains("hostname mismatch") || verify.contains("IP address mismatch") {
        failure(
            format!("the registry's certificate does not name {host}"),
            "use in registry.url a host name the certificate lists (its subjectAltName)",
        )
    } else if reason.contains("certificate verify failed") {
        failure(
            format!("certificate not trusted ({verify})"),
            if has_ca_file {
                "registry.tls_ca_file is not the CA that signed the registry's certificate; point it at the one that did"
            } else {
                "set registry.tls_ca_file to the PEM file of the CA that signed the registry's certificate (or add that CA to SSL_CERT_FILE)"
            },
        )
    } else if reason.contains("wrong version number") || reason.contains("packet length too long") {
        failure(
            "the registry does not speak TLS on this port".into(),
            "use an http:// registry.url, or the registry's HTTPS port",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn verify_failures_name_the_ca_key() {
        let f = explain("error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:2092: (self-signed certificate in certificate chain)", "h", false, false).unwrap();
        assert_eq!(
            f.problem,
            "certificate not trusted (self-signed certificate in certificate chain)"
        );
        assert!(f.hint.starts_with("set registry.tls_ca_file"));
        let f = explain("error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:2092: (hostname mismatch)", "h", true, false).unwrap();
        assert_eq!(f.problem, "the registry's certificate does not name h");
        // Cut short: transient, left to the caller.
        assert_eq!(explain("unexpected EOF", "h", true, false), None);
    }
}
