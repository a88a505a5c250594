//! Block devices without udev: the disk the boot loader booted from and its partitions by GPT
//! label in sysfs, the verified root through device-mapper's ioctl interface, and the DATA
//! partition a node adds to its own disk on first boot.
//!
//! Everything that touches the kernel takes its sysfs and /dev roots as a [`Roots`], so the
//! parsing and lookup logic runs against fake trees in unit tests.

pub mod bootdisk;
pub mod data;
pub mod dm;
pub mod ext4;
pub mod sysfs;
pub mod verity;

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub use data::{DataTable, ensure_data_partition, ensure_data_table, plan_data_partition};
pub use dm::{DmDevice, ROOT_NAME};
pub use sysfs::{BlockDevice, Disk, Partition, Uevent, disk_for, wait_for_partition};
pub use verity::{OnCorruption, create_verity_root, verity_target};

/// Where sysfs and devtmpfs are mounted. [`Roots::default`] is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// An ioctl failed. `hint` says what the errno usually means for that ioctl, since the
    /// kernel's own explanation only goes to its log.
    #[error("{ioctl} {target}: {source}{}", hint_suffix(hint))]
    Ioctl {
        ioctl: &'static str,
        target: String,
        source: io::Error,
        hint: &'static str,
    },
    /// The kernel answered, but not with something we can use.
    #[error("{ioctl} {target}: {reason}")]
    BadReply {
        ioctl: &'static str,
        target: String,
        reason: String,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("timed out after {waited_ms} ms waiting for {what} (block devices: {seen})")]
    Timeout {
        what: String,
        waited_ms: u128,
        seen: String,
    },
    #[error("partition label {label:?} is on more than one device: {devices}")]
    AmbiguousLabel { label: String, devices: String },
    #[error("{}: partition table: {source}", path.display())]
    Gpt {
        path: PathBuf,
        source: keel_contract::gpt::GptError,
    },
    #[error("{}: {source}", path.display())]
    Plan {
        path: PathBuf,
        source: data::PlanError,
    },
    #[error("{}: {reason}", path.display())]
    Device { path: PathBuf, reason: String },
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

pub type Result<T> = std::result::Result<T, BlockError>;

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlockError {
    let path = path.to_path_buf();
    move |source| BlockError::Io { op, path, source }
}

/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272;

/// Size in bytes of a block device or regular file (the disk code works on image files too).
pub fn device_size(file: &File, path: &Path) -> Result<u64> {
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    if !meta.file_type().is_block_device() {
        return Err(BlockError::Device {
            path: path.to_path_buf(),
            reason: "neither a block device nor a regular file".into(),
        });
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for that.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(BlockError::Ioctl {
            ioctl: "BLKGETSIZE64",
            target: path.display().to_string(),
            source: io::Error::last_os_error(),
            hint: "",
        });
    }
    Ok(size)
}

/// Logical sector size: 512 for regular files, BLKSSZGET for block devices.
pub fn logical_sector_size(file: &File, path: &Path) -> Result<u32> {
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Ok(512);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid for that.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size as *mut _) };
    if rc < 0 {
        return Err(BlockError::Ioctl {
            ioctl: "BLKSSZGET",
            target: path.display().to_string(),
            source: io::Error::last_os_error(),
            hint: "",
        });
    }
    u32::try_from(size).map_err(|_| BlockError::BadReply {
        ioctl: "BLKSSZGET",
        target: path.display().to_string(),
        reason: format!("negative sector size {size}"),
    })
}

/// Opens a block device (or image file) read-only.
pub fn open_read(path: &Path) -> Result<File> {
    File::open(path).map_err(io_err("open", path))
}

/// Byte offset of the ext2/3/4 superblock magic: superblock at 1024, `s_magic` at 0x38.
pub const EXT4_MAGIC_OFFSET: u64 = 1080;
pub const EXT4_MAGIC: u16 = 0xEF53;

/// Whether the bytes read at [`EXT4_MAGIC_OFFSET`] are the ext superblock magic.
pub fn has_ext4_magic(bytes_at_magic: &[u8]) -> bool {
    bytes_at_magic.len() >= 2
        && u16::from_le_bytes([bytes_at_magic[0], bytes_at_magic[1]]) == EXT4_MAGIC
}

/// Whether the device holds an ext4 filesystem, judged by the superblock magic. ext2 and ext3
/// share it; that is fine for DATA, which only ever gets `mkfs.ext4`, and the question the
/// caller asks is "was this formatted already", not "which revision".
pub fn is_ext4(path: &Path) -> Result<bool> {
    let file = open_read(path)?;
    let mut magic = [0u8; 2];
    match file.read_exact_at(&mut magic, EXT4_MAGIC_OFFSET) {
        Ok(()) => Ok(has_ext4_magic(&magic)),
        // Too small to hold a superblock: certainly not formatted.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(BlockError::Io {
            op: "read superblock of",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext4_magic_is_little_endian_ef53() {
        assert!(has_ext4_magic(&[0x53, 0xEF]));
        assert!(!has_ext4_magic(&[0xEF, 0x53]));
        assert!(!has_ext4_magic(&[0x53]));
    }

    #[test]
    fn ext4_probe_reads_offset_1080_of_a_file() {
        let dir = std::env::temp_dir().join(format!("keel-ext4-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fs");
        let mut bytes = vec![0u8; 4096];
        std::fs::write(&path, &bytes).unwrap();
        assert!(!is_ext4(&path).unwrap());
        bytes[1080] = 0x53;
        bytes[1081] = 0xEF;
        std::fs::write(&path, &bytes).unwrap();
        assert!(is_ext4(&path).unwrap());
        std::fs::write(&path, [0u8; 100]).unwrap();
        assert!(!is_ext4(&path).unwrap());
        let missing = is_ext4(&dir.join("missing")).unwrap_err().to_string();
        assert!(
            missing.starts_with("open ") && missing.contains("missing"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_size_of_a_file_is_its_length() {
        let path = std::env::temp_dir().join(format!("keel-size-{}", std::process::id()));
        std::fs::write(&path, [1u8; 3000]).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(device_size(&file, &path).unwrap(), 3000);
        assert_eq!(logical_sector_size(&file, &path).unwrap(), 512);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn ioctl_errors_name_the_ioctl_and_target() {
        let e = BlockError::Ioctl {
            ioctl: "DM_TABLE_LOAD",
            target: "keel-root".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
            hint: "",
        };
        assert!(
            e.to_string()
                .starts_with("DM_TABLE_LOAD keel-root: Invalid argument"),
            "{e}"
        );
    }
}
