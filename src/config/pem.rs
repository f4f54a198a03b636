//! PEM files named in the configuration (CA bundles, client certificates and keys), read
//! and checked when the configuration is validated, so a wrong file is refused before
//! anything connects. The TLS clients read them through here too.

use std::path::Path;

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
