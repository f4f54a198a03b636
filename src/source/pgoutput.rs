//! The pgoutput logical decoding protocol, version 2: bytes in, messages out.
//!
//! Pure and allocation-light: tuple values are zero-copy slices of the `XLogData` payload,
//! and are converted to typed values only when someone reads them (see [`super::value`]).
//!
//! Protocol version 2 adds streaming of in-progress transactions: between `StreamStart` and
//! `StreamStop`, every data message is prefixed with the transaction id it belongs to, so the
//! decoder keeps one bit of state, whether it is inside a stream block.
//! Reference: PostgreSQL 15, "Logical Replication Message Formats".

use bytes::{Buf, Bytes};

use crate::lsn::Lsn;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
pub enum PgOutput {
    /// `B` Begin: a transaction's changes follow, up to its Commit.
    Begin {
        /// LSN of the transaction's commit record (the commit LSN every change of it carries).
        final_lsn: Lsn,
        /// Commit time, in microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts: i64,
        /// Top-level transaction id.
        xid: u32,
    },
    /// `C` Commit: the transaction begun by the last Begin is complete.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once the transaction is durable
        /// downstream.
        end_lsn: Lsn,
        /// Commit time, in microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts: i64,
    },
    /// `O` Origin: the transaction was replayed from another node (replication origin).
    Origin {
        /// Commit LSN of the transaction on the origin server.
        lsn: Lsn,
        /// Name of the replication origin.
        name: String,
    },
    /// `R` Relation: a table's shape, sent before the first change to it in a session and again
    /// after its definition changes.
    Relation(RelationBody),
    /// `Y` Type: a non-built-in type's name, sent before a Relation that uses it.
    Type {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// OID of the type.
        oid: u32,
        /// Schema of the type.
        namespace: String,
        /// Name of the type.
        name: String,
    },
    /// `I` Insert: one new row.
    Insert {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// OID of the table, as announced by a Relation message.
        relation: u32,
        /// The inserted row.
        new: TupleData,
    },
    /// `U` Update: one changed row.
    Update {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// OID of the table, as announced by a Relation message.
        relation: u32,
        /// The old key (`K`, replica identity key) or old row (`O`, REPLICA IDENTITY FULL).
        old: Option<OldTuple>,
        /// The row after the update; unchanged TOAST columns are [`Datum::UnchangedToast`].
        new: TupleData,
    },
    /// `D` Delete: one removed row.
    Delete {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// OID of the table, as announced by a Relation message.
        relation: u32,
        /// The deleted row's key (`K`) or whole row (`O`, REPLICA IDENTITY FULL).
        old: OldTuple,
    },
    /// `T` Truncate: one or more tables emptied in one statement.
    Truncate {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// `TRUNCATE … CASCADE`.
        cascade: bool,
        /// `TRUNCATE … RESTART IDENTITY`.
        restart_identity: bool,
        /// OIDs of the truncated tables.
        relations: Vec<u32>,
    },
    /// `M` Message: a logical decoding message written with `pg_logical_emit_message`.
    Message {
        /// Subtransaction id, inside a stream block only.
        xid: Option<u32>,
        /// True when the message was emitted inside a transaction (decoded at its commit).
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix given by the writer, which says whose message it is.
        prefix: String,
        /// Payload, as written.
        content: Bytes,
    },
    /// `S` Stream Start: a block of an in-progress transaction's changes follows.
    StreamStart {
        /// Top-level transaction id of the streamed transaction.
        xid: u32,
        /// True for the first block of this transaction.
        first_segment: bool,
    },
    /// `E` Stream Stop: the current stream block ends.
    StreamStop,
    /// `c` Stream Commit: a streamed transaction committed; its buffered changes may be published.
    StreamCommit {
        /// Top-level transaction id.
        xid: u32,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once the transaction is durable
        /// downstream.
        end_lsn: Lsn,
        /// Commit time, in microseconds since 2000-01-01 00:00:00 UTC.
        commit_ts: i64,
    },
    /// `A` Stream Abort: a streamed (sub)transaction rolled back; its changes are discarded.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// Aborted subtransaction id; equal to `xid` when the whole transaction aborted.
        subxid: u32,
    },
}

/// A Relation message: a table's shape as of this point in the WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationBody {
    /// Subtransaction id, inside a stream block only.
    pub xid: Option<u32>,
    /// OID of the table; later data messages name the table by it.
    pub oid: u32,
    /// Schema of the table.
    pub namespace: String,
    /// Name of the table.
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns in table order, as the publication sends them.
    pub columns: Vec<RelationColumn>,
}

/// A column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's type (`pg_type.oid`).
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), e.g. a varchar's length; -1 when none.
    pub type_modifier: i32,
}

/// The old image carried by an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity key columns are set; the others are null.
    Key(TupleData),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever image it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// The columns of one row as sent, not yet typed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TupleData(pub Vec<Datum>);

/// One column value as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL (`n`).
    Null,
    /// A TOASTed value the change did not touch: the server did not send it.
    UnchangedToast,
    /// A value in text format (`t`).
    Text(Bytes),
    /// A value in binary format (`b`), the type's send format.
    Binary(Bytes),
}

/// Why bytes were not a pgoutput message. Always permanent: the stream is not what we asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended before a field was complete.
    #[error("pgoutput message ended early: needed {needed} more byte(s) for {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// The first byte is not a known message type.
    #[error("unknown pgoutput message type {0:?}")]
    UnknownMessage(char),
    /// A tuple column kind other than `n`, `u`, `t` or `b`.
    #[error("unknown tuple column kind {0:?}")]
    UnknownDatum(char),
    /// A byte that must be one of a few kinds (tuple markers, update/delete kinds) was another.
    #[error("unexpected {found:?} where {expected} was expected")]
    Unexpected {
        /// The byte found, as a character.
        found: char,
        /// What the protocol allows here.
        expected: &'static str,
    },
    /// A string is missing its NUL terminator or is not UTF-8.
    #[error("a string in a pgoutput message is not NUL-terminated UTF-8")]
    BadString,
}

/// Decodes pgoutput messages, tracking whether they arrive inside a stream block.
#[derive(Debug, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    /// A decoder outside any stream block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inside a stream block, the subtransaction id of a data message (Relation, Type,
    /// Insert, Update, Delete, Truncate, Message), read from its header without decoding the
    /// rest: such messages are only buffered until the transaction commits.
    pub fn streamed_xid(&self, data: &[u8]) -> Option<u32> {
        if !self.in_stream || data.len() < 5 {
            return None;
        }
        match data[0] {
            b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' => {
                Some(u32::from_be_bytes([data[1], data[2], data[3], data[4]]))
            }
            _ => None,
        }
    }

    /// Decodes one `XLogData` payload.
    pub fn decode(&mut self, data: Bytes) -> Result<PgOutput, DecodeError> {
        let mut r = Reader(data);
        let tag = r.u8("message type")?;
        let msg = match tag {
            b'B' => PgOutput::Begin {
                final_lsn: r.lsn()?,
                commit_ts: r.i64("commit timestamp")?,
                xid: r.u32("xid")?,
            },
            b'C' => {
                r.u8("commit flags")?;
                PgOutput::Commit {
                    commit_lsn: r.lsn()?,
                    end_lsn: r.lsn()?,
                    commit_ts: r.i64("commit timestamp")?,
                }
            }
            b'O' => PgOutput::Origin {
                lsn: r.lsn()?,
                name: r.string()?,
            },
            b'R' => {
                let xid = self.stream_xid(&mut r)?;
                let oid = r.u32("relation oid")?;
                let namespace = r.string()?;
                let name = r.string()?;
                let replica_identity = r.u8("replica identity")?;
                let n = r.u16("column count")?;
                let mut columns = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    columns.push(RelationColumn {
                        key: r.u8("column flags")? & 1 == 1,
                        name: r.string()?,
                        type_oid: r.u32("type oid")?,
                        type_modifier: r.i32("type modifier")?,
                    });
                }
                PgOutput::Relation(RelationBody {
                    xid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => PgOutput::Type {
                xid: self.stream_xid(&mut r)?,
                oid: r.u32("type oid")?,
                namespace: r.string()?,
                name: r.string()?,
            },
            b'I' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = r.u32("relation oid")?;
                r.expect(b'N', "'N' before the new tuple")?;
                PgOutput::Insert {
                    xid,
                    relation,
                    new: r.tuple()?,
                }
            }
            b'U' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = r.u32("relation oid")?;
                let (old, new) = match r.u8("update tuple kind")? {
                    b'K' => {
                        let old = OldTuple::Key(r.tuple()?);
                        r.expect(b'N', "'N' after the old key")?;
                        (Some(old), r.tuple()?)
                    }
                    b'O' => {
                        let old = OldTuple::Full(r.tuple()?);
                        r.expect(b'N', "'N' after the old row")?;
                        (Some(old), r.tuple()?)
                    }
                    b'N' => (None, r.tuple()?),
                    other => {
                        return Err(DecodeError::Unexpected {
                            found: other as char,
                            expected: "'K', 'O' or 'N'",
                        })
                    }
                };
                PgOutput::Update {
                    xid,
                    relation,
                    old,
                    new,
                }
            }
            b'D' => {
                let xid = self.stream_xid(&mut r)?;
                let relation = r.u32("relation oid")?;
                let old = match r.u8("delete tuple kind")? {
                    b'K' => OldTuple::Key(r.tuple()?),
                    b'O' => OldTuple::Full(r.tuple()?),
                    other => {
                        return Err(DecodeError::Unexpected {
                            found: other as char,
                            expected: "'K' or 'O'",
                        })
                    }
                };
                PgOutput::Delete { xid, relation, old }
            }
            b'T' => {
                let xid = self.stream_xid(&mut r)?;
                let n = r.u32("relation count")?;
                let options = r.u8("truncate options")?;
                let mut relations = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    relations.push(r.u32("relation oid")?);
                }
                PgOutput::Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relations,
                }
            }
            b'M' => {
                let xid = self.stream_xid(&mut r)?;
                let transactional = r.u8("message flags")? & 1 == 1;
                let lsn = r.lsn()?;
                let prefix = r.string()?;
                let len = r.u32("message length")? as usize;
                PgOutput::Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content: r.bytes(len, "message content")?,
                }
            }
            b'S' => {
                self.in_stream = true;
                PgOutput::StreamStart {
                    xid: r.u32("xid")?,
                    first_segment: r.u8("first segment flag")? == 1,
                }
            }
            b'E' => {
                self.in_stream = false;
                PgOutput::StreamStop
            }
            b'c' => {
                let xid = r.u32("xid")?;
                r.u8("commit flags")?;
                PgOutput::StreamCommit {
                    xid,
                    commit_lsn: r.lsn()?,
                    end_lsn: r.lsn()?,
                    commit_ts: r.i64("commit timestamp")?,
                }
            }
            b'A' => PgOutput::StreamAbort {
                xid: r.u32("xid")?,
                subxid: r.u32("subtransaction xid")?,
            },
            other => return Err(DecodeError::UnknownMessage(other as char)),
        };
        Ok(msg)
    }

    fn stream_xid(&self, r: &mut Reader) -> Result<Option<u32>, DecodeError> {
        if self.in_stream {
            Ok(Some(r.u32("streamed xid")?))
        } else {
            Ok(None)
        }
    }
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError::Truncated {
                what,
                needed: n - self.0.remaining(),
            })
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32())
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_i32())
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_i64())
    }
    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.need(8, "LSN")?;
        Ok(Lsn(self.0.get_u64()))
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    fn expect(&mut self, tag: u8, expected: &'static str) -> Result<(), DecodeError> {
        match self.u8(expected)? {
            t if t == tag => Ok(()),
            found => Err(DecodeError::Unexpected {
                found: found as char,
                expected,
            }),
        }
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::BadString)?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| DecodeError::BadString)?
            .to_string();
        self.0.advance(end + 1);
        Ok(s)
    }
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let n = self.u16("tuple column count")?;
        let mut columns = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let datum = match self.u8("column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => {
                    let len = self.u32("text value length")? as usize;
                    Datum::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.u32("binary value length")? as usize;
                    Datum::Binary(self.bytes(len, "binary value")?)
                }
                other => return Err(DecodeError::UnknownDatum(other as char)),
            };
            columns.push(datum);
        }
        Ok(TupleData(columns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(frames: &[&[u8]]) -> Vec<PgOutput> {
        let mut d = Decoder::new();
        frames
            .iter()
            .map(|f| d.decode(Bytes::copy_from_slice(f)).unwrap())
            .collect()
    }

    #[test]
    fn truncated_messages_say_what_is_missing() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(Bytes::from_static(b"B\0\0\0\0")),
            Err(DecodeError::Truncated {
                what: "LSN",
                needed: 4
            })
        );
        assert_eq!(
            d.decode(Bytes::from_static(b"Z")),
            Err(DecodeError::UnknownMessage('Z'))
        );
    }

    #[test]
    fn data_messages_inside_a_stream_carry_their_xid() {
        let insert_in_stream: &[u8] = &[
            b'I', 0, 0, 2, 0x3A, // xid 570
            0, 0, 0x40, 0, // relation 16384
            b'N', 0, 1, b't', 0, 0, 0, 1, b'7',
        ];
        let msgs = decode_all(&[&[b'S', 0, 0, 2, 0x3A, 1], insert_in_stream, b"E"]);
        assert_eq!(
            msgs[0],
            PgOutput::StreamStart {
                xid: 570,
                first_segment: true
            }
        );
        assert_eq!(
            msgs[1],
            PgOutput::Insert {
                xid: Some(570),
                relation: 16384,
                new: TupleData(vec![Datum::Text(Bytes::from_static(b"7"))])
            }
        );
        assert_eq!(msgs[2], PgOutput::StreamStop);
    }
}
