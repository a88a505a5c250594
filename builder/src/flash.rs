//! `keel flash`: a built image onto a disk (or into a file). Only the data regions of the
//! sparse `disk.raw` are written (found with `SEEK_DATA`/`SEEK_HOLE`, as bmaptool finds them),
//! plus every partition range the signed manifest has a digest for, in full; then the target
//! is synced and read back (past the page cache), and each written region is checked against
//! what was read from `disk.raw`, each signed partition against the manifest's digest.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keel_contract::manifest::{Manifest, Sha256Digest};
use keel_contract::output;
use sha2::{Digest, Sha256};

use crate::progress::{Reporter, human_bytes};

#[path = "flash_target.rs"]
pub mod target;

const CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// A missing or unreadable output directory, a target that is not a disk or a file.
    #[error("{}: {message}", path.display())]
    BadInput { path: PathBuf, message: String },
    /// The target is in use (mounted, holds `/`) and `--force` was not given.
    #[error("{}: {why}; refusing to overwrite it (--force overrides)", device.display())]
    InUse { device: PathBuf, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// What was read back differs from what was written.
    #[error("{}: verification failed: {message}", path.display())]
    Verify { path: PathBuf, message: String },
}

impl crate::error::Classify for FlashError {
    fn is_bad_input(&self) -> bool {
        matches!(self, FlashError::BadInput { .. } | FlashError::InUse { .. })
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct FlashOptions {
    /// Write even to a mounted disk or the one holding `/`.
    pub force: bool,
}

#[derive(Debug)]
pub struct FlashReport {
    pub target: PathBuf,
    pub is_device: bool,
    pub disk_size: u64,
    pub written: u64,
    pub regions: usize,
    /// What the read-back checked.
    pub checked: Vec<String>,
}

/// A byte range `[start, end)` of the image.
pub type Region = (u64, u64);

/// The data regions of `file` (holes skipped), as `SEEK_DATA`/`SEEK_HOLE` report them; a
/// filesystem without hole reporting gives one region, the whole file.
pub fn data_regions(file: &File, size: u64) -> std::io::Result<Vec<Region>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on an open descriptor we own; no memory is passed.
        let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(err);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (start, end) = (start as u64, (end as u64).min(size));
        if end > start {
            out.push((start, end));
        }
        pos = end;
    }
    Ok(out)
}

/// `regions` and `extra` merged into sorted, non-overlapping ranges.
pub fn merge(regions: &[Region], extra: &[Region]) -> Vec<Region> {
    let mut all: Vec<Region> = regions.iter().chain(extra).copied().collect();
    all.retain(|(s, e)| e > s);
    all.sort_unstable();
    let mut out: Vec<Region> = Vec::new();
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Reads and parses the output directory's manifest and opens its disk; errors name the file.
fn open_output(dir: &Path) -> Result<(Manifest, File, PathBuf, u64), FlashError> {
    let bad = |path: &Path, message: String| FlashError::BadInput {
        path: path.to_path_buf(),
        message,
    };
    let manifest_path = dir.join(output::MANIFEST);
    let bytes = std::fs::read(&manifest_path).map_err(|e| {
        bad(
            &manifest_path,
            format!("{e} (not a `keel build` output directory?)"),
        )
    })?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| bad(&manifest_path, e.to_string()))?;
    let disk_path = dir.join(output::DISK);
    let disk = File::open(&disk_path).map_err(|e| bad(&disk_path, e.to_string()))?;
    let size = disk.metadata().map_err(io_at(&disk_path))?.len();
    if size != manifest.disk.size {
        return Err(bad(
            &disk_path,
            format!("{size} bytes, the manifest says {}", manifest.disk.size),
        ));
    }
    Ok((manifest, disk, disk_path, size))
}

/// Flashes the image in `dir` onto `target`. `before_read_back` runs between the sync and
/// the read-back (tests use it to damage the target, as a failing disk would).
pub fn flash(
    dir: &Path,
    target_path: &Path,
    opts: &FlashOptions,
    rep: &Reporter,
    before_read_back: &mut dyn FnMut(&Path),
) -> Result<FlashReport, FlashError> {
    let (manifest, disk, disk_path, size) = open_output(dir)?;
    let kind = target::inspect(target_path, size)?;
    let same_file =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    if let (Ok(src), Ok(dst)) = (disk.metadata(), std::fs::metadata(target_path))
        && same_file(&src, &dst)
    {
        return Err(FlashError::BadInput {
            path: target_path.to_path_buf(),
            message: format!("is the image itself ({})", disk_path.display()),
        });
    }
    if let (target::Kind::Device(dev), false) = (&kind, opts.force)
        && let Some(why) = target::in_use(dev)?
    {
        return Err(FlashError::InUse {
            device: target_path.to_path_buf(),
            why,
        });
    }
    let is_device = matches!(kind, target::Kind::Device(_));
    let signed: Vec<(String, Region, Sha256Digest)> = manifest
        .disk
        .partitions
        .iter()
        .filter_map(|p| {
            let c = p.content.as_ref()?;
            Some((p.label.clone(), (p.offset, p.offset + c.size), c.sha256))
        })
        .collect();
    let data = data_regions(&disk, size).map_err(io_at(&disk_path))?;
    // A signed partition is written in full: on a disk, a hole left unwritten keeps whatever
    // the disk held before, and the digest covers it.
    let extra: Vec<Region> = signed.iter().map(|(_, r, _)| *r).collect();
    let regions = merge(&data, &extra);
    let total: u64 = regions.iter().map(|(s, e)| e - s).sum();

    let out = open_target(target_path, is_device, size, opts.force)?;
    let source_digests = write_regions(
        (&disk, &disk_path, size),
        (&out, target_path),
        &regions,
        rep,
    )?;
    drop_cache(&out);
    drop(out);
    before_read_back(target_path);

    let checked = read_back(target_path, &regions, &source_digests, &signed, rep)?;
    Ok(FlashReport {
        target: target_path.to_path_buf(),
        is_device,
        disk_size: size,
        written: total,
        regions: regions.len(),
        checked,
    })
}

/// Copies `regions` from the image to the target and syncs; returns each region's digest.
fn write_regions(
    (disk, disk_path, size): (&File, &Path, u64),
    (out, target_path): (&File, &Path),
    regions: &[Region],
    rep: &Reporter,
) -> Result<Vec<Sha256Digest>, FlashError> {
    let total: u64 = regions.iter().map(|(s, e)| e - s).sum();
    let phase = rep.phase("flash", Some(total));
    let mut digests = Vec::with_capacity(regions.len());
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for &(start, end) in regions {
        let mut hasher = Sha256::new();
        let mut at = start;
        while at < end {
            let n = CHUNK.min((end - at) as usize);
            disk.read_exact_at(&mut buf[..n], at)
                .map_err(io_at(disk_path))?;
            hasher.update(&buf[..n]);
            out.write_all_at(&buf[..n], at)
                .map_err(io_at(target_path))?;
            at += n as u64;
            done += n as u64;
            phase.set_position(done);
        }
        digests.push(Sha256Digest(hasher.finalize().into()));
    }
    out.sync_all().map_err(io_at(target_path))?;
    phase.finish(&format!(
        "{} in {} regions of {} written to {}, synced",
        human_bytes(total),
        regions.len(),
        human_bytes(size),
        target_path.display()
    ));
    Ok(digests)
}

/// Opens the target for writing: a disk exclusively (the kernel refuses while it is mounted,
/// unless forced), a file created or emptied and sized like the image.
fn open_target(path: &Path, is_device: bool, size: u64, force: bool) -> Result<File, FlashError> {
    let mut o = OpenOptions::new();
    o.write(true);
    if is_device {
        if !force {
            o.custom_flags(libc::O_EXCL);
        }
        return o.open(path).map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => FlashError::InUse {
                device: path.to_path_buf(),
                why: "the kernel says it is busy (mounted or in use)".into(),
            },
            _ => FlashError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        });
    }
    // Truncated first: the holes of the image must read as zeros, not as old data.
    let file = o
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_at(path))?;
    file.set_len(size).map_err(io_at(path))?;
    Ok(file)
}

/// Drops the target's cached pages so the read-back reads the disk, not memory.
fn drop_cache(file: &File) {
    // SAFETY: advice on an open descriptor; no memory is passed. Failure only means the
    // read-back may be served from the cache.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Reads every written region back, comparing it with the source's digest and feeding the
/// signed partitions' digests on the way (each signed range lies inside one region).
fn read_back(
    path: &Path,
    regions: &[Region],
    source: &[Sha256Digest],
    signed: &[(String, Region, Sha256Digest)],
    rep: &Reporter,
) -> Result<Vec<String>, FlashError> {
    let fail = |message: String| FlashError::Verify {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(io_at(path))?;
    drop_cache(&file);
    let total: u64 = regions.iter().map(|(s, e)| e - s).sum();
    let phase = rep.phase("read back", Some(total));
    let mut partitions: Vec<Sha256> = signed.iter().map(|_| Sha256::new()).collect();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for (&(start, end), want) in regions.iter().zip(source) {
        let mut hasher = Sha256::new();
        let mut at = start;
        while at < end {
            let n = CHUNK.min((end - at) as usize);
            file.read_exact_at(&mut buf[..n], at).map_err(io_at(path))?;
            hasher.update(&buf[..n]);
            for ((_, (ps, pe), _), h) in signed.iter().zip(partitions.iter_mut()) {
                let (s, e) = ((*ps).max(at), (*pe).min(at + n as u64));
                if s < e {
                    h.update(&buf[(s - at) as usize..(e - at) as usize]);
                }
            }
            at += n as u64;
            done += n as u64;
            phase.set_position(done);
        }
        let got = Sha256Digest(hasher.finalize().into());
        if got != *want {
            return Err(fail(format!(
                "bytes {start}..{end} read back differ from the image (sha256 {got}, wrote {want})"
            )));
        }
    }
    let mut checked = vec![format!("{} regions equal to the image", regions.len())];
    for ((label, (s, e), want), h) in signed.iter().zip(partitions) {
        let got = Sha256Digest(h.finalize().into());
        if got != *want {
            return Err(fail(format!(
                "partition {label} does not match the signed manifest (sha256 {got}, expected {want})"
            )));
        }
        checked.push(format!("{label} ({} bytes) matches the manifest", e - s));
    }
    phase.finish(&checked.join("; "));
    Ok(checked)
}
