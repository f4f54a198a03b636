//! pgoutput messages → ordered [`SourceEvent`]s. Pure: no I/O but the spill buffer's file.
//!
//! A regular transaction's commit LSN is known at `Begin` (its `final_lsn`), so its changes
//! are emitted as they arrive, numbered 0, 1, 2… A streamed transaction's commit LSN is known
//! only at `StreamCommit`, so its messages are buffered ([`super::spill`]) and replayed then,
//! through the same code path, as one uninterrupted transaction.
//!
//! Relation messages need the catalog to resolve non-built-in types, which is I/O, so the
//! assembler hands them back to the shell ([`Action::Resolve`]) and takes the resolved
//! [`Table`] in [`Assembler::set_relation`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::change::{Change, Op, Row, SourceEvent, Table};
use super::error::SourceError;
use super::pgoutput::{OldTuple, PgOutput, RelationBody};
use super::spill::StreamBuffer;
use crate::lsn::Lsn;

/// What the shell must do after handing the assembler a message.
#[derive(Debug)]
pub enum Action {
    /// Nothing to do; read the next message.
    None,
    /// Resolve this relation's types, then call [`Assembler::set_relation`].
    Resolve(RelationBody),
    /// A streamed transaction committed: decode each buffered message in stream mode and
    /// pass it to [`Assembler::handle`], then call [`Assembler::finish_replay`].
    Replay(StreamBuffer),
}

#[derive(Debug)]
struct OpenTxn {
    xid: u32,
    commit_lsn: Lsn,
    commit_ts: i64,
    /// Known up front only for replayed streamed transactions.
    end_lsn: Option<Lsn>,
    seq: u32,
}

/// Turns one replication connection's messages into events.
#[derive(Debug)]
pub struct Assembler {
    relations: HashMap<u32, Arc<Table>>,
    txn: Option<OpenTxn>,
    replaying: bool,
    streams: HashMap<u32, StreamBuffer>,
    current_stream: Option<u32>,
    spill_threshold_bytes: u64,
    spill_dir: PathBuf,
}

impl Assembler {
    /// An assembler with no open transaction; streamed transactions larger than
    /// `spill_threshold_bytes` spill to files in `spill_dir`.
    pub fn new(spill_threshold_bytes: u64, spill_dir: PathBuf) -> Self {
        Self {
            relations: HashMap::new(),
            txn: None,
            replaying: false,
            streams: HashMap::new(),
            current_stream: None,
            spill_threshold_bytes,
            spill_dir,
        }
    }

    /// True between a transaction's `Begin` and `Commit`, or while streamed transactions
    /// are buffered: confirming a keepalive's position then could skip their changes.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some() || !self.streams.is_empty()
    }

    /// Handles one message; `raw` is its undecoded payload, kept if it must be buffered.
    pub fn handle(
        &mut self,
        msg: PgOutput,
        raw: &Bytes,
        out: &mut Vec<SourceEvent>,
    ) -> Result<Action, SourceError> {
        // Inside a stream block (and not replaying), everything but the stream control
        // messages belongs to a transaction still in progress: buffer it.
        if let (Some(top), false) = (self.current_stream, self.replaying) {
            let subxid = match &msg {
                PgOutput::Relation(r) => r.xid,
                PgOutput::Type { xid, .. }
                | PgOutput::Insert { xid, .. }
                | PgOutput::Update { xid, .. }
                | PgOutput::Delete { xid, .. }
                | PgOutput::Truncate { xid, .. }
                | PgOutput::Message { xid, .. } => *xid,
                _ => None,
            };
            if let Some(subxid) = subxid {
                debug_assert_eq!(self.current_stream, Some(top));
                self.buffer_streamed(subxid, raw)?;
                return Ok(Action::None);
            }
        }
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.txn = Some(OpenTxn {
                    xid,
                    commit_lsn: final_lsn,
                    commit_ts,
                    end_lsn: None,
                    seq: 0,
                });
                out.push(SourceEvent::Begin {
                    xid,
                    commit_lsn: final_lsn,
                    commit_ts,
                });
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| SourceError::protocol("Commit without Begin"))?;
                out.push(SourceEvent::Commit {
                    xid: txn.xid,
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                });
            }
            PgOutput::Relation(body) => return Ok(Action::Resolve(body)),
            PgOutput::Insert { relation, new, .. } => {
                self.change(relation, Op::Insert, None, Some(Row::new(new, false)), out)?;
            }
            PgOutput::Update {
                relation, old, new, ..
            } => {
                let old = old.map(old_row);
                self.change(relation, Op::Update, old, Some(Row::new(new, false)), out)?;
            }
            PgOutput::Delete { relation, old, .. } => {
                self.change(relation, Op::Delete, Some(old_row(old)), None, out)?;
            }
            PgOutput::Truncate { relations, .. } => {
                for relation in relations {
                    self.change(relation, Op::Truncate, None, None, out)?;
                }
            }
            PgOutput::StreamStart { xid, .. } => {
                self.current_stream = Some(xid);
                let (threshold, dir) = (self.spill_threshold_bytes, self.spill_dir.clone());
                self.streams
                    .entry(xid)
                    .or_insert_with(|| StreamBuffer::new(xid, threshold, &dir));
            }
            PgOutput::StreamStop => self.current_stream = None,
            PgOutput::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    self.streams.remove(&xid);
                } else if let Some(buffer) = self.streams.get_mut(&xid) {
                    buffer.abort_sub(subxid).map_err(SourceError::spill)?;
                }
            }
            PgOutput::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                let buffer = self.streams.remove(&xid).ok_or_else(|| {
                    SourceError::protocol(format!("StreamCommit of unknown transaction {xid}"))
                })?;
                self.txn = Some(OpenTxn {
                    xid,
                    commit_lsn,
                    commit_ts,
                    end_lsn: Some(end_lsn),
                    seq: 0,
                });
                self.replaying = true;
                out.push(SourceEvent::Begin {
                    xid,
                    commit_lsn,
                    commit_ts,
                });
                return Ok(Action::Replay(buffer));
            }
            // Type: resolved from the catalog with the Relation. Origin and logical messages
            // (heartbeats) carry no row changes.
            PgOutput::Type { .. } | PgOutput::Origin { .. } | PgOutput::Message { .. } => {}
        }
        Ok(Action::None)
    }

    /// Buffers a data message of the streamed transaction in progress, undecoded.
    pub fn buffer_streamed(&mut self, subxid: u32, raw: &Bytes) -> Result<(), SourceError> {
        let top = self
            .current_stream
            .ok_or_else(|| SourceError::protocol("streamed message outside a stream block"))?;
        // A stream aborted (or committed) inside its own stream block leaves no buffer.
        let buffer = self.streams.get_mut(&top).ok_or_else(|| {
            SourceError::protocol(format!(
                "streamed message of transaction {top}, which is not being streamed"
            ))
        })?;
        buffer.push(subxid, raw.clone()).map_err(SourceError::spill)
    }

    /// Ends the replay of a streamed transaction.
    pub fn finish_replay(&mut self, out: &mut Vec<SourceEvent>) -> Result<(), SourceError> {
        self.replaying = false;
        let txn = self
            .txn
            .take()
            .ok_or_else(|| SourceError::protocol("replay finished without a transaction"))?;
        out.push(SourceEvent::Commit {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
            end_lsn: txn.end_lsn.expect("replayed transactions know their end"),
            commit_ts: txn.commit_ts,
        });
        Ok(())
    }

    /// Installs a relation's resolved shape; emits [`SourceEvent::Schema`] when it is new or
    /// its columns changed.
    pub fn set_relation(&mut self, table: Table, out: &mut Vec<SourceEvent>) {
        let old = self.relations.get(&table.oid).cloned();
        let changed = old.as_deref().is_none_or(|o| {
            o.columns != table.columns
                || o.replica_identity != table.replica_identity
                || o.name != table.name
                || o.schema != table.schema
        });
        if changed {
            let new = Arc::new(table);
            self.relations.insert(new.oid, new.clone());
            out.push(SourceEvent::Schema { old, new });
        }
    }

    fn change(
        &mut self,
        relation: u32,
        op: Op,
        old: Option<Row>,
        new: Option<Row>,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), SourceError> {
        let table = self
            .relations
            .get(&relation)
            .ok_or_else(|| {
                SourceError::protocol(format!(
                    "change of relation {relation} before its Relation message"
                ))
            })?
            .clone();
        let txn = self
            .txn
            .as_mut()
            .ok_or_else(|| SourceError::protocol("row change outside a transaction"))?;
        let seq = txn.seq;
        txn.seq += 1;
        out.push(SourceEvent::Change(Change {
            table,
            op,
            old,
            new,
            lsn: txn.commit_lsn,
            seq,
            xid: txn.xid,
            commit_ts: txn.commit_ts,
        }));
        Ok(())
    }
}

fn old_row(old: OldTuple) -> Row {
    match old {
        OldTuple::Key(t) => Row::new(t, true),
        OldTuple::Full(t) => Row::new(t, false),
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::source::change::{Column, ReplicaIdentity};
    use crate::source::pgoutput::{Datum, Decoder, RelationColumn, TupleData};
    use crate::source::value::{PgType, Value};

    const USERS: u32 = 16_384;
    const ORDERS: u32 = 16_390;

    /// pgoutput bytes of `msg`, as PostgreSQL sends them (protocol version 2).
    fn wire(msg: &PgOutput) -> Bytes {
        let mut b = BytesMut::new();
        let xid = |b: &mut BytesMut, xid: &Option<u32>| {
            if let Some(x) = xid {
                b.put_u32(*x)
            }
        };
        let string = |b: &mut BytesMut, s: &str| {
            b.put_slice(s.as_bytes());
            b.put_u8(0);
        };
        let tuple = |b: &mut BytesMut, t: &TupleData| {
            b.put_u16(t.0.len() as u16);
            for d in &t.0 {
                match d {
                    Datum::Null => b.put_u8(b'n'),
                    Datum::UnchangedToast => b.put_u8(b'u'),
                    Datum::Text(v) | Datum::Binary(v) => {
                        b.put_u8(if matches!(d, Datum::Text(_)) {
                            b't'
                        } else {
                            b'b'
                        });
                        b.put_u32(v.len() as u32);
                        b.put_slice(v);
                    }
                }
            }
        };
        let old_tuple = |b: &mut BytesMut, old: &OldTuple| match old {
            OldTuple::Key(t) => {
                b.put_u8(b'K');
                tuple(b, t);
            }
            OldTuple::Full(t) => {
                b.put_u8(b'O');
                tuple(b, t);
            }
        };
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                b.put_u8(b'B');
                b.put_u64(final_lsn.0);
                b.put_i64(*commit_ts);
                b.put_u32(*xid);
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                b.put_u8(b'C');
                b.put_u8(0);
                b.put_u64(commit_lsn.0);
                b.put_u64(end_lsn.0);
                b.put_i64(*commit_ts);
            }
            PgOutput::Relation(r) => {
                b.put_u8(b'R');
                xid(&mut b, &r.xid);
                b.put_u32(r.oid);
                string(&mut b, &r.namespace);
                string(&mut b, &r.name);
                b.put_u8(r.replica_identity);
                b.put_u16(r.columns.len() as u16);
                for c in &r.columns {
                    b.put_u8(u8::from(c.key));
                    string(&mut b, &c.name);
                    b.put_u32(c.type_oid);
                    b.put_i32(c.type_modifier);
                }
            }
            PgOutput::Insert {
                xid: x,
                relation,
                new,
            } => {
                b.put_u8(b'I');
                xid(&mut b, x);
                b.put_u32(*relation);
                b.put_u8(b'N');
                tuple(&mut b, new);
            }
            PgOutput::Update {
                xid: x,
                relation,
                old,
                new,
            } => {
                b.put_u8(b'U');
                xid(&mut b, x);
                b.put_u32(*relation);
                if let Some(old) = old {
                    old_tuple(&mut b, old);
                }
                b.put_u8(b'N');
                tuple(&mut b, new);
            }
            PgOutput::Delete {
                xid: x,
                relation,
                old,
            } => {
                b.put_u8(b'D');
                xid(&mut b, x);
                b.put_u32(*relation);
                old_tuple(&mut b, old);
            }
            PgOutput::Truncate {
                xid: x, relations, ..
            } => {
                b.put_u8(b'T');
                xid(&mut b, x);
                b.put_u32(relations.len() as u32);
                b.put_u8(0);
                for r in relations {
                    b.put_u32(*r);
                }
            }
            PgOutput::Message {
                xid: x,
                transactional,
                lsn,
                prefix,
                content,
            } => {
                b.put_u8(b'M');
                xid(&mut b, x);
                b.put_u8(u8::from(*transactional));
                b.put_u64(lsn.0);
                string(&mut b, prefix);
                b.put_u32(content.len() as u32);
                b.put_slice(content);
            }
            PgOutput::StreamStart { xid, first_segment } => {
                b.put_u8(b'S');
                b.put_u32(*xid);
                b.put_u8(u8::from(*first_segment));
            }
            PgOutput::StreamStop => b.put_u8(b'E'),
            PgOutput::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                b.put_u8(b'c');
                b.put_u32(*xid);
                b.put_u8(0);
                b.put_u64(commit_lsn.0);
                b.put_u64(end_lsn.0);
                b.put_i64(*commit_ts);
            }
            PgOutput::StreamAbort { xid, subxid } => {
                b.put_u8(b'A');
                b.put_u32(*xid);
                b.put_u32(*subxid);
            }
            other => panic!("no test encoding for {other:?}"),
        }
        b.freeze()
    }

    fn begin(xid: u32, final_lsn: u64) -> PgOutput {
        PgOutput::Begin {
            final_lsn: Lsn(final_lsn),
            commit_ts: i64::from(xid) * 1000,
            xid,
        }
    }

    fn commit(commit_lsn: u64, end_lsn: u64) -> PgOutput {
        PgOutput::Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(end_lsn),
            commit_ts: 0,
        }
    }

    /// `users (id bigint primary key, name text)`, or with a third column `email text`.
    fn relation(xid: Option<u32>, oid: u32, with_email: bool) -> PgOutput {
        let mut columns = vec![
            RelationColumn {
                key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            RelationColumn {
                key: false,
                name: "name".into(),
                type_oid: 25,
                type_modifier: -1,
            },
        ];
        if with_email {
            columns.push(RelationColumn {
                key: false,
                name: "email".into(),
                type_oid: 25,
                type_modifier: -1,
            });
        }
        PgOutput::Relation(RelationBody {
            xid,
            oid,
            namespace: "public".into(),
            name: format!("t{oid}"),
            replica_identity: b'd',
            columns,
        })
    }

    fn row(id: i64) -> TupleData {
        TupleData(vec![
            Datum::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            Datum::Binary(Bytes::from(format!("name {id}"))),
        ])
    }

    fn key(id: i64) -> TupleData {
        TupleData(vec![
            Datum::Binary(Bytes::copy_from_slice(&id.to_be_bytes())),
            Datum::Null,
        ])
    }

    fn insert(xid: Option<u32>, relation: u32, id: i64) -> PgOutput {
        PgOutput::Insert {
            xid,
            relation,
            new: row(id),
        }
    }

    fn stream_start(xid: u32, first_segment: bool) -> PgOutput {
        PgOutput::StreamStart { xid, first_segment }
    }

    fn stream_commit(xid: u32, commit_lsn: u64, end_lsn: u64) -> PgOutput {
        PgOutput::StreamCommit {
            xid,
            commit_lsn: Lsn(commit_lsn),
            end_lsn: Lsn(end_lsn),
            commit_ts: 77,
        }
    }

    /// A resolved table, as the catalog would give it (built-in types only).
    fn resolve(body: &RelationBody) -> Table {
        Table {
            oid: body.oid,
            schema: body.namespace.clone(),
            name: body.name.clone(),
            replica_identity: ReplicaIdentity::from_byte(body.replica_identity).unwrap(),
            columns: body
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    type_name: c.type_oid.to_string(),
                    ty: PgType::builtin(c.type_oid).unwrap(),
                    key: c.key,
                })
                .collect(),
        }
    }

    /// How the shell hands streamed data messages over.
    #[derive(Clone, Copy, Debug)]
    enum Path {
        /// As the source does: read the xid off the header and buffer without decoding.
        Undecoded,
        /// Decoded, through [`Assembler::handle`].
        Decoded,
    }

    /// The source's loop around the assembler, minus the I/O: bytes are decoded, relations
    /// resolved, and committed streamed transactions replayed from their buffers.
    struct Shell {
        decoder: Decoder,
        assembler: Assembler,
        out: Vec<SourceEvent>,
        path: Path,
        dir: tempfile::TempDir,
    }

    impl Shell {
        fn new(path: Path) -> Self {
            Self::with_threshold(path, 1 << 20)
        }

        fn with_threshold(path: Path, spill_threshold_bytes: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            Shell {
                decoder: Decoder::new(),
                assembler: Assembler::new(spill_threshold_bytes, dir.path().to_path_buf()),
                out: Vec::new(),
                path,
                dir,
            }
        }

        fn feed(&mut self, msg: PgOutput) -> Result<(), SourceError> {
            let raw = wire(&msg);
            if let (Path::Undecoded, Some(subxid)) = (self.path, self.decoder.streamed_xid(&raw)) {
                return self.assembler.buffer_streamed(subxid, &raw);
            }
            let decoded = self.decoder.decode(raw.clone()).unwrap();
            assert_eq!(decoded, msg, "the test encoding round-trips");
            self.handle(decoded, &raw)
        }

        fn feed_all(&mut self, msgs: impl IntoIterator<Item = PgOutput>) {
            for m in msgs {
                self.feed(m).unwrap();
            }
        }

        fn handle(&mut self, msg: PgOutput, raw: &Bytes) -> Result<(), SourceError> {
            match self.assembler.handle(msg, raw, &mut self.out)? {
                Action::None => {}
                Action::Resolve(body) => {
                    let table = resolve(&body);
                    self.assembler.set_relation(table, &mut self.out);
                }
                Action::Replay(buffer) => {
                    let mut decoder = Decoder::new();
                    decoder.decode(wire(&stream_start(0, false))).unwrap();
                    for raw in buffer.into_messages().unwrap() {
                        let msg = decoder.decode(raw.unwrap()).unwrap();
                        self.handle(msg, &Bytes::new())?;
                    }
                    self.assembler.finish_replay(&mut self.out)?;
                }
            }
            Ok(())
        }

        fn take(&mut self) -> Vec<SourceEvent> {
            std::mem::take(&mut self.out)
        }
    }

    /// A compact view of events: `B xid`, `S table`, `I/U/D/T table id @lsn#seq`, `C xid`.
    fn summary(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                SourceEvent::Begin { xid, .. } => format!("B {xid}"),
                SourceEvent::Commit { xid, .. } => format!("C {xid}"),
                SourceEvent::Schema { new, .. } => format!("S {}", new.name),
                SourceEvent::Change(c) => {
                    let row = c.new.as_ref().or(c.old.as_ref());
                    let id = match row.map(|r| r.value(&c.table, 0).unwrap()) {
                        Some(Value::Int8(id)) => id.to_string(),
                        None => "-".into(),
                        Some(other) => panic!("id {other:?}"),
                    };
                    let op = match c.op {
                        Op::Insert => "I",
                        Op::Update => "U",
                        Op::Delete => "D",
                        Op::Truncate => "T",
                    };
                    format!("{op} {} {id} @{}#{}", c.table.name, c.lsn.0, c.seq)
                }
            })
            .collect()
    }

    fn protocol_error(result: Result<(), SourceError>) -> String {
        match result {
            Err(SourceError::Protocol(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn a_transaction_is_its_begin_its_changes_numbered_from_zero_and_its_commit() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([
            begin(500, 0x100),
            relation(None, USERS, false),
            insert(None, USERS, 1),
            PgOutput::Update {
                xid: None,
                relation: USERS,
                old: Some(OldTuple::Key(key(1))),
                new: row(2),
            },
            PgOutput::Delete {
                xid: None,
                relation: USERS,
                old: OldTuple::Key(key(2)),
            },
            commit(0x100, 0x130),
        ]);
        let events = s.take();
        assert_eq!(
            summary(&events),
            [
                "B 500",
                "S t16384",
                "I t16384 1 @256#0",
                "U t16384 2 @256#1",
                "D t16384 2 @256#2",
                "C 500"
            ]
        );
        assert_eq!(
            events[0],
            SourceEvent::Begin {
                xid: 500,
                commit_lsn: Lsn(0x100),
                commit_ts: 500_000
            }
        );
        assert_eq!(
            events[5],
            SourceEvent::Commit {
                xid: 500,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_ts: 0
            }
        );
        let update = events[3].change().unwrap();
        assert_eq!((update.xid, update.commit_ts), (500, 500_000));
        let old = update.old.as_ref().unwrap();
        assert!(old.key_only, "a 'K' old tuple holds only the key");
        assert_eq!(old.value(&update.table, 0), Ok(Value::Int8(1)));
        assert_eq!(old.value(&update.table, 1), Ok(Value::Null));
        assert!(events[4].change().unwrap().new.is_none());
    }

    #[test]
    fn each_transaction_numbers_its_changes_from_zero_at_its_own_commit_lsn() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([
            begin(1, 10),
            relation(None, USERS, false),
            insert(None, USERS, 1),
            insert(None, USERS, 2),
            commit(10, 11),
            begin(2, 20),
            insert(None, USERS, 3),
            commit(20, 21),
        ]);
        assert_eq!(
            summary(&s.take()),
            [
                "B 1",
                "S t16384",
                "I t16384 1 @10#0",
                "I t16384 2 @10#1",
                "C 1",
                "B 2",
                "I t16384 3 @20#0",
                "C 2"
            ]
        );
    }

    #[test]
    fn a_full_old_row_is_not_key_only() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([
            begin(1, 10),
            relation(None, USERS, false),
            PgOutput::Delete {
                xid: None,
                relation: USERS,
                old: OldTuple::Full(row(4)),
            },
            commit(10, 11),
        ]);
        let events = s.take();
        let delete = events[2].change().unwrap();
        let old = delete.old.as_ref().unwrap();
        assert!(!old.key_only);
        assert_eq!(
            old.value(&delete.table, 1),
            Ok(Value::Text("name 4".into()))
        );
    }

    #[test]
    fn a_truncate_is_one_row_less_change_per_table_in_message_order() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([
            begin(1, 10),
            relation(None, USERS, false),
            relation(None, ORDERS, false),
            PgOutput::Truncate {
                xid: None,
                cascade: false,
                restart_identity: false,
                relations: vec![ORDERS, USERS],
            },
            commit(10, 11),
        ]);
        assert_eq!(
            summary(&s.take()),
            [
                "B 1",
                "S t16384",
                "S t16390",
                "T t16390 - @10#0",
                "T t16384 - @10#1",
                "C 1"
            ]
        );
    }

    #[test]
    fn a_relation_is_announced_only_when_its_shape_changes() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([
            begin(1, 10),
            relation(None, USERS, false),
            relation(None, USERS, false),
            insert(None, USERS, 1),
            relation(None, USERS, true),
            commit(10, 11),
        ]);
        let events = s.take();
        assert_eq!(
            summary(&events),
            ["B 1", "S t16384", "I t16384 1 @10#0", "S t16384", "C 1"]
        );
        let SourceEvent::Schema { old, new } = &events[3] else {
            panic!("{:?}", events[3]);
        };
        assert_eq!(old.as_ref().unwrap().columns.len(), 2);
        assert_eq!(new.columns.len(), 3);
    }

    #[test]
    fn a_row_change_outside_a_transaction_is_a_protocol_error_not_a_panic() {
        let mut s = Shell::new(Path::Decoded);
        s.feed(relation(None, USERS, false)).unwrap();
        assert_eq!(
            protocol_error(s.feed(insert(None, USERS, 1))),
            "row change outside a transaction"
        );
        assert_eq!(
            protocol_error(s.feed(PgOutput::Delete {
                xid: None,
                relation: USERS,
                old: OldTuple::Key(key(1)),
            })),
            "row change outside a transaction"
        );
        s.feed_all([begin(1, 10), commit(10, 11)]);
        assert_eq!(
            protocol_error(s.feed(insert(None, USERS, 2))),
            "row change outside a transaction",
            "after the commit too"
        );
    }

    #[test]
    fn a_commit_without_begin_is_a_protocol_error() {
        let mut s = Shell::new(Path::Decoded);
        assert_eq!(protocol_error(s.feed(commit(1, 2))), "Commit without Begin");
    }

    #[test]
    fn a_change_of_a_relation_never_described_is_a_protocol_error_naming_it() {
        let mut s = Shell::new(Path::Decoded);
        s.feed(begin(1, 10)).unwrap();
        assert_eq!(
            protocol_error(s.feed(insert(None, ORDERS, 1))),
            "change of relation 16390 before its Relation message"
        );
    }

    #[test]
    fn logical_messages_and_origins_yield_no_events_in_or_out_of_a_transaction() {
        let heartbeat = |xid| PgOutput::Message {
            xid,
            transactional: false,
            lsn: Lsn(5),
            prefix: "walcast_heartbeat".into(),
            content: Bytes::from_static(b"now"),
        };
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([heartbeat(None), begin(1, 10), heartbeat(None)]);
        s.handle(
            PgOutput::Origin {
                lsn: Lsn(3),
                name: "other".into(),
            },
            &Bytes::new(),
        )
        .unwrap();
        s.feed(commit(10, 11)).unwrap();
        assert_eq!(summary(&s.take()), ["B 1", "C 1"]);
    }

    #[test]
    fn the_assembler_is_in_a_transaction_from_begin_to_commit() {
        let mut s = Shell::new(Path::Decoded);
        assert!(!s.assembler.in_transaction());
        s.feed(begin(1, 10)).unwrap();
        assert!(s.assembler.in_transaction());
        s.feed(commit(10, 11)).unwrap();
        assert!(!s.assembler.in_transaction());
    }

    /// A streamed transaction 700 in two segments, with a regular transaction 701 committed
    /// between them.
    fn interleaved() -> Vec<PgOutput> {
        vec![
            stream_start(700, true),
            relation(Some(700), USERS, false),
            insert(Some(700), USERS, 1),
            insert(Some(700), USERS, 2),
            PgOutput::StreamStop,
            begin(701, 0x50),
            relation(None, ORDERS, false),
            insert(None, ORDERS, 9),
            commit(0x50, 0x58),
            stream_start(700, false),
            PgOutput::Update {
                xid: Some(700),
                relation: USERS,
                old: None,
                new: row(2),
            },
            PgOutput::StreamStop,
        ]
    }

    #[test]
    fn a_streamed_transaction_is_emitted_whole_at_its_commit_after_those_committed_before_it() {
        for path in [Path::Undecoded, Path::Decoded] {
            let mut s = Shell::new(path);
            s.feed_all(interleaved());
            assert_eq!(
                summary(&s.take()),
                ["B 701", "S t16390", "I t16390 9 @80#0", "C 701"],
                "{path:?}: only the regular transaction is out before the stream commits"
            );
            assert!(
                s.assembler.in_transaction(),
                "{path:?}: a buffered stream holds the position back"
            );
            s.feed(stream_commit(700, 0x90, 0x98)).unwrap();
            let events = s.take();
            assert_eq!(
                summary(&events),
                [
                    "B 700",
                    "S t16384",
                    "I t16384 1 @144#0",
                    "I t16384 2 @144#1",
                    "U t16384 2 @144#2",
                    "C 700"
                ],
                "{path:?}"
            );
            assert_eq!(
                events[0],
                SourceEvent::Begin {
                    xid: 700,
                    commit_lsn: Lsn(0x90),
                    commit_ts: 77
                }
            );
            assert_eq!(
                events[5],
                SourceEvent::Commit {
                    xid: 700,
                    commit_lsn: Lsn(0x90),
                    end_lsn: Lsn(0x98),
                    commit_ts: 77
                }
            );
            assert!(events[2..5]
                .iter()
                .all(|e| e.change().unwrap().commit_ts == 77 && e.change().unwrap().xid == 700));
            assert!(!s.assembler.in_transaction(), "{path:?}");
        }
    }

    #[test]
    fn an_aborted_streamed_transaction_emits_nothing_and_cannot_commit() {
        for path in [Path::Undecoded, Path::Decoded] {
            let mut s = Shell::new(path);
            s.feed_all(interleaved());
            s.take();
            s.feed(PgOutput::StreamAbort {
                xid: 700,
                subxid: 700,
            })
            .unwrap();
            assert!(s.take().is_empty(), "{path:?}");
            assert!(!s.assembler.in_transaction(), "{path:?}");
            assert_eq!(
                protocol_error(s.feed(stream_commit(700, 0x90, 0x98))),
                "StreamCommit of unknown transaction 700"
            );
        }
    }

    #[test]
    fn an_aborted_subtransaction_loses_its_changes_and_the_rest_are_renumbered() {
        for path in [Path::Undecoded, Path::Decoded] {
            let mut s = Shell::new(path);
            s.feed_all([
                stream_start(800, true),
                relation(Some(800), USERS, false),
                insert(Some(800), USERS, 1),
                insert(Some(801), USERS, 2), // SAVEPOINT a
                insert(Some(802), USERS, 3), // SAVEPOINT b
                insert(Some(802), USERS, 4),
                PgOutput::StreamStop,
                PgOutput::StreamAbort {
                    xid: 800,
                    subxid: 802,
                }, // ROLLBACK TO b
                stream_start(800, false),
                insert(Some(800), USERS, 5),
                PgOutput::StreamStop,
                PgOutput::StreamAbort {
                    xid: 800,
                    subxid: 803,
                }, // a subtransaction without changes
                stream_commit(800, 0x200, 0x210),
            ]);
            assert_eq!(
                summary(&s.take()),
                [
                    "B 800",
                    "S t16384",
                    "I t16384 1 @512#0",
                    "I t16384 2 @512#1",
                    "I t16384 5 @512#2",
                    "C 800"
                ],
                "{path:?}"
            );
        }
    }

    #[test]
    fn an_aborted_subtransaction_takes_its_nested_subtransactions_with_it() {
        let mut s = Shell::new(Path::Undecoded);
        s.feed_all([
            stream_start(900, true),
            relation(Some(900), USERS, false),
            insert(Some(901), USERS, 1),
            insert(Some(902), USERS, 2), // nested in 901
            PgOutput::StreamStop,
            PgOutput::StreamAbort {
                xid: 900,
                subxid: 901,
            },
            stream_commit(900, 0x300, 0x310),
        ]);
        assert_eq!(summary(&s.take()), ["B 900", "S t16384", "C 900"]);
    }

    #[test]
    fn a_streamed_transaction_past_the_spill_threshold_replays_from_disk_in_order() {
        let mut s = Shell::with_threshold(Path::Undecoded, 64);
        s.feed_all([stream_start(600, true), relation(Some(600), USERS, false)]);
        for id in 0..50 {
            s.feed(insert(Some(600), USERS, id)).unwrap();
        }
        s.feed(PgOutput::StreamStop).unwrap();
        assert_eq!(
            std::fs::read_dir(s.dir.path()).unwrap().count(),
            1,
            "spilled to a file"
        );
        s.feed(stream_commit(600, 0x400, 0x410)).unwrap();
        let events = s.take();
        let ids: Vec<String> = summary(&events[2..events.len() - 1]);
        let expected: Vec<String> = (0..50)
            .map(|id| format!("I t16384 {id} @1024#{id}"))
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(
            std::fs::read_dir(s.dir.path()).unwrap().count(),
            0,
            "the spill file is gone after the replay"
        );
    }

    #[test]
    fn two_streamed_transactions_are_kept_apart_and_emitted_in_commit_order() {
        let mut s = Shell::new(Path::Undecoded);
        s.feed_all([
            stream_start(10, true),
            relation(Some(10), USERS, false),
            insert(Some(10), USERS, 1),
            PgOutput::StreamStop,
            stream_start(11, true),
            relation(Some(11), USERS, false),
            insert(Some(11), USERS, 2),
            PgOutput::StreamStop,
            stream_commit(11, 0x20, 0x28),
            stream_commit(10, 0x30, 0x38),
        ]);
        assert_eq!(
            summary(&s.take()),
            [
                "B 11",
                "S t16384",
                "I t16384 2 @32#0",
                "C 11",
                "B 10",
                "I t16384 1 @48#0",
                "C 10"
            ]
        );
    }

    #[test]
    fn a_streamed_message_outside_a_stream_block_is_a_protocol_error() {
        let mut s = Shell::new(Path::Undecoded);
        assert_eq!(
            protocol_error(
                s.assembler
                    .buffer_streamed(700, &wire(&insert(Some(700), USERS, 1)))
            ),
            "streamed message outside a stream block"
        );
    }

    #[test]
    fn a_data_message_of_a_stream_aborted_mid_block_is_a_protocol_error_not_a_panic() {
        let mut s = Shell::new(Path::Undecoded);
        s.feed_all([
            stream_start(700, true),
            PgOutput::StreamAbort {
                xid: 700,
                subxid: 700,
            },
        ]);
        assert_eq!(
            protocol_error(s.feed(insert(Some(700), USERS, 1))),
            "streamed message of transaction 700, which is not being streamed"
        );
    }

    #[test]
    fn finishing_a_replay_without_a_transaction_is_a_protocol_error() {
        let mut s = Shell::new(Path::Undecoded);
        let result = s.assembler.finish_replay(&mut s.out);
        assert_eq!(
            protocol_error(result),
            "replay finished without a transaction"
        );
    }

    #[test]
    fn a_data_message_inside_a_stream_block_is_only_buffered() {
        let mut s = Shell::new(Path::Decoded);
        s.feed_all([stream_start(700, true), relation(Some(700), USERS, false)]);
        let raw = wire(&insert(Some(700), USERS, 1));
        let action = s
            .assembler
            .handle(insert(Some(700), USERS, 1), &raw, &mut s.out)
            .unwrap();
        assert!(matches!(action, Action::None), "{action:?}");
        assert!(s.out.is_empty(), "nothing is emitted before the commit");
    }
}
