//! The binary `COPY … TO STDOUT (FORMAT binary)` format, parsed incrementally: bytes in as
//! the server sends them, rows out as soon as they are whole. Each field is the type's
//! binary send format, the same bytes pgoutput sends in binary mode, so the source's value
//! decoder reads them unchanged. Fields share the received buffers (no copy).

use bytes::{Buf, Bytes, BytesMut};

use crate::source::pgoutput::Datum;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Why bytes were not a binary COPY stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binary COPY: {0}")]
pub struct CopyError(pub String);

/// See the module doc.
#[derive(Debug, Default)]
pub struct CopyParser {
    buf: BytesMut,
    header_done: bool,
    ended: bool,
}

impl CopyParser {
    /// Appends bytes of the COPY stream as they arrive.
    pub fn push(&mut self, data: Bytes) {
        self.buf.extend_from_slice(&data);
    }

    /// Whether the trailer (field count -1) was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next whole row, if buffered.
    pub fn next_row(&mut self) -> Result<Option<Vec<Datum>>, CopyError> {
        if self.ended {
            return Ok(None);
        }
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError(
                    "the stream does not start with the PGCOPY signature".into(),
                ));
            }
            let ext = u32::from_be_bytes(self.buf[15..19].try_into().expect("4 bytes")) as usize;
            if self.buf.len() < 19 + ext {
                return Ok(None);
            }
            self.buf.advance(19 + ext);
            self.header_done = true;
        }
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
        if count == -1 {
            self.ended = true;
            self.buf.advance(2);
            return Ok(None);
        }
        if count < 0 {
            return Err(CopyError(format!("a row with {count} fields")));
        }
        // Measure the whole row before taking anything, so a partial row stays buffered.
        let mut at = 2;
        for _ in 0..count {
            if self.buf.len() < at + 4 {
                return Ok(None);
            }
            let len = i32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            at += 4;
            if len > 0 {
                at += len as usize;
            } else if len < -1 {
                return Err(CopyError(format!("a field of length {len}")));
            }
        }
        if self.buf.len() < at {
            return Ok(None);
        }
        let mut row = self.buf.split_to(at).freeze();
        row.advance(2);
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let len = row.get_i32();
            fields.push(if len == -1 {
                Datum::Null
            } else {
                Datum::Binary(row.split_to(len as usize))
            });
        }
        Ok(Some(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in row {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn parse_in_pieces(bytes: &[u8], piece: usize) -> Vec<Vec<Datum>> {
        let mut p = CopyParser::default();
        let mut rows = Vec::new();
        for part in bytes.chunks(piece) {
            p.push(Bytes::copy_from_slice(part));
            while let Some(row) = p.next_row().unwrap() {
                rows.push(row);
            }
        }
        assert!(p.ended());
        rows
    }

    #[test]
    fn rows_come_out_whole_however_the_bytes_are_split() {
        let bytes = stream(&[
            vec![Some(&7i64.to_be_bytes()[..]), None, Some(b"ada")],
            vec![Some(&8i64.to_be_bytes()[..]), Some(b""), Some(b"grace")],
        ]);
        let expected = vec![
            vec![
                Datum::Binary(Bytes::copy_from_slice(&7i64.to_be_bytes())),
                Datum::Null,
                Datum::Binary(Bytes::from_static(b"ada")),
            ],
            vec![
                Datum::Binary(Bytes::copy_from_slice(&8i64.to_be_bytes())),
                Datum::Binary(Bytes::new()),
                Datum::Binary(Bytes::from_static(b"grace")),
            ],
        ];
        for piece in [1, 2, 3, 7, 1000] {
            assert_eq!(
                parse_in_pieces(&bytes, piece),
                expected,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn a_stream_without_the_signature_is_an_error() {
        let mut p = CopyParser::default();
        p.push(Bytes::from_static(b"id,name\n1,ada\n2,grace\n"));
        assert_eq!(
            p.next_row().unwrap_err().to_string(),
            "binary COPY: the stream does not start with the PGCOPY signature"
        );
    }
}
