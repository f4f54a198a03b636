//! A write workload for specs that break things mid-stream: multi-row transactions written
//! until told to stop, each recorded by xid, and the checks that Kafka holds every change
//! (at least once, or exactly once), read with Confluent's client.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::daemon::{decode_from, Daemon};

/// Source transactions written, by xid: how many rows each changed (one event per row).
pub type Written = Arc<Mutex<BTreeMap<u32, usize>>>;

/// Writes multi-row transactions (inserts, and now and then an update of several rows)
/// until `stop`, recording each transaction's xid and row count.
pub fn writer(
    pg: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
) -> (Written, tokio::task::JoinHandle<()>) {
    let written: Written = Arc::default();
    let record = written.clone();
    let task = tokio::spawn(async move {
        let mut pg = pg;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let tx = pg.transaction().await.unwrap();
            let mut rows = 0;
            for i in 0..5 {
                rows += tx
                    .execute(
                        "INSERT INTO users (full_name, email, password_hash) VALUES ($1, $2, 'x')",
                        &[&format!("user {n}-{i}"), &format!("u{n}.{i}@example.com")],
                    )
                    .await
                    .unwrap() as usize;
            }
            if n % 4 == 0 {
                rows += tx
                    .execute(
                        "UPDATE users SET full_name = full_name || '!' WHERE id > (SELECT max(id) - 12 FROM users)",
                        &[],
                    )
                    .await
                    .unwrap() as usize;
            }
            let xid: i64 = tx
                .query_one("SELECT txid_current() % 4294967296", &[])
                .await
                .unwrap()
                .get(0);
            tx.commit().await.unwrap();
            record.lock().unwrap().insert(xid as u32, rows);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (written, task)
}

/// Reads the topic with Confluent's client (read_committed) and checks that every written
/// transaction arrived whole and exactly once, and nothing else did.
pub async fn assert_exactly_once(daemon: &Daemon, written: &Written) {
    let written = written.lock().unwrap().clone();
    let total: usize = written.values().sum();
    let events = decode_from(&daemon.registry_url, &daemon.brokers, &daemon.topic, total).await;
    let mut by_event_id: HashMap<&str, usize> = HashMap::new();
    let mut by_xid: BTreeMap<u32, usize> = BTreeMap::new();
    for e in &events {
        *by_event_id.entry(&e.headers["event_id"]).or_default() += 1;
        *by_xid.entry(e.headers["xid"].parse().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = by_event_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "events delivered more than once: {twice:?}"
    );
    let wrong: Vec<_> = written
        .iter()
        .filter(|(xid, rows)| by_xid.get(xid) != Some(rows))
        .map(|(xid, rows)| (xid, rows, by_xid.get(xid)))
        .collect();
    assert!(
        wrong.is_empty(),
        "transactions not delivered whole (xid, rows, events seen): {wrong:?}"
    );
    assert_eq!(
        events.len(),
        total,
        "events of unknown transactions arrived"
    );
    eprintln!(
        "{} transactions, {total} events, each exactly once",
        written.len()
    );
}

/// At least 10 kill -9s at random points of a stream of multi-row transactions: a
/// read_committed consumer sees every change exactly once, and never part of a transaction.
/// Reads the topic with Confluent's client and checks that every written change arrived at
/// least once: each transaction's rows as distinct event ids (a redelivery repeats an id).
pub async fn assert_every_change_arrived(daemon: &Daemon, written: &Written) {
    let written = written.lock().unwrap().clone();
    let total: usize = written.values().sum();
    let events = decode_from(&daemon.registry_url, &daemon.brokers, &daemon.topic, total).await;
    let mut by_xid: BTreeMap<u32, HashSet<String>> = BTreeMap::new();
    for e in &events {
        by_xid
            .entry(e.headers["xid"].parse().unwrap())
            .or_default()
            .insert(e.headers["event_id"].clone());
    }
    for (xid, rows) in &written {
        let seen = by_xid.get(xid).map_or(0, |ids| ids.len());
        assert_eq!(
            seen, *rows,
            "transaction {xid}: {seen} of {rows} changes arrived"
        );
    }
}
