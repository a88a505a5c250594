//! A reader with a size limit that is an error, not an end: what a hostile or damaged input
//! must not be allowed to make the builder read into memory.

use std::io::{self, Read};

/// Reads at most `limit` bytes of `inner`; a stream that goes on past the limit fails with
/// `InvalidData` rather than ending quietly (as `Read::take` would), so a truncated reading
/// is never mistaken for the whole.
pub struct LimitReader<R> {
    inner: R,
    limit: u64,
    read: u64,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitReader {
            inner,
            limit,
            read: 0,
        }
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte more than allowed tells a stream at the limit from a longer one.
        let room = (self.limit - self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {} bytes", self.limit),
            ));
        }
        Ok(n)
    }
}

/// Reads all of `reader`, failing if it holds more than `limit` bytes.
pub fn read_to_end_limited(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    LimitReader::new(reader, limit).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_is_fine_past_it_is_an_error() {
        assert_eq!(read_to_end_limited(&b"abcd"[..], 4).unwrap(), b"abcd");
        assert_eq!(read_to_end_limited(&b""[..], 0).unwrap(), b"");
        let err = read_to_end_limited(&b"abcde"[..], 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
    }
}
