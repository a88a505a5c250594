//! A FAT32 writer for the ESP and STATE partitions.
//!
//! Written here rather than with `fatfs` 0.3.6, whose `create_dir` puts long-name entries in
//! front of every directory's `.` and `..` entries, which `fsck.vfat` rejects (fixed upstream
//! only in the unreleased 0.4). Images are built front to back from a plan: boot sector,
//! FSInfo, backup boot sector, two FATs, then every directory and file in contiguous clusters.
//! Times come from SOURCE_DATE_EPOCH and the volume id from the caller, so output is
//! reproducible. `fatfs` still reads these images (inspect, verify).

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

use crate::esp::{FatEntry, fat_time};

const SECTOR: u64 = 512;
const RESERVED_SECTORS: u64 = 32;
const FATS: u64 = 2;
const ENTRY: usize = 32;
/// FAT32 needs at least this many clusters, or readers take it for FAT16.
const MIN_CLUSTERS: u64 = 65_525;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LFN: u8 = 0x0F;
const EOC: u32 = 0x0FFF_FFFF;

#[derive(Debug, thiserror::Error)]
pub enum Fat32Error {
    #[error("{size} bytes is too small for FAT32 (at least {MIN_CLUSTERS} clusters of 512 bytes)")]
    TooSmall { size: u64 },
    #[error("the files need {need} bytes but the filesystem has {have}")]
    Full { need: u64, have: u64 },
    #[error("{path}: {why}")]
    BadPath { path: String, why: &'static str },
    #[error(transparent)]
    Io(#[from] io::Error),
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
    fn new(size: u64) -> Result<Self, Fat32Error> {
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
        Err(Fat32Error::TooSmall { size })
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
) -> Result<(), Fat32Error> {
    let geo = Geometry::new(size)?;
    let base = out.stream_position()?;

    // The tree of directories and files, root first.
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
        let trimmed = path.strip_prefix('/').ok_or(Fat32Error::BadPath {
            path: path.clone(),
            why: "not absolute",
        })?;
        let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        if name.is_empty()
            || name.len() > 255
            || name
                .chars()
                .any(|c| c.is_control() || "\\:*?\"<>|".contains(c))
        {
            return Err(Fat32Error::BadPath {
                path: path.clone(),
                why: "not a valid FAT long name",
            });
        }
        let parent_idx = *by_path.get(parent).ok_or(Fat32Error::BadPath {
            path: path.clone(),
            why: "parent directory not created first",
        })?;
        if by_path.contains_key(trimmed) {
            return Err(Fat32Error::BadPath {
                path: path.clone(),
                why: "created twice",
            });
        }
        let idx = nodes.len();
        nodes.push(Node {
            plan,
            first_cluster: 0,
            clusters: 0,
        });
        by_path.insert(trimmed.to_owned(), idx);
        if let NodePlan::Dir(d) = &mut nodes[parent_idx].plan {
            d.children.push((name.to_owned(), idx));
        } else {
            return Err(Fat32Error::BadPath {
                path: path.clone(),
                why: "parent is a file",
            });
        }
    }

    // Directory contents (entries), then cluster allocation in creation order.
    let short_names = assign_short_names(&nodes);
    let cluster = geo.cluster_bytes();
    let mut next: u64 = 2;
    for (idx, node) in nodes.iter_mut().enumerate() {
        let bytes = match &node.plan {
            NodePlan::Dir(d) => dir_entries_len(idx, d, &short_names) as u64,
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
        return Err(Fat32Error::Full {
            need: used * cluster,
            have: geo.clusters * cluster,
        });
    }

    let time = fat_time(source_date_epoch);
    let date = (time.date.year.saturating_sub(1980) << 9) | (time.date.month << 5) | time.date.day;
    let tod = (time.time.hour << 11) | (time.time.min << 5) | (time.time.sec / 2);

    // Boot sector, FSInfo and their backups.
    let boot = boot_sector(&geo, label, volume_id);
    let fsinfo = fsinfo_sector(geo.clusters - used, next as u32);
    for (sector, bytes) in [(0u64, &boot), (1, &fsinfo), (6, &boot), (7, &fsinfo)] {
        out.seek(SeekFrom::Start(base + sector * SECTOR))?;
        out.write_all(bytes)?;
    }
    // FATs: every chain is contiguous.
    let mut fat = vec![0u8; (geo.fat_sectors * SECTOR) as usize];
    let mut set = |n: u64, v: u32| {
        fat[(n * 4) as usize..(n * 4 + 4) as usize].copy_from_slice(&v.to_le_bytes())
    };
    set(0, 0x0FFF_FFF8);
    set(1, EOC);
    for node in &nodes {
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
    for copy in 0..FATS {
        out.seek(SeekFrom::Start(
            base + (RESERVED_SECTORS + copy * geo.fat_sectors) * SECTOR,
        ))?;
        out.write_all(&fat)?;
    }
    // Directories and files.
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
                let parent_cluster = nodes
                    .iter()
                    .enumerate()
                    .find(|(_, n)| matches!(&n.plan, NodePlan::Dir(p) if p.children.iter().any(|(_, c)| *c == idx)))
                    .map(|(p, n)| if p == 0 { 0 } else { n.first_cluster })
                    .unwrap_or(0);
                let mut buf = Vec::new();
                if idx == 0 {
                    buf.extend(sfn_entry(label, ATTR_VOLUME, 0, 0, date, tod));
                } else {
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
                for (name, child) in &d.children {
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
                buf.resize((u64::from(node.clusters) * cluster) as usize, 0);
                out.write_all(&buf)?;
            }
        }
    }
    // Make sure the partition's last byte exists (the image may be a fresh sparse file).
    out.seek(SeekFrom::Start(base + geo.total_sectors * SECTOR - 1))?;
    out.write_all(&[0])?;
    Ok(())
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

/// 8.3 names, unique per directory: the upper-cased name when it fits, else a `~N` basis.
fn assign_short_names(nodes: &[Node]) -> Vec<[u8; 11]> {
    let mut out = vec![[b' '; 11]; nodes.len()];
    for node in nodes {
        let NodePlan::Dir(d) = &node.plan else {
            continue;
        };
        let mut taken: Vec<[u8; 11]> = Vec::new();
        for (name, idx) in &d.children {
            let short = exact_short_name(name)
                .filter(|s| !taken.contains(s))
                .unwrap_or_else(|| {
                    let (stem, ext) = split_ext(name);
                    let clean = |s: &str, max: usize| -> Vec<u8> {
                        s.chars()
                            .filter_map(|c| {
                                let c = c.to_ascii_uppercase();
                                (c.is_ascii_alphanumeric() || "$%'-_@~`!(){}^#&".contains(c))
                                    .then_some(c as u8)
                            })
                            .take(max)
                            .collect()
                    };
                    let ext = clean(ext, 3);
                    (1..)
                        .find_map(|n: u32| {
                            let tail = format!("~{n}");
                            let mut s = [b' '; 11];
                            let basis = clean(stem, 8 - tail.len());
                            let basis = if basis.is_empty() {
                                b"F".to_vec()
                            } else {
                                basis
                            };
                            let mut stem_bytes = basis;
                            stem_bytes.extend_from_slice(tail.as_bytes());
                            s[..stem_bytes.len()].copy_from_slice(&stem_bytes);
                            s[8..8 + ext.len()].copy_from_slice(&ext);
                            (!taken.contains(&s)).then_some(s)
                        })
                        .unwrap_or([b' '; 11])
                });
            taken.push(short);
            out[*idx] = short;
        }
    }
    out
}

fn split_ext(name: &str) -> (&str, &str) {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext),
        _ => (name, ""),
    }
}

/// The 8.3 form of `name` when it is already a valid upper-case 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (stem, ext) = split_ext(name);
    let valid = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars().all(|c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c)
            })
    };
    if !valid(stem, 8) || !(ext.is_empty() || valid(ext, 3)) || name.matches('.').count() > 1 {
        return None;
    }
    let mut s = [b' '; 11];
    s[..stem.len()].copy_from_slice(stem.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

fn needs_lfn(name: &str, short: &[u8; 11]) -> bool {
    exact_short_name(name).as_ref() != Some(short)
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// Long-name entries, last part first as they are stored.
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<u8> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    let checksum = lfn_checksum(short);
    let mut out = Vec::with_capacity(parts * ENTRY);
    for part in (0..parts).rev() {
        let mut chars = [0xFFFFu16; 13];
        for (i, slot) in chars.iter_mut().enumerate() {
            let at = part * 13 + i;
            if at < units.len() {
                *slot = units[at];
            } else if at == units.len() {
                *slot = 0;
            }
        }
        let mut e = [0u8; ENTRY];
        e[0] = (part as u8 + 1) | if part + 1 == parts { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = checksum;
        for (i, c) in chars.iter().enumerate() {
            let at = match i {
                0..=4 => 1 + 2 * i,
                5..=10 => 14 + 2 * (i - 5),
                _ => 28 + 2 * (i - 11),
            };
            e[at..at + 2].copy_from_slice(&c.to_le_bytes());
        }
        out.extend_from_slice(&e);
    }
    out
}

fn sfn_entry(
    name: &[u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
    date: u16,
    time: u16,
) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
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
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample() -> Vec<FatEntry> {
        vec![
            FatEntry::Dir("/EFI".into()),
            FatEntry::Dir("/EFI/BOOT".into()),
            FatEntry::File("/EFI/BOOT/BOOTX64.EFI".into(), vec![7u8; 5000]),
            FatEntry::Dir("/loader".into()),
            FatEntry::File("/loader/loader.conf".into(), b"default keel-*\n".to_vec()),
            FatEntry::Dir("/loader/entries".into()),
            FatEntry::File(
                "/loader/entries/keel-a+3.conf".into(),
                b"title a\n".to_vec(),
            ),
            FatEntry::File(
                "/loader/entries/keel-a+2-1.conf".into(),
                b"title b\n".to_vec(),
            ),
            FatEntry::File("/empty".into(), Vec::new()),
            FatEntry::File(
                "/a-rather-long-file-name-with-several-lfn-parts.minisig".into(),
                b"sig".to_vec(),
            ),
        ]
    }

    fn image(size: u64) -> Vec<u8> {
        let mut img = Cursor::new(vec![0u8; size as usize]);
        write(
            &mut img,
            size,
            b"ESP        ",
            0x1234,
            1_700_000_000,
            &sample(),
        )
        .unwrap();
        img.into_inner()
    }

    #[test]
    fn geometry_keeps_fat32_cluster_counts() {
        for mib in [64u64, 128, 256, 1024] {
            let g = Geometry::new(mib << 20).unwrap();
            assert!(g.clusters >= MIN_CLUSTERS, "{mib} MiB");
        }
        assert!(Geometry::new(16 << 20).is_err());
    }

    #[test]
    fn fatfs_reads_back_every_file_and_the_output_is_reproducible() {
        let img = image(64 << 20);
        assert_eq!(img, image(64 << 20));
        for entry in sample() {
            if let FatEntry::File(path, bytes) = entry {
                let got = crate::esp::read_fat_file(Cursor::new(img.clone()), &path).unwrap();
                assert_eq!(got, bytes, "{path}");
            }
        }
        let mut names =
            crate::esp::list_fat_dir(Cursor::new(img.clone()), "/loader/entries").unwrap();
        names.sort();
        assert_eq!(names, ["keel-a+2-1.conf", "keel-a+3.conf"]);
    }

    #[test]
    fn fsck_vfat_finds_no_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::write(&path, image(64 << 20)).unwrap();
        let out = std::process::Command::new("fsck.vfat")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("fsck.vfat (dosfstools) is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            !text.contains("Auto-renaming") && !text.contains("Expected"),
            "{text}"
        );
        // mtools as a second reader: long names and contents.
        let out = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&path)
            .arg("::/loader/entries/keel-a+3.conf")
            .output()
            .expect("mtools is installed");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "title a\n");
    }

    #[test]
    fn full_and_bad_paths_are_errors() {
        let mut img = Cursor::new(vec![0u8; 64 << 20]);
        let big = vec![FatEntry::File("/big".into(), vec![1u8; 70 << 20])];
        assert!(matches!(
            write(&mut img, 64 << 20, b"X          ", 1, 0, &big),
            Err(Fat32Error::Full { .. })
        ));
        let orphan = vec![FatEntry::File("/no/such/dir".into(), vec![])];
        assert!(matches!(
            write(&mut img, 64 << 20, b"X          ", 1, 0, &orphan),
            Err(Fat32Error::BadPath { .. })
        ));
    }
}
