//! Hashing while reading or writing.
//!
//! Every artifact the builder writes is recorded in the signed manifest with its SHA-256 and
//! size. Hashing while writing, instead of re-reading the file afterwards, halves the I/O for
//! multi-GiB images and guarantees the digest describes exactly the bytes that were handed to
//! the file.

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

/// Zeros fed to the hasher for holes; a static buffer keeps hole handling allocation-free.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Digest and length of a byte stream, together with the stream's inner reader or writer.
#[derive(Debug)]
pub struct Hashed<T> {
    pub inner: T,
    pub sha256: [u8; 32],
    pub len: u64,
}

impl<T> Hashed<T> {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// A [`Write`] wrapper that hashes (SHA-256) and counts every byte the inner writer accepts.
///
/// Only the bytes the inner writer reports as written are hashed, so a short write never makes
/// the digest disagree with the file.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Stops hashing and returns the inner writer with the digest. Buffered data in the inner
    /// writer is not flushed; flush first if the inner writer buffers.
    pub fn finish(self) -> Hashed<W> {
        Hashed {
            inner: self.inner,
            sha256: self.hasher.finalize().into(),
            len: self.len,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hasher.update(written);
        self.len += written.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write + Seek> HashingWriter<W> {
    /// Appends `len` zero bytes by seeking forward instead of writing them, so a file on a
    /// filesystem with holes stays sparse. The zeros are still part of the digest and length.
    ///
    /// Seeking does not extend a file: if the stream ends in a hole, the caller must set the
    /// file length to [`HashingWriter::len`] once writing is done.
    pub fn write_hole(&mut self, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            left -= n as u64;
        }
        let offset = i64::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "hole too large"))?;
        self.inner.seek(SeekFrom::Current(offset))?;
        self.len += len;
        Ok(())
    }
}

/// A [`Read`] wrapper that hashes (SHA-256) and counts every byte read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn finish(self) -> Hashed<R> {
        Hashed {
            inner: self.inner,
            sha256: self.hasher.finalize().into(),
            len: self.len,
        }
    }

    /// The digest and length of what has been read so far, and a fresh start.
    pub fn take_digest(&mut self) -> ([u8; 32], u64) {
        let len = std::mem::take(&mut self.len);
        (self.hasher.finalize_reset().into(), len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or(buf);
        self.hasher.update(read);
        self.len += read.len() as u64;
        Ok(n)
    }
}

/// SHA-256 of the next `len` bytes of `reader` (which must have them).
pub fn sha256_exact(reader: &mut impl Read, len: u64) -> io::Result<[u8; 32]> {
    let mut hashing = HashingReader::new(reader.take(len));
    io::copy(&mut hashing, &mut io::sink())?;
    let done = hashing.finish();
    if done.len != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, found {}", done.len),
        ));
    }
    Ok(done.sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Accepts at most three bytes per call, to check that short writes are hashed exactly.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_hashes_exactly_what_was_accepted() {
        let mut w = HashingWriter::new(Trickle(Vec::new()));
        w.write_all(b"hello, world").unwrap();
        assert_eq!(w.write(b"abcdef").unwrap(), 3);
        let done = w.finish();
        assert_eq!(done.inner.0, b"hello, worldabc");
        assert_eq!(done.len, 15);
        assert_eq!(done.sha256, sha256(b"hello, worldabc"));
    }

    #[test]
    fn holes_are_hashed_as_zeros_and_leave_the_gap_unwritten() {
        let mut w = HashingWriter::new(io::Cursor::new(vec![0xAAu8; 8]));
        w.write_all(b"ab").unwrap();
        w.write_hole(100_000).unwrap();
        w.write_all(b"cd").unwrap();
        let done = w.finish();
        let mut expected = b"ab".to_vec();
        expected.extend(std::iter::repeat_n(0u8, 100_000));
        expected.extend_from_slice(b"cd");
        assert_eq!(done.len, expected.len() as u64);
        assert_eq!(done.sha256, sha256(&expected));
        // The cursor's pre-existing bytes inside the hole were skipped, not overwritten.
        assert_eq!(&done.inner.get_ref()[2..8], &[0xAA; 6]);
    }

    #[test]
    fn reader_hashes_what_it_reads() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut r = HashingReader::new(&data[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let done = r.finish();
        assert_eq!(out, data);
        assert_eq!(done.len, data.len() as u64);
        assert_eq!(done.sha256, sha256(&data));
        assert_eq!(done.sha256_hex(), hex::encode(sha256(&data)));
    }
}
