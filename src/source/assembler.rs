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
mod tests;
