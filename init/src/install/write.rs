//! Writing an installation onto the chosen disk, in an order that never leaves a disk the
//! firmware would boot half-written: the old tables are wiped first, then the verified slot
//! payload, the ESP and STATE are written and each is read back and checked (the payload
//! and the ESP's boot files against the signed manifest), and only then the partition
//! tables, backup before primary.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use keel_contract::gpt::Gpt;
use keel_contract::layout::{self, BootEntry, PartitionRole, Slot};
use keel_contract::manifest::{FileDigest, Manifest, Sha256Digest};
use keel_fat::{FatEntry, FatSpec, esp};

use super::source::{BootFile, Image};

use crate::upgrade::stream::{CopyError, copy_hashed, drop_cache};

const BUFFER: usize = 1 << 20;
/// Zeroed at both ends of the disk before anything else: the old primary and backup
/// tables go first, so an interrupted install leaves a blank-looking disk, never an old
/// table over new contents.
const WIPE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// What was read does not match the signed manifest, or the disk does not hold what was
    /// written.
    #[error("{what}: {why}")]
    Mismatch { what: String, why: String },
    #[error("{0}")]
    Layout(String),
}

fn io_at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What the running node installs from: its image, verified ([`super::source`]), and its
/// STATE directory.
pub struct Source<'a> {
    pub image: &'a Image,
    pub state: &'a Path,
}

/// Writes the installation onto `target` (a whole disk) laid out as `table`.
pub fn install(
    target: &Path,
    table: &Gpt,
    src: &Source<'_>,
    log: &dyn Fn(&str),
) -> Result<u64, WriteError> {
    // O_EXCL on a block device: the kernel refuses it while anything holds the disk.
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(target)
        .map_err(io_at("open exclusively", target))?;
    let size = table.total_sectors * layout::SECTOR_SIZE;
    let zeros = vec![0u8; WIPE as usize];
    disk.write_all_at(&zeros, 0)
        .and_then(|()| disk.write_all_at(&zeros, size - WIPE))
        .and_then(|()| disk.sync_all())
        .map_err(io_at("wipe the old partition tables of", target))?;
    let part = |role: PartitionRole| {
        table
            .find(role.label())
            .map(|(_, p)| (p.offset(), p.size()))
            .ok_or_else(|| WriteError::Layout(format!("no {} in the planned table", role.label())))
    };
    let mut written = payload(&mut disk, target, part(PartitionRole::SlotA)?.0, src, log)?;
    let esp = esp_volume(src, table)?;
    written += write_verified(&disk, target, part(PartitionRole::Esp)?, &esp, "the ESP")?;
    log("install: the ESP is written and read back");
    let state = state_volume(src, table)?;
    written += write_verified(&disk, target, part(PartitionRole::State)?, &state, "STATE")?;
    log("install: STATE is written and read back");
    written += partition_tables(&disk, target, table)?;
    Ok(written)
}

/// The running slot's payload into the new disk's slot A, hashed while it is copied and
/// read back, both against the signed manifest's digest.
fn payload(
    disk: &mut File,
    target: &Path,
    offset: u64,
    src: &Source<'_>,
    log: &dyn Fn(&str),
) -> Result<u64, WriteError> {
    let want = &src.image.manifest.slot_payload;
    let device = src.image.payload.as_path();
    let mut input = File::open(device).map_err(io_at("open", device))?;
    disk.seek(SeekFrom::Start(offset))
        .map_err(io_at("seek", target))?;
    let mut buf = vec![0u8; BUFFER];
    let step = (want.size / 10).max(1);
    let progress = |done: u64| {
        if done % step < BUFFER as u64 || done == want.size {
            log(&format!(
                "install: root {}% ({} of {} MiB)",
                done * 100 / want.size.max(1),
                done >> 20,
                want.size >> 20
            ));
        }
    };
    let copied = copy_hashed(&mut input, disk, want.size, &mut buf, &progress)
        .map_err(|e| copy_error(e, device, target))?;
    check_digest("the running root", &copied, want)?;
    disk.sync_all().map_err(io_at("sync", target))?;
    drop_cache(disk);
    disk.seek(SeekFrom::Start(offset))
        .map_err(io_at("seek", target))?;
    let back = copy_hashed(disk, &mut io::sink(), want.size, &mut buf, &|_| {})
        .map_err(|e| copy_error(e, target, target))?;
    check_digest("the root read back from the new disk", &back, want)?;
    log("install: the root is written and read back; it matches the signed manifest");
    Ok(want.size)
}

fn copy_error(e: CopyError, from: &Path, to: &Path) -> WriteError {
    match e {
        CopyError::Read(source) => WriteError::Io {
            op: "read",
            path: from.to_path_buf(),
            source,
        },
        CopyError::Write(source) => WriteError::Io {
            op: "write",
            path: to.to_path_buf(),
            source,
        },
        CopyError::Short { got } => WriteError::Mismatch {
            what: from.display().to_string(),
            why: format!("ends after {got} bytes"),
        },
    }
}

fn check_digest(what: &str, got: &Sha256Digest, want: &FileDigest) -> Result<(), WriteError> {
    if *got == want.sha256 {
        Ok(())
    } else {
        Err(WriteError::Mismatch {
            what: what.into(),
            why: format!(
                "sha256 {}, the signed manifest says {}",
                got.to_hex(),
                want.sha256.to_hex()
            ),
        })
    }
}

/// The new ESP, as the builder writes one: the running image's boot files, each checked
/// against the signed manifest, as slot A with a fresh boot entry.
fn esp_volume(src: &Source<'_>, table: &Gpt) -> Result<Extents, WriteError> {
    let image = src.image;
    let m = &image.manifest;
    let kernel = FileDigest {
        size: m.kernel.size,
        sha256: m.kernel.sha256,
    };
    let checked = |file: &BootFile, want: &FileDigest| {
        file.checked(want)
            .map(<[u8]>::to_vec)
            .map_err(|why| WriteError::Mismatch {
                what: "a boot file for the new ESP".into(),
                why,
            })
    };
    let files = esp::SlotFiles {
        kernel: checked(&image.kernel, &kernel)?,
        initramfs: checked(&image.initramfs, &m.initramfs)?,
        manifest: image.manifest_bytes.clone(),
        signature: image.signature.clone(),
    };
    let bootloader = checked(&image.bootloader, &m.bootloader)?;
    let entry = BootEntry::new(
        Slot::A,
        &m.version,
        &m.root.verity.root_hash.to_hex(),
        &m.cmdline,
    );
    let entries = esp::entries(bootloader, &entry, files);
    fat_volume(
        table,
        PartitionRole::Esp,
        layout::esp::VOLUME_LABEL,
        m,
        &entries,
    )
}

/// The new STATE: every file the running node keeps in its STATE (the marker, the applied
/// profile, the secrets, a renewed certificate...), so that the installed node is the same
/// node. The medium's own install record stays behind.
fn state_volume(src: &Source<'_>, table: &Gpt) -> Result<Extents, WriteError> {
    let mut entries = Vec::new();
    collect(src.state, "", &mut entries)?;
    entries.retain(|e| !matches!(e, FatEntry::File(p, _) if p == layout::state::INSTALLED));
    // A diskless node's state directory was never a STATE volume: the marker the node
    // checks before it trusts a STATE is the builder's, written here the same way.
    let m = &src.image.manifest;
    if !entries
        .iter()
        .any(|e| matches!(e, FatEntry::File(p, _) if p == layout::state::MARKER))
    {
        entries.insert(
            0,
            FatEntry::File(
                layout::state::MARKER.into(),
                layout::state::marker(&m.name).into_bytes(),
            ),
        );
    }
    fat_volume(
        table,
        PartitionRole::State,
        layout::state::VOLUME_LABEL,
        m,
        &entries,
    )
}

fn collect(root: &Path, under: &str, out: &mut Vec<FatEntry>) -> Result<(), WriteError> {
    let dir = root.join(under.trim_start_matches('/'));
    let mut names: Vec<(String, bool)> = std::fs::read_dir(&dir)
        .map_err(io_at("list", &dir))?
        .filter_map(Result::ok)
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .collect();
    names.sort();
    for (name, is_dir) in names {
        let path = format!("{under}/{name}");
        if is_dir {
            out.push(FatEntry::Dir(path.clone()));
            collect(root, &path, out)?;
        } else {
            let file = root.join(path.trim_start_matches('/'));
            let bytes = std::fs::read(&file).map_err(io_at("read", &file))?;
            out.push(FatEntry::File(path, bytes));
        }
    }
    Ok(())
}

fn fat_volume(
    table: &Gpt,
    role: PartitionRole,
    label: [u8; 11],
    m: &Manifest,
    entries: &[FatEntry],
) -> Result<Extents, WriteError> {
    let size = table
        .find(role.label())
        .map(|(_, p)| p.size())
        .ok_or_else(|| WriteError::Layout(format!("no {} in the planned table", role.label())))?;
    let mut volume = Extents::new(size);
    keel_fat::write_fat(
        &mut volume,
        &FatSpec {
            label,
            volume_id: esp::volume_id(table.disk_guid.as_bytes(), role.label()),
            source_date_epoch: m.source_date_epoch,
            entries,
        },
    )
    .map_err(|e| WriteError::Layout(format!("{}: {e}", role.label())))?;
    Ok(volume)
}

/// Writes `volume` into the partition at `(offset, size)`, syncs, and compares what the disk
/// then holds with it.
fn write_verified(
    disk: &File,
    target: &Path,
    (offset, size): (u64, u64),
    volume: &Extents,
    what: &str,
) -> Result<u64, WriteError> {
    if volume.size != size {
        return Err(WriteError::Layout(format!(
            "{what}: {} bytes planned for a {size}-byte partition",
            volume.size
        )));
    }
    let mut written = 0;
    for (at, bytes) in &volume.chunks {
        disk.write_all_at(bytes, offset + at)
            .map_err(io_at("write", target))?;
        written += bytes.len() as u64;
    }
    disk.sync_all().map_err(io_at("sync", target))?;
    drop_cache(disk);
    let mut back = Vec::new();
    for (at, bytes) in &volume.chunks {
        back.resize(bytes.len(), 0);
        disk.read_exact_at(&mut back, offset + at)
            .map_err(io_at("read back", target))?;
        if back != *bytes {
            return Err(WriteError::Mismatch {
                what: format!("{what} on {}", target.display()),
                why: format!(
                    "the disk does not hold what was written at byte {}",
                    offset + at
                ),
            });
        }
    }
    Ok(written)
}

/// The backup table, then (durably after it) the protective MBR and primary table; each
/// read back.
fn partition_tables(disk: &File, target: &Path, table: &Gpt) -> Result<u64, WriteError> {
    let layout_err = |e: keel_contract::gpt::GptError| WriteError::Layout(e.to_string());
    let (backup_at, backup) = table.backup_region().map_err(layout_err)?;
    let primary = table.primary_region().map_err(layout_err)?;
    let mut written = 0;
    for (at, bytes, what) in [
        (backup_at, &backup, "the backup partition table"),
        (0, &primary, "the primary partition table"),
    ] {
        disk.write_all_at(bytes, at)
            .map_err(io_at("write", target))?;
        disk.sync_all().map_err(io_at("sync", target))?;
        drop_cache(disk);
        let mut back = vec![0u8; bytes.len()];
        disk.read_exact_at(&mut back, at)
            .map_err(io_at("read back", target))?;
        if back != *bytes {
            return Err(WriteError::Mismatch {
                what: format!("{what} of {}", target.display()),
                why: "the disk does not hold what was written".into(),
            });
        }
        written += bytes.len() as u64;
    }
    Ok(written)
}

/// A volume as the FAT writer wrote it: only the byte ranges it wrote (it writes front to
/// back, so they coalesce into a few), which are what goes to the disk and what the
/// read-back compares. Everything else of the partition is unused by the file system.
pub struct Extents {
    size: u64,
    pos: u64,
    chunks: Vec<(u64, Vec<u8>)>,
}

impl Extents {
    pub fn new(size: u64) -> Self {
        Extents {
            size,
            pos: 0,
            chunks: Vec::new(),
        }
    }
}

impl Write for Extents {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.size {
            return Err(io::Error::other("write past the end of the partition"));
        }
        match self.chunks.last_mut() {
            Some((at, bytes)) if *at + bytes.len() as u64 == self.pos => {
                bytes.extend_from_slice(buf)
            }
            _ => self.chunks.push((self.pos, buf.to_vec())),
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Extents {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}
