//! Bodies of unknown length as streams: a chunked body read as it arrives, and one written
//! chunk by chunk. Used for what is too large to hold in memory and whose size is not known
//! before it ends (an etcd snapshot). Chunked framing, unlike a close-delimited body, tells a
//! complete body from one cut short: only a complete one ends with the last (empty) chunk.

use std::io::{self, BufRead, BufReader, Read, Write};

use crate::ResponseHead;
use crate::body::{Body, Prefixed, bad_chunk, chunk_line};

/// A chunked body, de-chunked as it is read. Reading ends (returns 0) at the last chunk and
/// its trailers; a connection that ends before is an error, never a short body that looks
/// complete.
pub struct ChunkedReader<R: BufRead> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            left: 0,
            done: false,
        }
    }

    /// Reads the next chunk's size line; at the last chunk, its trailers too.
    fn next_chunk(&mut self) -> io::Result<()> {
        let line = chunk_line(&mut self.inner)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| bad_chunk(&format!("bad chunk size {size_text:?}")))?;
        if size > 0 {
            self.left = size;
            return Ok(());
        }
        for _ in 0..=crate::MAX_HEADERS {
            if chunk_line(&mut self.inner)?.is_empty() {
                self.done = true;
                return Ok(());
            }
        }
        Err(bad_chunk("too many trailer lines"))
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.done {
            self.next_chunk()?;
        }
        if self.done {
            return Ok(0);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "malformed chunked body: cut short",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner
                .read_exact(&mut crlf)
                .map_err(|_| bad_chunk("chunk without its CRLF"))?;
            if &crlf != b"\r\n" {
                return Err(bad_chunk("chunk longer than its size"));
            }
        }
        Ok(n)
    }
}

/// The body of a response whose head was `head` (with `early`, the bytes read past it), as
/// a stream: chunked, of a Content-Length, or up to the close.
pub fn body_reader<'a>(
    head: &ResponseHead,
    early: Vec<u8>,
    r: &'a mut dyn Read,
) -> Box<dyn Read + 'a> {
    if head.status == 204 || head.status == 304 {
        return Box::new(io::empty());
    }
    if head.headers.chunked() {
        return Box::new(ChunkedReader::new(BufReader::new(Prefixed::new(early, r))));
    }
    match head.content_length {
        Some(len) => Box::new(Body::new(early, r, len)),
        None => Box::new(Prefixed::new(early, r)),
    }
}

/// Writes a chunked body: each `write` is one chunk; [`ChunkedWriter::finish`] writes the
/// last chunk, without which the reader knows the body is incomplete.
pub struct ChunkedWriter<W: Write> {
    inner: W,
}

impl<W: Write> ChunkedWriter<W> {
    pub fn new(inner: W) -> Self {
        ChunkedWriter { inner }
    }

    /// The last chunk, then a flush.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            // An empty chunk would be the last one.
            return Ok(0);
        }
        let mut chunk = Vec::with_capacity(buf.len() + 16);
        chunk.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
        chunk.extend_from_slice(buf);
        chunk.extend_from_slice(b"\r\n");
        self.inner.write_all(&chunk)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
