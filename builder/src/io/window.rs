//! A window onto part of a larger seekable file: a partition inside a disk image, so a
//! filesystem can be formatted or read in place.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The bytes `[offset, offset + len)` of `inner`, seen as a file of `len` bytes: reads stop
/// at its end, writes past it fail, seeks outside it fail.
pub struct Window<F> {
    inner: F,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<F: Seek> Window<F> {
    pub fn new(mut inner: F, offset: u64, len: u64) -> io::Result<Self> {
        inner.seek(SeekFrom::Start(offset))?;
        Ok(Window {
            inner,
            offset,
            len,
            pos: 0,
        })
    }

    pub fn into_inner(self) -> F {
        self.inner
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos) as usize;
        let n = buf.len().min(left);
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos) as usize;
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let n = self.inner.write(&buf[..buf.len().min(left)])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F: Seek> Seek for Window<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .filter(|&p| p <= self.len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek outside the partition"))?;
        self.inner.seek(SeekFrom::Start(self.offset + target))?;
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn window_bounds_io() {
        let mut w = Window::new(Cursor::new(vec![0u8; 100]), 10, 20).unwrap();
        w.write_all(&[1u8; 20]).unwrap();
        assert!(w.write_all(&[1]).is_err());
        assert!(w.seek(SeekFrom::Start(21)).is_err());
        let inner = w.inner.into_inner();
        assert_eq!(
            &inner[9..31],
            &[[0u8].as_slice(), &[1u8; 20], &[0u8]].concat()[..]
        );
    }
}
