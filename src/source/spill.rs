//! Streamed transactions are buffered until they commit: in memory up to a threshold, then in
//! a local file. An aborted subtransaction is cut off the end of its transaction's buffer.
//!
//! PostgreSQL streams a large transaction in segments while it is still running, interleaved
//! with other transactions. Nothing of it may be published before its commit (it may still
//! abort), so its raw pgoutput messages are kept here and replayed on `StreamCommit`, when its
//! commit LSN, which every change needs, is finally known.
//!
//! Subtransactions nest and stream in order, so aborting subtransaction `s` discards exactly
//! the messages from `s`'s first message onward, which is what [`StreamBuffer::abort_sub`]
//! does (the same rule PostgreSQL's own apply worker follows).
//!
//! Memory held is what `spill_threshold_bytes` accounts: buffered messages are copied out of
//! the socket's read buffers rather than kept as slices of them.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

/// Size of the chunks buffered messages are copied into.
const ARENA_CHUNK: usize = 1 << 20;

/// The buffered messages of one streamed transaction.
#[derive(Debug)]
pub struct StreamBuffer {
    xid: u32,
    memory: Vec<Bytes>,
    arena: BytesMut,
    memory_bytes: u64,
    threshold_bytes: u64,
    spill_dir: PathBuf,
    file: Option<SpillFile>,
    /// Position (message count) of each subtransaction's first message.
    sub_starts: Vec<(u32, u64)>,
    count: u64,
}

#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Byte offset of each message written, for truncation.
    offsets: Vec<u64>,
    len: u64,
}

impl StreamBuffer {
    /// An empty buffer for transaction `xid`, kept in memory up to `threshold_bytes` and
    /// spilled to a file in `spill_dir` beyond.
    pub fn new(xid: u32, threshold_bytes: u64, spill_dir: &Path) -> Self {
        Self {
            xid,
            memory: Vec::new(),
            arena: BytesMut::new(),
            memory_bytes: 0,
            threshold_bytes,
            spill_dir: spill_dir.to_path_buf(),
            file: None,
            sub_starts: Vec::new(),
            count: 0,
        }
    }

    /// Bytes held in memory (the rest is on disk).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Appends a message of subtransaction `subxid` (the top-level xid for its own messages).
    pub fn push(&mut self, subxid: u32, message: Bytes) -> io::Result<()> {
        if subxid != self.xid && !self.sub_starts.iter().any(|(x, _)| *x == subxid) {
            self.sub_starts.push((subxid, self.count));
        }
        self.count += 1;
        if self.file.is_none() && self.memory_bytes + message.len() as u64 <= self.threshold_bytes {
            self.memory_bytes += message.len() as u64;
            // A compact copy: the message is a slice of a socket read buffer, and keeping it
            // would keep that whole buffer alive (one per message when reads are small, as
            // with TLS), so the memory held would be far more than what is accounted.
            // Copies go into shared chunks: one allocation per ARENA_CHUNK, not per message.
            if self.arena.capacity() - self.arena.len() < message.len() {
                self.arena = BytesMut::with_capacity(ARENA_CHUNK.max(message.len()));
            }
            self.arena.extend_from_slice(&message);
            self.memory.push(self.arena.split().freeze());
            return Ok(());
        }
        let file = match &mut self.file {
            Some(f) => f,
            None => self
                .file
                .insert(SpillFile::create(&self.spill_dir, self.xid)?),
        };
        file.append(&message)
    }

    /// Discards subtransaction `subxid` and everything buffered after its first message.
    pub fn abort_sub(&mut self, subxid: u32) -> io::Result<()> {
        let Some(i) = self.sub_starts.iter().position(|(x, _)| *x == subxid) else {
            return Ok(()); // it had no changes
        };
        let start = self.sub_starts[i].1;
        self.sub_starts.truncate(i);
        let in_memory = self.memory.len() as u64;
        if start < in_memory {
            for m in self.memory.drain(start as usize..) {
                self.memory_bytes -= m.len() as u64;
            }
            if let Some(file) = self.file.take() {
                file.remove();
            }
        } else if let Some(file) = &mut self.file {
            file.truncate((start - in_memory) as usize)?;
        }
        self.count = start;
        Ok(())
    }

    /// The buffered messages in order, consuming the buffer: those held in memory, and a
    /// reader of the spilled rest (its file is already unlinked), if any.
    pub fn into_parts(mut self) -> io::Result<(Vec<Bytes>, Option<SpillReader>)> {
        let spilled = match self.file.take() {
            Some(file) => Some(file.into_reader()?),
            None => None,
        };
        Ok((std::mem::take(&mut self.memory), spilled))
    }

    /// All buffered messages in order (reads the spill file inline: tests and tools).
    pub fn into_messages(self) -> io::Result<impl Iterator<Item = io::Result<Bytes>>> {
        let (memory, spilled) = self.into_parts()?;
        Ok(memory
            .into_iter()
            .map(Ok)
            .chain(spilled.into_iter().flatten()))
    }
}

impl SpillFile {
    fn create(dir: &Path, xid: u32) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("walcast-stream-{}-{xid}.spill", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Self {
            path,
            writer: BufWriter::with_capacity(1 << 20, file),
            offsets: Vec::new(),
            len: 0,
        })
    }

    fn append(&mut self, message: &[u8]) -> io::Result<()> {
        self.offsets.push(self.len);
        self.writer
            .write_all(&(message.len() as u32).to_be_bytes())?;
        self.writer.write_all(message)?;
        self.len += 4 + message.len() as u64;
        Ok(())
    }

    fn truncate(&mut self, keep: usize) -> io::Result<()> {
        if keep >= self.offsets.len() {
            return Ok(());
        }
        self.writer.flush()?;
        let len = self.offsets[keep];
        self.writer.get_mut().set_len(len)?;
        self.writer.get_mut().seek(SeekFrom::Start(len))?;
        self.offsets.truncate(keep);
        self.len = len;
        Ok(())
    }

    fn into_reader(mut self) -> io::Result<SpillReader> {
        self.writer.flush()?;
        let mut file = self.writer.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        // Unlinked now: the open handle keeps the data readable, and a crash leaves nothing.
        let _ = std::fs::remove_file(&self.path);
        Ok(SpillReader {
            reader: BufReader::with_capacity(1 << 20, file),
            remaining: self.offsets.len(),
        })
    }

    fn remove(self) {
        drop(self.writer);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for StreamBuffer {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(&file.path);
        }
    }
}

/// Reads spilled messages back, in order.
#[derive(Debug)]
pub struct SpillReader {
    reader: BufReader<File>,
    remaining: usize,
}

impl Iterator for SpillReader {
    type Item = io::Result<Bytes>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut len = [0u8; 4];
        if let Err(e) = self.reader.read_exact(&mut len) {
            return Some(Err(e));
        }
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        Some(self.reader.read_exact(&mut buf).map(|()| Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(buffer: StreamBuffer) -> Vec<Bytes> {
        buffer
            .into_messages()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn spills_past_the_threshold_and_replays_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = StreamBuffer::new(7, 10, dir.path());
        for i in 0..5u8 {
            b.push(7, Bytes::from(vec![i; 4])).unwrap();
        }
        assert_eq!(b.memory_bytes(), 8, "two messages fit under 10 bytes");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the rest spilled"
        );
        let got = messages(b);
        assert_eq!(
            got,
            (0..5u8)
                .map(|i| Bytes::from(vec![i; 4]))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill file removed"
        );
    }

    #[test]
    fn an_aborted_subtransaction_is_cut_off_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for threshold in [1 << 20, 6] {
            let mut b = StreamBuffer::new(1, threshold, dir.path());
            b.push(1, Bytes::from_static(b"top-a")).unwrap();
            b.push(2, Bytes::from_static(b"sub2-a")).unwrap();
            b.push(3, Bytes::from_static(b"sub3-a")).unwrap();
            b.push(3, Bytes::from_static(b"sub3-b")).unwrap();
            b.abort_sub(3).unwrap();
            b.push(1, Bytes::from_static(b"top-b")).unwrap();
            assert_eq!(
                messages(b),
                vec![
                    Bytes::from_static(b"top-a"),
                    Bytes::from_static(b"sub2-a"),
                    Bytes::from_static(b"top-b")
                ],
                "threshold {threshold}"
            );
        }
    }
}
