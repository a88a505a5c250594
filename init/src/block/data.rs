//! DATA, the node's writable partition, created on first boot to fill whatever disk the image
//! was written to.
//!
//! The image carries ESP, KEEL-A, KEEL-B and STATE and a GPT sized for the image. On a bigger
//! disk the backup header is then somewhere in the middle; we move it to the real end, add
//! DATA as partition 5 over the rest, and tell the running kernel about the new partition with
//! BLKPG (BLKRRPART would re-read the whole table but fails while any partition of the disk is
//! in use, and ours are: the root is mounted from a slot).
//!
//! Planning ([`plan_data_partition`]) is pure; [`ensure_data_table`] does the I/O on a disk or
//! an image file; [`ensure_data_partition`] adds the kernel's side.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use keel_contract::gpt::{ENTRY_COUNT, ENTRY_SIZE, Gpt, GptError, GptPartition, PRIMARY_BYTES};
use keel_contract::layout::{ALIGNMENT, PartitionRole, SECTOR_SIZE as SECTOR, type_guid};

use super::sysfs::{self, Disk, Partition};
use super::{BlockError, Result, Roots, device_size, io_err, logical_sector_size};

const ALIGN_SECTORS: u64 = ALIGNMENT / SECTOR;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error(
        "the table has {count} partitions; DATA must be partition {want}, right after \
         ESP, KEEL-A, KEEL-B and STATE"
    )]
    UnexpectedCount { count: usize, want: u32 },
    #[error("partition entry {empty} is empty but entry {used} is not; the table has holes")]
    Holes { empty: usize, used: usize },
    #[error("DATA is partition {found}, expected {want}")]
    WrongNumber { found: u32, want: u32 },
    #[error(
        "no room for DATA: after 1 MiB alignment, sectors {start}..{end} are left between \
         the last partition and the end of the disk"
    )]
    NoSpace { start: u64, end: u64 },
    #[error("derived partition GUID {0} is already in use")]
    GuidInUse(String),
    #[error("bad built-in GUID: {0}")]
    BadGuid(String),
}

/// What the table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlan {
    /// DATA is in the table already.
    Present {
        number: u32,
        partition: GptPartition,
    },
    /// Write `table` (the old partitions, the backup header at the disk's end, and DATA).
    Create {
        table: Gpt,
        number: u32,
        partition: GptPartition,
    },
}

/// Derives DATA's partition GUID from the disk GUID, so that the same disk always gets the
/// same one (no randomness at boot, reproducible in tests).
///
/// The 16 disk GUID bytes (in textual order), the partition number (little-endian u32) and a
/// domain tag are hashed twice with 64-bit FNV-1a, from two different offset bases, each
/// result passed through the splitmix64 finaliser for diffusion; the two 64-bit values
/// (big-endian) make the 16 bytes, stamped as an RFC 9562 version 8 ("custom") UUID. Not
/// cryptographic: it only needs to be stable and distinct from the disk's other GUIDs, which
/// [`plan_data_partition`] checks.
pub fn derive_guid(disk_guid: &[u8; 16], number: u32) -> [u8; 16] {
    fn fnv1a(mut h: u64, parts: &[&[u8]]) -> u64 {
        for part in parts {
            for &b in *part {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let parts: [&[u8]; 3] = [b"keel/partition-guid/v1", disk_guid, &number.to_le_bytes()];
    let hi = mix(fnv1a(0xcbf2_9ce4_8422_2325, &parts));
    let lo = mix(fnv1a(0x6c62_272e_07bb_0142, &parts));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out[6] = (out[6] & 0x0f) | 0x80;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn hyphenated(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

const fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

const fn align_down(x: u64, a: u64) -> u64 {
    x / a * a
}

/// Plans DATA on a disk of `disk_sectors` 512-byte sectors whose primary table is `old`.
///
/// DATA becomes partition 5, from the first 1 MiB boundary after the last partition to the
/// last 1 MiB boundary before the backup table, with type [`type_guid::VAR`] and a GUID from
/// [`derive_guid`].
pub fn plan_data_partition(
    old: &Gpt,
    disk_sectors: u64,
) -> std::result::Result<DataPlan, PlanError> {
    let want = PartitionRole::Data.number();
    let label = PartitionRole::Data.label();
    if let Some((number, partition)) = old.find(label) {
        if number != want {
            return Err(PlanError::WrongNumber {
                found: number,
                want,
            });
        }
        return Ok(DataPlan::Present {
            number,
            partition: partition.clone(),
        });
    }
    if old.partitions.len() as u64 + 1 != u64::from(want) {
        return Err(PlanError::UnexpectedCount {
            count: old.partitions.len(),
            want,
        });
    }
    let mut table = old.resized(disk_sectors)?;
    let start = align_up(table.end_of_partitions(), ALIGN_SECTORS);
    let end = align_down(table.last_usable + 1, ALIGN_SECTORS);
    if start >= end {
        return Err(PlanError::NoSpace { start, end });
    }
    let guid_text = hyphenated(&derive_guid(table.disk_guid.as_bytes(), want));
    let partition = GptPartition {
        type_guid: type_guid::VAR
            .parse()
            .map_err(|e| PlanError::BadGuid(format!("{}: {e}", type_guid::VAR)))?,
        guid: guid_text
            .parse()
            .map_err(|e| PlanError::BadGuid(format!("{guid_text}: {e}")))?,
        first_lba: start,
        last_lba: end - 1,
        attributes: 0,
        name: label.to_owned(),
    };
    if table.disk_guid == partition.guid
        || table.partitions.iter().any(|p| p.guid == partition.guid)
    {
        return Err(PlanError::GuidInUse(guid_text));
    }
    table.partitions.push(partition.clone());
    table.check()?;
    Ok(DataPlan::Create {
        table,
        number: want,
        partition,
    })
}

/// Checks that the used entries of a primary table (the first 34 sectors of a disk) come
/// first. `Gpt::parse_primary` skips empty entries, so a table with a hole would be renumbered
/// when written back, and partitions in use would change numbers under the kernel.
pub fn check_no_holes(primary: &[u8]) -> std::result::Result<(), PlanError> {
    let entries = primary
        .get(2 * SECTOR as usize..PRIMARY_BYTES as usize)
        .ok_or(PlanError::Gpt(GptError::Short {
            need: PRIMARY_BYTES as usize,
            have: primary.len(),
        }))?;
    let used: Vec<bool> = entries
        .chunks(ENTRY_SIZE as usize)
        .take(ENTRY_COUNT as usize)
        .map(|e| e[..16].iter().any(|&b| b != 0))
        .collect();
    if let Some(empty) = used.iter().position(|u| !u)
        && let Some(offset) = used[empty..].iter().position(|&u| u)
    {
        return Err(PlanError::Holes {
            empty: empty + 1,
            used: empty + offset + 1,
        });
    }
    Ok(())
}

/// DATA as it is in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTable {
    pub number: u32,
    pub partition: GptPartition,
    /// Whether this call wrote it.
    pub created: bool,
}

/// Whether the partition table of `disk` lists DATA.
pub fn data_in_table(disk: &Path) -> Result<bool> {
    let file = File::open(disk).map_err(io_err("open", disk))?;
    let sectors = device_size(&file, disk)? / SECTOR;
    let mut primary = vec![0u8; PRIMARY_BYTES as usize];
    file.read_exact_at(&mut primary, 0)
        .map_err(io_err("read partition table of", disk))?;
    let table = Gpt::parse_primary(&primary, sectors).map_err(|source| BlockError::Gpt {
        path: disk.to_path_buf(),
        source,
    })?;
    Ok(table.find(PartitionRole::Data.label()).is_some())
}

/// Makes sure the partition table of `disk` (a block device or an image file) has DATA,
/// writing it if not. Only the table: see [`ensure_data_partition`] for the running kernel.
pub fn ensure_data_table(disk: &Path) -> Result<DataTable> {
    // Not O_EXCL: the disk's other partitions are mounted, which would make that fail.
    let file = File::options()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io_err("open", disk))?;
    let sector = logical_sector_size(&file, disk)?;
    if u64::from(sector) != SECTOR {
        return Err(BlockError::Device {
            path: disk.to_path_buf(),
            reason: format!("logical sector size {sector}; Keel's GPT is laid out for 512"),
        });
    }
    let size = device_size(&file, disk)?;
    let sectors = size / SECTOR;
    let mut primary = vec![0u8; PRIMARY_BYTES as usize];
    file.read_exact_at(&mut primary, 0)
        .map_err(io_err("read partition table of", disk))?;
    let old = Gpt::parse_primary(&primary, sectors).map_err(|source| BlockError::Gpt {
        path: disk.to_path_buf(),
        source,
    })?;
    let plan_err = |source| BlockError::Plan {
        path: disk.to_path_buf(),
        source,
    };
    check_no_holes(&primary).map_err(plan_err)?;
    let (table, number, partition) = match plan_data_partition(&old, sectors).map_err(plan_err)? {
        DataPlan::Present { number, partition } => {
            return Ok(DataTable {
                number,
                partition,
                created: false,
            });
        }
        DataPlan::Create {
            table,
            number,
            partition,
        } => (table, number, partition),
    };
    let gpt_err = |source| BlockError::Gpt {
        path: disk.to_path_buf(),
        source,
    };
    let (backup_offset, backup) = table.backup_region().map_err(gpt_err)?;
    let new_primary = table.primary_region().map_err(gpt_err)?;
    // Backup first, durably, then the primary: a power cut in between leaves the old primary,
    // still valid, and the next boot plans the same change again.
    file.write_all_at(&backup, backup_offset)
        .map_err(io_err("write backup partition table to", disk))?;
    file.sync_all().map_err(io_err("sync", disk))?;
    file.write_all_at(&new_primary, 0)
        .map_err(io_err("write primary partition table to", disk))?;
    file.sync_all().map_err(io_err("sync", disk))?;
    Ok(DataTable {
        number,
        partition,
        created: true,
    })
}

/// `struct blkpg_partition` (linux/blkpg.h). The kernel ignores `devname` and `volname`, so a
/// partition added this way has no PARTNAME until the table is read at the next boot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkpgPartition {
    /// In bytes.
    pub start: i64,
    pub length: i64,
    pub pno: libc::c_int,
    pub devname: [u8; 64],
    pub volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `_IO(0x12, 105)`.
const BLKPG: libc::Ioctl = 0x1269;
const BLKPG_ADD_PARTITION: libc::c_int = 1;

/// The BLKPG_ADD_PARTITION argument for partition `number` at `start..start+length` bytes.
pub fn blkpg_partition(
    number: u32,
    start: u64,
    length: u64,
    label: &str,
) -> std::result::Result<BlkpgPartition, String> {
    let pno = libc::c_int::try_from(number).map_err(|_| format!("partition number {number}"))?;
    let start = i64::try_from(start).map_err(|_| format!("start {start}"))?;
    let length = i64::try_from(length).map_err(|_| format!("length {length}"))?;
    let mut volname = [0u8; 64];
    let bytes = label.as_bytes();
    let n = bytes.len().min(63);
    volname[..n].copy_from_slice(&bytes[..n]);
    Ok(BlkpgPartition {
        start,
        length,
        pno,
        devname: [0; 64],
        volname,
    })
}

/// Tells the kernel about a partition that is in the table but not in its view of `disk`.
pub fn add_partition(disk: &Path, number: u32, start: u64, length: u64, label: &str) -> Result<()> {
    let mut part =
        blkpg_partition(number, start, length, label).map_err(|reason| BlockError::Invalid {
            what: "partition",
            reason,
        })?;
    let file = File::open(disk).map_err(io_err("open", disk))?;
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_ADD_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: `arg` and the partition it points to are live, properly laid out repr(C)
    // structs for the duration of the call; the kernel only reads them.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EBUSY) => {
                "the kernel already has a partition with this number or overlapping this range"
            }
            Some(libc::EINVAL) => "the range is outside the disk or not sector aligned",
            Some(libc::ENOTTY) => "not a whole-disk block device",
            _ => "",
        };
        return Err(BlockError::Ioctl {
            ioctl: "BLKPG_ADD_PARTITION",
            target: format!("{} partition {number}", disk.display()),
            source,
            hint,
        });
    }
    Ok(())
}

/// Makes sure `disk` has DATA in its table and in the running kernel, and returns it, and
/// whether this call wrote it into the table (a new partition, which only then may be
/// formatted). `timeout` bounds the wait for the kernel to show the new partition in sysfs.
pub fn ensure_data_partition(
    roots: &Roots,
    disk: &Disk,
    timeout: Duration,
) -> Result<(Partition, bool)> {
    let table = ensure_data_table(&disk.path)?;
    let start = table.partition.first_lba;
    let sectors = table.partition.last_lba + 1 - start;
    if let Some(existing) = sysfs::find_partition_number(roots, disk, table.number)? {
        let extent = sysfs::partition_extent(roots, &existing)?;
        if extent != (start, sectors) {
            return Err(BlockError::Device {
                path: existing.path,
                reason: format!(
                    "the kernel has partition {} at sectors {}+{}, the table says {start}+{sectors}",
                    table.number, extent.0, extent.1
                ),
            });
        }
        return Ok((existing, table.created));
    }
    add_partition(
        &disk.path,
        table.number,
        start * SECTOR,
        sectors * SECTOR,
        &table.partition.name,
    )?;
    let partition = sysfs::wait_for_partition_number(roots, disk, table.number, timeout)?;
    sysfs::wait_for_node(roots, &partition.path, timeout)?;
    Ok((partition, table.created))
}

#[cfg(test)]
#[path = "data_tests.rs"]
mod tests;
