//! Conversion of the raw GPT disk image into the formats hypervisors and clouds import.
//!
//! Everything is written by our own code rather than by `qemu-img` or `tar`, so the output is a
//! pure function of the input bytes and [`ConvertOptions`]: no host tool versions, clocks or
//! random identifiers leak into signed artifacts. Host tools only act as independent peers in
//! the tests.
//!
//! Disk images are large and mostly zeros, so every converter works in bounded memory from
//! positional reads and never touches zero regions more than it must: host-filesystem holes
//! are skipped with `SEEK_DATA`/`SEEK_HOLE`, and data regions are examined in [`BLOCK`]-sized
//! blocks, dropping blocks that are all zeros. Formats whose metadata precedes the data (qcow2,
//! sparse tar) make a first pass to map the data blocks, then a second pass to copy them, which
//! keeps the output strictly sequential so it can be hashed as it is written.

mod gce;
mod qcow2;
mod vhd;

use std::fs::{File, Permissions};
use std::io::{self, BufWriter, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::io::{Hashed, HashingWriter};

/// Granularity of zero detection and of sparse output. It equals the qcow2 cluster size so a
/// data block maps to exactly one cluster, and it is a multiple of the tar block size, which
/// GNU sparse entries need for every data region but the last.
pub const BLOCK: u64 = 64 * 1024;

/// Read size inside data regions: large enough to amortise syscalls, small enough to keep
/// memory use flat.
const READ_CHUNK: usize = 1024 * 1024;

static ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// The output formats are the profile's (`image.formats`); names and file names live there.
pub use keel_contract::profile::{OutputFormat, UnknownFormat};

/// The only inputs, besides the image bytes, that output bytes depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Seconds since the Unix epoch, recorded wherever a format wants a time (VHD footer, tar
    /// entry). Normally the build's `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// Seed for identifiers a format wants unique (the VHD unique id). Derive it from the image,
    /// e.g. the GPT disk GUID, so a rebuild reproduces it and different images differ.
    pub unique_id_seed: [u8; 16],
    /// The image holds secrets (STATE with the node's share): the output stays owner-only
    /// (0600), as its temporary file is from its first byte, instead of becoming 0644.
    pub private: bool,
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    pub format: OutputFormat,
    pub path: PathBuf,
    /// Size of the written file in bytes.
    pub size: u64,
    /// SHA-256 of the written file.
    pub sha256: [u8; 32],
    /// Size of the disk a VM sees; larger than the raw image when the format requires
    /// rounding (VHD, qcow2 to whole sectors).
    pub virtual_size: u64,
    /// Bytes of the raw image that were copied as data rather than recorded as zeros.
    pub data_bytes: u64,
}

impl ConvertSummary {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: the image is empty", path.display())]
    EmptyImage { path: PathBuf },
    #[error("{}: the image changed size while it was being converted", path.display())]
    ImageChanged { path: PathBuf },
    #[error("{}: {format} is not a disk format: nothing converts a disk into it", path.display())]
    NotADisk { path: PathBuf, format: OutputFormat },
    #[error("{}: a {size}-byte image is too large for the {format} format", path.display())]
    TooLarge {
        path: PathBuf,
        format: OutputFormat,
        size: u64,
    },
}

impl FormatError {
    fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        FormatError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// Attaches the file and operation to an `io::Error`, which alone rarely says which of the two
/// files involved failed.
trait IoContext<T> {
    fn at(self, path: &Path, op: &'static str) -> Result<T, FormatError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path, op: &'static str) -> Result<T, FormatError> {
        self.map_err(|e| FormatError::io(path, op, e))
    }
}

/// Converts the raw disk image at `raw` to `format`, writing `dest`.
///
/// The output is written to a temporary file in `dest`'s directory and renamed over `dest`
/// only once complete and synced, so a failed conversion leaves no partial file behind.
/// The raw image must not change during the conversion.
pub fn convert(
    raw: &Path,
    format: OutputFormat,
    dest: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertSummary, FormatError> {
    if !format.is_disk() {
        return Err(FormatError::NotADisk {
            path: dest.to_owned(),
            format,
        });
    }
    let image = RawImage::open(raw)?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".keel-convert-")
        .tempfile_in(dir)
        .at(dest, "create temporary file")?;

    let mut out = HashingWriter::new(BufWriter::with_capacity(READ_CHUNK, tmp.as_file()));
    let written = match format {
        OutputFormat::Raw => {
            let data_bytes = copy_sparse(&image, &mut out, image.size(), dest)?;
            Written {
                virtual_size: image.size(),
                data_bytes,
            }
        }
        OutputFormat::Qcow2 => qcow2::write(&image, &mut out, dest)?,
        OutputFormat::Vhd => vhd::write(&image, &mut out, dest, opts)?,
        OutputFormat::Gce => gce::write(&image, &mut out, dest, opts)?,
        OutputFormat::Pxe => {
            return Err(FormatError::NotADisk {
                path: dest.to_owned(),
                format,
            });
        }
    };
    out.flush().at(dest, "write")?;
    let Hashed { inner, sha256, len } = out.finish();
    let file = inner
        .into_inner()
        .map_err(|e| FormatError::io(dest, "write", e.into_error()))?;
    // A stream that ends in a hole was only seeked over; the length makes the hole real.
    file.set_len(len).at(dest, "set length")?;
    // Temporary files are private (0600); artifacts are meant to be shared, unless they
    // carry secrets.
    if !opts.private {
        file.set_permissions(Permissions::from_mode(0o644))
            .at(dest, "set permissions")?;
    }
    file.sync_all().at(dest, "sync")?;
    tmp.persist(dest)
        .map_err(|e| FormatError::io(dest, "rename into place", e.error))?;

    Ok(ConvertSummary {
        format,
        path: dest.to_owned(),
        size: len,
        sha256,
        virtual_size: written.virtual_size,
        data_bytes: written.data_bytes,
    })
}

/// What a format writer reports back to [`convert`].
struct Written {
    virtual_size: u64,
    data_bytes: u64,
}

/// A contiguous run of data blocks in the raw image. `offset` is [`BLOCK`]-aligned; `len` is a
/// multiple of [`BLOCK`] except when the run ends at the end of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    offset: u64,
    len: u64,
}

impl Extent {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The input image, read only through positional reads so that the file offset, which
/// `SEEK_DATA`/`SEEK_HOLE` move, never matters.
struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawImage {
    fn open(path: &Path) -> Result<Self, FormatError> {
        let file = File::open(path).at(path, "open")?;
        let size = file.metadata().at(path, "stat")?.len();
        if size == 0 {
            return Err(FormatError::EmptyImage {
                path: path.to_owned(),
            });
        }
        Ok(RawImage {
            file,
            path: path.to_owned(),
            size,
        })
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), FormatError> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                FormatError::ImageChanged {
                    path: self.path.clone(),
                }
            } else {
                FormatError::io(&self.path, "read", e)
            }
        })
    }

    /// The next region at or after `from` that the host filesystem stores as data, as
    /// `[start, end)`. Filesystems without hole reporting yield everything as one region.
    fn data_region(&self, from: u64) -> Result<Option<(u64, u64)>, FormatError> {
        if from >= self.size {
            return Ok(None);
        }
        let Ok(off) = libc::off_t::try_from(from) else {
            return Ok(Some((from, self.size)));
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: lseek on a descriptor owned by `self.file`, which outlives the call; it only
        // moves the file offset, which this type never relies on.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                // No data at or after `from`: the rest of the file is a hole.
                Some(libc::ENXIO) => Ok(None),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((from, self.size))),
                _ => Err(FormatError::io(&self.path, "seek to data", err)),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let start = u64::try_from(data).unwrap_or(from);
        if start >= self.size {
            return Ok(None);
        }
        let end = if hole < 0 {
            self.size
        } else {
            u64::try_from(hole).unwrap_or(self.size)
        };
        // Guarantees progress even if the filesystem reports an empty region.
        Ok(Some((start, end.clamp(start + 1, self.size))))
    }

    /// Calls `f(offset, bytes)` for every [`BLOCK`]-aligned block holding a non-zero byte, in
    /// increasing offset order. Blocks are [`BLOCK`] bytes except the image's last, which may
    /// be shorter.
    fn for_each_data_block(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut pos = 0;
        while let Some((start, end)) = self.data_region(pos)? {
            let mut off = align_down(start, BLOCK).max(pos);
            let end = align_up(end, BLOCK).min(self.size);
            while off < end {
                let n = usize::try_from(end - off).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
                let chunk = &mut buf[..n];
                self.read_exact_at(chunk, off)?;
                let mut block_off = off;
                for block in chunk.chunks(BLOCK as usize) {
                    if !is_zero(block) {
                        f(block_off, block)?;
                    }
                    block_off += block.len() as u64;
                }
                off += n as u64;
            }
            pos = end;
        }
        Ok(())
    }

    /// Maps the data blocks of the image, merging neighbours into runs.
    fn data_extents(&self) -> Result<Vec<Extent>, FormatError> {
        let mut extents: Vec<Extent> = Vec::new();
        self.for_each_data_block(|offset, block| {
            let len = block.len() as u64;
            match extents.last_mut() {
                Some(last) if last.end() == offset => last.len += len,
                _ => extents.push(Extent { offset, len }),
            }
            Ok(())
        })?;
        Ok(extents)
    }

    /// Copies `extent` from the image to `out` in bounded chunks.
    fn copy_extent(
        &self,
        extent: Extent,
        out: &mut impl Write,
        dest: &Path,
    ) -> Result<(), FormatError> {
        let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(extent.len).unwrap_or(READ_CHUNK))];
        let mut off = extent.offset;
        while off < extent.end() {
            let n = usize::try_from(extent.end() - off).map_or(buf.len(), |n| n.min(buf.len()));
            let chunk = &mut buf[..n];
            self.read_exact_at(chunk, off)?;
            out.write_all(chunk).at(dest, "write")?;
            off += n as u64;
        }
        Ok(())
    }
}

/// Writes the image's bytes to `out`, leaving holes for zero blocks, then zeros up to
/// `total_len` (also as a hole). Returns the number of data bytes written.
fn copy_sparse<W: Write + Seek>(
    image: &RawImage,
    out: &mut HashingWriter<W>,
    total_len: u64,
    dest: &Path,
) -> Result<u64, FormatError> {
    let mut pos = 0u64;
    let mut data_bytes = 0u64;
    image.for_each_data_block(|offset, block| {
        out.write_hole(offset - pos).at(dest, "seek")?;
        out.write_all(block).at(dest, "write")?;
        pos = offset + block.len() as u64;
        data_bytes += block.len() as u64;
        Ok(())
    })?;
    out.write_hole(total_len.saturating_sub(pos))
        .at(dest, "seek")?;
    Ok(data_bytes)
}

fn is_zero(buf: &[u8]) -> bool {
    // Slice equality on bytes compiles to memcmp even in debug builds, unlike a per-byte loop.
    buf.chunks(ZERO_BLOCK.len())
        .all(|c| c == &ZERO_BLOCK[..c.len()])
}

const fn align_down(v: u64, to: u64) -> u64 {
    v - v % to
}

const fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to).saturating_mul(to)
}

#[cfg(test)]
mod tests;
