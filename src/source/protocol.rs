//! A PostgreSQL replication connection (`replication=database`), on postgres-protocol's codecs.
//!
//! tokio-postgres has no replication mode, so this is the thin I/O shell around the wire
//! protocol: startup, authentication (trust, cleartext, MD5, SCRAM-SHA-256), simple queries
//! for the replication commands, and CopyBoth streaming.
//!
//! Frames are parsed here rather than by `backend::Message::parse`, for two reasons: that
//! parser does not know `CopyBothResponse`, and the hot path (CopyData) should hand out
//! zero-copy slices of the read buffer. Reading is cancel-safe: a partial frame stays in the
//! buffer, so the read can sit in a `select!`.
//!
//! The byte-level parsing is pure and separate from the I/O: `split_frame` cuts one
//! backend frame off the read buffer, `stream_frame` says what a frame means inside the
//! CopyBoth stream, and [`parse_copy_data`] reads a CopyData payload (XLogData or a primary
//! keepalive). Their errors are [`FrameError`]s, which name what was wrong. A frame whose
//! framing itself is broken (a length field below 4, a message postgres-protocol cannot
//! parse) is treated as a broken connection, as postgres-protocol's own errors always were;
//! a well-framed message the replication protocol does not allow is a protocol error.

use std::str::FromStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::error::{ServerError, SourceError};
use super::tls::TlsSettings;
use crate::lsn::Lsn;

/// A wakeup that brings less than this is small…
const TRICKLE_BYTES: usize = 4096;
/// …and this many small wakeups in a row are a trickle.
const TRICKLE_READS: u32 = 16;
/// How long a trickling stream is left to accumulate before the next read.
const READ_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Bytes read from the socket per call.
const SCRATCH_BYTES: usize = 1 << 16;

/// Read buffer growth. Frames handed out are slices of the read buffer, so growing it means a
/// new allocation; a large chunk amortises that over many reads (a TLS read returns a single
/// ~16 KiB record).
const READ_CHUNK: usize = 1 << 18;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A message of the CopyBoth stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicationMessage {
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        reply_requested: bool,
    },
}

/// The result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemId {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub database: String,
}

/// An authenticated replication connection.
pub struct ReplicationConn {
    io: Box<dyn Io>,
    read: BytesMut,
    /// Initialised once. Reads land here and are copied into `read`: a TLS stream needs an
    /// initialised buffer, and reading into `read`'s spare capacity would zero all of it on
    /// every read, once per (tiny) TLS record; that was 42% of the CPU under TLS.
    scratch: Box<[u8]>,
    /// Consecutive wakeups that brought less than TRICKLE_BYTES.
    small_reads: u32,
    write: BytesMut,
    target: String,
    server_version: String,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("target", &self.target)
            .finish()
    }
}

/// One backend frame.
enum Frame {
    Message(backend::Message),
    /// CopyBothResponse (`W`), which postgres-protocol does not parse.
    CopyBoth,
    /// A CopyData (`d`) payload: a slice of the read buffer.
    CopyData(Bytes),
}

/// What `split_frame` found at the front of the read buffer.
enum Split {
    Frame(Frame),
    /// The frame is not complete yet. `frame_len` is its whole length (tag included) once its
    /// header has arrived.
    Incomplete {
        frame_len: Option<usize>,
    },
}

/// What a frame of the CopyBoth stream means to its reader.
#[derive(Debug, Clone, PartialEq)]
enum StreamFrame {
    Message(ReplicationMessage),
    /// A NoticeResponse: nothing to act on.
    Notice,
    /// CopyDone or CommandComplete: the server ended the stream.
    End,
    /// An ErrorResponse.
    ServerError(ServerError),
}

/// Why bytes from the server are not what the replication protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame's length field is below 4, the size of the length field itself.
    #[error(
        "a {tag:?} frame declares a length of {len}, less than the 4 bytes of its length field"
    )]
    BadLength { tag: char, len: usize },
    /// postgres-protocol could not parse a complete frame.
    #[error("malformed {tag:?} message: {reason}")]
    Malformed { tag: char, reason: String },
    #[error("empty CopyData")]
    EmptyCopyData,
    /// A CopyData payload shorter than its message's fixed header.
    #[error("{message} ({tag:?}) ends after {len} byte(s) of its {needed}-byte header")]
    Truncated {
        message: &'static str,
        tag: char,
        len: usize,
        needed: usize,
    },
    /// A CopyData payload whose first byte is neither `w` nor `k`.
    #[error("unknown replication message {0:?}")]
    UnknownMessage(char),
    /// A well-formed backend message that has no place in the replication stream.
    #[error("unexpected {0} in the replication stream")]
    Unexpected(&'static str),
}

/// Size of an XLogData header after its tag: WAL start, WAL end, send time.
const XLOG_DATA_HEADER: usize = 24;
/// Size of a primary keepalive after its tag: WAL end, send time, reply flag.
const KEEPALIVE_LEN: usize = 17;

/// Splits the frame at the front of `read` off it. Pure; an incomplete frame is left in
/// `read` untouched, which is what makes reading cancel-safe.
fn split_frame(read: &mut BytesMut) -> Result<Split, FrameError> {
    if read.len() < 5 {
        return Ok(Split::Incomplete { frame_len: None });
    }
    let tag = read[0];
    let len = u32::from_be_bytes([read[1], read[2], read[3], read[4]]) as usize;
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    if read.len() <= len {
        return Ok(Split::Incomplete {
            frame_len: Some(len + 1),
        });
    }
    let frame = match tag {
        b'd' => {
            let mut frame = read.split_to(len + 1);
            frame.advance(5);
            Frame::CopyData(frame.freeze())
        }
        b'W' => {
            read.advance(len + 1);
            Frame::CopyBoth
        }
        _ => {
            let malformed = |reason: String| FrameError::Malformed {
                tag: tag as char,
                reason,
            };
            let msg = backend::Message::parse(read)
                .map_err(|e| malformed(e.to_string()))?
                .ok_or_else(|| malformed("incomplete frame".into()))?;
            Frame::Message(msg)
        }
    };
    Ok(Split::Frame(frame))
}

/// What `frame` means inside the CopyBoth stream.
fn stream_frame(frame: Frame) -> Result<StreamFrame, FrameError> {
    match frame {
        Frame::CopyData(data) => parse_copy_data(data).map(StreamFrame::Message),
        Frame::Message(backend::Message::CopyDone)
        | Frame::Message(backend::Message::CommandComplete(_)) => Ok(StreamFrame::End),
        Frame::Message(backend::Message::ErrorResponse(body)) => {
            Ok(StreamFrame::ServerError(server_error(&body)))
        }
        Frame::Message(backend::Message::NoticeResponse(_)) => Ok(StreamFrame::Notice),
        Frame::Message(other) => Err(FrameError::Unexpected(message_name(&other))),
        Frame::CopyBoth => Err(FrameError::Unexpected("CopyBothResponse")),
    }
}

/// Parses a CopyData payload of the replication stream: XLogData (`w`) or a primary
/// keepalive (`k`). Pure; the WAL data is a zero-copy slice of `data`.
pub fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, FrameError> {
    if data.is_empty() {
        return Err(FrameError::EmptyCopyData);
    }
    let tag = data.get_u8();
    let need = |message, needed| {
        if data.len() < needed {
            Err(FrameError::Truncated {
                message,
                tag: tag as char,
                len: data.len(),
                needed,
            })
        } else {
            Ok(())
        }
    };
    match tag {
        b'w' => {
            need("XLogData", XLOG_DATA_HEADER)?;
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
            })
        }
        b'k' => {
            need("primary keepalive", KEEPALIVE_LEN)?;
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                reply_requested: data.get_u8() == 1,
            })
        }
        other => Err(FrameError::UnknownMessage(other as char)),
    }
}

/// Broken framing is a broken connection (transient, as postgres-protocol's parse errors
/// always were); a well-framed message out of place is a protocol error (permanent).
fn frame_error(target: &str, e: FrameError) -> SourceError {
    match e {
        FrameError::BadLength { .. } | FrameError::Malformed { .. } => SourceError::Io {
            target: target.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        },
        e => SourceError::protocol(e.to_string()),
    }
}

/// A backend message's name, for errors.
fn message_name(msg: &backend::Message) -> &'static str {
    use backend::Message as M;
    match msg {
        M::AuthenticationCleartextPassword
        | M::AuthenticationGss
        | M::AuthenticationKerberosV5
        | M::AuthenticationMd5Password(_)
        | M::AuthenticationOk
        | M::AuthenticationScmCredential
        | M::AuthenticationSspi
        | M::AuthenticationGssContinue(_)
        | M::AuthenticationSasl(_)
        | M::AuthenticationSaslContinue(_)
        | M::AuthenticationSaslFinal(_) => "authentication request",
        M::BackendKeyData(_) => "BackendKeyData",
        M::BindComplete => "BindComplete",
        M::CloseComplete => "CloseComplete",
        M::CommandComplete(_) => "CommandComplete",
        M::CopyData(_) => "CopyData",
        M::CopyDone => "CopyDone",
        M::CopyInResponse(_) => "CopyInResponse",
        M::CopyOutResponse(_) => "CopyOutResponse",
        M::DataRow(_) => "DataRow",
        M::EmptyQueryResponse => "EmptyQueryResponse",
        M::ErrorResponse(_) => "ErrorResponse",
        M::NoData => "NoData",
        M::NoticeResponse(_) => "NoticeResponse",
        M::NotificationResponse(_) => "NotificationResponse",
        M::ParameterDescription(_) => "ParameterDescription",
        M::ParameterStatus(_) => "ParameterStatus",
        M::ParseComplete => "ParseComplete",
        M::PortalSuspended => "PortalSuspended",
        M::ReadyForQuery(_) => "ReadyForQuery",
        M::RowDescription(_) => "RowDescription",
        _ => "backend message",
    }
}

impl ReplicationConn {
    /// Connects and authenticates with `url` (a libpq-style URL), in database replication
    /// mode, over TLS as `tls` says (Unix sockets never use TLS, as with libpq).
    pub async fn connect(
        url: &str,
        application_name: &str,
        tls: &TlsSettings,
    ) -> Result<Self, SourceError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            SourceError::setup(
                format!("invalid connection URL: {e}"),
                "fix the source's url",
            )
        })?;

        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| {
                SourceError::setup(
                    "the connection URL names no user",
                    "add user@ to the source's url",
                )
            })?
            .to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let (io, target): (Box<dyn Io>, String) = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let target = path.display().to_string();
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| SourceError::Io {
                        target: target.clone(),
                        source,
                    })?;
                (Box::new(s), target)
            }
            tcp => {
                // No host means localhost, as with libpq.
                let host = match tcp {
                    Some(Host::Tcp(host)) => host.as_str(),
                    _ => "localhost",
                };
                let target = format!("{host}:{port}");
                let s = tokio::net::TcpStream::connect(&target)
                    .await
                    .map_err(|source| SourceError::Io {
                        target: target.clone(),
                        source,
                    })?;
                s.set_nodelay(true).ok();
                (negotiate_tls(s, host, &target, tls).await?, target)
            }
        };
        let mut conn = ReplicationConn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            small_reads: 0,
            write: BytesMut::with_capacity(1 << 10),
            target,
            server_version: String::new(),
        };
        let params = [
            ("user", user.as_str()),
            ("database", database.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.write)
            .map_err(|e| conn.io_error(e))?;
        conn.flush().await?;
        conn.authenticate(&user, config.get_password()).await?;
        Ok(conn)
    }

    /// `server_version` as the server reported it at startup.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), SourceError> {
        let need_password = || {
            SourceError::Auth(format!(
                "the server asks {user} for a password and none is configured; set it in the URL or with password_env"
            ))
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.next_frame().await? {
                Frame::Message(backend::Message::AuthenticationOk) => {}
                Frame::Message(backend::Message::AuthenticationCleartextPassword) => {
                    let pw = password.ok_or_else(need_password)?;
                    frontend::password_message(pw, &mut self.write)
                        .map_err(|e| self.io_error(e))?;
                    self.flush().await?;
                }
                Frame::Message(backend::Message::AuthenticationMd5Password(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    let hash = md5_hash(user.as_bytes(), pw, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)
                        .map_err(|e| self.io_error(e))?;
                    self.flush().await?;
                }
                Frame::Message(backend::Message::AuthenticationSasl(body)) => {
                    let pw = password.ok_or_else(need_password)?;
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(m) = mechanisms.next().map_err(|e| self.io_error(e))? {
                        supported |= m == sasl::SCRAM_SHA_256;
                    }
                    if !supported {
                        return Err(SourceError::Auth(
                            "the server offers no SASL mechanism walcast supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(pw, sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.write,
                    )
                    .map_err(|e| self.io_error(e))?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Frame::Message(backend::Message::AuthenticationSaslContinue(body)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| SourceError::protocol("SASL continue before SASL start"))?;
                    s.update(body.data())
                        .map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write)
                        .map_err(|e| self.io_error(e))?;
                    self.flush().await?;
                }
                Frame::Message(backend::Message::AuthenticationSaslFinal(body)) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| SourceError::protocol("SASL final before SASL start"))?;
                    s.finish(body.data()).map_err(|e| {
                        SourceError::Auth(format!("SCRAM: the server's proof is wrong: {e}"))
                    })?;
                }
                Frame::Message(backend::Message::ParameterStatus(p)) => {
                    if p.name().ok() == Some("server_version") {
                        self.server_version = p.value().unwrap_or_default().to_string();
                    }
                }
                Frame::Message(backend::Message::BackendKeyData(_))
                | Frame::Message(backend::Message::NoticeResponse(_)) => {}
                Frame::Message(backend::Message::ReadyForQuery(_)) => return Ok(()),
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    let e = server_error(&body);
                    return Err(match e.code.as_str() {
                        "28P01" | "28000" => SourceError::Auth(e.to_string()),
                        _ => SourceError::Server(e),
                    });
                }
                Frame::Message(_) | Frame::CopyBoth | Frame::CopyData(_) => {
                    return Err(SourceError::protocol(
                        "unexpected message during authentication",
                    ))
                }
            }
        }
    }

    /// Runs a simple query; returns its rows as text (`None` for NULL).
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.write).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_frame().await? {
                Frame::Message(backend::Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut ranges = row.ranges();
                    let mut values = Vec::new();
                    while let Some(range) = ranges.next().map_err(|e| self.io_error(e))? {
                        values.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    error = Some(server_error(&body))
                }
                Frame::Message(backend::Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(SourceError::Server(e)),
                        None => Ok(rows),
                    }
                }
                Frame::Message(_) => {}
                Frame::CopyBoth | Frame::CopyData(_) => {
                    return Err(SourceError::protocol("unexpected COPY in a simple query"))
                }
            }
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemId, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 4)
            .ok_or_else(|| SourceError::protocol("IDENTIFY_SYSTEM returned no row"))?;
        let field = |i: usize| row[i].clone().unwrap_or_default();
        Ok(SystemId {
            system_id: field(0),
            timeline: field(1)
                .parse()
                .map_err(|_| SourceError::protocol("IDENTIFY_SYSTEM: bad timeline"))?,
            xlog_pos: field(2)
                .parse()
                .map_err(|e| SourceError::protocol(format!("IDENTIFY_SYSTEM: {e}")))?,
            database: field(3),
        })
    }

    /// Creates a logical slot with pgoutput; returns its consistent point.
    pub async fn create_slot(&mut self, slot: &str) -> Result<Lsn, SourceError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                quote_ident(slot)
            ))
            .await?;
        let lsn = rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .ok_or_else(|| SourceError::protocol("CREATE_REPLICATION_SLOT returned no position"))?;
        lsn.parse()
            .map_err(|e| SourceError::protocol(format!("CREATE_REPLICATION_SLOT: {e}")))
    }

    /// Creates a logical slot with pgoutput and exports the snapshot it starts from;
    /// returns its consistent point and the snapshot's name. The snapshot can be imported
    /// (`SET TRANSACTION SNAPSHOT`) until this connection runs another command or closes.
    pub async fn create_slot_exporting(
        &mut self,
        slot: &str,
    ) -> Result<(Lsn, String), SourceError> {
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(slot)
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::protocol("CREATE_REPLICATION_SLOT returned no row"))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let lsn = field(1)
            .ok_or_else(|| SourceError::protocol("CREATE_REPLICATION_SLOT returned no position"))?
            .parse()
            .map_err(|e| SourceError::protocol(format!("CREATE_REPLICATION_SLOT: {e}")))?;
        let snapshot = field(2)
            .ok_or_else(|| SourceError::protocol("CREATE_REPLICATION_SLOT exported no snapshot"))?;
        Ok((lsn, snapshot))
    }

    /// Starts streaming from `slot`; afterwards only [`Self::next_message`] and
    /// [`Self::send_status`] may be used.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<(), SourceError> {
        let options: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({})",
            quote_ident(slot),
            options.join(", ")
        );
        frontend::query(&sql, &mut self.write).map_err(|e| self.io_error(e))?;
        self.flush().await?;
        loop {
            match self.next_frame().await? {
                Frame::CopyBoth => return Ok(()),
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    let e = server_error(&body);
                    // Drain to ReadyForQuery so the connection could be reused.
                    while !matches!(
                        self.next_frame().await?,
                        Frame::Message(backend::Message::ReadyForQuery(_))
                    ) {}
                    return Err(SourceError::Server(e));
                }
                Frame::Message(backend::Message::NoticeResponse(_)) => {}
                _ => {
                    return Err(SourceError::protocol(
                        "START_REPLICATION: expected CopyBothResponse",
                    ))
                }
            }
        }
    }

    /// The next message of the replication stream; `None` when the server ended it.
    /// Cancel-safe.
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        loop {
            let frame = self.next_frame().await?;
            match stream_frame(frame).map_err(|e| self.frame_error(e))? {
                StreamFrame::Message(msg) => return Ok(Some(msg)),
                StreamFrame::End => return Ok(None),
                StreamFrame::ServerError(e) => return Err(SourceError::Server(e)),
                StreamFrame::Notice => {}
            }
        }
    }

    /// Sends a standby status update: `written` is what was received; `flushed` (and applied)
    /// is the position PostgreSQL may consider confirmed, and must only ever be an LSN whose
    /// changes are acknowledged downstream.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(written.0);
        body.put_u64(flushed.0);
        body.put_u64(flushed.0);
        body.put_i64(pg_now_micros());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())
            .map_err(|e| self.io_error(e))?
            .write(&mut self.write);
        self.flush().await
    }

    /// Ends the stream and the connection politely.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.write);
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        let buf = self.write.split();
        self.io
            .write_all(&buf)
            .await
            .map_err(|e| self.io_error(e))?;
        self.io.flush().await.map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            target: self.target.clone(),
            source,
        }
    }

    fn frame_error(&self, e: FrameError) -> SourceError {
        frame_error(&self.target, e)
    }

    async fn next_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            match split_frame(&mut self.read).map_err(|e| self.frame_error(e))? {
                Split::Frame(frame) => return Ok(frame),
                Split::Incomplete {
                    frame_len: Some(frame_len),
                } => self
                    .read
                    .reserve((frame_len - self.read.len()).max(READ_CHUNK)),
                Split::Incomplete { frame_len: None } => {
                    if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
                        self.read.reserve(READ_CHUNK);
                    }
                }
            }
            if self.small_reads >= TRICKLE_READS {
                // Wakeup after wakeup finds a message or two: the stream trickles in as fast
                // as the server decodes. Let it accumulate for a moment rather than paying a
                // wakeup (and, under TLS, a record read) per message. A burst followed by a
                // pause, as a committed transaction is, never lingers.
                tokio::time::sleep(READ_LINGER).await;
            }
            let n = self
                .io
                .read(&mut self.scratch)
                .await
                .map_err(|e| self.io_error(e))?;
            self.read.extend_from_slice(&self.scratch[..n]);
            if n == 0 {
                return Err(self.io_error(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
            let before = self.read.len();
            self.read_available()?;
            if n + (self.read.len() - before) < TRICKLE_BYTES {
                self.small_reads = self.small_reads.saturating_add(1);
            } else {
                self.small_reads = 0;
            }
        }
    }

    /// Reads whatever is already available, without waiting, so that one pass of the frame
    /// parser serves many messages (under TLS each message arrives as its own record). Polls
    /// with a no-op waker: a `Pending` here registers nothing that matters, because the next
    /// real read polls again with the task's own waker.
    fn read_available(&mut self) -> Result<(), SourceError> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..1024 {
            if self.read.len() >= READ_CHUNK {
                break; // enough unparsed data for one pass
            }
            let read = self.io.read(&mut self.scratch);
            let mut read = std::pin::pin!(read);
            match read.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(n)) if n > 0 => self.read.extend_from_slice(&self.scratch[..n]),
                Poll::Ready(Ok(_)) | Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(self.io_error(e)),
            }
        }
        Ok(())
    }
}

/// Asks the server for TLS (SSLRequest) and upgrades the stream when it agrees.
async fn negotiate_tls(
    mut stream: tokio::net::TcpStream,
    host: &str,
    target: &str,
    tls: &TlsSettings,
) -> Result<Box<dyn Io>, SourceError> {
    let Some(connector) = tls.connector()? else {
        return Ok(Box::new(stream));
    };
    let io = |source| SourceError::Io {
        target: target.to_string(),
        source,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await.map_err(io)?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
                        // The walsender flushes after every message, so under TLS each message is its own
            // record, and OpenSSL (without read-ahead) reads each with two syscalls. A buffer
            // beneath TLS serves those reads from memory: one syscall per many records.
            let buffered = tokio::io::BufReader::with_capacity(READ_CHUNK, stream);
            let tls_stream = tokio_native_tls::TlsConnector::from(connector)
                .connect(host, buffered)
                .await
                .map_err(|e| {
                    SourceError::setup(
                        format!("TLS handshake with {target} failed: {e}"),
                        "check tls_ca_file and that the server certificate names this host, or use tls_mode = \"require\" to skip verification",
                    )
                })?;
            Ok(Box::new(tls_stream))
        }
        b'N' if !tls.required() => Ok(Box::new(stream)),
        b'N' => Err(SourceError::setup(
            format!("{target} does not accept TLS connections, and tls_mode requires TLS"),
            "enable ssl on the server (ssl = on, ssl_cert_file, ssl_key_file), or set tls_mode = \"prefer\"",
        )),
        other => Err(SourceError::protocol(format!("unexpected answer {:?} to SSLRequest", other as char))),
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> ServerError {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

/// An identifier quoted for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Now, in microseconds since 2000-01-01 UTC.
fn pg_now_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    since_unix - super::change::PG_EPOCH_OFFSET_MICROS
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// A backend frame: tag, length (itself included), body.
    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut f = BytesMut::new();
        f.put_u8(tag);
        f.put_u32(4 + body.len() as u32);
        f.put_slice(body);
        f
    }

    fn xlog_data(wal_start: u64, wal_end: u64, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&wal_start.to_be_bytes());
        b.extend_from_slice(&wal_end.to_be_bytes());
        b.extend_from_slice(&0x0102_0304_0506_0708i64.to_be_bytes()); // send time
        b.extend_from_slice(payload);
        b
    }

    fn keepalive(wal_end: u64, reply: u8) -> Vec<u8> {
        let mut b = vec![b'k'];
        b.extend_from_slice(&wal_end.to_be_bytes());
        b.extend_from_slice(&7i64.to_be_bytes()); // send time
        b.push(reply);
        b
    }

    /// ErrorResponse and NoticeResponse bodies: typed, NUL-terminated fields, then a NUL.
    fn fields(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (ty, value) in fields {
            b.push(*ty);
            b.extend_from_slice(value.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    /// Splits one whole frame off `bytes` and reads it as the replication stream does;
    /// asserts that the frame was consumed, and nothing more.
    fn stream(bytes: BytesMut) -> Result<StreamFrame, FrameError> {
        let mut read = bytes;
        read.put_slice(b"next");
        let result = match split_frame(&mut read)? {
            Split::Frame(f) => stream_frame(f),
            Split::Incomplete { frame_len } => panic!("incomplete frame ({frame_len:?})"),
        };
        assert_eq!(&read[..], b"next", "exactly one frame is split off");
        result
    }

    fn copy_data(payload: &[u8]) -> Result<StreamFrame, FrameError> {
        stream(frame(b'd', payload))
    }

    #[test]
    fn xlog_data_carries_its_wal_positions_and_its_payload_as_a_slice_of_the_frame() {
        let data = Bytes::from(xlog_data(0x16_0000_0028, 0x16_0000_0100, b"B-payload"));
        let msg = parse_copy_data(data.clone()).unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            data: payload,
        } = msg
        else {
            panic!("not XLogData: {msg:?}");
        };
        assert_eq!(wal_start, Lsn(0x16_0000_0028));
        assert_eq!(wal_end, Lsn(0x16_0000_0100));
        assert_eq!(&payload[..], b"B-payload");
        assert_eq!(
            payload.as_ptr(),
            data[25..].as_ptr(),
            "the payload is not copied"
        );
    }

    #[test]
    fn xlog_data_with_only_its_header_has_an_empty_payload() {
        assert_eq!(
            parse_copy_data(Bytes::from(xlog_data(1, 2, b""))),
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                data: Bytes::new(),
            })
        );
    }

    #[test]
    fn a_keepalive_carries_the_wal_end_and_whether_a_reply_is_requested() {
        for (flag, reply_requested) in [(1, true), (0, false)] {
            assert_eq!(
                parse_copy_data(Bytes::from(keepalive(0xAB_CDEF, flag))),
                Ok(ReplicationMessage::Keepalive {
                    wal_end: Lsn(0xAB_CDEF),
                    reply_requested,
                })
            );
        }
    }

    #[test]
    fn an_empty_copy_data_is_an_error_saying_so() {
        let e = parse_copy_data(Bytes::new()).unwrap_err();
        assert_eq!(e, FrameError::EmptyCopyData);
        assert_eq!(e.to_string(), "empty CopyData");
    }

    #[test]
    fn a_truncated_xlog_data_header_is_an_error_naming_the_message_and_the_bytes_missing() {
        let whole = xlog_data(1, 2, b"");
        for len in 1..whole.len() {
            let e = parse_copy_data(Bytes::copy_from_slice(&whole[..len])).unwrap_err();
            assert_eq!(
                e,
                FrameError::Truncated {
                    message: "XLogData",
                    tag: 'w',
                    len: len - 1,
                    needed: 24
                }
            );
        }
        assert_eq!(
            parse_copy_data(Bytes::copy_from_slice(&whole[..11]))
                .unwrap_err()
                .to_string(),
            "XLogData ('w') ends after 10 byte(s) of its 24-byte header"
        );
    }

    #[test]
    fn a_truncated_keepalive_is_an_error_naming_the_message_and_the_bytes_missing() {
        let whole = keepalive(1, 0);
        for len in 1..whole.len() {
            let e = parse_copy_data(Bytes::copy_from_slice(&whole[..len])).unwrap_err();
            assert_eq!(
                e,
                FrameError::Truncated {
                    message: "primary keepalive",
                    tag: 'k',
                    len: len - 1,
                    needed: 17
                }
            );
        }
        assert_eq!(
            parse_copy_data(Bytes::copy_from_slice(&whole[..17]))
                .unwrap_err()
                .to_string(),
            "primary keepalive ('k') ends after 16 byte(s) of its 17-byte header"
        );
    }

    #[test]
    fn an_unknown_replication_message_is_an_error_naming_its_tag() {
        let e = parse_copy_data(Bytes::from_static(b"x\0\0\0")).unwrap_err();
        assert_eq!(e, FrameError::UnknownMessage('x'));
        assert_eq!(e.to_string(), "unknown replication message 'x'");
    }

    #[test]
    fn copy_data_frames_carry_replication_messages() {
        assert_eq!(
            copy_data(&keepalive(42, 1)),
            Ok(StreamFrame::Message(ReplicationMessage::Keepalive {
                wal_end: Lsn(42),
                reply_requested: true
            }))
        );
        assert_eq!(
            copy_data(&xlog_data(5, 6, b"C")),
            Ok(StreamFrame::Message(ReplicationMessage::XLogData {
                wal_start: Lsn(5),
                wal_end: Lsn(6),
                data: Bytes::from_static(b"C")
            }))
        );
        assert_eq!(copy_data(b"").unwrap_err(), FrameError::EmptyCopyData);
    }

    #[test]
    fn copy_done_and_command_complete_end_the_stream() {
        assert_eq!(stream(frame(b'c', b"")), Ok(StreamFrame::End));
        assert_eq!(
            stream(frame(b'C', b"START_REPLICATION\0")),
            Ok(StreamFrame::End)
        );
    }

    #[test]
    fn an_error_response_becomes_the_server_error_with_all_its_fields() {
        let body = fields(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "55000"),
            (b'M', "cannot read from logical replication slot \"s\""),
            (b'D', "This slot has been invalidated."),
            (b'H', "Drop and recreate the slot."),
        ]);
        assert_eq!(
            stream(frame(b'E', &body)),
            Ok(StreamFrame::ServerError(ServerError {
                severity: "ERROR".into(),
                code: "55000".into(),
                message: "cannot read from logical replication slot \"s\"".into(),
                detail: Some("This slot has been invalidated.".into()),
                hint: Some("Drop and recreate the slot.".into()),
            }))
        );
    }

    #[test]
    fn a_notice_is_passed_over() {
        let body = fields(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "hello")]);
        assert_eq!(stream(frame(b'N', &body)), Ok(StreamFrame::Notice));
    }

    #[test]
    fn a_message_out_of_place_in_the_stream_is_an_error_naming_it() {
        let e = stream(frame(b'Z', b"I")).unwrap_err();
        assert_eq!(e, FrameError::Unexpected("ReadyForQuery"));
        assert_eq!(
            e.to_string(),
            "unexpected ReadyForQuery in the replication stream"
        );
        assert_eq!(
            stream(frame(b'W', &[0, 0, 0])).unwrap_err().to_string(),
            "unexpected CopyBothResponse in the replication stream"
        );
        assert_eq!(
            stream(frame(b'D', &[0, 0])).unwrap_err(),
            FrameError::Unexpected("DataRow")
        );
    }

    #[test]
    fn an_incomplete_frame_is_left_whole_in_the_buffer_with_the_length_it_needs() {
        let whole = frame(b'd', &keepalive(9, 0));
        for len in 0..whole.len() {
            let mut read = BytesMut::from(&whole[..len]);
            let split = split_frame(&mut read).unwrap();
            let Split::Incomplete { frame_len } = split else {
                panic!("{len} of {} bytes made a frame", whole.len());
            };
            let expected = (len >= 5).then_some(whole.len());
            assert_eq!(frame_len, expected, "after {len} bytes");
            assert_eq!(&read[..], &whole[..len], "the partial frame stays put");
        }
    }

    #[test]
    fn frames_are_split_off_one_at_a_time_in_order() {
        let mut read = frame(b'W', &[0, 0, 0]);
        read.extend_from_slice(&frame(b'd', &keepalive(1, 0)));
        read.extend_from_slice(&frame(b'c', b""));
        assert!(matches!(
            split_frame(&mut read),
            Ok(Split::Frame(Frame::CopyBoth))
        ));
        assert!(matches!(
            split_frame(&mut read),
            Ok(Split::Frame(Frame::CopyData(d))) if d[..] == keepalive(1, 0)[..]
        ));
        assert!(matches!(
            split_frame(&mut read),
            Ok(Split::Frame(Frame::Message(backend::Message::CopyDone)))
        ));
        assert!(read.is_empty());
        assert!(matches!(
            split_frame(&mut read),
            Ok(Split::Incomplete { frame_len: None })
        ));
    }

    #[test]
    fn a_frame_length_below_four_is_an_error_not_a_panic() {
        for tag in [b'd', b'W', b'E'] {
            for len in 0..4u32 {
                let mut read = BytesMut::new();
                read.put_u8(tag);
                read.put_u32(len);
                read.put_slice(&[0; 8]);
                let e = split_frame(&mut read).map(|_| ()).unwrap_err();
                assert_eq!(
                    e,
                    FrameError::BadLength {
                        tag: tag as char,
                        len: len as usize
                    }
                );
            }
        }
        assert_eq!(
            FrameError::BadLength { tag: 'd', len: 0 }.to_string(),
            "a 'd' frame declares a length of 0, less than the 4 bytes of its length field"
        );
    }

    #[test]
    fn a_message_postgres_protocol_cannot_parse_is_malformed_and_names_its_tag() {
        let mut read = frame(b'X', b"??");
        let e = split_frame(&mut read).map(|_| ()).unwrap_err();
        let FrameError::Malformed { tag, reason } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(*tag, 'X');
        assert!(reason.contains("unknown message tag"), "{reason}");
        assert!(e.to_string().starts_with("malformed 'X' message: "), "{e}");
    }

    #[test]
    fn broken_framing_is_a_lost_connection_and_a_bad_message_a_protocol_error() {
        let lost = frame_error("db:5432", FrameError::BadLength { tag: 'd', len: 1 });
        assert!(matches!(lost, SourceError::Io { .. }), "{lost:?}");
        assert!(lost.is_transient());
        assert!(lost.to_string().starts_with("connection to db:5432 lost: "));

        let bad = frame_error("db:5432", FrameError::UnknownMessage('x'));
        assert!(!bad.is_transient());
        assert_eq!(
            bad.to_string(),
            "replication protocol error: unknown replication message 'x'"
        );
    }

    /// A server that sends its bytes a few at a time, with a pending read between chunks.
    struct Trickle {
        bytes: Bytes,
        chunk: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.pending = !self.pending;
            if self.pending && !self.bytes.is_empty() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
            let chunk = self.bytes.split_to(n);
            buf.put_slice(&chunk);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn conn(bytes: Bytes, chunk: usize) -> ReplicationConn {
        ReplicationConn {
            io: Box::new(Trickle {
                bytes,
                chunk,
                pending: false,
            }),
            read: BytesMut::new(),
            scratch: vec![0; 64].into_boxed_slice(),
            small_reads: 0,
            write: BytesMut::new(),
            target: "test".into(),
            server_version: String::new(),
        }
    }

    #[tokio::test]
    async fn the_connection_reads_the_same_messages_however_the_bytes_are_split() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&frame(b'd', &xlog_data(1, 2, b"first")));
        wire.extend_from_slice(&frame(b'N', &fields(&[(b'M', "a notice")])));
        wire.extend_from_slice(&frame(b'd', &keepalive(3, 1)));
        wire.extend_from_slice(&frame(b'd', &xlog_data(4, 5, &[7; 100])));
        wire.extend_from_slice(&frame(b'c', b""));
        let wire = wire.freeze();
        for chunk in [1, 3, 7, 64] {
            let mut c = conn(wire.clone(), chunk);
            let mut got = Vec::new();
            while let Some(msg) = c.next_message().await.unwrap() {
                got.push(msg);
            }
            assert_eq!(
                got,
                vec![
                    ReplicationMessage::XLogData {
                        wal_start: Lsn(1),
                        wal_end: Lsn(2),
                        data: Bytes::from_static(b"first")
                    },
                    ReplicationMessage::Keepalive {
                        wal_end: Lsn(3),
                        reply_requested: true
                    },
                    ReplicationMessage::XLogData {
                        wal_start: Lsn(4),
                        wal_end: Lsn(5),
                        data: Bytes::from(vec![7; 100])
                    },
                ],
                "{chunk}-byte reads"
            );
        }
    }

    #[tokio::test]
    async fn the_connection_reports_a_server_error_in_the_stream_and_an_early_end_as_lost() {
        let body = fields(&[(b'S', "FATAL"), (b'C', "57P01"), (b'M', "terminating")]);
        let mut c = conn(frame(b'E', &body).freeze(), 5);
        let e = c.next_message().await.unwrap_err();
        assert!(
            matches!(&e, SourceError::Server(s) if s.code == "57P01"),
            "{e:?}"
        );
        assert!(e.is_transient());

        let mut c = conn(frame(b'd', &keepalive(1, 0))[..10].to_vec().into(), 4);
        let e = c.next_message().await.unwrap_err();
        assert!(matches!(&e, SourceError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("closed the connection"), "{e}");
    }
}
