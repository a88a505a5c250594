//! Metadata tables: built uncompressed with symbolic cross references, then compressed in
//! parallel.
//!
//! The inode table and the directory table refer to each other by the *compressed* offset of
//! the metadata block holding the target (directory entries point at inodes, directory
//! inodes at their listings), so a block's content depends on the compressed sizes of blocks
//! in the other table. mksquashfs resolves this by compressing strictly in order on one
//! thread. Here both tables are first laid out uncompressed, with every such reference
//! recorded as a [`Fixup`]; then blocks are compressed in waves: each wave patches the
//! references whose target offsets are known and compresses, in parallel, every block whose
//! references are all patched. The layout (see `tables.rs`) keeps the number of waves small.
//! The result is independent of the number of threads, because a block's bytes are fully
//! determined before it is compressed.

use rayon::prelude::*;

use super::SquashfsError;
use super::compress::Codec;
use super::format::METADATA_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Inode = 0,
    Dir = 1,
}

/// A u32 at `at` that must become the compressed start (relative to its table) of metadata
/// block `block` of `table`.
#[derive(Debug, Clone, Copy)]
struct Fixup {
    at: usize,
    table: Table,
    block: usize,
}

/// An uncompressed metadata table under construction.
#[derive(Debug, Default)]
pub(super) struct MetaStream {
    bytes: Vec<u8>,
    fixups: Vec<Fixup>,
}

impl MetaStream {
    /// The uncompressed position of the next byte.
    pub fn pos(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.bytes.extend_from_slice(v);
    }

    /// Overwrites a u32 written earlier (a directory header's entry count).
    pub fn patch_u32(&mut self, at: u64, v: u32) {
        if let Some(slot) = usize::try_from(at)
            .ok()
            .and_then(|at| self.bytes.get_mut(at..at + 4))
        {
            slot.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Writes a placeholder for the compressed start of the block of `table` that holds the
    /// uncompressed position `pos`.
    pub fn block_ref(&mut self, table: Table, pos: u64) {
        self.fixups.push(Fixup {
            at: self.bytes.len(),
            table,
            block: block_of(pos),
        });
        self.u32(0);
    }
}

fn block_of(pos: u64) -> usize {
    usize::try_from(pos / METADATA_SIZE as u64).unwrap_or(usize::MAX)
}

/// A compressed table: its metadata blocks back to back, and where each starts.
#[derive(Debug)]
pub(super) struct CompressedTable {
    pub bytes: Vec<u8>,
    /// Start of each block relative to the table, plus the table's end.
    pub block_starts: Vec<u64>,
}

impl CompressedTable {
    /// The compressed start of the block holding uncompressed `pos`, and `pos`'s offset in it.
    pub fn locate(&self, pos: u64) -> Result<(u64, u16), SquashfsError> {
        let start = self
            .block_starts
            .get(block_of(pos))
            .ok_or(SquashfsError::Internal("reference past the end of a table"))?;
        Ok((*start, (pos % METADATA_SIZE as u64) as u16))
    }
}

/// Compresses a table without cross references (fragment and id tables).
pub(super) fn compress_plain(codec: Codec, bytes: &[u8]) -> Result<CompressedTable, SquashfsError> {
    let blocks: Vec<Vec<u8>> = bytes
        .par_chunks(METADATA_SIZE)
        .map(|chunk| codec.metadata_block(chunk))
        .collect::<Result<_, _>>()
        .map_err(SquashfsError::Compress)?;
    Ok(concat(blocks))
}

fn concat(blocks: Vec<Vec<u8>>) -> CompressedTable {
    let mut table = CompressedTable {
        bytes: Vec::with_capacity(blocks.iter().map(Vec::len).sum()),
        block_starts: vec![0],
    };
    for block in blocks {
        table.bytes.extend_from_slice(&block);
        table.block_starts.push(table.bytes.len() as u64);
    }
    table
}

/// Resolves the references between the inode table and the directory table and compresses
/// both. Returns `[inode table, directory table]`.
pub(super) fn compress_linked(
    codec: Codec,
    mut streams: [MetaStream; 2],
) -> Result<[CompressedTable; 2], SquashfsError> {
    let counts = [0, 1].map(|s| streams[s].bytes.len().div_ceil(METADATA_SIZE));
    let mut done: [Vec<Option<Vec<u8>>>; 2] = counts.map(|n| vec![None; n]);
    // Compressed starts of the leading run of finished blocks (plus the end of that run):
    // `starts[t][b]` is known exactly when `b < starts[t].len()`.
    let mut starts: [Vec<u64>; 2] = [vec![0], vec![0]];
    let mut applied: [Vec<bool>; 2] = [0, 1].map(|s| vec![false; streams[s].fixups.len()]);
    // Per block, how many of the references overlapping it are still unresolved. A u32 can
    // straddle two blocks, so it may hold back both.
    let mut unresolved: [Vec<usize>; 2] = counts.map(|n| vec![0usize; n]);
    for s in 0..2 {
        for f in &streams[s].fixups {
            for b in f.at / METADATA_SIZE..=(f.at + 3) / METADATA_SIZE {
                if let Some(count) = unresolved[s].get_mut(b) {
                    *count += 1;
                }
            }
        }
    }
    loop {
        for s in 0..2 {
            let stream = &mut streams[s];
            for (f, applied) in stream.fixups.iter().zip(applied[s].iter_mut()) {
                if *applied {
                    continue;
                }
                let Some(&start) = starts[f.table as usize].get(f.block) else {
                    continue;
                };
                let value =
                    u32::try_from(start).map_err(|_| SquashfsError::TooLarge("metadata table"))?;
                stream.bytes[f.at..f.at + 4].copy_from_slice(&value.to_le_bytes());
                *applied = true;
                for b in f.at / METADATA_SIZE..=(f.at + 3) / METADATA_SIZE {
                    if let Some(count) = unresolved[s].get_mut(b) {
                        *count -= 1;
                    }
                }
            }
        }
        let ready: Vec<(usize, usize)> = (0..2)
            .flat_map(|s| (0..counts[s]).map(move |b| (s, b)))
            .filter(|&(s, b)| done[s][b].is_none() && unresolved[s][b] == 0)
            .collect();
        if ready.is_empty() {
            if done.iter().flatten().all(Option::is_some) {
                break;
            }
            return Err(SquashfsError::Internal("cyclic metadata references"));
        }
        let compressed: Vec<Vec<u8>> = ready
            .par_iter()
            .map(|&(s, b)| {
                let bytes = &streams[s].bytes;
                let end = bytes.len().min((b + 1) * METADATA_SIZE);
                codec.metadata_block(&bytes[b * METADATA_SIZE..end])
            })
            .collect::<Result<_, _>>()
            .map_err(SquashfsError::Compress)?;
        for (&(s, b), block) in ready.iter().zip(compressed) {
            done[s][b] = Some(block);
        }
        for s in 0..2 {
            while let Some(Some(block)) = done[s].get(starts[s].len() - 1) {
                let end = starts[s][starts[s].len() - 1] + block.len() as u64;
                starts[s].push(end);
            }
        }
    }
    let [inode, dir] = done.map(|blocks| concat(blocks.into_iter().flatten().collect()));
    Ok([inode, dir])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(table: &CompressedTable) -> Vec<u8> {
        let mut out = Vec::new();
        for w in table.block_starts.windows(2) {
            let block = &table.bytes[w[0] as usize..w[1] as usize];
            let header = u16::from_le_bytes([block[0], block[1]]);
            if header & 0x8000 != 0 {
                out.extend_from_slice(&block[2..]);
            } else {
                out.extend(zstd::bulk::decompress(&block[2..], METADATA_SIZE).unwrap());
            }
        }
        out
    }

    #[test]
    fn references_resolve_to_compressed_block_starts_across_tables() {
        let mut a = MetaStream::default();
        let mut b = MetaStream::default();
        // Compressible filler so blocks shrink, with references both ways, one of them
        // straddling a block boundary.
        a.bytes(&vec![7u8; METADATA_SIZE - 2]);
        a.block_ref(Table::Dir, 3 * METADATA_SIZE as u64 + 5);
        a.bytes(&vec![1u8; 3 * METADATA_SIZE]);
        for i in 0..4 * METADATA_SIZE / 4 {
            b.u32(i as u32);
        }
        b.block_ref(Table::Inode, 2 * METADATA_SIZE as u64);
        let [ta, tb] = compress_linked(Codec::Zstd(3), [a, b]).unwrap();
        assert_eq!(ta.block_starts.len(), 6);
        assert_eq!(tb.block_starts.len(), 6);
        let da = decode(&ta);
        let db = decode(&tb);
        let at = METADATA_SIZE - 2;
        let v = u32::from_le_bytes(da[at..at + 4].try_into().unwrap());
        assert_eq!(u64::from(v), tb.block_starts[3]);
        let at = 4 * METADATA_SIZE;
        let v = u32::from_le_bytes(db[at..at + 4].try_into().unwrap());
        assert_eq!(u64::from(v), ta.block_starts[2]);
        assert!(tb.bytes.len() < 4 * METADATA_SIZE);
    }

    #[test]
    fn mutual_references_into_the_same_blocks_are_a_cycle() {
        let mut a = MetaStream::default();
        let mut b = MetaStream::default();
        // Block 0 of each needs block 0 of the other compressed first.
        a.block_ref(Table::Dir, 8192);
        a.bytes(&[0; 8192]);
        b.block_ref(Table::Inode, 8192);
        b.bytes(&[0; 8192]);
        assert!(matches!(
            compress_linked(Codec::None, [a, b]),
            Err(SquashfsError::Internal(_))
        ));
    }
}
