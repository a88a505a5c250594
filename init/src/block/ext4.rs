//! DATA's ext4 superblock, read to decide whether `e2fsck -p` has anything to do before the
//! mount. On a filesystem that was cleanly unmounted, has no errors recorded and no check
//! due, `e2fsck -p` opens it, finds it clean and exits (its `check_if_skip`): under TCG that
//! costs about 0.3-0.6 s of the boot (its executable and libraries read from the root and run
//! for the first time), and nothing is checked. The same questions are answered here from the
//! 1 KiB superblock; any other answer, or a superblock that does not verify, runs e2fsck as
//! before. The kernel validates the superblock and the group descriptors again at the mount,
//! and a mount that fails runs e2fsck too (`crate::var`).
//!
//! Offsets and flags: the kernel's `fs/ext4/ext4.h` (`struct ext4_super_block`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where the primary superblock starts on the device, and its size.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;

const MAGIC: u16 = 0xEF53;
/// `s_state`: cleanly unmounted.
const STATE_VALID: u16 = 0x0001;
/// `s_state`: the kernel or e2fsck recorded an error.
const STATE_ERROR: u16 = 0x0002;
/// `s_state`: orphans being cleaned up.
const STATE_ORPHANS: u16 = 0x0004;
/// `s_feature_incompat`: the journal has to be replayed (not cleanly unmounted).
const INCOMPAT_RECOVER: u32 = 0x0004;
/// `s_feature_ro_compat`: metadata checksums, the superblock's among them.
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// `s_checksum_type`: crc32c, the only one defined.
const CHECKSUM_CRC32C: u8 = 1;

/// Why `e2fsck -p` has to run: what it would find, in its own words where it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckNeeded {
    NotExt4,
    BadChecksum,
    Errors,
    NotCleanlyUnmounted,
    JournalToReplay,
    OrphansToCleanUp,
    MountCountReached,
    CheckIntervalPassed,
}

impl std::fmt::Display for CheckNeeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckNeeded::NotExt4 => "no ext4 superblock magic",
            CheckNeeded::BadChecksum => "the superblock's checksum does not match",
            CheckNeeded::Errors => "contains a file system with errors",
            CheckNeeded::NotCleanlyUnmounted => "was not cleanly unmounted",
            CheckNeeded::JournalToReplay => "its journal needs recovery",
            CheckNeeded::OrphansToCleanUp => "orphan inodes to clean up",
            CheckNeeded::MountCountReached => "maximal mount count reached",
            CheckNeeded::CheckIntervalPassed => {
                "check interval passed (or last check in the future)"
            }
        })
    }
}

fn le16(sb: &[u8; SUPERBLOCK_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([sb[at], sb[at + 1]])
}

fn le32(sb: &[u8; SUPERBLOCK_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]])
}

/// The superblock's checksum as ext4 stores it: crc32c seeded with all ones over the bytes
/// before `s_checksum`, without the final inversion (the kernel's `ext4_superblock_csum`,
/// e2fsprogs' `ext2fs_superblock_csum`).
fn superblock_checksum(sb: &[u8; SUPERBLOCK_SIZE]) -> u32 {
    const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    !CRC32C.checksum(&sb[..0x3FC])
}

/// Whether `e2fsck -p` would check the filesystem whose superblock is `sb`, at `now` (seconds
/// since the epoch): `None` when it would only find it clean. Pure.
pub fn check_needed(sb: &[u8; SUPERBLOCK_SIZE], now: u64) -> Option<CheckNeeded> {
    if le16(sb, 0x38) != MAGIC {
        return Some(CheckNeeded::NotExt4);
    }
    let ro_compat = le32(sb, 0x64);
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0
        && (sb[0x175] != CHECKSUM_CRC32C || le32(sb, 0x3FC) != superblock_checksum(sb))
    {
        return Some(CheckNeeded::BadChecksum);
    }
    let state = le16(sb, 0x3A);
    if state & STATE_ERROR != 0 {
        return Some(CheckNeeded::Errors);
    }
    if state & STATE_VALID == 0 {
        return Some(CheckNeeded::NotCleanlyUnmounted);
    }
    if le32(sb, 0x60) & INCOMPAT_RECOVER != 0 {
        return Some(CheckNeeded::JournalToReplay);
    }
    if state & STATE_ORPHANS != 0 || le32(sb, 0xE8) != 0 {
        return Some(CheckNeeded::OrphansToCleanUp);
    }
    let (mounts, max_mounts) = (le16(sb, 0x34), le16(sb, 0x36) as i16);
    if max_mounts > 0 && i32::from(mounts) >= i32::from(max_mounts) {
        return Some(CheckNeeded::MountCountReached);
    }
    let (last_check, interval) = (u64::from(le32(sb, 0x40)), u64::from(le32(sb, 0x44)));
    if interval > 0 && (now < last_check || now - last_check >= interval) {
        return Some(CheckNeeded::CheckIntervalPassed);
    }
    None
}

/// The primary superblock of `device`.
pub fn read_superblock(device: &Path) -> Result<[u8; SUPERBLOCK_SIZE], ReadError> {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    File::open(device)
        .and_then(|f| f.read_exact_at(&mut sb, SUPERBLOCK_OFFSET))
        .map_err(|source| ReadError {
            device: device.to_path_buf(),
            source,
        })?;
    Ok(sb)
}

#[derive(Debug, thiserror::Error)]
#[error("reading the ext4 superblock of {}: {source}", device.display())]
pub struct ReadError {
    pub device: PathBuf,
    pub source: std::io::Error,
}

#[cfg(test)]
#[path = "ext4_tests.rs"]
mod tests;
