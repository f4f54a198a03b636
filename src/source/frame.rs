//! Replication frames, parsed without I/O: `split_frame` cuts one backend frame off the
//! read buffer, `stream_frame` says what a frame means inside the CopyBoth stream, and
//! [`parse_copy_data`] reads a CopyData payload (XLogData or a primary keepalive). Their
//! errors are [`FrameError`]s, which name what was wrong. The I/O shell is
//! [`super::protocol`].

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;

use super::error::{ServerError, SourceError};
use super::protocol::ReplicationMessage;
use crate::lsn::Lsn;

/// One backend frame.
pub(super) enum Frame {
    Message(backend::Message),
    /// CopyBothResponse (`W`), which postgres-protocol does not parse.
    CopyBoth,
    /// A CopyData (`d`) payload: a slice of the read buffer.
    CopyData(Bytes),
}

/// What `split_frame` found at the front of the read buffer.
pub(super) enum Split {
    Frame(Frame),
    /// The frame is not complete yet. `frame_len` is its whole length (tag included) once its
    /// header has arrived.
    Incomplete {
        frame_len: Option<usize>,
    },
}

/// What a frame of the CopyBoth stream means to its reader.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StreamFrame {
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
    BadLength {
        /// Message type byte of the frame.
        tag: char,
        /// The declared length.
        len: usize,
    },
    /// A frame's length field is beyond anything PostgreSQL sends (its messages stay under
    /// 1 GiB): the stream is garbage, and reading on would only reserve memory for it.
    #[error("a {tag:?} frame declares a length of {len} bytes, more than the {MAX_FRAME} PostgreSQL ever sends; the stream is corrupt")]
    TooLong {
        /// Message type byte of the frame.
        tag: char,
        /// The declared length.
        len: usize,
    },
    /// postgres-protocol could not parse a complete frame.
    #[error("malformed {tag:?} message: {reason}")]
    Malformed {
        /// Message type byte of the frame.
        tag: char,
        /// What postgres-protocol reported.
        reason: String,
    },
    /// A CopyData message with no payload, so no message type byte.
    #[error("empty CopyData")]
    EmptyCopyData,
    /// A CopyData payload shorter than its message's fixed header.
    #[error("{message} ({tag:?}) ends after {len} byte(s) of its {needed}-byte header")]
    Truncated {
        /// Name of the replication message, e.g. `XLogData`.
        message: &'static str,
        /// Its type byte, `w` or `k`.
        tag: char,
        /// Bytes the payload has after the type byte.
        len: usize,
        /// Bytes the fixed header takes.
        needed: usize,
    },
    /// A CopyData payload whose first byte is neither `w` nor `k`.
    #[error("unknown replication message {0:?}")]
    UnknownMessage(char),
    /// A well-formed backend message that has no place in the replication stream.
    #[error("unexpected {0} in the replication stream")]
    Unexpected(&'static str),
}

/// The longest frame accepted: PostgreSQL allocates no message of 1 GiB or more
/// (`MaxAllocSize`), so a longer length is corruption, not data.
const MAX_FRAME: usize = 1 << 30;

/// Size of an XLogData header after its tag: WAL start, WAL end, send time.
const XLOG_DATA_HEADER: usize = 24;
/// Size of a primary keepalive after its tag: WAL end, send time, reply flag.
const KEEPALIVE_LEN: usize = 17;

/// Splits the frame at the front of `read` off it. Pure; an incomplete frame is left in
/// `read` untouched, which is what makes reading cancel-safe.
pub(super) fn split_frame(read: &mut BytesMut) -> Result<Split, FrameError> {
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
    if len > MAX_FRAME {
        return Err(FrameError::TooLong {
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
pub(super) fn stream_frame(frame: Frame) -> Result<StreamFrame, FrameError> {
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
pub(super) fn frame_error(target: &str, e: FrameError) -> SourceError {
    match e {
        FrameError::BadLength { .. }
        | FrameError::TooLong { .. }
        | FrameError::Malformed { .. } => SourceError::Io {
            target: target.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        },
        e => SourceError::protocol(e.to_string()),
    }
}

/// A backend message's name, for errors.
pub(super) fn message_name(msg: &backend::Message) -> &'static str {
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

pub(super) fn server_error(body: &backend::ErrorResponseBody) -> ServerError {
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
