//! The installer's decisions, pure: which disk (or why none), and the partition table the
//! chosen disk gets. Everything here is decided before a byte is written.

use keel_contract::gpt::{Gpt, GptError, GptPartition};
use keel_contract::layout::{PartitionRole, SECTOR_SIZE};
use keel_contract::manifest;
use keel_contract::profile::{DiskSelector, Install};

use super::disks::DiskInfo;

/// Why the installer writes nothing. Each is one console line and the node's degraded reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the selector {selector} matches no disk; disks seen: {seen}")]
    NoMatch { selector: String, seen: String },
    #[error("the selector {selector} matches {disk}, the disk this node booted from")]
    BootDisk { selector: String, disk: String },
    #[error("the selector {selector} matches {count} disks ({matched}); it must match exactly one")]
    Several {
        selector: String,
        count: usize,
        matched: String,
    },
    #[error("{disk} is in use: {why}")]
    InUse { disk: String, why: String },
    #[error(
        "{disk} holds partitions ({partitions}); set wipe = true in [node.install] to overwrite it"
    )]
    Partitioned { disk: String, partitions: String },
    #[error(
        "{disk} holds data (no partition table, but its first MiB is not blank); set wipe = true in [node.install] to overwrite it"
    )]
    NotBlank { disk: String },
    #[error("{disk} has {sector}-byte logical sectors; Keel's layout needs 512")]
    SectorSize { disk: String, sector: u32 },
    #[error("{disk} is too small: the image needs at least {need} bytes")]
    TooSmall { disk: String, need: u64 },
    #[error(
        "this medium already installed {version} onto {disk}, and the firmware booted the medium again: remove it, or make the firmware boot {disk}"
    )]
    AlreadyInstalled { disk: String, version: String },
    #[error(
        "{disk} already holds a Keel installation, and the firmware booted the network again: make the firmware boot {disk}; to install over it, clear its partition table first"
    )]
    NetworkBootOverKeel { disk: String },
}

/// Whether a disk's partition table is Keel's (all of the image's partitions by label): a
/// network-booted installer that finds one on its target was booted instead of that disk,
/// and installing again would loop ([`Refusal::NetworkBootOverKeel`]).
pub fn holds_keel(table: &Gpt) -> bool {
    [
        PartitionRole::Esp,
        PartitionRole::SlotA,
        PartitionRole::SlotB,
        PartitionRole::State,
    ]
    .iter()
    .all(|role| table.find(role.label()).is_some())
}

/// What the installer learnt about the candidate before choosing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The first MiB is all zeros.
    pub blank: bool,
    pub logical_sector: u32,
}

/// The one disk `install` selects, or why there is none. `boot_disk` is the sysfs name of
/// the disk the node booted from (none for a network boot); `probe` reads a candidate's
/// first MiB and sector size.
pub fn choose<'a>(
    install: &Install,
    disks: &'a [DiskInfo],
    boot_disk: Option<&str>,
    probe: &mut dyn FnMut(&DiskInfo) -> Probe,
) -> Result<&'a DiskInfo, Refusal> {
    let disk = select(&install.disk, disks, boot_disk)?;
    if !install.wipe && !disk.partitions.is_empty() {
        return Err(Refusal::Partitioned {
            disk: disk.describe(),
            partitions: disk.partitions.join(", "),
        });
    }
    let probed = probe(disk);
    if u64::from(probed.logical_sector) != SECTOR_SIZE {
        return Err(Refusal::SectorSize {
            disk: disk.describe(),
            sector: probed.logical_sector,
        });
    }
    if !install.wipe && !probed.blank {
        return Err(Refusal::NotBlank {
            disk: disk.describe(),
        });
    }
    Ok(disk)
}

/// The one disk `selector` matches, when it is not the boot disk and not in use (the
/// installer's target, a diskless node's `/var` disk).
pub fn select<'a>(
    selector: &DiskSelector,
    disks: &'a [DiskInfo],
    boot_disk: Option<&str>,
) -> Result<&'a DiskInfo, Refusal> {
    let matched: Vec<&DiskInfo> = disks
        .iter()
        .filter(|d| selector.matches(&d.identity))
        .collect();
    let selector = selector.to_string();
    if let Some(boot) = matched
        .iter()
        .find(|d| Some(d.disk.name.as_str()) == boot_disk)
    {
        return Err(Refusal::BootDisk {
            selector,
            disk: boot.describe(),
        });
    }
    let disk = match matched.as_slice() {
        [] => {
            return Err(Refusal::NoMatch {
                selector,
                seen: list(disks.iter()),
            });
        }
        [one] => *one,
        several => {
            return Err(Refusal::Several {
                selector,
                count: several.len(),
                matched: list(several.iter().copied()),
            });
        }
    };
    if let Some(why) = &disk.in_use {
        return Err(Refusal::InUse {
            disk: disk.describe(),
            why: why.clone(),
        });
    }
    Ok(disk)
}

fn list<'a>(disks: impl Iterator<Item = &'a DiskInfo>) -> String {
    let names: Vec<String> = disks.map(DiskInfo::describe).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("; ")
    }
}

/// Room DATA needs at least on the installed disk, past STATE.
pub const MIN_DATA: u64 = 256 << 20;

/// The installed disk's table: the image's ESP, slots and STATE where its signed manifest
/// places them (the builder's layout, whichever way the node booted), under fresh GUIDs so
/// that the installed disk never looks like a copy of the medium (stage 1 refuses those), on
/// a disk of `size` bytes. DATA is left to the first boot, which creates it over the rest of
/// the disk.
pub fn target_table(
    image: &manifest::Disk,
    size: u64,
    fresh_guid: &mut dyn FnMut() -> uuid::Uuid,
) -> Result<Gpt, TableError> {
    let mut table = Gpt::new(fresh_guid(), size / SECTOR_SIZE)?;
    for role in [
        PartitionRole::Esp,
        PartitionRole::SlotA,
        PartitionRole::SlotB,
        PartitionRole::State,
    ] {
        let p = image
            .partitions
            .iter()
            .find(|p| p.label == role.label())
            .ok_or(TableError::Missing(role.label()))?;
        if p.number != role.number() {
            return Err(TableError::Numbered(role.label(), p.number));
        }
        if p.size == 0 || p.offset % SECTOR_SIZE != 0 || p.size % SECTOR_SIZE != 0 {
            return Err(TableError::Unaligned(role.label()));
        }
        table.partitions.push(GptPartition {
            type_guid: role
                .type_guid()
                .parse()
                .map_err(|_| TableError::Missing(role.label()))?,
            guid: fresh_guid(),
            first_lba: p.offset / SECTOR_SIZE,
            last_lba: (p.offset + p.size) / SECTOR_SIZE - 1,
            attributes: 0,
            name: role.label().to_owned(),
        });
    }
    let need = table.end_of_partitions() * SECTOR_SIZE + MIN_DATA;
    if size < need {
        return Err(TableError::TooSmall { need });
    }
    table.check()?;
    Ok(table)
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the signed manifest's disk has no {0} partition")]
    Missing(&'static str),
    #[error("the signed manifest's {0} is partition {1}")]
    Numbered(&'static str, u32),
    #[error("the signed manifest's {0} is not whole 512-byte sectors")]
    Unaligned(&'static str),
    #[error("the disk needs at least {need} bytes")]
    TooSmall { need: u64 },
    #[error(transparent)]
    Gpt(#[from] GptError),
}
