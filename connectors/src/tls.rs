//! TLS to the sink stores, on the system's OpenSSL through native-tls: the library the
//! sources, the registry and librdkafka (its `ssl` feature) already use, so every connection
//! walcast makes trusts the same roots the same way.
//!
//! Trust follows the registry's rules: no CA file means the system's roots as OpenSSL finds
//! them (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured); `tls_ca_file` replaces them, so a store
//! behind a private CA is trusted for exactly that CA.
//!
//! A failed handshake that only a configuration change fixes (an untrusted certificate, one
//! that names another host, a server that does not speak TLS) is [`Error::Security`]:
//! permanent, naming the key to set. A handshake cut short stays an I/O error, retried.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;

/// How a connection uses TLS (`tls_mode`), as libpq's `sslmode` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// TLS, without verifying the certificate.
    Require,
    /// TLS, verifying the certificate chain and that it names the host.
    VerifyFull,
}

/// A store connection's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// Whether and how TLS is used.
    pub mode: TlsMode,
    /// PEM file of the certificate authorities trusted instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl TlsSettings {
    /// The connector for these settings; `None` when TLS is disabled.
    pub fn connector(&self) -> Result<Option<native_tls::TlsConnector>, Error> {
        if self.mode == TlsMode::Disable {
            return Ok(None);
        }
        let mut builder = native_tls::TlsConnector::builder();
        if self.mode == TlsMode::VerifyFull {
            if let Some(path) = &self.ca_file {
                builder.disable_built_in_roots(true);
                let certificates = read_certificates(path).map_err(|why| {
                    Error::Security(format!(
                        "tls_ca_file: {why}\n  hint: point tls_ca_file at the PEM file of the CA that signed the server's certificate"
                    ))
                })?;
                for certificate in certificates {
                    builder.add_root_certificate(certificate);
                }
            }
        } else {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| Error::Security(format!("cannot set up TLS: {e}")))
    }
}

/// Every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<native_tls::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    let mut out = Vec::new();
    for block in text.split_inclusive("-----END CERTIFICATE-----") {
        if let Some(start) = block.find("-----BEGIN CERTIFICATE-----") {
            let cert = native_tls::Certificate::from_pem(&block.as_bytes()[start..])
                .map_err(|e| format!("{}: not a valid PEM certificate: {e}", path.display()))?;
            out.push(cert);
        }
    }
    if out.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(out)
}

/// The key that names the CA file, for hints: `tls_ca_file`.
const CA_KEY: &str = "tls_ca_file";

/// What a failed TLS handshake with `store` (e.g. "PostgreSQL") means, when only a
/// configuration change fixes it: the problem and the key to set, as a permanent error.
/// `None` for anything else (a handshake cut short), which the caller keeps transient.
pub fn explain(store: &str, reason: &str, has_ca_file: bool, mode_key: bool) -> Option<Error> {
    // OpenSSL's verify result is the parenthesised tail: "(self-signed certificate …)",
    // which a driver may quote further (mysql_async: "TLS error: `…'").
    let verify = reason
        .trim_end_matches(['\'', '`'])
        .rsplit_once(" (")
        .and_then(|(_, tail)| tail.strip_suffix(')'))
        .unwrap_or("certificate verify failed");
    let skip = if mode_key {
        ", or set tls_mode = \"require\" to encrypt without verifying"
    } else {
        ""
    };
    let (problem, hint) = if verify.contains("hostname mismatch")
        || verify.contains("IP address mismatch")
    {
        (
            format!("the {store} server's TLS certificate does not name the host in url"),
            format!("use in url a host name the certificate lists (its subjectAltName){skip}"),
        )
    } else if reason.contains("certificate verify failed") {
        (
            format!("the {store} server's TLS certificate is not trusted ({verify})"),
            if has_ca_file {
                format!("{CA_KEY} is not the CA that signed the server's certificate; point it at the one that did")
            } else {
                format!("set {CA_KEY} to the PEM file of the CA that signed the server's certificate (or add that CA to SSL_CERT_FILE){skip}")
            },
        )
    } else if reason.contains("wrong version number")
        || reason.contains("packet length too long")
        || reason.contains("does not support TLS")
        || reason.contains("NoClientSslFlagFromServer")
        || reason.contains("not support SSL")
    {
        (
            format!("the {store} server does not accept TLS on this port"),
            if mode_key {
                "turn TLS on in the server, or set tls_mode = \"disable\" (or \"prefer\")"
                    .to_string()
            } else {
                "use a redis:// url, or the server's TLS port".to_string()
            },
        )
    } else if let Some(alert) = reason.find("alert ").map(|at| &reason[at..]) {
        let alert = &alert[..alert.find(':').unwrap_or(alert.len())];
        (
                format!("the {store} server refused the TLS handshake (TLS {alert})"),
                "check the server's TLS settings: it may require a client certificate, which walcast's sinks do not present".to_string(),
            )
    } else {
        return None;
    };
    Some(Error::Security(format!("{problem}\n  hint: {hint}")))
}

/// The failure an authentication error from `store` means: permanent, naming the keys.
pub fn refused_login(store: &str, detail: &str) -> Error {
    Error::Security(format!(
        "the {store} server refused the login ({detail})\n  hint: check the user name in url and the password in the variable password_env names"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_and_mismatched_certificates_name_the_key() {
        let reason = "error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:2092: (unable to get local issuer certificate)";
        assert_eq!(
            explain("PostgreSQL", reason, false, true).unwrap().to_string(),
            "the PostgreSQL server's TLS certificate is not trusted (unable to get local issuer certificate)\n  hint: set tls_ca_file to the PEM file of the CA that signed the server's certificate (or add that CA to SSL_CERT_FILE), or set tls_mode = \"require\" to encrypt without verifying"
        );
        let reason = "error:0A000086:SSL routines::certificate verify failed: (hostname mismatch)";
        assert!(explain("Redis", reason, true, false)
            .unwrap()
            .to_string()
            .starts_with("the Redis server's TLS certificate does not name the host in url"));
        assert!(explain(
            "Redis",
            "Connection reset by peer (os error 104)",
            true,
            false
        )
        .is_none());
    }

    #[test]
    fn settings_never_print_the_password() {
        let settings = crate::TableSettings {
            url: "postgres://walcast:s3cret-pw@db:5432/orders".into(),
            table: "t".into(),
            key: vec!["id".into()],
            columns: Default::default(),
            fields: None,
            consumer: "c".into(),
            auto_create: false,
            auto_add_columns: false,
            tls_mode: None,
            tls_ca_file: None,
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
        assert!(
            debug.contains("postgres://walcast:***@db:5432/orders"),
            "{debug}"
        );
        let target =
            crate::mysql::Target::new("mysql://walcast:s3cret-pw@db/shipping", None, None).unwrap();
        assert!(!format!("{target:?}").contains("s3cret-pw"));
        let target = crate::redis::Target::new("rediss://walcast:s3cret-pw@db:6380", None).unwrap();
        assert!(!format!("{target:?}").contains("s3cret-pw"));
    }
}
