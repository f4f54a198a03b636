//! `walcast status`: where every source and sink stands, read from the servers themselves.
//!
//! It works whether or not the daemon runs: a source's line comes from its slot in
//! PostgreSQL (active or not, confirmed position, lag and retained WAL), a sink's from its
//! consumer group in Kafka (committed offsets against each partition's end, and the commit
//! time carried by the last record it applied). When the daemon's admin endpoint answers,
//! its own view (`/readyz`: each part and its state) is added. Nothing here writes anything.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::source::catalog::Catalog;
use crate::source::SourceSettings;

/// Everything `walcast status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// One entry per `[[source]]`.
    pub sources: Vec<SourceStatus>,
    /// One entry per `[[sink]]`.
    pub sinks: Vec<SinkStatus>,
    /// The daemon's own view, when its admin endpoint answered.
    pub daemon: Option<DaemonView>,
}

/// A source's slot, as PostgreSQL reports it.
#[derive(Debug, Serialize)]
pub struct SourceStatus {
    /// The source's name.
    pub name: String,
    /// The slot's name.
    pub slot: String,
    /// Whether a process streams from the slot now.
    pub active: Option<bool>,
    /// The position confirmed to PostgreSQL, `X/Y`.
    pub confirmed_lsn: Option<String>,
    /// WAL written since the confirmed position, in bytes.
    pub lag_bytes: Option<u64>,
    /// WAL the slot keeps on the server, in bytes.
    pub retained_wal_bytes: Option<u64>,
    /// Why the slot could not be read, if it could not.
    pub error: Option<String>,
}

/// A sink's consumer group, as Kafka reports it.
#[derive(Debug, Serialize)]
pub struct SinkStatus {
    /// The sink's name.
    pub name: String,
    /// Its consumer group.
    pub group: String,
    /// Records not yet applied, per topic (summed over partitions).
    pub lag: Vec<TopicLag>,
    /// Commit time (µs since the Unix epoch) of the last change applied, from the header of
    /// the last record the group committed.
    pub last_applied_commit_ts: Option<i64>,
    /// Why the group could not be read, if it could not.
    pub error: Option<String>,
}

/// A topic's lag for one group.
#[derive(Debug, Serialize)]
pub struct TopicLag {
    /// The topic.
    pub topic: String,
    /// Records after the group's committed offsets, over every partition.
    pub records: i64,
    /// Partitions of the topic.
    pub partitions: usize,
}

/// What the daemon's `/readyz` said.
#[derive(Debug, Serialize)]
pub struct DaemonView {
    /// The admin endpoint's address.
    pub address: String,
    /// `/readyz`'s HTTP status: 200 when every part runs.
    pub status: u16,
    /// Its JSON body.
    pub body: serde_json::Value,
}

impl Status {
    /// Whether every server could be read.
    pub fn complete(&self) -> bool {
        self.sources.iter().all(|s| s.error.is_none())
            && self.sinks.iter().all(|s| s.error.is_none())
    }
}

/// Reads every source's slot and every sink's group, and asks the daemon if it answers.
pub async fn read(config: &Config) -> Status {
    let mut sources = Vec::new();
    for source in &config.sources {
        sources.push(source_status(source).await);
    }
    let mut sinks = Vec::new();
    for sink in &config.sinks {
        let kafka = crate::kafka::client_config(&config.kafka);
        let sink_name = sink.name().to_string();
        let group = sink.common.group_id();
        let topics = sink.common.topics.clone();
        let status =
            tokio::task::spawn_blocking(move || sink_status(kafka, sink_name, group, topics))
                .await
                .unwrap_or_else(|e| SinkStatus::failed(sink, e.to_string()));
        sinks.push(status);
    }
    let daemon = daemon_view(config).await;
    Status {
        sources,
        sinks,
        daemon,
    }
}

async fn source_status(source: &SourceConfig) -> SourceStatus {
    let settings = SourceSettings::from_config(source);
    let mut status = SourceStatus {
        name: source.name.clone(),
        slot: settings.slot.clone(),
        active: None,
        confirmed_lsn: None,
        lag_bytes: None,
        retained_wal_bytes: None,
        error: None,
    };
    let catalog = match Catalog::connect(&settings.url, &settings.name, &settings.tls).await {
        Ok(c) => c,
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    let row = catalog
        .client()
        .query_opt(
            &format!(
                "SELECT active, confirmed_flush_lsn::text, \
                        ({end} - confirmed_flush_lsn)::bigint, ({end} - restart_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                end = crate::source::catalog::WAL_END
            ),
            &[&settings.slot],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            status.active = Some(row.get(0));
            status.confirmed_lsn = row.get(1);
            status.lag_bytes = row.get::<_, Option<i64>>(2).map(|b| b.max(0) as u64);
            status.retained_wal_bytes = row.get::<_, Option<i64>>(3).map(|b| b.max(0) as u64);
        }
        Ok(None) => status.active = Some(false),
        Err(e) => status.error = Some(walcast_text::describe(&e)),
    }
    status
}

impl SinkStatus {
    fn failed(sink: &SinkConfig, error: String) -> Self {
        SinkStatus {
            name: sink.name().to_string(),
            group: sink.common.group_id(),
            lag: Vec::new(),
            last_applied_commit_ts: None,
            error: Some(error),
        }
    }
}

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

fn sink_status(
    mut kafka: rdkafka::ClientConfig,
    name: String,
    group: String,
    topics: Vec<String>,
) -> SinkStatus {
    let mut status = SinkStatus {
        name,
        group: group.clone(),
        lag: Vec::new(),
        last_applied_commit_ts: None,
        error: None,
    };
    // Reads the group's committed offsets without joining it: assign, never subscribe.
    let consumer: BaseConsumer = match kafka
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    let metadata = match consumer.fetch_metadata(None, KAFKA_TIMEOUT) {
        Ok(m) => m,
        Err(e) => {
            status.error = Some(format!("kafka: {e}"));
            return status;
        }
    };
    let mut last: Vec<(String, i32, i64)> = Vec::new();
    for topic in &topics {
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            status.lag.push(TopicLag {
                topic: topic.clone(),
                records: 0,
                partitions: 0,
            });
            continue;
        };
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
        let committed = match consumer.committed_offsets(tpl, KAFKA_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                status.error = Some(format!("kafka: committed offsets of {topic}: {e}"));
                return status;
            }
        };
        let mut records = 0;
        for elem in committed.elements() {
            let (low, high) =
                match consumer.fetch_watermarks(topic, elem.partition(), KAFKA_TIMEOUT) {
                    Ok(w) => w,
                    Err(e) => {
                        status.error = Some(format!("kafka: offsets of {topic}: {e}"));
                        return status;
                    }
                };
            let done = match elem.offset() {
                Offset::Offset(n) => {
                    if n > low {
                        last.push((topic.clone(), elem.partition(), n - 1));
                    }
                    n
                }
                _ => low,
            };
            records += (high - done).max(0);
        }
        status.lag.push(TopicLag {
            topic: topic.clone(),
            records,
            partitions: t.partitions().len(),
        });
    }
    status.last_applied_commit_ts = last
        .iter()
        .filter_map(|(topic, partition, offset)| {
            commit_ts_at(&consumer, topic, *partition, *offset)
        })
        .max();
    status
}

/// The `commit_ts` header of the record at `offset`, if it can be read.
fn commit_ts_at(consumer: &BaseConsumer, topic: &str, partition: i32, offset: i64) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .ok()?;
    consumer.assign(&tpl).ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m.headers()?;
                return headers
                    .iter()
                    .find(|h| h.key == "commit_ts")
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok());
            }
            Some(Err(_)) => return None,
            None => {}
        }
    }
    None
}

async fn daemon_view(config: &Config) -> Option<DaemonView> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let address = config.admin.listen.to_string();
    let connect = tokio::net::TcpStream::connect(&address);
    let stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/readyz")
        .header("host", &address)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Some(DaemonView {
        address,
        status,
        body,
    })
}

/// `1536` → `1.5 KiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `95` s → `1 min 35 s`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// The human-readable report: one line per source and per sink, then the daemon's view.
pub fn render(status: &Status, now_micros: i64) -> String {
    let mut out = String::new();
    for s in &status.sources {
        let line = match &s.error {
            Some(e) => format!("source {:<24} slot {:<28} UNREADABLE: {e}", s.name, s.slot),
            None => match s.active {
                Some(active) if s.confirmed_lsn.is_some() => format!(
                    "source {:<24} slot {:<28} {:<8} confirmed {:<14} lag {:<10} retained WAL {}",
                    s.name,
                    s.slot,
                    if active { "active" } else { "inactive" },
                    s.confirmed_lsn.as_deref().unwrap_or("-"),
                    s.lag_bytes.map_or("-".into(), size),
                    s.retained_wal_bytes.map_or("-".into(), size),
                ),
                _ => format!("source {:<24} slot {:<28} not created yet", s.name, s.slot),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    for s in &status.sinks {
        let line = match &s.error {
            Some(e) => format!(
                "sink   {:<24} group {:<27} UNREADABLE: {e}",
                s.name, s.group
            ),
            None => {
                let lag: Vec<String> = s
                    .lag
                    .iter()
                    .map(|t| {
                        format!(
                            "{} lag {} ({} partitions)",
                            t.topic, t.records, t.partitions
                        )
                    })
                    .collect();
                let applied = s
                    .last_applied_commit_ts
                    .map_or("nothing applied yet".into(), |ts| {
                        let ago = (now_micros - ts).max(0) as u64 / 1_000_000;
                        format!("last applied commit {} ago", duration(ago))
                    });
                format!(
                    "sink   {:<24} group {:<27} {}; {applied}",
                    s.name,
                    s.group,
                    lag.join(", ")
                )
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    match &status.daemon {
        Some(d) => out.push_str(&format!(
            "daemon at {}: {} ({})\n",
            d.address,
            if d.status == 200 { "ready" } else { "not ready" },
            d.body
        )),
        None => out.push_str("daemon: its admin endpoint does not answer (not running here, or [admin] listen differs)\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_a_person_writes_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(95), "1 min 35 s");
        assert_eq!(duration(7300), "2 h 1 min");
        assert_eq!(duration(90_000), "1 d 1 h");
    }
}
