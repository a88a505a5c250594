//! A reader that checks a blob against its expected size and SHA-256 while it is read, so a
//! blob is verified while it is unpacked or streamed rather than in a second pass over the
//! file (OCI blobs, update bundle parts).

use std::io::{self, Read};

use super::HashingReader;

/// How a blob differed from its descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("expected {expected} bytes, found {found}")]
    Size { expected: u64, found: u64 },
    #[error("expected {expected} bytes, found more")]
    TooLong { expected: u64 },
    #[error("digest mismatch: content hashes to sha256:{found}")]
    Digest { found: String },
}

/// A blob reader that fails instead of reporting end of file when the blob's size or sha256
/// differ from its descriptor, and fails as soon as the blob grows past its size. Consumers see
/// the error through whatever decoder sits on top; the verdict is also kept in the reader
/// ([`VerifyingReader::verdict`]) because decoders and the tar crate rewrap I/O errors.
pub struct VerifyingReader<R> {
    inner: HashingReader<R>,
    expected_hex: String,
    expected_size: u64,
    verdict: Option<Result<(), Mismatch>>,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected_hex: &str, expected_size: u64) -> Self {
        VerifyingReader {
            inner: HashingReader::new(inner),
            expected_hex: expected_hex.to_owned(),
            expected_size,
            verdict: None,
        }
    }

    /// `None` until end of file (or an over-long blob) has been seen.
    pub fn verdict(&self) -> Option<&Result<(), Mismatch>> {
        self.verdict.as_ref()
    }

    /// Reads whatever is left, so bytes no consumer wanted (padding after a tar's end marker,
    /// or a decoder that stopped early) are covered by the check, and returns the verdict.
    /// An `Err` is an I/O error from the underlying reader, not a mismatch.
    pub fn drain(&mut self) -> io::Result<Result<(), Mismatch>> {
        if self.verdict.is_none()
            && let Err(err) = io::copy(self, &mut io::sink())
            && self.verdict.is_none()
        {
            return Err(err);
        }
        match &self.verdict {
            Some(verdict) => Ok(verdict.clone()),
            None => Err(io::Error::other("blob verification did not conclude")),
        }
    }

    fn conclude(&mut self) -> Result<(), Mismatch> {
        let (digest, found_size) = self.inner.take_digest();
        let found_hex = hex::encode(digest);
        if found_size != self.expected_size {
            Err(Mismatch::Size {
                expected: self.expected_size,
                found: found_size,
            })
        } else if found_hex != self.expected_hex {
            Err(Mismatch::Digest { found: found_hex })
        } else {
            Ok(())
        }
    }
}

fn to_io(mismatch: &Mismatch) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, mismatch.clone())
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.verdict {
            Some(Ok(())) => return Ok(0),
            Some(Err(mismatch)) => return Err(to_io(mismatch)),
            None => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        let verdict = if n == 0 {
            self.conclude()
        } else if self.inner.len() > self.expected_size {
            Err(Mismatch::TooLong {
                expected: self.expected_size,
            })
        } else {
            return Ok(n);
        };
        let result = match &verdict {
            Ok(()) => Ok(0),
            Err(mismatch) => Err(to_io(mismatch)),
        };
        self.verdict = Some(verdict);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn verdicts() {
        let data = b"hello world";
        let good = sha(data);
        let cases: Vec<(&[u8], u64, Result<(), Mismatch>)> = vec![
            (data, 11, Ok(())),
            (
                b"hello World",
                11,
                Err(Mismatch::Digest {
                    found: sha(b"hello World"),
                }),
            ),
            (
                b"hello",
                11,
                Err(Mismatch::Size {
                    expected: 11,
                    found: 5,
                }),
            ),
            (b"hello world!", 11, Err(Mismatch::TooLong { expected: 11 })),
        ];
        for (input, size, want) in cases {
            let mut reader = VerifyingReader::new(input, &good, size);
            let mut out = Vec::new();
            let read = reader.read_to_end(&mut out);
            assert_eq!(read.is_ok(), want.is_ok(), "{input:?}");
            if let Err(err) = read {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            }
            assert_eq!(reader.verdict(), Some(&want), "{input:?}");
            // The verdict sticks: further reads repeat it instead of reporting a clean EOF.
            assert_eq!(reader.read(&mut [0; 4]).is_ok(), want.is_ok());
        }
    }

    #[test]
    fn drain_covers_bytes_nobody_read() {
        let data = b"payload and trailing bytes";
        let mut reader = VerifyingReader::new(&data[..], &sha(data), data.len() as u64);
        let mut head = [0; 7];
        reader.read_exact(&mut head).unwrap();
        assert_eq!(reader.verdict(), None);
        assert_eq!(reader.drain().unwrap(), Ok(()));

        let mut reader = VerifyingReader::new(&data[..], &sha(b"other"), data.len() as u64);
        reader.read_exact(&mut head).unwrap();
        assert!(matches!(
            reader.drain().unwrap(),
            Err(Mismatch::Digest { .. })
        ));
    }

    #[test]
    fn hashing_reader_counts() {
        let mut reader = HashingReader::new(&b"abc"[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        let done = reader.finish();
        assert_eq!((done.sha256_hex(), done.len), (sha(b"abc"), 3));
    }
}
