//! The checks of `[kafka]` (brokers, properties, TLS and SASL) and `[registry]` (URL,
//! credentials, TLS files): the services every part shares.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use super::*;

impl Validator<'_> {
    pub(super) fn kafka(&mut self, config: &mut Config, base: &Path) {
        let kafka = &mut config.kafka;
        self.kafka_security(kafka, base);
        if kafka.brokers.split(',').any(|b| !is_host_port(b.trim())) {
            self.push(
                "kafka.brokers",
                format!(
                    "found \"{}\", expected a comma-separated list of host:port",
                    kafka.brokers
                ),
            );
        }
        if !(1..=600_000).contains(&kafka.transaction_interval_ms) {
            self.push(
                "kafka.transaction_interval_ms",
                format!(
                    "found {}, expected between 1 and 600000 ms",
                    kafka.transaction_interval_ms
                ),
            );
        }
        for (name, value) in &kafka.properties {
            let key = format!("kafka.properties.\"{name}\"");
            match name.as_str() {
                "bootstrap.servers" | "metadata.broker.list" => {
                    self.push(key, "set kafka.brokers instead of this property")
                }
                "transactional.id" => self.push(key, "walcast derives transactional ids itself; set kafka.exactly_once = true instead"),
                "enable.idempotence" | "acks" | "request.required.acks"
                    if !matches!(value.to_string().as_str(), "true" | "all" | "-1") =>
                {
                    self.push(key, format!("found {value}, but walcast never loses an acknowledged change: idempotence stays on and acks stays \"all\"; remove this property"))
                }
                _ => {}
            }
        }
        let mut resolved = BTreeMap::new();
        for (name, var) in &kafka.properties_env {
            let key = format!("kafka.properties_env.\"{name}\"");
            if let Some(value) = self.secret(
                &key,
                var,
                &format!("the value of librdkafka property {name}"),
            ) {
                resolved.insert(name.clone(), crate::config::Secret::new(value));
            }
        }
        kafka.resolved_properties_env = resolved;
        let mut topic_checks = vec![(
            "kafka.topic_defaults".to_string(),
            kafka.topic_defaults.partitions,
            kafka.topic_defaults.replication_factor,
        )];
        for (name, o) in &kafka.topic {
            if let Err(why) = check_topic_name(name) {
                self.push(format!("kafka.topic.\"{name}\""), why);
            }
            topic_checks.push((
                format!("kafka.topic.\"{name}\""),
                o.partitions.unwrap_or(1),
                o.replication_factor.unwrap_or(1),
            ));
        }
        for (key, partitions, replication) in topic_checks {
            if partitions < 1 {
                self.push(
                    format!("{key}.partitions"),
                    format!("found {partitions}, expected an integer of at least 1"),
                );
            }
            if replication < 1 {
                self.push(
                    format!("{key}.replication_factor"),
                    format!("found {replication}, expected an integer of at least 1"),
                );
            }
        }
    }

    /// TLS and SASL through librdkafka's own properties: values walcast's librdkafka can
    /// use, files that exist (relative paths resolved against the file's directory), and
    /// no secret written in the file.
    pub(super) fn kafka_security(&mut self, kafka: &mut crate::config::KafkaConfig, base: &Path) {
        let value = |kafka: &crate::config::KafkaConfig, name: &str| {
            kafka
                .properties
                .get(name)
                .map(|v| v.to_string().to_ascii_lowercase())
        };
        for name in kafka.properties.keys() {
            if SECRET_PROPERTIES.contains(&name.as_str()) {
                self.push(
                    format!("kafka.properties.\"{name}\""),
                    format!("is a secret, and secrets never sit in the file; name the environment variable holding it in [kafka.properties_env] instead (\"{name}\" = \"KAFKA_{}\")", name.replace('.', "_").to_ascii_uppercase()),
                );
            }
        }
        // Sinks assign what a rebalance hands them whole (eager protocol): under an
        // incremental one they would read nothing.
        if value(kafka, "partition.assignment.strategy").is_some_and(|s| s.contains("cooperative"))
        {
            self.push(
                "kafka.properties.\"partition.assignment.strategy\"",
                "walcast's sinks use an eager assignment strategy (range or roundrobin); drop cooperative-sticky".to_string(),
            );
        }
        if value(kafka, "group.protocol").is_some_and(|p| p != "classic") {
            self.push(
                "kafka.properties.\"group.protocol\"",
                "walcast's sinks use the classic group protocol; drop the key or set \"classic\""
                    .to_string(),
            );
        }
        let protocol = value(kafka, "security.protocol");
        if let Some(p) = &protocol {
            if !matches!(
                p.as_str(),
                "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
            ) {
                self.push(
                    "kafka.properties.\"security.protocol\"",
                    format!(
                        "found \"{p}\", expected one of: plaintext, ssl, sasl_plaintext, sasl_ssl"
                    ),
                );
            }
        }
        let sasl = protocol.as_deref().is_some_and(|p| p.starts_with("sasl_"));
        let known = protocol
            .as_deref()
            .is_none_or(|p| matches!(p, "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"));
        for name in ["sasl.mechanism", "sasl.mechanisms"] {
            let Some(m) = kafka.properties.get(name).map(|v| v.to_string()) else {
                continue;
            };
            let key = format!("kafka.properties.\"{name}\"");
            match m.to_ascii_uppercase().as_str() {
                "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" | "OAUTHBEARER" => {}
                "GSSAPI" => self.push(key.clone(), "found \"GSSAPI\", but walcast is built without Kerberos; expected one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"),
                _ => self.push(key.clone(), format!("found \"{m}\", expected one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER")),
            }
            if !sasl && known {
                self.push(key, "has no effect unless \"security.protocol\" is \"sasl_ssl\" (or \"sasl_plaintext\"); set that too");
            }
        }
        if sasl
            && kafka.properties.contains_key("sasl.username")
            && !kafka.properties_env.contains_key("sasl.password")
        {
            self.push(
                "kafka.properties_env.\"sasl.password\"",
                "required key is missing; \"sasl.username\" needs its password from an environment variable (\"sasl.password\" = \"KAFKA_SASL_PASSWORD\")",
            );
        }
        for name in [
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
        ] {
            let Some(path) = kafka.properties.get(name).map(|v| v.to_string()) else {
                continue;
            };
            if name == "ssl.ca.location" && path == "probe" {
                continue;
            }
            let resolved = base.join(&path);
            if !resolved.exists() {
                self.push(
                    format!("kafka.properties.\"{name}\""),
                    format!(
                        "file {path} does not exist (looked for {}); expected a PEM file",
                        resolved.display()
                    ),
                );
            } else {
                kafka.properties.insert(
                    name.to_string(),
                    crate::config::PropertyValue::String(resolved.display().to_string()),
                );
            }
        }
    }

    /// A PEM file named at `key`, resolved against the file's directory and read: an issue
    /// if it is missing or unreadable.
    pub(super) fn pem_file(
        &mut self,
        key: &str,
        file: &mut Option<std::path::PathBuf>,
        base: &Path,
    ) {
        let Some(path) = file.as_ref() else { return };
        let resolved = base.join(path);
        if !resolved.is_file() {
            self.push(
                key,
                format!(
                    "file {} does not exist (looked for {}); expected a PEM file",
                    path.display(),
                    resolved.display()
                ),
            );
            *file = None;
        } else {
            *file = Some(resolved);
        }
    }

    pub(super) fn registry(&mut self, config: &mut Config, base: &Path) {
        let registry = &mut config.registry;
        let uri = hyper::Uri::from_str(&registry.url).ok();
        match uri.as_ref().and_then(|u| u.scheme_str().zip(u.host())) {
            Some(("http" | "https", _)) => {}
            Some((scheme, _)) => self.push(
                "registry.url",
                format!(
                    "found \"{}\" with scheme {scheme}, which walcast cannot use; expected an http:// or https:// URL",
                    registry.url
                ),
            ),
            None => self.push(
                "registry.url",
                format!(
                    "found \"{}\", expected an http:// or https:// URL",
                    registry.url
                ),
            ),
        }
        if uri
            .as_ref()
            .and_then(|u| u.authority())
            .is_some_and(|a| a.as_str().contains('@'))
        {
            self.push(
                "registry.url",
                "holds credentials, and secrets never sit in the file; remove them from the URL and set registry.username_env and registry.password_env",
            );
        }
        let https = registry.url.starts_with("https://");
        self.pem_file("registry.tls_ca_file", &mut registry.tls_ca_file, base);
        self.pem_file(
            "registry.tls_client_cert_file",
            &mut registry.tls_client_cert_file,
            base,
        );
        self.pem_file(
            "registry.tls_client_key_file",
            &mut registry.tls_client_key_file,
            base,
        );
        self.pem_file(
            "registry.server_tls_cert_file",
            &mut registry.server_tls_cert_file,
            base,
        );
        self.pem_file(
            "registry.server_tls_key_file",
            &mut registry.server_tls_key_file,
            base,
        );
        for (cert_key, key_key, cert, key) in [
            (
                "registry.tls_client_cert_file",
                "registry.tls_client_key_file",
                &registry.tls_client_cert_file,
                &registry.tls_client_key_file,
            ),
            (
                "registry.server_tls_cert_file",
                "registry.server_tls_key_file",
                &registry.server_tls_cert_file,
                &registry.server_tls_key_file,
            ),
        ] {
            match (cert, key) {
                (Some(c), Some(k)) => {
                    if let Err(why) = crate::config::pem::read_identity(c, k) {
                        self.push(key_key, why);
                    }
                }
                (Some(_), None) => self.push(
                    key_key,
                    format!("required key is missing; {cert_key} needs its private key"),
                ),
                (None, Some(_)) => self.push(
                    cert_key,
                    format!("required key is missing; {key_key} needs its certificate"),
                ),
                (None, None) => {}
            }
        }
        if let Some(ca) = &registry.tls_ca_file {
            if let Err(why) = crate::config::pem::read_certificates(ca) {
                self.push("registry.tls_ca_file", why);
            }
        }
        if !https {
            for (key, set) in [
                ("registry.tls_ca_file", registry.tls_ca_file.is_some()),
                (
                    "registry.tls_client_cert_file",
                    registry.tls_client_cert_file.is_some(),
                ),
                (
                    "registry.server_tls_cert_file",
                    registry.server_tls_cert_file.is_some(),
                ),
            ] {
                if set {
                    self.push(
                        key,
                        "is only used with an https:// registry.url; use https, or remove this key",
                    );
                }
            }
        } else if registry.embedded && registry.server_tls_cert_file.is_none() {
            self.push(
                "registry.server_tls_cert_file",
                "required key is missing; the embedded registry serves the https:// registry.url, so it needs a certificate (and registry.server_tls_key_file)",
            );
        }
        if let Err(why) = check_topic_name(&registry.topic) {
            self.push("registry.topic", why);
        }
        if registry.timeout_ms == 0 {
            self.push(
                "registry.timeout_ms",
                "found 0, expected a timeout of at least 1 ms",
            );
        }
        registry.credentials = match (&registry.username_env, &registry.password_env) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                let user = self.secret("registry.username_env", u, "the registry user name");
                let password = self.secret("registry.password_env", p, "the registry password");
                user.zip(password.map(crate::config::Secret::new))
            }
            (Some(_), None) => {
                self.push(
                    "registry.password_env",
                    "required key is missing; basic auth needs both username_env and password_env",
                );
                None
            }
            (None, Some(_)) => {
                self.push(
                    "registry.username_env",
                    "required key is missing; basic auth needs both username_env and password_env",
                );
                None
            }
        };
    }
}
