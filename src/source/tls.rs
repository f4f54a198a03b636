//! TLS for both of a source's connections, on the system's OpenSSL (native-tls).
//!
//! Modes follow libpq's `sslmode`: `disable`; `prefer` (TLS when the server offers it, no
//! certificate check; libpq's default); `require` (TLS or nothing, no certificate check);
//! `verify-full` (TLS, the certificate chains to `tls_ca_file` or the system roots, and names
//! the host connected to).

use std::path::PathBuf;

use super::error::SourceError;

pub use crate::config::TlsMode;

/// A source's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// libpq-style `sslmode`: whether TLS is used and whether the certificate is verified.
    pub mode: TlsMode,
    /// PEM file of the certificate authority for `verify-full`; default the system roots.
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

    fn build(&self) -> Result<native_tls::TlsConnector, SourceError> {
        let mut builder = native_tls::TlsConnector::builder();
        if self.mode == TlsMode::VerifyFull {
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    SourceError::setup(
                        format!("cannot read tls_ca_file {}: {e}", path.display()),
                        "point tls_ca_file at the PEM certificate of the server's certificate authority",
                    )
                })?;
                let ca = native_tls::Certificate::from_pem(&pem).map_err(|e| {
                    SourceError::setup(
                        format!("tls_ca_file {} is not a PEM certificate: {e}", path.display()),
                        "point tls_ca_file at the PEM certificate of the server's certificate authority",
                    )
                })?;
                builder.add_root_certificate(ca);
            }
        } else {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        builder.build().map_err(|e| {
            SourceError::setup(
                format!("cannot set up TLS: {e}"),
                "check the system's OpenSSL installation",
            )
        })
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
