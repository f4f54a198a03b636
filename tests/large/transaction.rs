//! Spec: a 1,000,000-row transaction streams through in bounded memory. It arrives from the
//! server in segments while still in progress, is buffered (mostly on disk past the spill
//! threshold), and is emitted on commit as one ordered transaction.
//!
//! Its own test binary (see `main.rs`), so the peak RSS measured is this test's alone.

use std::time::{Duration, Instant};

use crate::support::{source_settings, unique, RunningSource, Stack};
use walcast::source::SourceEvent;

/// The bound this test states: the whole test process, source included, stays under it.
const PEAK_RSS_BOUND_BYTES: u64 = 64 * 1024 * 1024;
const ROWS: u32 = 1_000_000;

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_streams_through_in_bounded_memory() {
    let stack = Stack::get();
    let name = unique("large_txn");
    let db = stack.fresh_pg_database(&name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, label text); ALTER TABLE items OWNER TO walcast;
         GRANT CREATE ON DATABASE {name} TO walcast;"
    ))
    .await
    .unwrap();
    let mut settings = source_settings(stack, &name, &db, &["public.items"]);
    settings.spill_threshold_bytes = 8 * 1024 * 1024;
    let mut source = RunningSource::start_streaming(stack, &db, settings).await;

    let started = Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO items SELECT g, 'item number ' || g FROM generate_series(1, {ROWS}) g"
    ))
    .await
    .unwrap();

    // Count by consuming; keep nothing.
    let (mut seen, mut last_seq, mut commit) = (0u32, None, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while commit.is_none() {
        let event = tokio::time::timeout(deadline - Instant::now(), source.next_event())
            .await
            .expect("the transaction did not arrive within 300 s")
            .expect("the source stopped");
        match event {
            SourceEvent::Change(c) => {
                assert_eq!(
                    c.seq,
                    last_seq.map_or(0, |s: u32| s + 1),
                    "changes arrive in order"
                );
                last_seq = Some(c.seq);
                seen += 1;
            }
            SourceEvent::Commit { end_lsn, .. } => commit = Some(end_lsn),
            SourceEvent::Begin { .. } | SourceEvent::Schema { .. } => {}
        }
    }
    assert_eq!(seen, ROWS);
    let streamed = crate::support::streamed_transactions(&pg, &name).await;
    assert!(
        streamed >= 1,
        "the server streamed the transaction while in progress"
    );
    let peak = peak_rss_bytes();
    eprintln!(
        "1,000,000-row transaction: {:.1} s end to end, peak RSS {:.1} MiB (bound {} MiB)",
        started.elapsed().as_secs_f64(),
        peak as f64 / 1048576.0,
        PEAK_RSS_BOUND_BYTES / 1048576
    );
    assert!(
        peak < PEAK_RSS_BOUND_BYTES,
        "peak RSS {peak} bytes exceeds the bound"
    );
    source.ack(commit.unwrap());
    source.stop().await.unwrap();
}
