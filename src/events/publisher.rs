//! Publishing one source: registry, topics, the producer, and the loop from source events to
//! Kafka records, with the broker's acknowledgements flowing back to the source.
//!
//! # No loss
//! The producer is idempotent with `acks=all`, partitioned by the key's bytes (murmur2, as
//! Java clients do), so each key's events stay in order on one partition. Every record
//! carries its transaction's number; delivery reports, on librdkafka's thread, update the
//! [`Watermark`], whose acknowledged `end_lsn` is the only position the source ever confirms.
//! librdkafka retries transient broker errors itself (until `message.timeout.ms`); a delivery
//! that finally fails freezes the watermark and stops the pipeline, so nothing after it is
//! confirmed and a restart resends it.
//!
//! # Shutdown
//! Stop taking events, flush the producer so every record sent is acknowledged, then stop
//! the source, which confirms the final acknowledged position.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{util::Timeout, ClientContext};
use tokio::sync::{mpsc, oneshot, watch};

use super::mapping::{Mapping, SchemaIds, TableSpec};
use super::watermark::{TxNo, Watermark};
use super::EventsError;
use crate::config::Config;
use crate::lsn::Lsn;
use crate::registry::client::Client;
use crate::source::catalog::{Catalog, TableName};
use crate::source::change::PG_EPOCH_OFFSET_MICROS;
use crate::source::{self, SourceEvent, SourceSettings};

/// Delivery reports land here, on librdkafka's polling thread.
struct Acks {
    watermark: Arc<Mutex<Watermark>>,
    acked: watch::Sender<Lsn>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<TxNo>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Box<TxNo>) {
        let error = result.as_ref().err().map(|(e, m)| {
            use rdkafka::Message;
            format!("delivery to {} failed: {e}", m.topic())
        });
        let moved = self
            .watermark
            .lock()
            .expect("watermark lock")
            .delivered(*tx, error);
        if let Some(lsn) = moved {
            self.acked.send_replace(lsn);
        }
    }
}

/// Runs `source` (the config's `sources[index]`) until `shutdown` or a permanent error.
pub async fn run(
    config: Arc<Config>,
    index: usize,
    registry: Arc<Client>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EventsError> {
    let source = &config.sources[index];
    let specs = super::specs(&config, source)?;
    let mut settings = SourceSettings::from_config(source);
    // Only mapped columns are ever decoded, so only they need a supported type.
    settings.read_columns = Some(
        specs
            .iter()
            .map(|spec| {
                let (schema, name) = spec.table.split_once('.').expect("qualified");
                let table = TableName {
                    schema: schema.into(),
                    name: name.into(),
                };
                let columns = spec
                    .contracts()
                    .flat_map(|c| c.fields.iter())
                    .map(|f| spec.columns.get(&f.name).unwrap_or(&f.name).clone())
                    .collect();
                (table, columns)
            })
            .collect(),
    );

    // Everything is checked before anything streams: tables, mapping, registry, topics.
    let mut catalog = Catalog::connect(&settings.url, &settings.name, &settings.tls).await?;
    let ids = super::register(&registry, &specs, config.registry.compatibility).await?;
    let mut pipeline = Pipeline {
        name: source.name.clone(),
        specs: specs.iter().cloned().zip(ids).collect(),
        mappings: HashMap::new(),
        current: None,
        watermark: Arc::new(Mutex::new(Watermark::default())),
        producer: None,
    };
    let mut issues = Vec::new();
    for (spec, ids) in &pipeline.specs {
        let (schema, name) = spec.table.split_once('.').expect("qualified");
        let (table, not_null) = catalog
            .describe(&TableName {
                schema: schema.into(),
                name: name.into(),
            })
            .await?;
        match Mapping::compile(spec.clone(), Arc::new(table), Some(&not_null), *ids) {
            Ok(m) => {
                pipeline.mappings.insert(spec.table.clone(), m);
            }
            Err(mut found) => issues.append(&mut found),
        }
    }
    if !issues.is_empty() {
        return Err(EventsError::Mapping {
            source_name: source.name.clone(),
            issues,
        });
    }
    for spec in &specs {
        crate::kafka::ensure_topic(
            &config.kafka,
            &spec.topic,
            &config.kafka.topic_settings(&spec.topic),
        )
        .await
        .map_err(|e| EventsError::Kafka(format!("creating topic {}: {e}", spec.topic)))?;
    }

    let (acked_tx, acked_rx) = watch::channel(Lsn::ZERO);
    let mut client = crate::kafka::client_config(&config.kafka);
    // Bound what waits in librdkafka for a slow broker: its defaults (1 GB, 100k messages)
    // are what a backlog fills, and the byte bound does not count headers, so the message
    // bound is what holds memory (about 1 KB a record with eight headers). More buys no
    // throughput: once the queue is full, the broker is the limit.
    for (key, value) in [
        ("queue.buffering.max.kbytes", "16384"),
        ("queue.buffering.max.messages", "20000"),
    ] {
        if !config.kafka.properties.contains_key(key) {
            client.set(key, value);
        }
    }
    let producer: ThreadedProducer<Acks> = client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .create_with_context(Acks {
            watermark: pipeline.watermark.clone(),
            acked: acked_tx,
        })
        .map_err(|e| EventsError::Kafka(format!("creating the producer: {e}")))?;
    let producer = Arc::new(producer);
    pipeline.producer = Some(producer.clone());

    let (events_tx, mut events) = mpsc::channel(16);
    let (stop_source, source_stopped) = oneshot::channel::<()>();
    let mut source_task = tokio::spawn(source::run(settings, events_tx, acked_rx, async {
        let _ = source_stopped.await;
    }));
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            batch = events.recv() => match batch {
                Some(batch) => {
                    if let Err(e) = pipeline.publish(batch, &mut catalog).await {
                        break Err(e);
                    }
                }
                None => break Ok(()),
            },
            _ = &mut shutdown => break Ok(()),
        }
        if let Some(failure) = pipeline.watermark.lock().expect("watermark lock").failure() {
            break Err(EventsError::Kafka(failure.to_string()));
        }
    };
    // Flush so the final acknowledged position covers everything sent, then let the source
    // confirm it and stop.
    let flusher = producer.clone();
    let flushed =
        tokio::task::spawn_blocking(move || flusher.flush(Timeout::After(Duration::from_secs(30))))
            .await
            .map_err(|e| EventsError::Kafka(e.to_string()))?;
    if let Err(e) = flushed {
        tracing::warn!(source = %source.name, error = %e, "not every record was acknowledged before shutdown; they are sent again on restart");
    }
    let _ = stop_source.send(());
    drop(events);
    let source_result = (&mut source_task)
        .await
        .map_err(|e| EventsError::Kafka(format!("the source task failed: {e}")))?;
    tracing::info!(source = %source.name, acked = %pipeline.watermark.lock().expect("watermark lock").acked(), "publisher stopped");
    outcome?;
    source_result.map_err(EventsError::from)
}

struct Pipeline {
    name: String,
    specs: Vec<(Arc<TableSpec>, SchemaIds)>,
    mappings: HashMap<String, Mapping>,
    current: Option<(TxNo, Lsn, u32, i64)>,
    watermark: Arc<Mutex<Watermark>>,
    producer: Option<Arc<ThreadedProducer<Acks>>>,
}

impl Pipeline {
    async fn publish(
        &mut self,
        batch: Vec<SourceEvent>,
        catalog: &mut Catalog,
    ) -> Result<(), EventsError> {
        for event in batch {
            match event {
                SourceEvent::Begin {
                    xid,
                    commit_lsn,
                    commit_ts,
                } => {
                    let tx = self.watermark.lock().expect("watermark lock").begin();
                    self.current = Some((tx, commit_lsn, xid, commit_ts));
                }
                SourceEvent::Schema { new, .. } => self.reshape(new, catalog).await?,
                SourceEvent::Change(change) => self.change(&change).await?,
                SourceEvent::Commit { end_lsn, .. } => {
                    if let Some((tx, ..)) = self.current.take() {
                        let moved = self
                            .watermark
                            .lock()
                            .expect("watermark lock")
                            .commit(tx, end_lsn);
                        if let (Some(lsn), Some(p)) = (moved, &self.producer) {
                            p.context().acked.send_replace(lsn);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A table's shape changed: compile its mapping again. An added column no contract
    /// names changes nothing; a change that breaks a contract stops the source.
    async fn reshape(
        &mut self,
        table: Arc<crate::source::Table>,
        catalog: &mut Catalog,
    ) -> Result<(), EventsError> {
        let key = table.to_string();
        let Some((spec, ids)) = self.specs.iter().find(|(s, _)| s.table == key).cloned() else {
            return Ok(());
        };
        if self.mappings.get(&key).is_some_and(|m| *m.table == *table) {
            return Ok(());
        }
        let (_, not_null) = catalog
            .describe(&TableName {
                schema: table.schema.clone(),
                name: table.name.clone(),
            })
            .await?;
        let mapping = Mapping::compile(spec, table, Some(&not_null), ids).map_err(|issues| {
            EventsError::Mapping {
                source_name: self.name.clone(),
                issues: issues
                    .into_iter()
                    .map(|i| format!("after a change of table {key}: {i}"))
                    .collect(),
            }
        })?;
        self.mappings.insert(key, mapping);
        Ok(())
    }

    async fn change(&mut self, change: &source::Change) -> Result<(), EventsError> {
        let (tx, lsn, xid, commit_ts) = self
            .current
            .ok_or_else(|| EventsError::Kafka("a change outside a transaction".into()))?;
        let key = change.table.to_string();
        let Some(mapping) = self.mappings.get(&key) else {
            return Ok(());
        };
        if change.op == source::Op::Truncate {
            tracing::warn!(source = %self.name, table = %key, %lsn, "TRUNCATE cannot be expressed as per-key events and was not published; replicas keep the rows until they are deleted");
            return Ok(());
        }
        let events = mapping
            .events(change)
            .map_err(|message| EventsError::Encode {
                source_name: self.name.clone(),
                xid,
                lsn,
                message,
            })?;
        let producer = self.producer.as_ref().expect("set before streaming");
        let topic = &mapping.spec.topic;
        let (lsn_text, seq_text, xid_text) =
            (lsn.to_string(), change.seq.to_string(), xid.to_string());
        let ts_text = (commit_ts + PG_EPOCH_OFFSET_MICROS).to_string();
        for event in events {
            let event_id = format!("{}/{lsn_text}/{seq_text}/{}", self.name, event.part);
            let headers = OwnedHeaders::new_with_capacity(8)
                .insert(Header {
                    key: "event_type",
                    value: Some(event.event_type.as_bytes()),
                })
                .insert(Header {
                    key: "op",
                    value: Some(event.op.as_bytes()),
                })
                .insert(Header {
                    key: "source",
                    value: Some(self.name.as_bytes()),
                })
                .insert(Header {
                    key: "lsn",
                    value: Some(lsn_text.as_bytes()),
                })
                .insert(Header {
                    key: "seq",
                    value: Some(seq_text.as_bytes()),
                })
                .insert(Header {
                    key: "xid",
                    value: Some(xid_text.as_bytes()),
                })
                .insert(Header {
                    key: "commit_ts",
                    value: Some(ts_text.as_bytes()),
                })
                .insert(Header {
                    key: "event_id",
                    value: Some(event_id.as_bytes()),
                });
            self.watermark.lock().expect("watermark lock").sent(tx);
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(tx))
                .key(&event.key[..])
                .headers(headers);
            if let Some(v) = &event.value {
                record = record.payload(&v[..]);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        // librdkafka's queue is full: wait for deliveries to drain it.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        return Err(EventsError::Kafka(format!("producing to {topic}: {e}")));
                    }
                }
            }
        }
        Ok(())
    }
}
