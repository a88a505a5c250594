//! The FAT partitions (ESP and STATE): what goes in them, a window onto a partition inside
//! the disk image, and reading files back with `fatfs` (for inspect and verify). Writing is
//! done by [`crate::fat32`].

use std::io::{self, Read, Seek, SeekFrom, Write};

use fatfs::{Date, DateTime, FileSystem, FsOptions, Time};

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{path}: not an absolute path")]
    BadPath { path: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FatError {
    let what = what.into();
    move |source| FatError::Io { what, source }
}

/// A window `[offset, offset + len)` of a larger seekable file, so a filesystem can be
/// formatted in place inside a disk image.
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

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

pub fn fat_time(epoch: u64) -> DateTime {
    let secs = epoch.max(315_532_800); // 1980-01-01T00:00:00Z
    let (year, month, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    DateTime {
        date: Date {
            year: year.min(2107) as u16,
            month: month as u16,
            day: day as u16,
        },
        time: Time {
            hour: (rem / 3600) as u16,
            min: (rem / 60 % 60) as u16,
            sec: (rem % 60) as u16,
            millis: 0,
        },
    }
}

/// What goes into a FAT filesystem.
#[derive(Debug, Clone)]
pub enum FatEntry {
    Dir(String),
    File(String, Vec<u8>),
}

pub struct FatSpec<'a> {
    /// 11 bytes, space padded.
    pub label: [u8; 11],
    pub volume_id: u32,
    pub source_date_epoch: u64,
    pub entries: &'a [FatEntry],
}

/// Formats `storage` (a whole partition) as FAT32 holding the entries.
pub fn write_fat<S: Write + Seek>(mut storage: S, spec: &FatSpec<'_>) -> Result<(), FatError> {
    let size = storage
        .seek(SeekFrom::End(0))
        .map_err(io_err("sizing the partition"))?;
    storage
        .seek(SeekFrom::Start(0))
        .map_err(io_err("seeking"))?;
    crate::fat32::write(
        &mut storage,
        size,
        &spec.label,
        spec.volume_id,
        spec.source_date_epoch,
        spec.entries,
    )
    .map_err(|e| FatError::Io {
        what: "writing FAT32".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn relative(path: &str) -> Result<&str, FatError> {
    path.strip_prefix('/').ok_or_else(|| FatError::BadPath {
        path: path.to_owned(),
    })
}

/// Reads a file from a FAT filesystem (used by `keel inspect` and `keel verify`).
pub fn read_fat_file<S: Read + Write + Seek>(storage: S, path: &str) -> Result<Vec<u8>, FatError> {
    let fs = FileSystem::new(storage, FsOptions::new()).map_err(io_err("opening FAT"))?;
    let mut bytes = Vec::new();
    {
        let mut file = fs
            .root_dir()
            .open_file(relative(path)?)
            .map_err(io_err(format!("opening {path}")))?;
        file.read_to_end(&mut bytes)
            .map_err(io_err(format!("reading {path}")))?;
    }
    Ok(bytes)
}

/// Lists the files under `dir` (names only).
pub fn list_fat_dir<S: Read + Write + Seek>(
    storage: S,
    dir: &str,
) -> Result<Vec<String>, FatError> {
    let fs = FileSystem::new(storage, FsOptions::new()).map_err(io_err("opening FAT"))?;
    let mut names = Vec::new();
    {
        let rel = relative(dir)?;
        let d = if rel.is_empty() {
            fs.root_dir()
        } else {
            fs.root_dir()
                .open_dir(rel)
                .map_err(io_err(format!("opening {dir}")))?
        };
        for entry in d.iter() {
            let entry = entry.map_err(io_err(format!("listing {dir}")))?;
            let name = entry.file_name();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(fat_time(0).date.year, 1980);
    }

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

    #[test]
    fn fat32_round_trip_and_reproducible() {
        let entries = vec![
            FatEntry::Dir("/loader".into()),
            FatEntry::Dir("/loader/entries".into()),
            FatEntry::File(
                "/loader/entries/keel-a+3.conf".into(),
                b"title x\n".to_vec(),
            ),
        ];
        let spec = FatSpec {
            label: *b"ESP        ",
            volume_id: 0x1234_5678,
            source_date_epoch: 1_700_000_000,
            entries: &entries,
        };
        let mut a = Cursor::new(vec![0u8; 64 << 20]);
        write_fat(&mut a, &spec).unwrap();
        let mut b = Cursor::new(vec![0u8; 64 << 20]);
        write_fat(&mut b, &spec).unwrap();
        assert!(a.get_ref() == b.get_ref(), "same input, same bytes");
        a.set_position(0);
        assert_eq!(
            read_fat_file(&mut a, "/loader/entries/keel-a+3.conf").unwrap(),
            b"title x\n"
        );
        a.set_position(0);
        assert_eq!(
            list_fat_dir(&mut a, "/loader/entries").unwrap(),
            vec!["keel-a+3.conf"]
        );
    }
}
