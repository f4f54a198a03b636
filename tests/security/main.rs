//! Security against real servers with TLS and authentication turned on: Kafka over SASL_SSL
//! and mTLS, the registry over HTTPS with basic auth and client certificates, and every sink
//! store over TLS; wrong passwords and untrusted certificates give named, permanent errors,
//! and no secret is ever printed.

#[path = "../support/mod.rs"]
mod support;

mod services;
mod sinks;

/// Runs `walcast run --config config` at log level debug (so a leaked secret would show),
/// with `env` set and `SSL_CERT_FILE` removed unless `env` sets it, until it exits, which it
/// must within `bound` (else a retry storm): exit code, stderr, and how long it ran.
async fn run_until_exit(
    config: &std::path::Path,
    env: &[(&str, &str)],
    bound: std::time::Duration,
) -> (Option<i32>, String, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "debug")
        .env_remove("SSL_CERT_FILE")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
            .await
            .unwrap();
        text
    });
    let status = match tokio::time::timeout(bound, child.wait()).await {
        Ok(status) => status.unwrap(),
        Err(_) => {
            child.kill().await.unwrap();
            let log = reader.await.unwrap();
            panic!("walcast run still running after {bound:?} (a retry storm?):\n{log}");
        }
    };
    (status.code(), reader.await.unwrap(), started.elapsed())
}
