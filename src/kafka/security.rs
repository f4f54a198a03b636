//! Reaching the cluster once before anything else: TLS and SASL failures, named.
//!
//! librdkafka treats a failed TLS handshake or a refused SASL login like any broken
//! connection: it reports it through the error callback and reconnects, forever. A producer
//! created on a wrong password therefore never fails; its messages time out one by one while
//! the brokers log a login attempt every few seconds. So every part that talks to Kafka
//! first [`connect`]s: one metadata request under a context that records the first TLS or
//! authentication error. Such an error is definite (the configuration has to change), so it
//! comes back as [`KafkaError::Security`], permanent, with the key to fix; the part stops
//! instead of reconnecting. Anything else (a broker down, a timeout) stays transient.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientContext;

use super::KafkaError;
use crate::config::KafkaConfig;

/// How long a part waits for the cluster at start-up before it counts as unreachable (and
/// retries with backoff).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the brokers said about the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    /// Brokers in the metadata.
    pub brokers: usize,
    /// Topics in the metadata.
    pub topics: usize,
}

/// Records the first security error librdkafka reports, and the last failed connection
/// (which says why the cluster was not reached), and logs the rest at debug level
/// (librdkafka repeats them on every reconnect).
#[derive(Debug, Default, Clone)]
struct Recorder {
    first: Arc<Mutex<Option<(RDKafkaErrorCode, String)>>>,
    last_failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Recorder {
    fn error(&self, error: ClientError, reason: &str) {
        let code = error.rdkafka_error_code();
        tracing::debug!(target: "librdkafka", error = %error, %reason, "librdkafka reported an error");
        if let Some(code) = code.filter(|c| is_security_code(*c, reason)) {
            let mut first = self.first.lock().expect("recorder lock");
            first.get_or_insert_with(|| (code, reason.to_string()));
        }
    }

    /// librdkafka logs every failed connection (facility `FAIL`), sometimes before its error
    /// callback runs and sometimes with a shorter text: either is enough to know.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::trace!(target: "librdkafka", ?level, %fac, %message);
        if fac == "FAIL" {
            *self.last_failure.lock().expect("recorder lock") = Some(librdkafka_reason(message));
        }
        if fac == "FAIL" && is_security_code(RDKafkaErrorCode::BrokerTransportFailure, message) {
            let code = if message.contains("SASL") {
                RDKafkaErrorCode::Authentication
            } else {
                RDKafkaErrorCode::SSL
            };
            let mut first = self.first.lock().expect("recorder lock");
            first.get_or_insert_with(|| (code, message.to_string()));
        }
    }
}

/// Nothing is ever produced; the producer is only a client that serves error callbacks.
impl rdkafka::producer::ProducerContext for Recorder {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Whether librdkafka's error is one only a configuration change answers: a refused SASL
/// login, a certificate that does not verify, a TLS alert refusing the client's certificate,
/// TLS spoken to a plaintext port. A handshake cut short (a broker restarting) is not.
fn is_security_code(code: RDKafkaErrorCode, reason: &str) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed
    ) || reason.contains("certificate verify failed")
        || reason.contains("SASL authentication error")
        || reason.contains("Unsupported SASL mechanism")
        || crate::registry::tls::definite_alert(reason).is_some()
        || (code == RDKafkaErrorCode::SSL
            && (reason.contains("wrong version number")
                || reason.contains("packet length too long")
                || reason.contains("PLAINTEXT")))
}

/// Reaches the cluster with `kafka`'s settings: its size, or why not. Blocking; callers in
/// async code wrap it in `spawn_blocking`.
pub fn connect(kafka: &KafkaConfig, timeout: Duration) -> Result<Cluster, KafkaError> {
    let recorder = Recorder::default();
    let producer: BaseProducer<Recorder> = super::client_config(kafka)
        .create_with_context(recorder.clone())
        .map_err(|source| KafkaError::Client {
            what: "client",
            source,
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = producer
            .client()
            .fetch_metadata(None, remaining.min(Duration::from_millis(100)));
        // Serves the error callbacks of what happened meanwhile. Short slices: a failed TLS
        // handshake takes milliseconds, and librdkafka reconnects after about 100 ms, so the
        // brokers see one or two attempts before this returns.
        producer.poll(Duration::ZERO);
        if let Some((code, reason)) = recorder.first.lock().expect("recorder lock").take() {
            return Err(security_error(kafka, code, &reason));
        }
        match attempt {
            Ok(metadata) => {
                return Ok(Cluster {
                    brokers: metadata.brokers().len(),
                    topics: metadata.topics().len(),
                })
            }
            Err(e) => {
                if let Some(code) = e.rdkafka_error_code().filter(|c| is_security_code(*c, "")) {
                    return Err(security_error(kafka, code, &e.to_string()));
                }
                if Instant::now() >= deadline {
                    // librdkafka's own words on the last failed connection say more than
                    // the timed-out request ("connecting to a PLAINTEXT broker listener?").
                    let last = recorder.last_failure.lock().expect("recorder lock").take();
                    return Err(KafkaError::Connect {
                        brokers: kafka.brokers.clone(),
                        reason: last.unwrap_or_else(|| e.to_string()),
                    });
                }
            }
        }
    }
}

/// [`connect`] from async code.
pub async fn connect_async(kafka: &KafkaConfig, timeout: Duration) -> Result<Cluster, KafkaError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || connect(&kafka, timeout))
        .await
        .map_err(|e| KafkaError::Task {
            what: "the Kafka connection check",
            message: e.to_string(),
        })?
}

/// The error for a definite TLS or SASL failure, with the key that fixes it.
fn security_error(kafka: &KafkaConfig, code: RDKafkaErrorCode, reason: &str) -> KafkaError {
    let mut detail = librdkafka_reason(reason);
    let property = |name: &str| kafka.properties.get(name).map(|v| v.to_string());
    let (problem, hint) = if let Some(alert) = crate::registry::tls::definite_alert(reason) {
        detail = format!("TLS {alert}");
        let hint = match property("ssl.certificate.location") {
            Some(cert) => format!("the brokers do not accept [kafka.properties] \"ssl.certificate.location\" = \"{cert}\"; use a certificate signed by a CA their truststore holds"),
            None => "the brokers require a client certificate: set [kafka.properties] \"ssl.certificate.location\" and \"ssl.key.location\" (a key password through [kafka.properties_env] \"ssl.key.password\")".to_string(),
        };
        ("the brokers refused the TLS handshake", hint)
    } else if code == RDKafkaErrorCode::SSL || reason.contains("SSL handshake") {
        if detail.contains("certificate verify failed") {
            // librdkafka words this differently from one attempt to the next.
            detail = "certificate verify failed".to_string();
            let hint = match property("ssl.ca.location") {
                Some(ca) => format!("[kafka.properties] \"ssl.ca.location\" = \"{ca}\" is not the CA that signed the brokers' certificates; point it at the one that did"),
                None => "set [kafka.properties] \"ssl.ca.location\" to the PEM file of the CA that signed the brokers' certificates (or add that CA to SSL_CERT_FILE)".to_string(),
            };
            ("the brokers' TLS certificate is not trusted", hint)
        } else if detail.contains("PLAINTEXT") || detail.contains("wrong version number") {
            (
                "the brokers do not speak TLS on this port",
                "set [kafka.properties] \"security.protocol\" to \"plaintext\" or \"sasl_plaintext\", or point kafka.brokers at the brokers' TLS listener".to_string(),
            )
        } else {
            (
                "the TLS handshake with the brokers failed",
                "check the ssl.* properties in [kafka.properties]".to_string(),
            )
        }
    } else if detail.contains("Unsupported SASL mechanism") {
        (
            "the brokers do not offer this SASL mechanism",
            "set [kafka.properties] \"sasl.mechanism\" to one the brokers list".to_string(),
        )
    } else {
        let mechanism = property("sasl.mechanism")
            .or_else(|| property("sasl.mechanisms"))
            .unwrap_or_else(|| "GSSAPI".into());
        let user = property("sasl.username").unwrap_or_default();
        (
            "the brokers refused the SASL login",
            format!("check [kafka.properties] \"sasl.username\" (\"{user}\"), \"sasl.mechanism\" ({mechanism}) and the password in the variable [kafka.properties_env] \"sasl.password\" names"),
        )
    };
    KafkaError::Security {
        brokers: kafka.brokers.clone(),
        problem: problem.to_string(),
        detail,
        hint,
    }
}

/// librdkafka's reason without what changes from one attempt to the next: the broker
/// prefix (`sasl_ssl://host:port/bootstrap: `) and the timing suffix (`(after 3ms in state
/// SSL_HANDSHAKE)`), so the message is the same every time.
fn librdkafka_reason(reason: &str) -> String {
    let mut text = reason.trim();
    // Log lines carry the thread too: `[thrd:sasl_ssl://h:p/bootstrap]: sasl_ssl://h:p/…: `.
    while let Some((prefix, rest)) = text.split_once(": ") {
        let address =
            prefix.contains("://") || prefix.starts_with("[thrd:") || prefix.contains('/');
        if address && !prefix.contains(' ') {
            text = rest;
        } else {
            break;
        }
    }
    let mut text = text.to_string();
    if let Some(at) = text.rfind(" (after ") {
        if text.ends_with(')') && text[at..].contains(" in state ") {
            text.truncate(at);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::librdkafka_reason;

    #[test]
    fn reasons_lose_broker_and_timing() {
        assert_eq!(
            librdkafka_reason("sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 5ms in state AUTH_REQ)"),
            "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
        );
        assert_eq!(
            librdkafka_reason("[thrd:sasl_ssl://h:1/bootstrap]: sasl_ssl://h:1/bootstrap: SSL handshake failed: x (after 3ms in state SSL_HANDSHAKE, 1 identical error(s) suppressed)"),
            "SSL handshake failed: x"
        );
        assert_eq!(librdkafka_reason("plain words"), "plain words");
        assert_eq!(
            librdkafka_reason("[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)"),
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        );
        assert_eq!(
            crate::registry::tls::definite_alert("ssl://h:1/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42 (after 0ms in state APIVERSION_QUERY)"),
            Some("alert bad certificate")
        );
        assert_eq!(
            crate::registry::tls::definite_alert("SSL routines::unexpected eof while reading"),
            None
        );
    }
}
