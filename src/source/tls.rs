//! TLS for both of a source's connections, on the system's OpenSSL (native-tls).
//!
//! Modes follow libpq's `sslmode`: `disable`; `prefer` (TLS when the server offers it, no
//! certificate check; libpq's default); `require` (TLS or nothing, no certificate check);
//! `verify-full` (TLS, the certificate chains to `tls_ca_file` or, without it, the system's
//! roots, and names the host connected to). As for the sinks and the registry, `tls_ca_file`
//! replaces the system's roots (every certificate in it is trusted): a database behind a
//! private CA is trusted for exactly that CA.

use std::path::PathBuf;

use super::error::SourceError;

pub use crate::config::TlsMode;

/// A source's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// libpq-style `sslmode`: whether TLS is used and whether the certificate is verified.
    pub mode: TlsMode,
    /// PEM file of the certificate authorities trusted for `verify-full`, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// The connector for this mode; `None` when TLS is disabled. Built once per settings:
    /// building one loads the system's trusted roots, which takes tens of milliseconds, and a
    /// source connects twice per start and again on every reconnect.
    pub fn connector(&self) -> Result<Option<native_tls::TlsConnector>, SourceError> {
        if self.mode == TlsMode::Disable {
            return Ok(None);
        }
        static BUILT: std::sync::Mutex<Vec<(TlsSettings, native_tls::TlsConnector)>> =
            std::sync::Mutex::new(Vec::new());
        let mut built = BUILT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, connector)) = built.iter().find(|(s, _)| s == self) {
            return Ok(Some(connector.clone()));
        }
        let connector = self.build()?;
        built.push((self.clone(), connector.clone()));
        Ok(Some(connector))
    }

    /// The sinks' connector (one trust rule for every store walcast connects to).
    fn build(&self) -> Result<native_tls::TlsConnector, SourceError> {
        let settings = connectors::tls::TlsSettings {
            mode: self.mode,
            ca_file: self.ca_file.clone(),
        };
        match settings.connector() {
            Ok(Some(connector)) => Ok(connector),
            Ok(None) => unreachable!("connector() returns None only when TLS is disabled"),
            Err(e) => Err(SourceError::setup(
                e.to_string()
                    .split("\n  hint:")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                "point tls_ca_file at the PEM file of the certificate authority that signed the server's certificate",
            )),
        }
    }

    /// tokio-postgres's mode for the catalog connection.
    pub fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyFull => SslMode::Require,
        }
    }

    /// Whether the server must agree to TLS.
    pub fn required(&self) -> bool {
        matches!(self.mode, TlsMode::Require | TlsMode::VerifyFull)
    }
}

/// The network failure under a failed TLS handshake, if that is what it was: the peer reset
/// or closed the connection, or it timed out. Such a handshake is worth retrying (a
/// flapping path, a server restarting); any other failure (an untrusted certificate, a name
/// that does not match, a refused protocol) stays until the configuration changes.
pub(crate) fn network_cause(error: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    use std::io::ErrorKind::*;
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | TimedOut
            ) {
                return Some(std::io::Error::new(io.kind(), error.to_string()));
            }
        }
        cause = e.source();
    }
    // OpenSSL reports a peer that hung up mid-handshake as an EOF without an io::Error, in
    // a cause of the error rather than its own text.
    let text = walcast_text::describe(error);
    [
        "Broken pipe",
        "Connection reset",
        "unexpected EOF",
        "unexpected eof",
    ]
    .iter()
    .any(|needle| text.contains(needle))
    .then(|| std::io::Error::new(UnexpectedEof, text))
}

#[cfg(test)]
mod network_cause_tests {
    use super::network_cause;

    #[test]
    fn a_reset_during_the_handshake_is_a_network_failure_and_a_bad_certificate_is_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert!(network_cause(&reset).is_some());
        let pipe = std::io::Error::other(
            "error performing TLS handshake: Broken pipe (os error 32) (unable to get local issuer certificate)",
        );
        assert!(network_cause(&pipe).is_some());
        #[derive(Debug)]
        struct Handshake(std::io::Error);
        impl std::fmt::Display for Handshake {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error performing TLS handshake")
            }
        }
        impl std::error::Error for Handshake {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let eof = Handshake(std::io::Error::other("unexpected EOF"));
        assert!(network_cause(&eof).is_some(), "an EOF in a cause");
        let untrusted = std::io::Error::other(
            "error performing TLS handshake: certificate verify failed (unable to get local issuer certificate)",
        );
        assert!(network_cause(&untrusted).is_none());
    }
}
