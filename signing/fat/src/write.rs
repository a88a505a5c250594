//! A FAT32 writer for the ESP and STATE partitions: what goes in them ([`FatEntry`],
//! [`FatSpec`]) and the filesystem image.
//!
//! Written here rather than with `fatfs` 0.3.6, whose `create_dir` puts long-name entries in
//! front of every directory's `.` and `..` entries, which `fsck.vfat` rejects (fixed upstream
//! only in the unreleased 0.4). Images are built front to back from a plan: boot sector,
//! FSInfo, backup boot sector, two FATs, then every directory and file in contiguous clusters.
//! Times come from SOURCE_DATE_EPOCH and the volume id from the caller, so output is
//! reproducible. `fatfs` still reads these images (inspect, verify).

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use fatfs::{Date, DateTime, Time};

use super::dirent::{self, ENTRY, lfn_entries, needs_lfn, sfn_entry};

const SECTOR: u64 = 512;
const RESERVED_SECTORS: u64 = 32;
const FATS: u64 = 2;
/// FAT32 needs at least this many clusters, or readers take it for FAT16.
const MIN_CLUSTERS: u64 = 65_525;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const EOC: u32 = 0x0FFF_FFFF;

#[derive(Debug, thiserror::Error)]
pub enum FatWriteError {
    #[error("{size} bytes is too small for FAT32 (at least {MIN_CLUSTERS} clusters of 512 bytes)")]
    TooSmall { size: u64 },
    #[error("the files need {need} bytes but the filesystem has {have}")]
    Full { need: u64, have: u64 },
    #[error("{path}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error(transparent)]
    Io(#[from] io::Error),
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

/// Formats `storage` (a whole partition) as FAT32 holding the entries.
pub fn write_fat<S: Write + Seek>(mut storage: S, spec: &FatSpec<'_>) -> Result<(), FatWriteError> {
    let size = storage.seek(SeekFrom::End(0))?;
    storage.seek(SeekFrom::Start(0))?;
    write(
        &mut storage,
        size,
        &spec.label,
        spec.volume_id,
        spec.source_date_epoch,
        spec.entries,
    )
}

/// Sizes derived from the partition size: the cluster size is the largest of 512..4096
/// bytes that still leaves FAT32's minimum cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    total_sectors: u64,
    sectors_per_cluster: u64,
    fat_sectors: u64,
    clusters: u64,
}

impl Geometry {
    fn new(size: u64) -> Result<Self, FatWriteError> {
        let total_sectors = size / SECTOR;
        for spc in [8u64, 4, 2, 1] {
            // FAT size and cluster count depend on each other; iterate to the fixed point.
            let mut fat_sectors = 1;
            loop {
                let data = total_sectors.saturating_sub(RESERVED_SECTORS + FATS * fat_sectors);
                let clusters = data / spc;
                let need = ((clusters + 2) * 4).div_ceil(SECTOR);
                if need <= fat_sectors {
                    if (MIN_CLUSTERS + 16..0x0FFF_FFF5).contains(&clusters) {
                        return Ok(Geometry {
                            total_sectors,
                            sectors_per_cluster: spc,
                            fat_sectors,
                            clusters,
                        });
                    }
                    break;
                }
                fat_sectors = need;
            }
        }
        Err(FatWriteError::TooSmall { size })
    }

    fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    /// Byte offset of cluster `n` (clusters are numbered from 2).
    fn cluster_offset(&self, n: u32) -> u64 {
        (RESERVED_SECTORS + FATS * self.fat_sectors + (u64::from(n) - 2) * self.sectors_per_cluster)
            * SECTOR
    }
}

#[derive(Debug, Default)]
struct DirPlan {
    /// Children in creation order: (name, index into nodes).
    children: Vec<(String, usize)>,
}

#[derive(Debug)]
enum NodePlan {
    Dir(DirPlan),
    File(Vec<u8>),
}

#[derive(Debug)]
struct Node {
    plan: NodePlan,
    first_cluster: u32,
    clusters: u32,
}

/// Formats a FAT32 filesystem of `size` bytes holding `entries`, written to `out` from its
/// current position (a partition's start). Only the used parts are written: the caller
/// provides a zeroed (sparse) area.
pub fn write<W: Write + Seek>(
    out: &mut W,
    size: u64,
    label: &[u8; 11],
    volume_id: u32,
    source_date_epoch: u64,
    entries: &[FatEntry],
) -> Result<(), FatWriteError> {
    let geo = Geometry::new(size)?;
    let base = out.stream_position()?;
    let mut nodes = plan_tree(entries)?;
    let short_names = assign_short_names(&nodes);
    let next = allocate(&mut nodes, &short_names, &geo)?;
    let used = next - 2;
    let stamp = Stamp::new(source_date_epoch);

    // Boot sector, FSInfo and their backups.
    let boot = boot_sector(&geo, label, volume_id);
    let fsinfo = fsinfo_sector(geo.clusters - used, next as u32);
    for (sector, bytes) in [(0u64, &boot), (1, &fsinfo), (6, &boot), (7, &fsinfo)] {
        out.seek(SeekFrom::Start(base + sector * SECTOR))?;
        out.write_all(bytes)?;
    }
    let fat = fat_table(&geo, &nodes);
    for copy in 0..FATS {
        out.seek(SeekFrom::Start(
            base + (RESERVED_SECTORS + copy * geo.fat_sectors) * SECTOR,
        ))?;
        out.write_all(&fat)?;
    }
    for (idx, node) in nodes.iter().enumerate() {
        if node.clusters == 0 {
            continue;
        }
        out.seek(SeekFrom::Start(
            base + geo.cluster_offset(node.first_cluster),
        ))?;
        match &node.plan {
            NodePlan::File(data) => out.write_all(data)?,
            NodePlan::Dir(d) => {
                let bytes = dir_cluster_bytes(&nodes, idx, d, &short_names, label, stamp, &geo);
                out.write_all(&bytes)?;
            }
        }
    }
    // Make sure the partition's last byte exists (the image may be a fresh sparse file).
    out.seek(SeekFrom::Start(base + geo.total_sectors * SECTOR - 1))?;
    out.write_all(&[0])?;
    Ok(())
}

/// The tree of directories and files, root first, each child listed in its parent in
/// creation order. Names are checked as FAT long names; parents must come first.
fn plan_tree(entries: &[FatEntry]) -> Result<Vec<Node>, FatWriteError> {
    let mut nodes = vec![Node {
        plan: NodePlan::Dir(DirPlan::default()),
        first_cluster: 0,
        clusters: 0,
    }];
    let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
    by_path.insert(String::new(), 0);
    for entry in entries {
        let (path, plan) = match entry {
            FatEntry::Dir(p) => (p, NodePlan::Dir(DirPlan::default())),
            FatEntry::File(p, bytes) => (p, NodePlan::File(bytes.clone())),
        };
        let bad = |why: &'static str| FatWriteError::BadPath {
            path: path.clone(),
            why,
        };
        let trimmed = path.strip_prefix('/').ok_or_else(|| bad("not absolute"))?;
        let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        if name.is_empty()
            || name.len() > 255
            || name
                .chars()
                .any(|c| c.is_control() || "\\:*?\"<>|".contains(c))
        {
            return Err(bad("not a valid FAT long name"));
        }
        let parent_idx = *by_path
            .get(parent)
            .ok_or_else(|| bad("parent directory not created first"))?;
        if by_path.contains_key(trimmed) {
            return Err(bad("created twice"));
        }
        let idx = nodes.len();
        nodes.push(Node {
            plan,
            first_cluster: 0,
            clusters: 0,
        });
        by_path.insert(trimmed.to_owned(), idx);
        match &mut nodes[parent_idx].plan {
            NodePlan::Dir(d) => d.children.push((name.to_owned(), idx)),
            NodePlan::File(_) => return Err(bad("parent is a file")),
        }
    }
    Ok(nodes)
}

/// Gives every node contiguous clusters in creation order (directories at least one);
/// returns the next free cluster.
fn allocate(
    nodes: &mut [Node],
    short_names: &[[u8; 11]],
    geo: &Geometry,
) -> Result<u64, FatWriteError> {
    let cluster = geo.cluster_bytes();
    let mut next: u64 = 2;
    for (idx, node) in nodes.iter_mut().enumerate() {
        let bytes = match &node.plan {
            NodePlan::Dir(d) => dir_entries_len(idx, d, short_names) as u64,
            NodePlan::File(data) => data.len() as u64,
        };
        let count = if idx == 0 || matches!(node.plan, NodePlan::Dir(_)) {
            bytes.div_ceil(cluster).max(1)
        } else {
            bytes.div_ceil(cluster)
        };
        if count > 0 {
            node.first_cluster = next as u32;
            node.clusters = count as u32;
            next += count;
        }
    }
    let used = next - 2;
    if used > geo.clusters {
        return Err(FatWriteError::Full {
            need: used * cluster,
            have: geo.clusters * cluster,
        });
    }
    Ok(next)
}

/// One FAT: every chain is contiguous.
fn fat_table(geo: &Geometry, nodes: &[Node]) -> Vec<u8> {
    let mut fat = vec![0u8; (geo.fat_sectors * SECTOR) as usize];
    let mut set = |n: u64, v: u32| {
        fat[(n * 4) as usize..(n * 4 + 4) as usize].copy_from_slice(&v.to_le_bytes())
    };
    set(0, 0x0FFF_FFF8);
    set(1, EOC);
    for node in nodes {
        for i in 0..node.clusters {
            let c = u64::from(node.first_cluster + i);
            set(
                c,
                if i + 1 == node.clusters {
                    EOC
                } else {
                    (c + 1) as u32
                },
            );
        }
    }
    fat
}

/// Entry dates and times, all SOURCE_DATE_EPOCH.
#[derive(Clone, Copy)]
struct Stamp {
    date: u16,
    time: u16,
}

impl Stamp {
    fn new(source_date_epoch: u64) -> Self {
        let t = fat_time(source_date_epoch);
        Stamp {
            date: (t.date.year.saturating_sub(1980) << 9) | (t.date.month << 5) | t.date.day,
            time: (t.time.hour << 11) | (t.time.min << 5) | (t.time.sec / 2),
        }
    }
}

/// A directory's clusters: the volume label (root) or `.` and `..`, then an entry (with its
/// long-name entries) per child, padded to whole clusters.
fn dir_cluster_bytes(
    nodes: &[Node],
    idx: usize,
    dir: &DirPlan,
    short_names: &[[u8; 11]],
    label: &[u8; 11],
    stamp: Stamp,
    geo: &Geometry,
) -> Vec<u8> {
    let (date, tod) = (stamp.date, stamp.time);
    let node = &nodes[idx];
    let mut buf = Vec::new();
    if idx == 0 {
        buf.extend(sfn_entry(label, ATTR_VOLUME, 0, 0, date, tod));
    } else {
        let parent_cluster = nodes
            .iter()
            .enumerate()
            .find(|(_, n)| matches!(&n.plan, NodePlan::Dir(p) if p.children.iter().any(|(_, c)| *c == idx)))
            .map(|(p, n)| if p == 0 { 0 } else { n.first_cluster })
            .unwrap_or(0);
        buf.extend(sfn_entry(
            b".          ",
            ATTR_DIR,
            node.first_cluster,
            0,
            date,
            tod,
        ));
        buf.extend(sfn_entry(
            b"..         ",
            ATTR_DIR,
            parent_cluster,
            0,
            date,
            tod,
        ));
    }
    for (name, child) in &dir.children {
        let short = &short_names[*child];
        let c = &nodes[*child];
        let (attr, len) = match &c.plan {
            NodePlan::Dir(_) => (ATTR_DIR, 0),
            NodePlan::File(data) => (ATTR_ARCHIVE, data.len() as u32),
        };
        if needs_lfn(name, short) {
            buf.extend(lfn_entries(name, short));
        }
        buf.extend(sfn_entry(short, attr, c.first_cluster, len, date, tod));
    }
    buf.resize((u64::from(node.clusters) * geo.cluster_bytes()) as usize, 0);
    buf
}

fn dir_entries_len(idx: usize, dir: &DirPlan, short: &[[u8; 11]]) -> usize {
    let mut n = if idx == 0 { 1 } else { 2 };
    for (name, child) in &dir.children {
        n += 1;
        if needs_lfn(name, &short[*child]) {
            n += name.encode_utf16().count().div_ceil(13);
        }
    }
    n * ENTRY
}

/// 8.3 names, unique per directory.
fn assign_short_names(nodes: &[Node]) -> Vec<[u8; 11]> {
    let mut out = vec![[b' '; 11]; nodes.len()];
    for node in nodes {
        let NodePlan::Dir(d) = &node.plan else {
            continue;
        };
        let mut taken: Vec<[u8; 11]> = Vec::new();
        for (name, idx) in &d.children {
            let short = dirent::short_name(name, &taken);
            taken.push(short);
            out[*idx] = short;
        }
    }
    out
}

fn boot_sector(geo: &Geometry, label: &[u8; 11], volume_id: u32) -> Vec<u8> {
    let mut b = vec![0u8; SECTOR as usize];
    b[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"KEEL    ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = geo.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[21] = 0xF8; // fixed disk
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads
    b[32..36].copy_from_slice(&(geo.total_sectors as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(geo.fat_sectors as u32).to_le_bytes());
    b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80; // drive number
    b[66] = 0x29; // extended boot signature
    b[67..71].copy_from_slice(&volume_id.to_le_bytes());
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo_sector(free: u64, next_free: u32) -> Vec<u8> {
    let mut s = vec![0u8; SECTOR as usize];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&(free as u32).to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
}

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;
