//! A `walcast registry` process for one test: its own port and its own schema topic, killed
//! when dropped. Tests reach it over HTTP exactly as any Confluent client would.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

use super::Stack;

/// A running registry.
pub struct Registry {
    child: Child,
    pub url: String,
    pub topic: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// `(user, password)` it requires, if any.
    pub auth: Option<(String, String)>,
}

/// Options of a registry started for a test.
#[derive(Default, Clone)]
pub struct Options {
    pub auth: Option<(String, String)>,
    /// Reuse this schema topic (to restart on the same storage).
    pub topic: Option<String>,
}

impl Registry {
    pub async fn start(stack: &Stack) -> Registry {
        Self::start_with(stack, Options::default()).await
    }

    pub async fn start_with(stack: &Stack, options: Options) -> Registry {
        static N: AtomicU32 = AtomicU32::new(0);
        let topic = options.topic.clone().unwrap_or_else(|| {
            format!(
                "_schemas_test_{}_{}_{}",
                super::run_tag(),
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            )
        });
        let port = super::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("registry.toml");
        let auth_keys = if options.auth.is_some() {
            "username_env = \"TEST_REGISTRY_USER\"\npassword_env = \"TEST_REGISTRY_PASSWORD\"\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbrokers = \"{}\"\n[registry]\nurl = \"{url}\"\ntopic = \"{topic}\"\n{auth_keys}",
                stack.kafka_brokers
            ),
        )
        .unwrap();
        let mut registry = Registry {
            child: spawn(&config, &options.auth),
            url,
            topic,
            dir,
            config,
            auth: options.auth,
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&mut self) {
        let (url, auth) = (self.url.clone(), self.auth.is_some());
        let log = log_file(&self.config);
        let child = &mut self.child;
        super::wait_for(
            Duration::from_secs(60),
            || format!("walcast registry at {url} to serve"),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    let err = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("walcast registry exited with {status} before serving:\n{err}");
                }
                let url = &url;
                async move {
                    tokio::time::timeout(
                        Duration::from_secs(2),
                        raw(url, "GET", "/", None, None, None),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok_and(|(status, _)| status != 401 || auth))
                    .then_some(())
                }
            },
        )
        .await;
    }

    /// SIGKILLs the registry and starts it again on the same port and topic.
    pub async fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn(&self.config, &self.auth);
        self.wait_ready().await;
    }

    /// A request with a JSON body (or none), with the registry's credentials if it has any.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        let body = body.map(|b| b.to_string());
        let (status, text) = raw(
            &self.url,
            method,
            path,
            body.as_deref(),
            Some("application/vnd.schemaregistry.v1+json"),
            auth,
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: response is not JSON ({e}): {text}"));
        (status, value)
    }

    /// Sets `subject`'s compatibility level, expecting success.
    pub async fn set_level(&self, subject: &str, level: &str) {
        let (status, body) = self
            .call(
                "PUT",
                &format!("/config/{subject}"),
                Some(serde_json::json!({ "compatibility": level })),
            )
            .await;
        assert_eq!(status, 200, "setting {subject} to {level}: {body}");
    }

    /// POSTs `{"schema": schema}` to `path`.
    pub async fn post_schema(&self, path: &str, schema: &str) -> (u16, Value) {
        self.call("POST", path, Some(serde_json::json!({ "schema": schema })))
            .await
    }

    /// Registers `schema` under `subject`, expecting success; returns the id.
    pub async fn register(&self, subject: &str, schema: &str) -> u64 {
        let (status, body) = self
            .call(
                "POST",
                &format!("/subjects/{subject}/versions"),
                Some(serde_json::json!({ "schema": schema })),
            )
            .await;
        assert_eq!(status, 200, "registering under {subject}: {body}");
        body["id"].as_u64().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// Where the registry's log goes, beside its configuration: a file, since a pipe nobody
/// reads while it runs would fill and block it.
fn log_file(config: &std::path::Path) -> PathBuf {
    config.with_file_name("registry.log")
}

fn spawn(config: &PathBuf, auth: &Option<(String, String)>) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(config))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walcast"));
    cmd.args(["registry", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some((user, password)) = auth {
        cmd.env("TEST_REGISTRY_USER", user)
            .env("TEST_REGISTRY_PASSWORD", password);
    }
    cmd.spawn().expect("walcast registry starts")
}

/// One HTTP/1.1 request; the status and the body as text.
pub async fn raw(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: Option<&str>,
    auth: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some((user, password)) = auth {
        req = req.header(
            "authorization",
            walcast::registry::server::basic_auth_header(user, password),
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .map_err(|e| e.to_string())?;
    let response = client.request(req).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
