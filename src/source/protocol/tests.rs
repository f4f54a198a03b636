use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::ReadBuf;

use super::*;
use crate::source::error::ServerError;

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
fn a_frame_longer_than_postgresql_ever_sends_is_an_error_before_anything_is_reserved() {
    let mut read = BytesMut::new();
    read.put_u8(b'd');
    read.put_u32(u32::MAX);
    read.put_slice(&[0; 8]);
    let e = split_frame(&mut read).map(|_| ()).unwrap_err();
    assert_eq!(
        e,
        FrameError::TooLong {
            tag: 'd',
            len: u32::MAX as usize
        }
    );
    assert_eq!(
        e.to_string(),
        "a 'd' frame declares a length of 4294967295 bytes, more than the 1073741824 PostgreSQL ever sends; the stream is corrupt"
    );
    // The largest frame PostgreSQL may send is only waited for.
    let mut read = BytesMut::new();
    read.put_u8(b'd');
    read.put_u32(1 << 30);
    assert!(matches!(
        split_frame(&mut read),
        Ok(Split::Incomplete { frame_len: Some(_) })
    ));
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
