//! `walcast run`: the daemon's parts under one shutdown.
//!
//! # Parts
//! Each source (its pipeline) and each sink is a *part*; so is the embedded registry when
//! `registry.embedded` is set. Parts run side by side, and their states are kept in
//! [`Parts`] for whoever reports them: the logs, and the admin endpoint ([`crate::admin`]:
//! `/readyz`, and `walcast_part_up` in `/metrics`), bound on `[admin] listen` before any part
//! starts and served until every part has stopped.
//! - A part that fails for good stops **alone**: its error is logged, naming the part, and
//!   its state becomes [`PartState::Failed`]. The other parts go on. A sink that stops on a
//!   poison record does not stop the source, nor the other sinks.
//! - A panic is a failure of its part, never a clean exit.
//! - Transient errors never reach here: each part retries them itself with the one backoff
//!   policy ([`crate::retry`]).
//! - The embedded registry is infrastructure every other part talks to: if it cannot start
//!   serving, the daemon stops before starting anything else.
//!
//! # Exit
//! On shutdown (SIGTERM, Ctrl-C) every part stops: pipelines flush (or abort their Kafka
//! transaction) and confirm their final position, sinks finish their batch. The daemon then
//! returns `Ok`, even if a part had failed earlier (its error was logged when it happened).
//! Without a shutdown, the daemon returns only when no part is left running: `Ok` if they all
//! stopped cleanly, otherwise an error listing every failed part, so the process exits
//! non-zero and a supervisor restarts or alerts.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::pipeline::{self, PipelineError};
use crate::registry::client::Client;
use crate::registry::RegistryError;
use crate::shutdown::Shutdown;

/// Why a part, or the daemon, stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The embedded registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The admin endpoint could not start.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// A source's pipeline failed for good.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A sink failed for good.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// A part's task panicked.
    #[error("{part} panicked: {message}; this is a bug in walcast, please report it with the log")]
    Panicked {
        /// The part, e.g. `sink orders-cache`.
        part: String,
        /// The panic's message.
        message: String,
    },
    /// The embedded registry stopped before it served.
    #[error("the embedded registry stopped before serving")]
    RegistryGone,
    /// Every part stopped, and these failed (each `part: error`).
    #[error("{}", failed_parts(.0))]
    PartsFailed(Vec<String>),
}

/// One failed part as it is, several as a list.
fn failed_parts(failed: &[String]) -> String {
    match failed {
        [one] => one.clone(),
        many => format!(
            "every part of the daemon has stopped; failed:\n  - {}",
            many.iter()
                .map(|item| item.replace('\n', "\n    "))
                .collect::<Vec<_>>()
                .join("\n  - ")
        ),
    }
}

pub use crate::parts::{PartHandle, PartState, Parts};

/// Runs every part until `shutdown` completes (then returns `Ok` once they all stopped), or
/// until no part is left running; see the module docs.
pub async fn run(
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with(config, shutdown, Parts::default()).await
}

/// [`run`], keeping the parts' states in `parts`.
pub async fn run_with(
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
    parts: Parts,
) -> Result<(), DaemonError> {
    crate::metrics::get().declare(&config);
    // Every part is known, as starting, before the admin endpoint answers: readiness is never
    // claimed for parts not yet spawned.
    if config.registry.embedded {
        parts.set("registry", PartState::Starting);
    }
    for source in &config.sources {
        parts.set(&format!("source {}", source.name), PartState::Starting);
    }
    for sink in &config.sinks {
        parts.set(&format!("sink {}", sink.name()), PartState::Starting);
    }
    // The admin endpoint first: an address in use stops the daemon before anything starts.
    let listener = crate::admin::bind(config.admin.listen).await?;
    tracing::info!(address = %listener.local_addr().unwrap_or(config.admin.listen), "admin endpoint: /healthz /readyz /metrics");
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(listener, parts.clone(), async {
        let _ = admin_stopped.await;
    }));
    let (stop, stopped) = watch::channel(false);
    let signal = Shutdown::from_watch(stopped);
    let mut tasks: JoinSet<(String, Result<(), DaemonError>)> = JoinSet::new();
    let mut names = std::collections::HashMap::new();
    let mut spawn =
        |tasks: &mut JoinSet<_>,
         name: String,
         part: std::pin::Pin<Box<dyn Future<Output = Result<(), DaemonError>> + Send>>| {
            parts.set(&name, PartState::Starting);
            let id = tasks
                .spawn({
                    let name = name.clone();
                    async move { (name, part.await) }
                })
                .id();
            names.insert(id, name);
        };

    if config.registry.embedded {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (cfg, done) = (config.clone(), signal.clone());
        spawn(
            &mut tasks,
            "registry".into(),
            Box::pin(async move {
                let mut done = done;
                crate::registry::run(
                    &cfg,
                    |addr| {
                        let _ = ready_tx.send(addr);
                    },
                    async move { done.wait().await },
                )
                .await
                .map_err(DaemonError::from)
            }),
        );
        if ready.await.is_ok() {
            parts.set("registry", PartState::Running);
        } else {
            // The registry ended before serving: its error is the answer.
            return match tasks.join_next_with_id().await {
                Some(Ok((_, (_, Err(e))))) => Err(e),
                Some(Err(join)) => Err(DaemonError::Panicked {
                    part: "registry".into(),
                    message: join.to_string(),
                }),
                _ => Err(DaemonError::RegistryGone),
            };
        }
    }
    let registry = Arc::new(Client::new(&config.registry));
    for (index, source) in config.sources.iter().enumerate() {
        let (cfg, reg, done) = (config.clone(), registry.clone(), signal.clone());
        let name = format!("source {}", source.name);
        let part = parts.handle(&name);
        spawn(
            &mut tasks,
            name,
            Box::pin(async move {
                pipeline::run(cfg, index, reg, done, part)
                    .await
                    .map_err(DaemonError::from)
            }),
        );
    }
    for (index, sink) in config.sinks.iter().enumerate() {
        let (cfg, reg, done) = (config.clone(), registry.clone(), signal.clone());
        let name = format!("sink {}", sink.name());
        let part = parts.handle(&name);
        spawn(
            &mut tasks,
            name,
            Box::pin(async move {
                crate::sink::run(cfg, index, reg, done, part)
                    .await
                    .map_err(DaemonError::from)
            }),
        );
    }

    tokio::pin!(shutdown);
    let mut failed = Vec::new();
    loop {
        tokio::select! {
            _ = &mut shutdown, if !*stop.borrow() => {
                tracing::info!("stopping every part");
                stop.send_replace(true);
            }
            joined = tasks.join_next_with_id() => {
                let (name, outcome) = match joined {
                    None => break,
                    Some(Ok((_, (name, outcome)))) => (name, outcome),
                    Some(Err(join)) => {
                        let name = names.get(&join.id()).cloned().unwrap_or_else(|| "a part".into());
                        let message = join.to_string();
                        (name.clone(), Err(DaemonError::Panicked { part: name, message }))
                    }
                };
                match outcome {
                    Ok(()) => {
                        parts.set(&name, PartState::Stopped);
                        tracing::info!(part = %name, "stopped");
                    }
                    Err(e) => {
                        let text = walcast_text::describe(&e);
                        tracing::error!(part = %name, error = %text, "failed; the other parts go on");
                        parts.set(&name, PartState::Failed(text.clone()));
                        // Errors that name their part already are not named twice.
                        let item = if text.starts_with(&format!("{name}: ")) {
                            text.clone()
                        } else {
                            format!("{name}: {text}")
                        };
                        failed.push(item);
                    }
                }
                if !*stop.borrow() && !parts.any_alive() {
                    break;
                }
            }
        }
    }
    // The admin endpoint serves until every part has stopped, so probes see them stop.
    let _ = admin_stop.send(());
    let _ = admin.await;
    if *stop.borrow() || failed.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::PartsFailed(failed))
    }
}
