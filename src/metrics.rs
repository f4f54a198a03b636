//! walcast's metrics: one registry, served as Prometheus (OpenMetrics) text on `/metrics`.
//!
//! # One process-wide registry
//! [`get`] returns a registry kept in a `OnceLock`. The points that count live deep in the
//! pipeline, the sink runner (on its blocking thread) and the snapshot tasks; threading a
//! handle through every constructor would touch most signatures for no gain, since a process
//! runs one daemon. Tests in one process share it too, so they read values relative to what
//! they saw before, never absolute ones.
//!
//! Every metric is registered when the registry is made, so `/metrics` lists each name with
//! its `# TYPE` line from the start; [`Metrics::declare`] adds each configured source's and
//! sink's series at zero. Counters are registered without their `_total` suffix, which the
//! OpenMetrics encoder appends to each sample (`walcast_sink_applied_total{sink="…"}`).
//!
//! Hot paths keep the handle of their series ([`Counter`] and [`Gauge`] are `Arc`s inside)
//! rather than looking labels up per event.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::parts::{PartState, Parts};

/// One label: `(name, value)`.
type Label = (&'static str, String);
/// Histograms made the same way for every label set.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every walcast metric. See the README's "Operations" section for what each one means.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `walcast_source_slot_lag_bytes{source}`: the server's WAL end minus the slot's
    /// confirmed position.
    pub source_slot_lag_bytes: Family<[Label; 1], Gauge>,
    /// `walcast_source_retained_wal_bytes{source}`: WAL the slot keeps on the server.
    pub source_retained_wal_bytes: Family<[Label; 1], Gauge>,
    /// `walcast_source_confirmed_lsn{source}`: the position last confirmed to PostgreSQL.
    pub source_confirmed_lsn: Family<[Label; 1], Gauge<u64, std::sync::atomic::AtomicU64>>,
    /// `walcast_source_events_total{source,topic,event}`: events sent to Kafka.
    pub source_events: Family<[Label; 3], Counter>,
    /// `walcast_publish_latency_seconds{source}`: source commit → broker acknowledgement.
    pub publish_latency_seconds: Histograms<[Label; 1]>,
    /// `walcast_sink_applied_total{sink}`: changes applied to the store.
    pub sink_applied: Family<[Label; 1], Counter>,
    /// `walcast_sink_lag_records{sink,topic,partition}`: records behind the partition's end,
    /// from librdkafka's statistics (`crate::sink`'s consumer).
    pub sink_lag_records: Family<[Label; 3], Gauge>,
    /// `walcast_sink_apply_seconds{sink}`: one batch's `apply`.
    pub sink_apply_seconds: Histograms<[Label; 1]>,
    /// `walcast_sink_poison_total{sink}`: records rejected as poison.
    pub sink_poison: Family<[Label; 1], Counter>,
    /// `walcast_sink_freshness_seconds{sink}`: now minus the commit time of the last
    /// applied change.
    pub sink_freshness_seconds: Family<[Label; 1], Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `walcast_snapshot_rows_total{source,table}`: rows published by snapshots.
    pub snapshot_rows: Family<[Label; 2], Counter>,
    /// `walcast_part_up{part}`: 1 running, 0 stopped or failed.
    pub part_up: Family<[Label; 1], Gauge>,
    /// Each sink's newest applied commit time (Unix microseconds): freshness is computed
    /// from it when scraped, so it grows while nothing new is applied.
    sink_applied_commits: Mutex<BTreeMap<String, i64>>,
}

/// Every family: name (counters without `_total`), type, help.
const FAMILIES: [(&str, &str, &str); 12] = [
    (
        "walcast_source_slot_lag_bytes",
        "gauge",
        "WAL between the server's current position and the slot's confirmed position",
    ),
    (
        "walcast_source_retained_wal_bytes",
        "gauge",
        "WAL the server retains for the slot (current position minus restart_lsn)",
    ),
    (
        "walcast_source_confirmed_lsn",
        "gauge",
        "The WAL position last confirmed to PostgreSQL (every event up to it is in Kafka)",
    ),
    (
        "walcast_source_events",
        "counter",
        "Events sent to Kafka, by source, topic and event type",
    ),
    (
        "walcast_publish_latency_seconds",
        "histogram",
        "From a source transaction's commit to the broker's acknowledgement of its events",
    ),
    (
        "walcast_sink_applied",
        "counter",
        "Changes a sink applied to its store",
    ),
    (
        "walcast_sink_lag_records",
        "gauge",
        "Records between a sink's position and the partition's end",
    ),
    (
        "walcast_sink_apply_seconds",
        "histogram",
        "Duration of one batch's apply to the store",
    ),
    (
        "walcast_sink_poison",
        "counter",
        "Records a sink rejected as poison (dead-lettered, skipped or stopped on)",
    ),
    (
        "walcast_sink_freshness_seconds",
        "gauge",
        "Now minus the source commit time of the last change a sink applied",
    ),
    (
        "walcast_snapshot_rows",
        "counter",
        "Rows published by snapshots, by source and table",
    ),
    (
        "walcast_part_up",
        "gauge",
        "1 while the daemon's part runs, 0 once it stopped or failed",
    ),
];

fn apply_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// `[("source", name)]`.
pub fn source(name: &str) -> [Label; 1] {
    [("source", name.to_string())]
}

/// `[("sink", name)]`.
pub fn sink(name: &str) -> [Label; 1] {
    [("sink", name.to_string())]
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            source_slot_lag_bytes: Family::default(),
            source_retained_wal_bytes: Family::default(),
            source_confirmed_lsn: Family::default(),
            source_events: Family::default(),
            publish_latency_seconds: Family::new_with_constructor(latency_histogram),
            sink_applied: Family::default(),
            sink_lag_records: Family::default(),
            sink_apply_seconds: Family::new_with_constructor(apply_histogram),
            sink_poison: Family::default(),
            sink_freshness_seconds: Family::default(),
            snapshot_rows: Family::default(),
            part_up: Family::default(),
            sink_applied_commits: Mutex::default(),
        };
        let r = &mut m.registry;
        let help = |name: &str| FAMILIES.iter().find(|f| f.0 == name).map_or("", |f| f.2);
        r.register(
            "walcast_source_slot_lag_bytes",
            help("walcast_source_slot_lag_bytes"),
            m.source_slot_lag_bytes.clone(),
        );
        r.register(
            "walcast_source_retained_wal_bytes",
            help("walcast_source_retained_wal_bytes"),
            m.source_retained_wal_bytes.clone(),
        );
        r.register(
            "walcast_source_confirmed_lsn",
            help("walcast_source_confirmed_lsn"),
            m.source_confirmed_lsn.clone(),
        );
        r.register(
            "walcast_source_events",
            help("walcast_source_events"),
            m.source_events.clone(),
        );
        r.register(
            "walcast_publish_latency_seconds",
            help("walcast_publish_latency_seconds"),
            m.publish_latency_seconds.clone(),
        );
        r.register(
            "walcast_sink_applied",
            help("walcast_sink_applied"),
            m.sink_applied.clone(),
        );
        r.register(
            "walcast_sink_lag_records",
            help("walcast_sink_lag_records"),
            m.sink_lag_records.clone(),
        );
        r.register(
            "walcast_sink_apply_seconds",
            help("walcast_sink_apply_seconds"),
            m.sink_apply_seconds.clone(),
        );
        r.register(
            "walcast_sink_poison",
            help("walcast_sink_poison"),
            m.sink_poison.clone(),
        );
        r.register(
            "walcast_sink_freshness_seconds",
            help("walcast_sink_freshness_seconds"),
            m.sink_freshness_seconds.clone(),
        );
        r.register(
            "walcast_snapshot_rows",
            help("walcast_snapshot_rows"),
            m.snapshot_rows.clone(),
        );
        r.register(
            "walcast_part_up",
            help("walcast_part_up"),
            m.part_up.clone(),
        );
        m
    }

    /// Creates, at zero, the series of every configured source and sink, so dashboards and
    /// alerts see them before the first event.
    pub fn declare(&self, config: &Config) {
        for s in &config.sources {
            let labels = source(&s.name);
            self.source_slot_lag_bytes.get_or_create_owned(&labels);
            self.source_retained_wal_bytes.get_or_create_owned(&labels);
            self.source_confirmed_lsn.get_or_create_owned(&labels);
            self.publish_latency_seconds.get_or_create_owned(&labels);
        }
        for s in &config.sinks {
            let labels = sink(s.name());
            self.sink_applied.get_or_create_owned(&labels);
            self.sink_apply_seconds.get_or_create_owned(&labels);
            self.sink_poison.get_or_create_owned(&labels);
            self.sink_freshness_seconds.get_or_create_owned(&labels);
        }
    }

    /// `sink` applied changes committed at `unix_micros` at the source (the newest of them).
    pub fn sink_applied_commit(&self, sink: &str, unix_micros: i64) {
        let mut commits = self.sink_applied_commits.lock().expect("metrics lock");
        let newest = commits.entry(sink.to_string()).or_insert(unix_micros);
        *newest = (*newest).max(unix_micros);
    }

    /// The OpenMetrics text of every metric, with `walcast_part_up` read from `parts` and
    /// `walcast_sink_freshness_seconds` computed now.
    pub fn render(&self, parts: &Parts) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let commits = self
            .sink_applied_commits
            .lock()
            .expect("metrics lock")
            .clone();
        for (name, at) in commits {
            let seconds = (now - at).max(0) as f64 / 1_000_000.0;
            self.sink_freshness_seconds
                .get_or_create(&sink(&name))
                .set(seconds);
        }
        for (name, state) in parts.snapshot() {
            let up = i64::from(state == PartState::Running);
            self.part_up.get_or_create(&[("part", name)]).set(up);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        // The encoder leaves out families without series yet; OpenMetrics allows a family
        // with no samples, and listing each one from the start lets alerts and dashboards
        // be checked against a fresh daemon.
        let missing: String = FAMILIES
            .iter()
            .filter(|(name, _, _)| !text.contains(&format!("# TYPE {name} ")))
            .map(|(name, kind, help)| format!("# HELP {name} {help}.\n# TYPE {name} {kind}\n"))
            .collect();
        if let Some(eof) = text.rfind("# EOF") {
            text.insert_str(eof, &missing);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_listed_and_part_up_follows_the_parts() {
        let parts = Parts::default();
        parts.set("sink cache", PartState::Failed("gone".into()));
        parts.set("source users", PartState::Running);
        let text = get().render(&parts);
        for name in [
            "walcast_source_slot_lag_bytes gauge",
            "walcast_source_retained_wal_bytes gauge",
            "walcast_source_confirmed_lsn gauge",
            "walcast_source_events counter",
            "walcast_publish_latency_seconds histogram",
            "walcast_sink_applied counter",
            "walcast_sink_lag_records gauge",
            "walcast_sink_apply_seconds histogram",
            "walcast_sink_poison counter",
            "walcast_sink_freshness_seconds gauge",
            "walcast_snapshot_rows counter",
            "walcast_part_up gauge",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name}\n")),
                "{name}:\n{text}"
            );
        }
        assert!(
            text.contains("walcast_part_up{part=\"source users\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("walcast_part_up{part=\"sink cache\"} 0\n"),
            "{text}"
        );
        get().sink_poison.get_or_create(&sink("cache")).inc();
        let text = get().render(&parts);
        assert!(
            text.contains("walcast_sink_poison_total{sink=\"cache\"} "),
            "{text}"
        );
    }
}
