//! qcow2 version 3 writer.
//!
//! Layout, in host clusters: header, refcount table, refcount blocks, L1 table, L2 tables,
//! then the data clusters in guest order. Only clusters that hold a non-zero byte are
//! allocated; everything else reads as zeros through an unallocated L2 entry (or a missing L2
//! table), so a mostly empty disk produces a small file. Metadata is computed up front from a
//! map of the data blocks so the file is written front to back exactly once.
//!
//! Every cluster in the file is referenced exactly once, so every refcount is 1 and every
//! L1/L2 entry carries `QCOW_OFLAG_COPIED`; `qemu-img check` treats a mismatch between the two
//! as corruption.

use std::io::Write;
use std::path::Path;

use super::{BLOCK, Extent, FormatError, IoContext, OutputFormat, RawImage, Written};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const _: () = assert!(
    CLUSTER == BLOCK,
    "a data block must map to exactly one cluster"
);

/// Offsets in L1/L2/refcount tables are 8 bytes.
const ENTRIES_PER_TABLE: u64 = CLUSTER / 8;
/// 16-bit refcounts, qemu's default; plenty for refcounts that are all 1.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER * 8 / (1 << REFCOUNT_ORDER);

const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
const VERSION: u32 = 3;
/// The version 3 header without the optional compression-type byte, which defaults to zlib.
const HEADER_LENGTH: u32 = 104;
const OFLAG_COPIED: u64 = 1 << 63;
/// Host offsets in L1/L2 entries occupy bits 9-55.
const MAX_HOST_OFFSET: u64 = 1 << 56;
/// qemu refuses qcow2 images whose virtual size is not a whole number of sectors.
const SECTOR: u64 = 512;

/// Cluster positions of every structure, all derived from the virtual size and the data map.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    virtual_size: u64,
    l1_entries: u64,
    refcount_table: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    refcount_blocks_count: u64,
    l1_table: u64,
    l1_clusters: u64,
    l2_tables: u64,
    /// L1 indices that get an L2 table, ascending.
    l2_indices: Vec<u64>,
    data: u64,
    data_clusters: u64,
    total_clusters: u64,
}

impl Layout {
    fn new(virtual_size: u64, extents: &[Extent]) -> Option<Layout> {
        let guest_clusters = virtual_size.div_ceil(CLUSTER);
        let l1_entries = guest_clusters.div_ceil(ENTRIES_PER_TABLE);
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);

        let mut l2_indices: Vec<u64> = Vec::new();
        let mut data_clusters = 0u64;
        for e in extents {
            let first = e.offset / CLUSTER;
            let end = e.end().div_ceil(CLUSTER);
            data_clusters += end - first;
            for l1 in first / ENTRIES_PER_TABLE..=(end - 1) / ENTRIES_PER_TABLE {
                if l2_indices.last() != Some(&l1) {
                    l2_indices.push(l1);
                }
            }
        }
        let l2_count = l2_indices.len() as u64;

        // Refcount blocks must also count themselves and the table that points at them, so
        // grow them until they cover the whole file.
        let fixed = 1 + l1_clusters + l2_count + data_clusters;
        let mut blocks = 1u64;
        let (table_clusters, total) = loop {
            let table_clusters = (blocks * 8).div_ceil(CLUSTER);
            let total = fixed + table_clusters + blocks;
            let needed = total.div_ceil(REFCOUNTS_PER_BLOCK);
            if needed <= blocks {
                break (table_clusters, total);
            }
            blocks = needed;
        };

        let refcount_table = 1;
        let refcount_blocks = refcount_table + table_clusters;
        let l1_table = refcount_blocks + blocks;
        let l2_tables = l1_table + l1_clusters;
        let data = l2_tables + l2_count;
        if total.checked_mul(CLUSTER)? >= MAX_HOST_OFFSET
            || u32::try_from(l1_entries).is_err()
            || u32::try_from(table_clusters).is_err()
        {
            return None;
        }
        Some(Layout {
            virtual_size,
            l1_entries,
            refcount_table,
            refcount_table_clusters: table_clusters,
            refcount_blocks,
            refcount_blocks_count: blocks,
            l1_table,
            l1_clusters,
            l2_tables,
            l2_indices,
            data,
            data_clusters,
            total_clusters: total,
        })
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; CLUSTER as usize];
        let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &MAGIC.to_be_bytes());
        put(4, &VERSION.to_be_bytes());
        // 8: backing file offset, 16: backing file name length: none.
        put(20, &CLUSTER_BITS.to_be_bytes());
        put(24, &self.virtual_size.to_be_bytes());
        // 32: encryption method: none.
        put(36, &(self.l1_entries as u32).to_be_bytes());
        put(40, &(self.l1_table * CLUSTER).to_be_bytes());
        put(48, &(self.refcount_table * CLUSTER).to_be_bytes());
        put(56, &(self.refcount_table_clusters as u32).to_be_bytes());
        // 60: snapshot count, 64: snapshot table offset: none.
        // 72, 80, 88: incompatible, compatible and autoclear feature bits: none.
        put(96, &REFCOUNT_ORDER.to_be_bytes());
        put(100, &HEADER_LENGTH.to_be_bytes());
        // The header extension area that follows is zero: the end-of-extensions marker.
        h
    }
}

pub(super) fn write<W: Write>(
    image: &RawImage,
    out: &mut W,
    dest: &Path,
) -> Result<Written, FormatError> {
    let virtual_size = super::align_up(image.size(), SECTOR);
    let extents = image.data_extents()?;
    let layout = Layout::new(virtual_size, &extents).ok_or_else(|| FormatError::TooLarge {
        path: image.path().to_owned(),
        format: OutputFormat::Qcow2,
        size: image.size(),
    })?;

    out.write_all(&layout.header()).at(dest, "write")?;
    write_refcounts(&layout, out, dest)?;
    write_l1(&layout, out, dest)?;
    write_l2(&layout, &extents, out, dest)?;

    let mut data_bytes = 0;
    for &extent in &extents {
        image.copy_extent(extent, out, dest)?;
        data_bytes += extent.len;
        // Only the extent at the end of a non-cluster-multiple image can be short.
        let tail = extent.len % CLUSTER;
        if tail != 0 {
            out.write_all(&super::ZERO_BLOCK[..(CLUSTER - tail) as usize])
                .at(dest, "write")?;
        }
    }
    Ok(Written {
        virtual_size,
        data_bytes,
    })
}

fn write_refcounts(layout: &Layout, out: &mut impl Write, dest: &Path) -> Result<(), FormatError> {
    let mut table = vec![0u8; (layout.refcount_table_clusters * CLUSTER) as usize];
    for (i, entry) in table
        .chunks_exact_mut(8)
        .take(layout.refcount_blocks_count as usize)
        .enumerate()
    {
        let offset = (layout.refcount_blocks + i as u64) * CLUSTER;
        entry.copy_from_slice(&offset.to_be_bytes());
    }
    out.write_all(&table).at(dest, "write")?;

    let mut block = vec![0u8; CLUSTER as usize];
    for b in 0..layout.refcount_blocks_count {
        block.fill(0);
        let first = b * REFCOUNTS_PER_BLOCK;
        let used = layout.total_clusters.saturating_sub(first);
        for entry in block.chunks_exact_mut(2).take(used as usize) {
            entry.copy_from_slice(&1u16.to_be_bytes());
        }
        out.write_all(&block).at(dest, "write")?;
    }
    Ok(())
}

fn write_l1(layout: &Layout, out: &mut impl Write, dest: &Path) -> Result<(), FormatError> {
    let mut l1 = vec![0u8; (layout.l1_clusters * CLUSTER) as usize];
    for (n, &index) in layout.l2_indices.iter().enumerate() {
        let entry = ((layout.l2_tables + n as u64) * CLUSTER) | OFLAG_COPIED;
        let at = (index * 8) as usize;
        l1[at..at + 8].copy_from_slice(&entry.to_be_bytes());
    }
    out.write_all(&l1).at(dest, "write")
}

/// Writes the L2 tables; data clusters are numbered in guest order, the order
/// [`write`] copies them in.
fn write_l2(
    layout: &Layout,
    extents: &[Extent],
    out: &mut impl Write,
    dest: &Path,
) -> Result<(), FormatError> {
    let mut table = vec![0u8; CLUSTER as usize];
    let mut current: Option<u64> = None;
    let mut host = layout.data;
    let guest_clusters = extents
        .iter()
        .flat_map(|e| e.offset / CLUSTER..e.end().div_ceil(CLUSTER));
    for guest in guest_clusters {
        let index = guest / ENTRIES_PER_TABLE;
        if current != Some(index) {
            if current.is_some() {
                out.write_all(&table).at(dest, "write")?;
                table.fill(0);
            }
            current = Some(index);
        }
        let at = ((guest % ENTRIES_PER_TABLE) * 8) as usize;
        table[at..at + 8].copy_from_slice(&((host * CLUSTER) | OFLAG_COPIED).to_be_bytes());
        host += 1;
    }
    if current.is_some() {
        out.write_all(&table).at(dest, "write")?;
    }
    debug_assert_eq!(host, layout.data + layout.data_clusters);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_disk_has_only_metadata() {
        let l = Layout::new(1 << 30, &[]).unwrap();
        assert_eq!(l.l1_entries, 2);
        assert_eq!(l.l2_indices, Vec::<u64>::new());
        // header, refcount table, one refcount block, L1.
        assert_eq!(l.total_clusters, 4);
        assert_eq!(l.data, 4);
    }

    #[test]
    fn extents_share_l2_tables_within_512_mib() {
        let extents = [
            Extent {
                offset: 0,
                len: 2 * CLUSTER,
            },
            Extent {
                offset: 100 * CLUSTER,
                len: CLUSTER,
            },
            // Straddles the first L2 table's coverage (8192 clusters).
            Extent {
                offset: 8191 * CLUSTER,
                len: 2 * CLUSTER,
            },
        ];
        let l = Layout::new(2 << 30, &extents).unwrap();
        assert_eq!(l.l2_indices, vec![0, 1]);
        assert_eq!(l.data_clusters, 5);
        assert_eq!(l.total_clusters, 1 + 1 + 1 + 1 + 2 + 5);
    }

    #[test]
    fn refcount_blocks_cover_themselves() {
        // Just enough data that the metadata pushes the total over one refcount block.
        let extents = [Extent {
            offset: 0,
            len: (REFCOUNTS_PER_BLOCK - 6) * CLUSTER,
        }];
        let l = Layout::new(4 << 30, &extents).unwrap();
        assert!(l.refcount_blocks_count * REFCOUNTS_PER_BLOCK >= l.total_clusters);
        assert_eq!(l.refcount_blocks_count, 2);
    }
}
