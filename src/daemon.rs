//! `walcast run`: every configured part of the pipeline, under one shutdown.
//!
//! Start order: the embedded registry (when `registry.embedded`), then one publisher per
//! source, each of which checks its tables, mapping, contracts and topics before its
//! source streams. Shutdown flows from the signal to every task; each publisher flushes and
//! confirms its final position. The first task to fail stops the others, and its error is
//! the daemon's.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::pipeline::{self, PipelineError};
use crate::registry::client::Client;
use crate::registry::RegistryError;
use crate::shutdown::Shutdown;

/// Why the daemon stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("a task of the daemon panicked: {0}; this is a bug in walcast, please report it with the log")]
    Panicked(String),
    #[error("the embedded registry stopped before serving")]
    RegistryGone,
}

/// Runs until `shutdown` completes (then returns `Ok` once everything has stopped cleanly)
/// or a part fails for good.
pub async fn run(
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let (stop, stopped) = watch::channel(false);
    let parts = Shutdown::from_watch(stopped.clone());
    let signal = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks: JoinSet<Result<(), DaemonError>> = JoinSet::new();

    if config.registry.embedded {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (cfg, done) = (config.clone(), signal());
        tasks.spawn(async move {
            crate::registry::run(
                &cfg,
                |addr| {
                    let _ = ready_tx.send(addr);
                },
                done,
            )
            .await
            .map_err(DaemonError::from)
        });
        if ready.await.is_err() {
            // The registry task ended before serving: its error is the answer.
            return match tasks.join_next().await {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(join)) => Err(DaemonError::Panicked(join.to_string())),
                _ => Err(DaemonError::RegistryGone),
            };
        }
    }
    for source in &config.sources {
        if source.snapshot == crate::config::SnapshotMode::Initial {
            tracing::warn!(source = %source.name, "snapshot = \"initial\" is not implemented yet: rows that exist before the slot is created are not published, only changes after it");
        }
    }
    let registry = Arc::new(Client::new(&config.registry));
    for index in 0..config.sources.len() {
        let (cfg, reg, done) = (config.clone(), registry.clone(), parts.clone());
        tasks.spawn(async move {
            pipeline::run(cfg, index, reg, done)
                .await
                .map_err(DaemonError::from)
        });
    }
    for index in 0..config.sinks.len() {
        let (cfg, reg, done) = (config.clone(), registry.clone(), parts.clone());
        tasks.spawn(async move {
            crate::sink::run(cfg, index, reg, done)
                .await
                .map_err(DaemonError::from)
        });
    }

    tokio::pin!(shutdown);
    let mut outcome = Ok(());
    loop {
        tokio::select! {
            _ = &mut shutdown, if !*stop.borrow() => {
                stop.send_replace(true);
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {
                    if !*stop.borrow() {
                        stop.send_replace(true);
                    }
                }
                Some(Ok(Err(e))) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                    stop.send_replace(true);
                }
                Some(Err(join)) => {
                    tracing::error!(error = %join, "a task of the daemon panicked");
                    if outcome.is_ok() {
                        outcome = Err(DaemonError::Panicked(join.to_string()));
                    }
                    stop.send_replace(true);
                }
            },
        }
    }
    outcome
}
