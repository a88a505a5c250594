//! Read-only access for code that asks for `Read + Write + Seek`: `fatfs` 0.3 wants a
//! writable device even to read a file (it could mark the volume dirty). `keel inspect` and
//! `keel verify` open `disk.raw` read-only and hand it over through this wrapper, so a write
//! fails instead of touching the image they are checking.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Passes reads and seeks through; every write fails with `PermissionDenied`.
pub struct ReadOnly<F>(pub F);

impl<F: Read> Read for ReadOnly<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<F: Seek> Seek for ReadOnly<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl<F> Write for ReadOnly<F> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "opened read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_seeks_but_never_writes() {
        let mut r = ReadOnly(io::Cursor::new(b"abcdef".to_vec()));
        r.seek(SeekFrom::Start(2)).unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"cd");
        let err = r.write(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(r.0.into_inner(), b"abcdef");
    }
}
