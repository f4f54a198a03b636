//! The `walcast` command line.
//!
//! Exit codes: 0 success, 2 configuration or usage error, 1 runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use walcast::check::{self, Outcome};
use walcast::config::{self, Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "walcast",
    version,
    about = "PostgreSQL change data capture to versioned Avro events on Kafka, and read replicas from them"
)]
struct Cli {
    /// Log filter, e.g. `info` or `walcast=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(short, long, env = "WALCAST_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: sources, publishers and sinks.
    Run(ConfigArg),
    /// Validate the configuration; with --connect, also reach every configured server.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Reach each source database, the brokers, the registry and each sink store.
        #[arg(long)]
        connect: bool,
        /// Deadline of each server probe.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        timeout_ms: u64,
    },
    /// Check the contracts in schemas/ against the registry, or register them.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Ask the running daemon to re-read a table (a snapshot while streaming), through the
    /// source's signal table. Exits 0 once the daemon accepted the request.
    Snapshot {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[source]]` that publishes the table.
        #[arg(long)]
        source: String,
        /// The table, `schema.table` (`public` when no schema is given).
        #[arg(long)]
        table: String,
        /// Follow the snapshot to its end (a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// How long to wait for the daemon to accept the request.
        #[arg(long, default_value_t = 60_000, value_name = "MS")]
        accept_timeout_ms: u64,
    },
    /// Show slot positions, lag and sink progress.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Serve the embedded Confluent-compatible schema registry.
    Registry(ConfigArg),
    /// Replication slot administration.
    Slot {
        #[command(subcommand)]
        action: SlotAction,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasAction {
    /// Test every contract against the registry's compatibility rules.
    Check(ConfigArg),
    /// Register every contract.
    Register(ConfigArg),
}

#[derive(Debug, Subcommand)]
enum SlotAction {
    /// Drop a source's replication slot. WAL retained for it is released; changes not yet
    /// published are lost to walcast, and the next run starts from a new slot.
    Drop {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[source]]` whose slot to drop.
        #[arg(long)]
        source: String,
    },
    /// Let a source start anew after its slot was lost (a promotion without it, a drop
    /// while walcast was stopped) or its database moved to another cluster: drops the slot
    /// if there is one, and records in Kafka that the next run creates it again with a
    /// snapshot of every table, whatever `snapshot` says. Changes committed while there
    /// was no slot are lost; the snapshot brings every row back, but rows deleted in the
    /// gap stay in the replicas until they are rebuilt.
    Recreate {
        #[command(flatten)]
        config: ConfigArg,
        /// The `[[source]]` whose slot to recreate.
        #[arg(long)]
        source: String,
        /// Read every table through the new slot (required: the only way to recover what
        /// the gap held).
        #[arg(long)]
        snapshot: bool,
    },
}

/// Why the command failed, which decides the exit code.
#[derive(Debug)]
enum Failure {
    Config(ConfigError),
    Usage(String),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref(), log_format(&cli.command));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walcast: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("walcast: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            // Each cause once: walcast's errors already name their cause in their own text.
            eprintln!("walcast: {}", walcast_text::describe(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

/// `admin.log_format` of the serving commands (`run`, `registry`). The configuration is
/// read here before logging starts; if it is invalid, logs are text and the command reports
/// the error when it loads the file again.
fn log_format(command: &Command) -> config::LogFormat {
    match command {
        Command::Run(c) | Command::Registry(c) => config::load(&c.config)
            .map(|c| c.admin.log_format)
            .unwrap_or_default(),
        _ => config::LogFormat::Text,
    }
}

fn init_logging(filter: Option<&str>, format: config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => logs.init(),
        config::LogFormat::Json => logs.json().init(),
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check {
            config,
            connect,
            timeout_ms,
        } => check(config, connect, timeout_ms).await,
        Command::Run(c) => {
            let config = std::sync::Arc::new(load(&c)?);
            walcast::daemon::run(config, terminated())
                .await
                .map_err(|e| Failure::Runtime(e.into()))
        }
        Command::Schemas { action } => schemas(action).await,
        Command::Status { config, json } => status(config, json).await,
        Command::Snapshot {
            config,
            source,
            table,
            wait,
            accept_timeout_ms,
        } => snapshot(config, source, table, wait, accept_timeout_ms).await,
        Command::Registry(c) => {
            let config = load(&c)?;
            let scheme = if config.registry.url.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            walcast::registry::run(
                &config,
                |address| tracing::info!("registry ready on {scheme}://{address}"),
                terminated(),
            )
            .await
            .map_err(|e| Failure::Runtime(e.into()))
        }
        Command::Slot { action } => slot(action).await,
    }
}

/// `walcast slot drop` and `walcast slot recreate`.
async fn slot(action: SlotAction) -> Result<(), Failure> {
    use walcast::kafka::progress::Reset;
    let (config, source, reset) = match action {
        SlotAction::Drop { config, source } => (config, source, Reset::Dropped),
        SlotAction::Recreate {
            config,
            source,
            snapshot,
        } => {
            if !snapshot {
                return Err(Failure::Usage(format!(
                    "walcast slot recreate needs --snapshot: changes committed while source {source} had no slot are lost, and only a snapshot of every table brings its rows back (run walcast slot recreate --source {source} --snapshot)"
                )));
            }
            (config, source, Reset::Snapshot)
        }
    };
    let cfg = load(&config)?;
    let Some(source) = cfg.sources.iter().find(|s| s.name == source) else {
        let names: Vec<&str> = cfg.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "--source {source}: no [[source]] has that name in {}; expected one of: {}",
            cfg.path.display(),
            names.join(", ")
        )));
    };
    let runtime = |e: walcast::source::SourceError| Failure::Runtime(e.into());
    let slot = source.slot_name();
    let settings = walcast::source::SourceSettings::from_config(source);
    let catalog =
        walcast::source::catalog::Catalog::connect(&settings.url, &settings.name, &settings.tls)
            .await
            .map_err(runtime)?;
    // Kafka first: the decision is recorded where the next start looks, and a slot is only
    // dropped once that is possible.
    let kafka = |e: walcast::kafka::KafkaError| Failure::Runtime(e.into());
    let topic = walcast::kafka::progress::topic(&cfg.kafka, &source.name);
    walcast::kafka::progress::ensure(&cfg.kafka, &topic)
        .await
        .map_err(kafka)?;
    let held = walcast::kafka::progress::read(&cfg.kafka, &topic, &source.name)
        .await
        .map_err(kafka)?;
    let dropped = catalog.drop_slot(&slot).await.map_err(runtime)?;
    if dropped.is_none() && reset == Reset::Dropped {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "source {}: there is no replication slot {slot}; nothing was dropped",
            source.name
        )));
    }
    // Without this record, a source that has published before and finds no slot stops.
    let progress = walcast::kafka::progress::Progress {
        lsn: held.map(|p| p.lsn).unwrap_or_default(),
        origin: None,
        reset: Some(reset),
        snapshot_pending: false,
    };
    walcast::kafka::progress::write(&cfg.kafka, &topic, &source.name, &progress)
        .await
        .map_err(kafka)?;
    match (reset, dropped) {
        (Reset::Dropped, Some(confirmed)) => println!(
            "dropped replication slot {slot} of source {} (it had confirmed {confirmed}); the next run starts with a new slot (and a new snapshot unless snapshot = \"never\")",
            source.name
        ),
        (_, Some(confirmed)) => println!(
            "dropped replication slot {slot} of source {} (it had confirmed {confirmed}); the next run creates it again and reads every table in a snapshot",
            source.name
        ),
        (_, None) => println!(
            "source {}: there is no replication slot {slot}; the next run creates it and reads every table in a snapshot",
            source.name
        ),
    }
    Ok(())
}

/// `walcast snapshot`: a request in the signal table, then its state until accepted (or,
/// with `--wait`, done).
async fn snapshot(
    arg: ConfigArg,
    source: String,
    table: String,
    wait: bool,
    accept_timeout_ms: u64,
) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    use walcast::snapshot::signal::{self, Signals};
    let cfg = load(&arg)?;
    let Some(src) = cfg.sources.iter().find(|s| s.name == source) else {
        let names: Vec<&str> = cfg.sources.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::Usage(format!(
            "--source {source}: no [[source]] has that name in {}; expected one of: {}",
            cfg.path.display(),
            names.join(", ")
        )));
    };
    let table = signal::qualified(&table);
    if !src
        .tables
        .iter()
        .any(|t| signal::qualified(&t.table) == table)
    {
        let names: Vec<String> = src
            .tables
            .iter()
            .map(|t| signal::qualified(&t.table))
            .collect();
        return Err(Failure::Usage(format!(
            "--table {table}: source {source} does not publish it; expected one of: {}",
            names.join(", ")
        )));
    }
    let Some(signal_table) = &src.signal_table else {
        return Err(Failure::Usage(format!(
            "source {source} has no signal_table, through which the daemon takes snapshot requests; set signal_table = \"public.walcast_signal\" in its [[source]] and restart walcast run"
        )));
    };
    let runtime = |e: walcast::snapshot::SnapshotError| Failure::Runtime(e.into());
    let settings = walcast::source::SourceSettings::from_config(src);
    let signals = Signals::open(&settings, signal_table)
        .await
        .map_err(runtime)?;
    let id = signals.request(&table).await.map_err(runtime)?;
    let deadline = std::time::Instant::now() + Duration::from_millis(accept_timeout_ms);
    let mut status = signals.status(id).await.map_err(runtime)?;
    while status.state == "requested" {
        if std::time::Instant::now() > deadline {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "source {source}: the snapshot request {id} for {table} was not accepted within {accept_timeout_ms} ms; is walcast run running with this configuration? The request stays in {signal_table} and is taken when it starts"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = signals.status(id).await.map_err(runtime)?;
    }
    if status.state == "refused" {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "source {source}: the daemon refused the snapshot of {table}: {}",
            status.message.unwrap_or_default()
        )));
    }
    println!("snapshot of {table} accepted by source {source} (request {id})");
    if !wait {
        return Ok(());
    }
    let terminal = std::io::stderr().is_terminal();
    let mut last_line = std::time::Instant::now();
    loop {
        let line = signal::bar(status.rows_done, status.rows_estimated, 30);
        if terminal {
            eprint!("\r{table} {line}");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) || status.state == "done" {
            last_line = std::time::Instant::now();
            eprintln!("{table} {line}");
        }
        if status.state == "done" {
            if terminal {
                eprintln!();
            }
            println!("snapshot of {table} done: {} rows", status.rows_done);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = signals.status(id).await.map_err(runtime)?;
    }
}

/// `walcast schemas check|register`: every contract of every source against the registry.
async fn schemas(action: SchemasAction) -> Result<(), Failure> {
    let (arg, register) = match action {
        SchemasAction::Check(c) => (c, false),
        SchemasAction::Register(c) => (c, true),
    };
    let config = load(&arg)?;
    let client = walcast::registry::client::Client::new(&config.registry);
    let mut broken = 0;
    let mut total = 0;
    for source in &config.sources {
        let specs =
            walcast::events::specs(&config, source).map_err(|e| Failure::Runtime(e.into()))?;
        if register {
            walcast::events::register(&client, &specs, config.registry.compatibility)
                .await
                .map_err(|e| Failure::Runtime(e.into()))?;
        }
        for (subject, contract) in walcast::events::subjects(&specs) {
            total += 1;
            let verdict = client.check(&subject, &contract.text).await.map_err(|e| {
                Failure::Runtime(anyhow::anyhow!(
                    "{} (subject {subject}): {e}",
                    contract.path.display()
                ))
            })?;
            if verdict.compatible {
                println!("ok    {subject}  ({})", contract.path.display());
            } else {
                broken += 1;
                println!("FAIL  {subject}  ({})", contract.path.display());
                for m in &verdict.messages {
                    println!("        {m}");
                }
            }
        }
    }
    if broken > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{broken} of {total} contract(s) break the registry's compatibility rules; make each change compatible (add fields with defaults, keep field types), or publish it as a new event type"
        )));
    }
    let verb = if register {
        "registered and compatible"
    } else {
        "compatible"
    };
    println!("{total} contract(s) {verb} with {}", client.url());
    Ok(())
}

/// Completes on SIGTERM or SIGINT: the daemon's shutdown signal.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn load(arg: &ConfigArg) -> Result<Config, Failure> {
    Ok(config::load(&arg.config)?)
}

/// A subcommand whose capability belongs to a later issue: validate, then say so.
async fn status(arg: ConfigArg, json: bool) -> Result<(), Failure> {
    let config = load(&arg)?;
    let status = walcast::status::read(&config).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        print!("{}", walcast::status::render(&status, now));
    }
    if status.complete() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "status: some servers could not be read (see above)"
        )))
    }
}

async fn check(arg: ConfigArg, connect: bool, timeout_ms: u64) -> Result<(), Failure> {
    let config = load(&arg)?;
    // What the sinks name, against the contracts of the topics this file's sources publish.
    let issues = walcast::sink::contracts::check(&config);
    if !issues.is_empty() {
        return Err(Failure::Config(ConfigError::Invalid {
            path: arg.config.clone(),
            issues,
        }));
    }
    println!(
        "{}: valid ({} source(s), {} table(s), {} sink(s))",
        arg.config.display(),
        config.sources.len(),
        config.sources.iter().map(|s| s.tables.len()).sum::<usize>(),
        config.sinks.len()
    );
    if !connect {
        return Ok(());
    }
    let probes = check::probe_all(&config, Duration::from_millis(timeout_ms)).await;
    print!("{}", check::render(&probes));
    let failed = probes
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{failed} of {} server(s) could not be used",
            probes.len()
        )));
    }
    Ok(())
}
