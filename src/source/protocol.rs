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

use bytes::{BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::SourceError;
use super::frame::{
    frame_error, server_error, split_frame, stream_frame, Frame, Split, StreamFrame,
};
pub use super::frame::{parse_copy_data, FrameError};
use super::tls::TlsSettings;
use crate::lsn::Lsn;

/// A wakeup that brings less than this is small…
const TRICKLE_BYTES: usize = 4096;
/// …and this many small wakeups in a row are a trickle.
const TRICKLE_READS: u32 = 16;
/// How long a trickling stream is left to accumulate before the next read.
const READ_LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// How long a polite close waits for the server to end the stream (a walsender deep in a
/// large transaction's decoding answers late) before it just drops the connection.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bytes read from the socket per call.
const SCRATCH_BYTES: usize = 1 << 16;

/// Read buffer growth. Frames handed out are slices of the read buffer, so growing it means a
/// new allocation; a large chunk amortises that over many reads (a TLS read returns a single
/// ~16 KiB record).
const READ_CHUNK: usize = 1 << 18;

/// The most a frame's declared length reserves ahead of the bytes read so far.
const RESERVE_AHEAD: usize = 64 << 20;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A message of the CopyBoth stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicationMessage {
    /// `w` XLogData: a chunk of WAL, here one pgoutput message.
    XLogData {
        /// Starting point of the WAL data in this message.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The pgoutput message bytes.
        data: Bytes,
    },
    /// `k` Primary keepalive.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Whether the server asks for a standby status update now, to avoid a timeout disconnect.
        reply_requested: bool,
    },
}

/// The result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemId {
    /// Unique identifier of the database cluster.
    pub system_id: String,
    /// Current timeline id.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// Database the connection is attached to.
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

impl ReplicationConn {
    /// Connects and authenticates with `url` (a libpq-style URL), in database replication
    /// mode, over TLS as `tls` says (Unix sockets never use TLS, as with libpq). A URL that
    /// lists several hosts is tried host by host, keeping the first that
    /// `target_session_attrs` accepts ([`super::hosts`]); each host gets the URL's
    /// `connect_timeout`.
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
        let candidates = super::hosts::candidates(&config)?;
        let wanted = config.get_target_session_attrs();
        if candidates.len() == 1
            && super::hosts::fits(wanted, true)
            && super::hosts::fits(wanted, false)
        {
            return Self::connect_to(&config, &candidates[0], application_name, tls).await;
        }
        let mut tried = Vec::new();
        let mut any_transient = false;
        let mut first_permanent = None;
        for candidate in &candidates {
            match Self::connect_to(&config, candidate, application_name, tls).await {
                Ok(mut conn) => {
                    let read_only = conn.read_only().await?;
                    if super::hosts::fits(wanted, read_only) {
                        return Ok(conn);
                    }
                    any_transient = true;
                    let what = if read_only { "read-only" } else { "read-write" };
                    tried.push(format!("{candidate} is {what}"));
                    // Not the server wanted; it was reached, so end politely.
                    conn.terminate().await;
                }
                Err(e) => {
                    any_transient |= e.is_transient();
                    tried.push(format!("{candidate}: {e}"));
                    first_permanent.get_or_insert(e);
                }
            }
        }
        match first_permanent {
            Some(e) if !any_transient => Err(e),
            _ => Err(SourceError::NoHost {
                wanted: super::hosts::attrs_name(wanted).to_string(),
                tried: tried.join("; "),
            }),
        }
    }

    /// Whether the server takes only reads (`transaction_read_only`): a standby does.
    async fn read_only(&mut self) -> Result<bool, SourceError> {
        let rows = self.simple_query("SHOW transaction_read_only").await?;
        match rows.first().and_then(|r| r.first().cloned().flatten()) {
            Some(v) => Ok(v == "on"),
            None => Err(SourceError::protocol(
                "SHOW transaction_read_only returned no value",
            )),
        }
    }

    /// Ends a connection that has not started streaming.
    async fn terminate(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }

    /// Connects and authenticates to one server of the URL's list.
    async fn connect_to(
        config: &tokio_postgres::Config,
        candidate: &super::hosts::Candidate,
        application_name: &str,
        tls: &TlsSettings,
    ) -> Result<Self, SourceError> {
        let timeout = config.get_connect_timeout().copied();
        let target = candidate.to_string();
        let attempt = Self::connect_unbounded(config, candidate, application_name, tls);
        match timeout {
            None => attempt.await,
            Some(limit) => tokio::time::timeout(limit, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(SourceError::Io {
                        target,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection within connect_timeout ({limit:?})"),
                        ),
                    })
                }),
        }
    }

    async fn connect_unbounded(
        config: &tokio_postgres::Config,
        candidate: &super::hosts::Candidate,
        application_name: &str,
        tls: &TlsSettings,
    ) -> Result<Self, SourceError> {
        use super::hosts::Candidate;
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
        let target = candidate.to_string();
        let io: Box<dyn Io> = match candidate {
            Candidate::Unix { dir, port } => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let s = tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|source| SourceError::Io {
                        target: target.clone(),
                        source,
                    })?;
                Box::new(s)
            }
            Candidate::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| SourceError::Io {
                        target: target.clone(),
                        source,
                    })?;
                s.set_nodelay(true).ok();
                negotiate_tls(s, host, &target, tls).await?
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

    /// What this connection reached: `host:port` or the Unix socket's path, for messages.
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

    /// Runs IDENTIFY_SYSTEM.
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

    /// Creates a logical slot with pgoutput, a failover slot with `failover`
    /// ([`super::slot`]); returns its consistent point.
    pub async fn create_slot(&mut self, slot: &str, failover: bool) -> Result<Lsn, SourceError> {
        let rows = self
            .simple_query(&super::slot::create_sql(slot, "nothing", failover))
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
    /// With `failover`, the slot is a failover slot ([`super::slot`]).
    pub async fn create_slot_exporting(
        &mut self,
        slot: &str,
        failover: bool,
    ) -> Result<(Lsn, String), SourceError> {
        let rows = self
            .simple_query(&super::slot::create_sql(slot, "export", failover))
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

    /// Makes `slot` a failover slot (17+; the slot must be free).
    pub async fn make_failover(&mut self, slot: &str) -> Result<(), SourceError> {
        self.simple_query(&super::slot::make_failover_sql(slot))
            .await
            .map(drop)
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

    /// Ends the stream and the connection politely, and waits (a few seconds at most) for
    /// the server to end its side: PostgreSQL releases the slot before it answers, so once
    /// `close` returns, the slot is free for `walcast slot drop`, a standby or a restart,
    /// and `walcast status` shows it inactive.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.write);
        if self.flush().await.is_err() {
            return;
        }
        let ended = async {
            // What the server still had in flight, then its CopyDone, CommandComplete and
            // ReadyForQuery: the slot was released before the last.
            while let Ok(frame) = self.next_frame().await {
                if matches!(frame, Frame::Message(backend::Message::ReadyForQuery(_))) {
                    return true;
                }
            }
            false
        };
        if tokio::time::timeout(CLOSE_WAIT, ended).await == Ok(true) {
            frontend::terminate(&mut self.write);
            let _ = self.flush().await;
        }
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
                } => self.read.reserve(
                    // What the frame says it needs, but never far ahead of the bytes that
                    // arrived: a claim of a gigabyte reserves it as it comes.
                    (frame_len - self.read.len()).clamp(READ_CHUNK, RESERVE_AHEAD),
                ),
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
                    // A connection cut mid-handshake is the network's, retried like any other.
                    if let Some(source) = super::tls::network_cause(&e) {
                        return SourceError::Io {
                            target: target.to_string(),
                            source,
                        };
                    }
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
mod tests;
