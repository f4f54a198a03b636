//! Golden pgoutput captures: bytes recorded from a real PostgreSQL 15, decoded by the pure
//! decoder. `decoded_captures_match_their_expected_rendering` needs no server; the captures
//! are rewritten with `cargo test --test golden -- --ignored capture` against the stack.
//!
//! A capture file is a sequence of frames, each a 4-byte big-endian length and one
//! XLogData payload. Its `.expected` file is the decoder's rendering, reviewed when made.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use walcast::source::pgoutput::{Decoder, PgOutput};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn frames(bytes: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(Bytes::copy_from_slice(&rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    out
}

/// One line per message; LSNs, xids, OIDs and timestamps are kept, as they are in the file.
fn render(frames: &[Bytes]) -> String {
    let mut decoder = Decoder::new();
    let mut text = String::new();
    for f in frames {
        match decoder.decode(f.clone()) {
            Ok(msg) => writeln!(text, "{msg:?}").unwrap(),
            Err(e) => writeln!(text, "ERROR {e}").unwrap(),
        }
    }
    text
}

#[test]
fn decoded_captures_match_their_expected_rendering() {
    for name in ["operations", "streamed"] {
        let bytes = std::fs::read(golden(&format!("{name}.pgoutput"))).unwrap();
        let expected = std::fs::read_to_string(golden(&format!("{name}.expected"))).unwrap();
        let frames = frames(&bytes);
        assert_eq!(render(&frames), expected, "{name}");

        // Every capture decodes fully and has matching transaction brackets.
        let mut decoder = Decoder::new();
        let msgs: Vec<PgOutput> = frames
            .iter()
            .map(|f| decoder.decode(f.clone()).unwrap())
            .collect();
        let begins = msgs
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    PgOutput::Begin { .. }
                        | PgOutput::StreamStart {
                            first_segment: true,
                            ..
                        }
                )
            })
            .count();
        let ends = msgs
            .iter()
            .filter(|m| {
                matches!(
                    m,
                    PgOutput::Commit { .. }
                        | PgOutput::StreamCommit { .. }
                        | PgOutput::StreamAbort { .. }
                )
            })
            .count();
        assert!(
            begins > 0 && ends > 0,
            "{name}: {begins} begins, {ends} ends"
        );
        if name == "streamed" {
            let aborts: Vec<(u32, u32)> = msgs
                .iter()
                .filter_map(|m| match m {
                    PgOutput::StreamAbort { xid, subxid } => Some((*xid, *subxid)),
                    _ => None,
                })
                .collect();
            assert!(
                aborts.iter().any(|(x, s)| x != s),
                "a subtransaction abort: {aborts:?}"
            );
            assert!(
                aborts.iter().any(|(x, s)| x == s),
                "a whole-transaction abort: {aborts:?}"
            );
            assert!(msgs
                .iter()
                .any(|m| matches!(m, PgOutput::StreamCommit { .. })));
        }
    }
}

/// Records the captures from the stack. Run on purpose only; review the .expected diff.
#[tokio::test]
#[ignore]
async fn capture() {
    use walcast::source::protocol::{ReplicationConn, ReplicationMessage};
    let stack = crate::support::Stack::get();
    let name = "golden_capture";
    let db = stack.fresh_pg_database(name).await;
    let pg = stack.pg(&db).await;
    pg.batch_execute(
        "DROP ROLE IF EXISTS golden_r; CREATE ROLE golden_r LOGIN REPLICATION;
         ALTER ROLE golden_r SET logical_decoding_work_mem = '64kB';
         CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE users (id bigint PRIMARY KEY, name text, mood mood, tags text[], balance numeric(10,2), seen timestamptz);
         CREATE TABLE full_rows (id int, v text); ALTER TABLE full_rows REPLICA IDENTITY FULL;
         CREATE PUBLICATION golden FOR TABLE users, full_rows;"
    )
    .await
    .unwrap();
    let url = stack.pg_url_for("golden_r", &db);
    for (capture, workload) in [
        (
            "operations",
            "INSERT INTO users VALUES (1, 'Ada', 'happy', '{a,b}', 12.50, '2024-01-02 03:04:05+00'), (2, NULL, NULL, NULL, NULL, NULL);
             UPDATE users SET name = 'Ada L.' WHERE id = 1;
             UPDATE users SET id = 3 WHERE id = 2;
             INSERT INTO full_rows VALUES (1, 'x'); UPDATE full_rows SET v = 'y'; DELETE FROM full_rows;
             DELETE FROM users WHERE id = 1;
             TRUNCATE users, full_rows;
             SELECT pg_logical_emit_message(true, 'golden', 'hello');",
        ),
        (
            "streamed",
            "BEGIN;
             INSERT INTO users SELECT g, 'row ' || g, 'sad', NULL, g, NULL FROM generate_series(100, 399) g;
             SAVEPOINT s;
             INSERT INTO users SELECT g, 'gone', NULL, NULL, NULL, NULL FROM generate_series(5000, 5299) g;
             ROLLBACK TO SAVEPOINT s;
             COMMIT;
             BEGIN;
             INSERT INTO users SELECT g, 'aborted', NULL, NULL, NULL, NULL FROM generate_series(7000, 7999) g;
             ROLLBACK;",
        ),
    ] {
        let slot = format!("golden_{capture}");
        let mut conn = ReplicationConn::connect(&url, "walcast:golden", &Default::default()).await.unwrap();
        let _ = conn.simple_query(&format!("DROP_REPLICATION_SLOT {slot}")).await;
        conn.create_slot(&slot, false).await.unwrap();
        for statement in workload.split(";\n") {
            pg.batch_execute(statement).await.unwrap();
        }
        let end: String = pg.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
        let end: walcast::lsn::Lsn = end.parse().unwrap();
        conn.start_replication(
            &slot,
            walcast::lsn::Lsn::ZERO,
            &[("proto_version", "2"), ("streaming", "on"), ("binary", "true"), ("messages", "true"), ("publication_names", "golden")],
        )
        .await
        .unwrap();
        let mut file = Vec::new();
        let mut frames_seen = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), conn.next_message()).await.unwrap().unwrap().unwrap();
            match msg {
                ReplicationMessage::XLogData { data, .. } => {
                    file.extend_from_slice(&(data.len() as u32).to_be_bytes());
                    file.extend_from_slice(&data);
                    frames_seen.push(data);
                }
                ReplicationMessage::Keepalive { wal_end, .. } if wal_end >= end => break,
                ReplicationMessage::Keepalive { .. } => {}
            }
        }
        std::fs::write(golden(&format!("{capture}.pgoutput")), &file).unwrap();
        std::fs::write(golden(&format!("{capture}.expected")), render(&frames_seen)).unwrap();
    }
}
