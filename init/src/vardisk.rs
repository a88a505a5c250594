//! `[node.var]`: a network-booted node's `/var` on a disk of its own (issue 14), instead of a
//! tmpfs that every reboot empties.
//!
//! The disk is chosen by identity like the installer's target ([`plan::select`]): exactly one
//! disk must match, and it must not be in use. What is done with it is decided by [`plan`], pure:
//! - a partition table holding exactly one partition, Keel's DATA: that is `/var`, checked
//!   and mounted as a disk boot's DATA is ([`crate::var`]: e2fsck, never a format of
//!   something that is not new);
//! - a blank disk (no partitions, first MiB zeros): a new GPT with DATA over the whole disk,
//!   then formatted;
//! - anything else (other partitions, data without a table): refused, unless `wipe = true`,
//!   so that a selector that matches the wrong disk destroys nothing. A refusal leaves `/var`
//!   unavailable: the node is degraded, saying why, with its API up.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use keel_contract::gpt::{Gpt, GptPartition, PRIMARY_BYTES};
use keel_contract::layout::{ALIGNMENT, PartitionRole, SECTOR_SIZE as SECTOR, type_guid};
use keel_contract::profile::VarDisk;

use crate::block::{self, Roots, data::derive_guid};
use crate::install::{disks, plan};
use crate::var::{self, Mounted, Unavailable};

/// The partition number of DATA on a disk of its own.
const NUMBER: u32 = 1;
const ALIGN_SECTORS: u64 = ALIGNMENT / SECTOR;

/// What to do with the chosen disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// DATA is there: check and mount it.
    Present,
    /// Write `table` (DATA over the disk), then format it.
    Create(Gpt),
    Refuse(String),
}

/// The decision about `disk`, from its primary table (if it has one) and whether its first MiB
/// is blank. `disk_guid` is the new table's GUID if one is written.
pub fn plan(
    disk: &str,
    table: Option<&Gpt>,
    blank: bool,
    wipe: bool,
    disk_sectors: u64,
    disk_guid: uuid::Uuid,
) -> Plan {
    let data = PartitionRole::Data.label();
    match table {
        Some(t) if t.partitions.len() == 1 && t.find(data) == Some((NUMBER, &t.partitions[0])) => {
            return Plan::Present;
        }
        Some(t) if !wipe => {
            let names: Vec<&str> = t.partitions.iter().map(|p| p.name.as_str()).collect();
            return Plan::Refuse(format!(
                "{disk} holds partitions ({}) other than Keel's DATA alone; set wipe = true in [node.var] to repartition it",
                names.join(", ")
            ));
        }
        None if !blank && !wipe => {
            return Plan::Refuse(format!(
                "{disk} holds data (no partition table, but its first MiB is not blank); set wipe = true in [node.var] to overwrite it"
            ));
        }
        _ => {}
    }
    match new_table(disk_sectors, disk_guid) {
        Ok(t) => Plan::Create(t),
        Err(e) => Plan::Refuse(format!("{disk}: {e}")),
    }
}

/// A table with one partition, DATA, from the first MiB to the last whole MiB before the
/// backup table.
fn new_table(sectors: u64, disk_guid: uuid::Uuid) -> Result<Gpt, String> {
    let mut table = Gpt::new(disk_guid, sectors).map_err(|e| e.to_string())?;
    let start = ALIGN_SECTORS.max(table.first_usable.div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS);
    let end = (table.last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS;
    if end <= start + ALIGN_SECTORS {
        return Err(format!("too small for /var ({sectors} sectors)"));
    }
    table.partitions.push(GptPartition {
        type_guid: type_guid::VAR.parse().map_err(|_| "bad VAR type GUID")?,
        guid: uuid::Uuid::from_bytes(derive_guid(disk_guid.as_bytes(), NUMBER)),
        first_lba: start,
        last_lba: end - 1,
        attributes: 0,
        name: PartitionRole::Data.label().to_owned(),
    });
    table.check().map_err(|e| e.to_string())?;
    Ok(table)
}

/// `/var` on the disk `var` selects; see the module docs.
pub fn mount(
    var: &VarDisk,
    state: &Path,
    timeout: Duration,
    log: &dyn Fn(&str),
) -> Result<Mounted, Unavailable> {
    let fail = |e: String| Unavailable(format!("[node.var]: {e}"));
    let roots = Roots::default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let found = disks::inventory(&roots, &mountinfo).map_err(|e| fail(e.to_string()))?;
    let chosen = plan::select(&var.disk, &found, None).map_err(|r| fail(r.to_string()))?;
    let path = &chosen.disk.path;
    let file = block::open_read(path).map_err(|e| fail(e.to_string()))?;
    let sector = block::logical_sector_size(&file, path).map_err(|e| fail(e.to_string()))?;
    if u64::from(sector) != SECTOR {
        return Err(fail(format!(
            "{} has {sector}-byte logical sectors; Keel's layout needs 512",
            chosen.describe()
        )));
    }
    let sectors = block::device_size(&file, path).map_err(|e| fail(e.to_string()))? / SECTOR;
    let mut first = vec![0u8; ALIGNMENT as usize];
    file.read_exact_at(&mut first, 0)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let table = Gpt::parse_primary(&first[..PRIMARY_BYTES as usize], sectors).ok();
    let blank = first.iter().all(|&b| b == 0);
    let guid = random_guid().map_err(|e| fail(format!("/dev/urandom: {e}")))?;
    let created = match plan(
        &chosen.describe(),
        table.as_ref(),
        blank,
        var.wipe,
        sectors,
        guid,
    ) {
        Plan::Refuse(why) => return Err(fail(why)),
        Plan::Present => false,
        Plan::Create(table) => {
            log(&format!(
                "/var: a new partition table with DATA on {} ({})",
                chosen.describe(),
                if blank { "blank" } else { "wipe = true" }
            ));
            write_table(path, &table).map_err(fail)?;
            true
        }
    };
    let data = block::sysfs::wait_for_partition_number(&roots, &chosen.disk, NUMBER, timeout)
        .map_err(|e| fail(e.to_string()))?;
    block::sysfs::wait_for_node(&roots, &data.path, timeout).map_err(|e| fail(e.to_string()))?;
    log(&format!(
        "/var on {} ({})",
        data.path.display(),
        chosen.describe()
    ));
    var::check_format_and_mount(&data.path, created, state, log)
}

fn random_guid() -> std::io::Result<uuid::Uuid> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut File::open("/dev/urandom")?, &mut b)?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid())
}

/// Both ends zeroed, the backup table, then the primary, each synced; then the kernel reads
/// the new table (the disk is not in use: [`plan::select`] checked).
fn write_table(path: &Path, table: &Gpt) -> Result<(), String> {
    let err = |op: &str, e: &dyn std::fmt::Display| format!("{}: {op}: {e}", path.display());
    let file = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| err("open exclusively", &e))?;
    let size = table.total_sectors * SECTOR;
    let zeros = vec![0u8; ALIGNMENT as usize];
    let (backup_at, backup) = table.backup_region().map_err(|e| err("plan", &e))?;
    let primary = table.primary_region().map_err(|e| err("plan", &e))?;
    file.write_all_at(&zeros, 0)
        .and_then(|()| file.write_all_at(&zeros, size - ALIGNMENT))
        .and_then(|()| file.sync_all())
        .and_then(|()| file.write_all_at(&backup, backup_at))
        .and_then(|()| file.sync_all())
        .and_then(|()| file.write_all_at(&primary, 0))
        .and_then(|()| file.sync_all())
        .map_err(|e| err("write the partition table", &e))?;
    // BLKRRPART, `_IO(0x12, 95)`: the kernel reads the table again (refused while any
    // partition of the disk is in use, which none is).
    // SAFETY: a plain ioctl on an open block device, with no argument.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x125f as libc::Ioctl) };
    if rc < 0 {
        return Err(err("BLKRRPART", &std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "vardisk_tests.rs"]
mod tests;
