//! PEM files named in the configuration (CA bundles, client certificates and keys), read
//! and checked when the configuration is validated, so a wrong file is refused before
//! anything connects. The TLS clients read them through here too.

use std::path::Path;

/// Every certificate of a PEM file (the sinks' connectors read their CA files the same way).
pub use connectors::tls::read_certificates;

/// A certificate chain (PEM) and its unencrypted PKCS#8 private key (PEM).
pub fn read_identity(cert: &Path, key: &Path) -> Result<native_tls::Identity, String> {
    let chain = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    if !key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err(format!(
            "{} is not an unencrypted PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); convert it with: openssl pkcs8 -topk8 -nocrypt -in {} -out KEY.pem",
            key.display(),
            key.display()
        ));
    }
    native_tls::Identity::from_pkcs8(&chain, &key_pem).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and key: {e}",
            cert.display(),
            key.display()
        )
    })
}
