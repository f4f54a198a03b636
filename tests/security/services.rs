//! Spec: Kafka over SASL_SSL and the registry over HTTPS with basic auth, on real servers
//! (the stack's SASL_SSL listener, walcast's own registry serving HTTPS). A wrong password
//! or an untrusted certificate stops walcast with a named, permanent error: nothing is
//! published, the server sees a bounded number of attempts, and no secret is ever printed.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, Setup};
use crate::support::{free_port, unique, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const REGISTRY_USER: &str = "schema-admin";
const REGISTRY_PASSWORD: &str = "registry-secret-5b1e";

/// `[kafka.properties]` for the stack's SASL_SSL listener, trusting `ca`; the password comes
/// from the environment variable KAFKA_PASSWORD.
fn sasl_properties(ca: &Path) -> String {
    let sasl = &Stack::get().kafka_sasl;
    format!(
        "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"{}\"\n\"sasl.username\" = \"{}\"\n\"ssl.ca.location\" = \"{}\"\n",
        sasl.mechanism,
        sasl.username,
        ca.display()
    )
}

/// Rewrites the daemon's `[kafka]` section for SASL_SSL (`brokers` may be a proxy).
fn use_sasl(daemon: &Daemon, brokers: &str, ca: &Path) {
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    let text = text
        .replacen(
            &format!("brokers = \"{}\"", daemon.brokers),
            &format!("brokers = \"{brokers}\""),
            1,
        )
        .replacen(
            "[kafka.properties]\n",
            &format!("[kafka.properties]\n{}", sasl_properties(ca)),
            1,
        )
        .replacen(
            "\n[registry]\n",
            "\n[kafka.properties_env]\n\"sasl.password\" = \"KAFKA_PASSWORD\"\n\n[registry]\n",
            1,
        );
    std::fs::write(&daemon.config, text).unwrap();
}

/// A TCP proxy to `target` that counts the connections made through it.
struct CountingProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(target: String) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingProxy { port, connections }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// `walcast registry` serving HTTPS with basic auth, storing in a topic of its own on the
/// stack's plaintext listener.
struct HttpsRegistry {
    url: String,
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HttpsRegistry {
    async fn start() -> HttpsRegistry {
        let stack = Stack::get();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("registry.toml");
        std::fs::write(
            &config,
            format!(
                r#"[kafka]
brokers = "{brokers}"
[registry]
url = "https://127.0.0.1:{port}"
topic = "_schemas_{topic}"
username_env = "REGISTRY_USER"
password_env = "REGISTRY_PASSWORD"
server_tls_cert_file = "{cert}"
server_tls_key_file = "{key}"
"#,
                brokers = stack.kafka_brokers,
                topic = unique("https"),
                cert = stack.kafka_sasl.server_cert.display(),
                key = stack.kafka_sasl.server_key.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["registry", "--config"])
            .arg(&config)
            .env("REGISTRY_USER", REGISTRY_USER)
            .env("REGISTRY_PASSWORD", REGISTRY_PASSWORD)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = HttpsRegistry {
            url: format!("https://127.0.0.1:{port}"),
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while registry.curl_status("/subjects", true) != "200" {
            assert!(
                Instant::now() < deadline,
                "the HTTPS registry did not answer within 60s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        registry
    }

    /// The HTTP status curl gets for `path`, trusting the stack's CA.
    fn curl_status(&self, path: &str, with_auth: bool) -> String {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&Stack::get().kafka_sasl.ca);
        if with_auth {
            curl.args(["-u", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")]);
        }
        let out = curl.arg(format!("{}{path}", self.url)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for HttpsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the daemon's `walcast run` until it exits, which it must within `bound`.
async fn run_until_exit(
    daemon: &Daemon,
    env: &[(&str, &str)],
    bound: Duration,
) -> (Option<i32>, String, Duration) {
    crate::run_until_exit(&daemon.config, env, bound).await
}

/// The last line walcast printed: its error, without the log before it.
fn final_error(stderr: &str) -> String {
    let at = stderr.rfind("\nwalcast: ").map(|i| i + 1).unwrap_or(0);
    stderr[at..].trim_end().to_string()
}

/// Whether `topic` exists on the stack's broker.
fn topic_exists(topic: &str) -> bool {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().kafka_brokers)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata.topics().iter().any(|t| t.name() == topic)
}

/// Reads `n` records of `topic` from the start over the SASL_SSL listener.
fn read_over_sasl(topic: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let sasl = &Stack::get().kafka_sasl;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &sasl.brokers)
        .set("security.protocol", "sasl_ssl")
        .set("sasl.mechanism", &sasl.mechanism)
        .set("sasl.username", &sasl.username)
        .set("sasl.password", &sasl.password)
        .set("ssl.ca.location", sasl.ca.display().to_string())
        .set("group.id", unique("security-read"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while records.len() < n && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let m = message.unwrap();
            records.push((
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    records
}

fn check_connect(config: &Path, env: &[(&str, &str)]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--connect", "--timeout-ms", "8000", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env_remove("SSL_CERT_FILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// The status and detail of the line for `target`.
fn line<'a>(stdout: &'a str, target: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{stdout}"));
    let at = [" OK   ", " FAIL ", " SKIP "]
        .iter()
        .filter_map(|s| line.find(s))
        .min()
        .unwrap_or_else(|| panic!("no status in {line}"));
    line[at + 1..].trim_end()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_flow_through_sasl_ssl_and_an_https_registry_with_basic_auth() {
    let stack = Stack::get();
    let sasl = &stack.kafka_sasl;
    let mut daemon = Daemon::prepare(
        "sec_ok",
        Setup {
            embedded_registry: true,
            ..Setup::default()
        },
    )
    .await;
    use_sasl(&daemon, &sasl.brokers, &sasl.ca);
    // The embedded registry serves HTTPS with basic auth, and the daemon's client trusts
    // exactly the stack's CA.
    let https_url = daemon.registry_url.replace("http://", "https://");
    let text = std::fs::read_to_string(&daemon.config).unwrap().replacen(
        &format!("url = \"{}\"\nembedded = true\n", daemon.registry_url),
        &format!(
            "url = \"{https_url}\"\nembedded = true\nusername_env = \"REGISTRY_USER\"\npassword_env = \"REGISTRY_PASSWORD\"\ntls_ca_file = \"{ca}\"\nserver_tls_cert_file = \"{cert}\"\nserver_tls_key_file = \"{key}\"\n",
            ca = sasl.ca.display(),
            cert = sasl.server_cert.display(),
            key = sasl.server_key.display()
        ),
        1,
    );
    std::fs::write(&daemon.config, text).unwrap();
    let env = [
        ("KAFKA_PASSWORD", sasl.password.as_str()),
        ("REGISTRY_USER", REGISTRY_USER),
        ("REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ];
    daemon.start_with(&env).await;
    daemon
        .pg()
        .await
        .batch_execute(
            "INSERT INTO users (full_name, email, password_hash) VALUES
               ('Ada', 'ada@example.com', 'x'), ('Grace', 'grace@example.com', 'y')",
        )
        .await
        .unwrap();

    let records = read_over_sasl(&daemon.topic, 2);
    assert_eq!(records.len(), 2, "{}", daemon.log_text());
    let registry = HttpsRegistryView {
        url: https_url.clone(),
    };
    for (key, value) in &records {
        // Confluent framing: magic byte 0, then the schema id the HTTPS registry gave.
        assert_eq!(key[0], 0);
        assert_eq!(value[0], 0);
        let id = u32::from_be_bytes(value[1..5].try_into().unwrap());
        let (status, body) = registry.get(&format!("/schemas/ids/{id}"));
        assert_eq!(status, "200", "{body}");
        assert!(body.contains("UserCreated"), "{body}");
    }
    // Without credentials the registry refuses.
    assert_eq!(registry.status_without_auth("/subjects"), "401");
    assert_eq!(daemon.terminate().await, Some(0));
    let log = daemon.log_text();
    assert!(
        !log.contains(&sasl.password),
        "the SASL password leaked:\n{log}"
    );
    assert!(
        !log.contains(REGISTRY_PASSWORD),
        "the registry password leaked:\n{log}"
    );
}

/// curl against an HTTPS registry that trusts the stack's CA.
struct HttpsRegistryView {
    url: String,
}

impl HttpsRegistryView {
    fn get(&self, path: &str) -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(&Stack::get().kafka_sasl.ca)
            .args(["-u", &format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")])
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.to_string(), body.to_string())
    }

    fn status_without_auth(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&Stack::get().kafka_sasl.ca)
            .arg(format!("{}{path}", self.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A wrong Kafka password or CA: the source stops at once with the named error, having
/// published nothing, after a bounded number of connections to the broker.
async fn kafka_failure(prefix: &str, ca: &Path, password: &str) -> (String, usize, String) {
    let sasl = &Stack::get().kafka_sasl;
    let proxy = CountingProxy::start(sasl.brokers.clone()).await;
    let daemon = Daemon::prepare(prefix, Setup::default()).await;
    use_sasl(&daemon, &proxy.address(), ca);
    let (code, stderr, took) = run_until_exit(
        &daemon,
        &[("KAFKA_PASSWORD", password)],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    eprintln!("walcast run exited with {code:?} after {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{stderr}");
    assert!(!stderr.contains("restarting in"), "retried:\n{stderr}");
    assert!(!topic_exists(&daemon.topic), "{} was created", daemon.topic);
    assert!(
        !stderr.contains(&sasl.password),
        "the password leaked:\n{stderr}"
    );
    assert!(!stderr.contains(password), "the password leaked:\n{stderr}");
    let part = format!("walcast: source {}: ", daemon.name);
    assert!(
        final_error(&stderr).starts_with(&part),
        "the error names its part:\n{stderr}"
    );
    (
        final_error(&stderr).replacen(&part, "walcast: ", 1),
        proxy.connections(),
        proxy.address(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_kafka_password_stops_the_source_with_a_named_error() {
    let sasl = &Stack::get().kafka_sasl;
    let (error, connections, address) =
        kafka_failure("sec_kpw", &sasl.ca, "not-the-password-0f3c").await;
    assert_eq!(
        error,
        format!(
            "walcast: kafka {address}: the brokers refused the SASL login (SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512)\n  hint: check [kafka.properties] \"sasl.username\" (\"{}\"), \"sasl.mechanism\" (SCRAM-SHA-512) and the password in the variable [kafka.properties_env] \"sasl.password\" names",
            sasl.username
        )
    );
    eprintln!("{connections} connection(s) to the broker");
    // One or two as a rule; librdkafka reconnects about every 100 ms, so a stalled machine
    // may see a few more. A retry storm would be hundreds.
    assert!(connections <= 5, "{connections} connections to the broker");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_kafka_certificate_stops_the_source_with_a_named_error() {
    let stack = Stack::get();
    // PostgreSQL's CA did not sign the Kafka listener's certificate.
    let (error, connections, address) =
        kafka_failure("sec_kca", &stack.pg_ca, &stack.kafka_sasl.password).await;
    assert_eq!(
        error,
        format!(
            "walcast: kafka {address}: the brokers' TLS certificate is not trusted (certificate verify failed)\n  hint: [kafka.properties] \"ssl.ca.location\" = \"{}\" is not the CA that signed the brokers' certificates; point it at the one that did",
            stack.pg_ca.display()
        )
    );
    eprintln!("{connections} connection(s) to the broker");
    // One or two as a rule; librdkafka reconnects about every 100 ms, so a stalled machine
    // may see a few more. A retry storm would be hundreds.
    assert!(connections <= 5, "{connections} connections to the broker");
}

/// A daemon on the stack's plaintext brokers whose registry is `registry` reached through a
/// counting proxy, with `keys` added to `[registry]`.
async fn registry_failure(
    prefix: &str,
    registry: &HttpsRegistry,
    keys: &str,
    password: &str,
) -> (String, usize, String) {
    let proxy = CountingProxy::start(format!("127.0.0.1:{}", registry.port)).await;
    let daemon = Daemon::prepare(prefix, Setup::default()).await;
    let url = format!("https://{}", proxy.address());
    let text = std::fs::read_to_string(&daemon.config).unwrap().replacen(
        &format!("url = \"{}\"\n", daemon.registry_url),
        &format!("url = \"{url}\"\nusername_env = \"REGISTRY_USER\"\npassword_env = \"REGISTRY_PASSWORD\"\n{keys}"),
        1,
    );
    std::fs::write(&daemon.config, text).unwrap();
    let (code, stderr, took) = run_until_exit(
        &daemon,
        &[
            ("REGISTRY_USER", REGISTRY_USER),
            ("REGISTRY_PASSWORD", password),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    eprintln!("walcast run exited with {code:?} after {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{stderr}");
    assert!(!stderr.contains("retrying in"), "retried:\n{stderr}");
    assert!(!stderr.contains("restarting in"), "restarted:\n{stderr}");
    assert!(!topic_exists(&daemon.topic), "{} was created", daemon.topic);
    assert!(!stderr.contains(password), "the password leaked:\n{stderr}");
    assert!(
        !stderr.contains(REGISTRY_PASSWORD),
        "the password leaked:\n{stderr}"
    );
    // The first contract registered names where the error came from.
    let error = final_error(&stderr).replacen(
        &format!(
            "walcast: source {}: UserKey.avsc (subject {}.user-key): ",
            daemon.name, daemon.name
        ),
        "walcast: ",
        1,
    );
    (error, proxy.connections(), url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_registry_password_stops_the_source_with_a_named_error() {
    let registry = HttpsRegistry::start().await;
    let keys = format!(
        "tls_ca_file = \"{}\"\n",
        Stack::get().kafka_sasl.ca.display()
    );
    let (error, connections, url) =
        registry_failure("sec_rpw", &registry, &keys, "wrong-registry-password-77").await;
    assert_eq!(
        error,
        format!("walcast: schema registry {url}: Unauthorized: this registry requires HTTP basic authentication (HTTP 401)\n  hint: the registry refused the user name and password: check the values of the variables registry.username_env and registry.password_env name")
    );
    eprintln!("{connections} connection(s) to the registry");
    assert!(
        connections <= 2,
        "{connections} connections to the registry"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_registry_certificate_stops_the_source_with_a_named_error() {
    let registry = HttpsRegistry::start().await;
    let keys = format!("tls_ca_file = \"{}\"\n", Stack::get().pg_ca.display());
    let (error, connections, url) =
        registry_failure("sec_rca", &registry, &keys, REGISTRY_PASSWORD).await;
    assert_eq!(
        error,
        format!("walcast: schema registry {url}: certificate not trusted (unable to get local issuer certificate)\n  hint: registry.tls_ca_file is not the CA that signed the registry's certificate; point it at the one that did")
    );
    eprintln!("{connections} connection(s) to the registry");
    assert!(
        connections <= 2,
        "{connections} connections to the registry"
    );
}

/// `check --connect` against the HTTPS registry and the SASL_SSL listener: OK with the
/// right settings (the CA also through SSL_CERT_FILE), each failure named with its fix.
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_names_tls_and_authentication_failures() {
    let stack = Stack::get();
    let sasl = &stack.kafka_sasl;
    let registry = HttpsRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ca: &Path, registry_keys: &str| {
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!(
                "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n{}[kafka.properties_env]\n\"sasl.password\" = \"KAFKA_PASSWORD\"\n[registry]\nurl = \"{}\"\nusername_env = \"REGISTRY_USER\"\npassword_env = \"REGISTRY_PASSWORD\"\n{registry_keys}",
                sasl.brokers,
                sasl_properties(ca),
                registry.url
            ),
        )
        .unwrap();
        file
    };
    let good_env = [
        ("KAFKA_PASSWORD", sasl.password.as_str()),
        ("REGISTRY_USER", REGISTRY_USER),
        ("REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ];
    let with_ca = write(
        "good.toml",
        &sasl.ca,
        &format!("tls_ca_file = \"{}\"\n", sasl.ca.display()),
    );
    let (out, stdout) = check_connect(&with_ca, &good_env);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        line(&stdout, "kafka").starts_with("OK   1 broker(s)"),
        "{stdout}"
    );
    assert_eq!(
        line(&stdout, "registry"),
        "OK   Confluent-compatible registry"
    );

    // No CA file: the system roots, which do not hold the stack's CA…
    let no_ca = write("no_ca.toml", &sasl.ca, "");
    let (out, stdout) = check_connect(&no_ca, &good_env);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        line(&stdout, "registry"),
        "FAIL certificate not trusted (unable to get local issuer certificate); hint: set registry.tls_ca_file to the PEM file of the CA that signed the registry's certificate (or add that CA to SSL_CERT_FILE)"
    );
    // …unless SSL_CERT_FILE names it, as for OpenSSL and curl.
    let ca = sasl.ca.display().to_string();
    let mut env = good_env.to_vec();
    env.push(("SSL_CERT_FILE", ca.as_str()));
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--connect", "--timeout-ms", "8000", "--config"])
        .arg(&no_ca)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        line(&stdout, "registry"),
        "OK   Confluent-compatible registry"
    );

    // Wrong passwords, each named; neither is printed.
    let bad_env = [
        ("KAFKA_PASSWORD", "kafka-wrong-1234"),
        ("REGISTRY_USER", REGISTRY_USER),
        ("REGISTRY_PASSWORD", "registry-wrong-5678"),
    ];
    let (out, stdout) = check_connect(&with_ca, &bad_env);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        line(&stdout, "kafka"),
        format!("FAIL the brokers refused the SASL login (SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512); hint: check [kafka.properties] \"sasl.username\" (\"{}\"), \"sasl.mechanism\" (SCRAM-SHA-512) and the password in the variable [kafka.properties_env] \"sasl.password\" names", sasl.username)
    );
    assert_eq!(
        line(&stdout, "registry"),
        "FAIL Unauthorized: this registry requires HTTP basic authentication (HTTP 401); hint: the registry refused the user name and password: check the values of the variables registry.username_env and registry.password_env name"
    );
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for secret in [
        "kafka-wrong-1234",
        "registry-wrong-5678",
        &sasl.password,
        REGISTRY_PASSWORD,
    ] {
        assert!(!all.contains(secret), "a password leaked:\n{all}");
    }

    // Plain HTTP to the HTTPS port, and TLS to a plain port.
    let plain = write("plain.toml", &sasl.ca, "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&plain)
        .unwrap()
        .replace(&registry.url, &registry.url.replace("https://", "http://"));
    std::fs::write(&plain, text).unwrap();
    let (_, stdout) = check_connect(Path::new(&plain), &good_env);
    assert_eq!(
        line(&stdout, "registry"),
        "FAIL client error (SendRequest): connection error: Connection reset by peer (os error 104); hint: if the registry serves HTTPS on this port, use an https:// registry.url"
    );
    let tls_to_plain = write("tls_to_plain.toml", &sasl.ca, "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&tls_to_plain).unwrap().replace(
        &registry.url,
        &stack.registry_url.replace("http://", "https://"),
    );
    std::fs::write(&tls_to_plain, text).unwrap();
    let (_, stdout) = check_connect(Path::new(&tls_to_plain), &good_env);
    assert_eq!(
        line(&stdout, "registry"),
        "FAIL the registry does not speak TLS on this port; hint: use an http:// registry.url, or the registry's HTTPS port"
    );
}

/// `walcast check` refuses what walcast cannot use before connecting to anything (and the
/// group settings its sinks cannot work under).
#[test]
fn check_refuses_unusable_schemes_and_secrets_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walcast.toml");
    std::fs::write(
        &file,
        r#"[kafka]
brokers = "127.0.0.1:9092"
[kafka.properties]
"security.protocol" = "sasl_tls"
"sasl.mechanism" = "GSSAPI"
"sasl.password" = "hunter2"
"ssl.ca.location" = "missing-ca.pem"
"partition.assignment.strategy" = "cooperative-sticky"
"group.protocol" = "consumer"
[registry]
url = "ftp://registry.example:8081"
tls_ca_file = "missing-registry-ca.pem"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = dir.path().display();
    assert_eq!(
        stderr.trim_end(),
        format!(
            r#"{dir}/walcast.toml: kafka.properties."sasl.password": is a secret, and secrets never sit in the file; name the environment variable holding it in [kafka.properties_env] instead ("sasl.password" = "KAFKA_SASL_PASSWORD")
{dir}/walcast.toml: kafka.properties."partition.assignment.strategy": walcast's sinks use an eager assignment strategy (range or roundrobin); drop cooperative-sticky
{dir}/walcast.toml: kafka.properties."group.protocol": walcast's sinks use the classic group protocol; drop the key or set "classic"
{dir}/walcast.toml: kafka.properties."security.protocol": found "sasl_tls", expected one of: plaintext, ssl, sasl_plaintext, sasl_ssl
{dir}/walcast.toml: kafka.properties."sasl.mechanism": found "GSSAPI", but walcast is built without Kerberos; expected one of: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER
{dir}/walcast.toml: kafka.properties."ssl.ca.location": file missing-ca.pem does not exist (looked for {dir}/missing-ca.pem); expected a PEM file
{dir}/walcast.toml: registry.url: found "ftp://registry.example:8081" with scheme ftp, which walcast cannot use; expected an http:// or https:// URL
{dir}/walcast.toml: registry.tls_ca_file: file missing-registry-ca.pem does not exist (looked for {dir}/missing-registry-ca.pem); expected a PEM file"#
        )
    );
    assert!(!stderr.contains("hunter2"));
}

/// A client certificate and key for mutual TLS are loaded at validation: a PKCS#8 key works,
/// any other form is refused with the command that converts it.
#[test]
fn registry_client_certificates_are_checked_before_connecting() {
    let sasl = &Stack::get().kafka_sasl;
    let dir = tempfile::tempdir().unwrap();
    let rsa_key = dir.path().join("client-rsa.key");
    let status = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&rsa_key)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let check = |key: &Path| {
        let file = dir.path().join("walcast.toml");
        std::fs::write(
            &file,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[registry]\nurl = \"https://127.0.0.1:8081\"\ntls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
                sasl.server_cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(&sasl.server_key);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = check(&rsa_key);
    assert_eq!(code, Some(2), "{text}");
    let key = rsa_key.display();
    assert_eq!(
        text.trim_end(),
        format!("{}/walcast.toml: registry.tls_client_key_file: {key} is not an unencrypted PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); convert it with: openssl pkcs8 -topk8 -nocrypt -in {key} -out KEY.pem", dir.path().display())
    );
}

/// Client certificates (mutual TLS): the stack's SSL listener requires one, and so does an
/// `openssl s_server -Verify 1` standing in for a registry. With the certificate both are
/// reached; without it each failure is named with the keys to set.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_reach_servers_that_require_them() {
    let tls = &Stack::get().kafka_sasl;
    let port = free_port();
    let s_server = crate::support::KillOnDrop(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-Verify", "1", "-www", "-cert"])
            .arg(&tls.server_cert)
            .arg("-key")
            .arg(&tls.server_key)
            .arg("-CAfile")
            .arg(&tls.ca)
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, with_cert: bool| {
        let (kafka_cert, registry_cert) = if with_cert {
            (
                format!(
                    "\"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n",
                    tls.client_cert.display(),
                    tls.client_key.display()
                ),
                format!(
                    "tls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"\n",
                    tls.client_cert.display(),
                    tls.client_key.display()
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!(
                "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n{kafka_cert}[registry]\nurl = \"https://127.0.0.1:{port}\"\ntls_ca_file = \"{}\"\n{registry_cert}",
                tls.ssl_brokers,
                tls.ca.display(),
                tls.ca.display()
            ),
        )
        .unwrap();
        file
    };
    let (_, stdout) = check_connect(&write("with.toml", true), &[]);
    assert!(
        line(&stdout, "kafka").starts_with("OK   1 broker(s)"),
        "{stdout}"
    );
    // The handshake passed: s_server answers any GET with its status page, not a registry's.
    assert!(
        line(&stdout, "registry").starts_with("FAIL GET /subjects answered 200: <HTML>"),
        "{stdout}"
    );
    let (out, stdout) = check_connect(&write("without.toml", false), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        line(&stdout, "kafka"),
        "FAIL the brokers refused the TLS handshake (TLS alert bad certificate); hint: the brokers require a client certificate: set [kafka.properties] \"ssl.certificate.location\" and \"ssl.key.location\" (a key password through [kafka.properties_env] \"ssl.key.password\")"
    );
    assert_eq!(
        line(&stdout, "registry"),
        "FAIL the registry refused the TLS handshake (TLS alert certificate required); hint: the registry requires a client certificate: set registry.tls_client_cert_file and registry.tls_client_key_file"
    );
    drop(s_server);
}
