//! Source drain benchmark: walcast's source against `pg_recvlogical` on identical slots.
//!
//! For each backlog shape, slots are created *before* the backlog is written, so every slot
//! holds exactly the same WAL. Each slot is then drained once, by `pg_recvlogical` (writing
//! the raw pgoutput stream to /dev/null) or by walcast's source (decoding every change into
//! typed events and counting them), with the same pgoutput options. Order alternates
//! (recvlogical, walcast, walcast, recvlogical) and the best run of each counts, so neither
//! side gains from a warm page cache.
//!
//! Run: `scripts/stack up && cargo bench --bench source` (release build);
//! `WALCAST_BENCH_SHAPES=large` runs one shape.
//! Shapes: small rows in 100-row transactions; ~1 KB rows of 20 mixed columns in 100-row
//! transactions; one 1,000,000-row transaction (streamed while in progress).

#[path = "stack.rs"]
mod stack;
use stack::{fresh_database, recvlogical, stack, Stack, LOAD_SMALL};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use walcast::lsn::Lsn;
use walcast::source::catalog::TableName;
use walcast::source::{SourceEvent, SourceSettings};

struct Shape {
    name: &'static str,
    table: &'static str,
    rows: u64,
    ddl: &'static str,
    /// Writes the backlog.
    load: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "small rows, 100-row transactions",
        table: "small",
        rows: 300_000,
        ddl: "CREATE TABLE small (id bigint PRIMARY KEY, n int NOT NULL, s text NOT NULL)",
        load: "CALL load_small(3000)",
    },
    Shape {
        name: "~1 KB rows, 20 columns, 100-row transactions",
        table: "wide",
        rows: 60_000,
        ddl: "CREATE TABLE wide (id bigint PRIMARY KEY, a int, b bigint, c numeric(12,2), d text, e text, f text,
              g timestamptz, h date, i bool, j uuid, k float8, l jsonb, m text, n int, o bigint, p varchar(64),
              q text, r timestamptz, s numeric)",
        load: "CALL load_wide(600)",
    },
    Shape {
        name: "one 1,000,000-row transaction",
        table: "large",
        rows: 1_000_000,
        ddl: "CREATE TABLE large (id bigint PRIMARY KEY, n int NOT NULL, s text NOT NULL)",
        load: "INSERT INTO large SELECT g, g % 1000, 'item ' || g FROM generate_series(1, 1000000) g",
    },
];

const LOAD_WIDE: &str = "
CREATE PROCEDURE load_wide(txns int) LANGUAGE plpgsql AS $$
DECLARE base bigint := 0;
BEGIN
  FOR t IN 1..txns LOOP
    INSERT INTO wide SELECT base + g, g, (base + g) * 7, (g * 1.25)::numeric(12,2), repeat('d', 180), repeat('e', 180),
      repeat('f', 180), now(), current_date, g % 2 = 0, gen_random_uuid(), g / 3.0, jsonb_build_object('k', g, 'v', 'x'),
      repeat('m', 150), g, base, 'varchar value', repeat('q', 100), now(), g * 3.14159
    FROM generate_series(1, 100) g;
    base := base + 100;
    COMMIT;
  END LOOP;
END $$;
";

#[tokio::main]
async fn main() {
    let stack = stack();
    let db = "bench_source";
    let pg = fresh_database(&stack, db).await;
    pg.batch_execute(LOAD_SMALL).await.unwrap();
    pg.batch_execute(LOAD_WIDE).await.unwrap();

    println!("| backlog | rows | pg_recvlogical rows/s | walcast source rows/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    // WALCAST_BENCH_SHAPES=small,wide,large picks shapes by table name; default all.
    let wanted = std::env::var("WALCAST_BENCH_SHAPES").unwrap_or_default();
    for shape in SHAPES
        .iter()
        .filter(|s| wanted.is_empty() || wanted.split(',').any(|w| w == s.table))
    {
        pg.batch_execute(shape.ddl).await.unwrap();
        pg.batch_execute(&format!(
            "CREATE PUBLICATION pub_{t} FOR TABLE {t}",
            t = shape.table
        ))
        .await
        .unwrap();
        let slots: Vec<String> = (0..4)
            .map(|i| format!("bench_{}_{i}", shape.table))
            .collect();
        for slot in &slots {
            pg.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await
            .unwrap();
        }
        pg.batch_execute(shape.load).await.unwrap();
        let end: String = pg
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let end: Lsn = end.parse().unwrap();

        let publication = format!("pub_{}", shape.table);
        let t0 = recvlogical(&stack, db, &slots[0], &publication, end);
        let t1 = walcast_drain(&stack, db, &slots[1], shape, end).await;
        let t2 = walcast_drain(&stack, db, &slots[2], shape, end).await;
        let t3 = recvlogical(&stack, db, &slots[3], &publication, end);
        let (reference, ours) = (t0.min(t3), t1.min(t2));
        let rate = |d: Duration| shape.rows as f64 / d.as_secs_f64();
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} |",
            shape.name,
            shape.rows,
            rate(reference),
            rate(ours),
            rate(ours) / rate(reference)
        );
        for slot in &slots {
            pg.execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await
                .unwrap();
        }
    }
}

/// Drains `slot` with walcast's source until every row arrived; returns the wall time.
async fn walcast_drain(stack: &Stack, db: &str, slot: &str, shape: &Shape, end: Lsn) -> Duration {
    let settings = SourceSettings {
        name: slot.to_string(),
        url: format!("{}/{db}", stack.pg_url),
        slot: slot.to_string(),
        publication: format!("pub_{}", shape.table),
        tables: vec![TableName {
            schema: "public".into(),
            name: shape.table.into(),
        }],
        status_interval: Duration::from_secs(10),
        spill_threshold_bytes: 64 << 20,
        spill_dir: std::env::temp_dir(),
        reconnect_max_backoff: Duration::from_secs(1),
        heartbeat_interval: None,
        heartbeat_table: None,
        // WALCAST_BENCH_TLS=disable|prefer (both sides); default prefer, libpq's default.
        tls: walcast::source::tls::TlsSettings {
            mode: if std::env::var("WALCAST_BENCH_TLS").as_deref() == Ok("disable") {
                walcast::source::tls::TlsMode::Disable
            } else {
                walcast::source::tls::TlsMode::Prefer
            },
            ca_file: None,
        },
        read_columns: None,
        part: Default::default(),
        slot_failover: false,
        signal_table: false,
    };
    let (tx, mut rx) = mpsc::channel(16);
    let (_acked, acked_rx) = watch::channel(Lsn::ZERO);
    let (stop, stopped) = oneshot::channel::<()>();
    let cpu_before = process_cpu();
    let started = Instant::now();
    let task = tokio::spawn(walcast::source::run(settings, tx, acked_rx, async {
        let _ = stopped.await;
    }));
    let mut rows = 0u64;
    let mut first_change = None;
    while rows < shape.rows {
        for event in rx.recv().await.expect("the source stopped") {
            match event {
                SourceEvent::Change(change) => {
                    first_change.get_or_insert_with(Instant::now);
                    // Touch the row as a consumer would: its first column, decoded.
                    let new = change.new.as_ref().expect("inserts");
                    std::hint::black_box(new.value(&change.table, 0).expect("decodes"));
                    rows += 1;
                }
                SourceEvent::Commit { end_lsn, .. } => {
                    std::hint::black_box(end_lsn.min(end));
                }
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed();
    if std::env::var_os("WALCAST_BENCH_PHASES").is_some() {
        let first = first_change.expect("rows arrived") - started;
        eprintln!(
            "  {slot}: until the first change {first:?}, then {:?}; walcast CPU {:?}",
            elapsed - first,
            process_cpu() - cpu_before
        );
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    elapsed
}

/// CPU time (user + system) of this process so far, from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}
