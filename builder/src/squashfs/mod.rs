//! A deterministic, parallel, streaming squashfs 4.0 writer for [`Tree`]s.
//!
//! The image is written front to back through a plain [`Write`]: the 96-byte superblock is
//! only known at the end, so a zeroed placeholder is written in its place and the real bytes
//! are returned in [`SquashfsSummary::superblock`] for the caller to patch at offset 0
//! ([`write_squashfs_file`] does that for files). Data blocks, fragments and metadata blocks
//! are compressed on all threads of the current rayon pool, in batches, and always written in
//! the same order, so the same tree and options give the same bytes on any machine.
//!
//! What is written matches what mksquashfs 4.5 writes for the same input, with these
//! choices: no xattrs, no NFS export table, files with equal contents share their data
//! (compared byte for byte), whole zero blocks are stored as holes, and the layout described
//! in `tables.rs`. Hard links are not represented: [`Tree`] cannot tell them from copies,
//! so every node is its own inode.
//!
//! A [`BlockCache`] (see `cache.rs`) can remember compressed data and fragment blocks across
//! images by content, so that a rebuild compresses only what changed; the bytes written
//! are the same with or without it.

mod cache;
mod compress;
mod data;
mod flatten;
mod format;
mod metadata;
mod tables;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

pub use cache::{BlockCache, CacheStats, DEFAULT_MAX_BYTES, DIR_NAME as CACHE_DIR_NAME, Eviction};
use compress::Codec;
use format::{FRAGMENT_ENTRY_SIZE, PAD_TO, SUPERBLOCK_SIZE, Superblock, flags, put_u32, put_u64};

use crate::tree::Tree;

/// Errors from writing an image. Problems with the tree carry the node's path.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("invalid squashfs block size {0}: must be a power of two from 4096 to 1048576")]
    InvalidBlockSize(u32),
    #[error("invalid zstd compression level {0}: must be 1 to 22")]
    InvalidCompressionLevel(i32),
    #[error("{path}: name is {len} bytes long, more than the 255 allowed")]
    NameTooLong { path: String, len: usize },
    #[error("{path}: invalid name: {reason}")]
    InvalidName { path: String, reason: &'static str },
    #[error("{path}: symlink target is {len} bytes long, more than the 4095 allowed")]
    SymlinkTargetTooLong { path: String, len: usize },
    #[error("{path}: invalid symlink target: {reason}")]
    InvalidSymlinkTarget { path: String, reason: &'static str },
    #[error("{path}: device number {major}:{minor} does not fit (major < 4096, minor < 2^20)")]
    DeviceNumberTooLarge {
        path: String,
        major: u32,
        minor: u32,
    },
    #[error("more than 65535 distinct uids and gids")]
    TooManyIds,
    #[error("{0} exceeds what squashfs can represent")]
    TooLarge(&'static str),
    #[error("compressing: {0}")]
    Compress(#[source] io::Error),
    #[error("writing the image: {0}")]
    Io(#[from] io::Error),
    #[error("internal error in the squashfs writer: {0}")]
    Internal(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashfsCompression {
    /// zstd at the given level (1..=22).
    Zstd { level: i32 },
    /// No compression at all (recorded as gzip, which every squashfs kernel supports).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashfsOptions {
    /// Data block size: a power of two from 4 KiB to 1 MiB. Default 128 KiB.
    pub block_size: u32,
    /// Default zstd level 15, mksquashfs' default.
    pub compression: SquashfsCompression,
    /// The superblock's creation time, normally SOURCE_DATE_EPOCH.
    pub mkfs_time: u32,
    /// Also pack the tails of files larger than a block into fragments (mksquashfs
    /// `-always-use-fragments`). Files smaller than a block always go to fragments.
    /// Default true: it saves space and costs a fragment block read per tail.
    pub tail_fragments: bool,
}

impl Default for SquashfsOptions {
    fn default() -> Self {
        SquashfsOptions {
            block_size: 128 * 1024,
            compression: SquashfsCompression::Zstd {
                level: compress::ZSTD_DEFAULT_LEVEL,
            },
            mkfs_time: 0,
            tail_fragments: true,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashfsSummary {
    /// The real superblock, to be written at offset 0 over the zeroed placeholder.
    pub superblock: [u8; SUPERBLOCK_SIZE],
    /// Bytes written to the output: the image size, padding included (a multiple of 4096).
    pub bytes_written: u64,
    /// The filesystem size recorded in the superblock (without the padding).
    pub bytes_used: u64,
    pub inode_count: u32,
    /// Total size of all regular files, duplicates included.
    pub data_bytes: u64,
    /// Size of the data area (data blocks and fragment blocks) in the image.
    pub compressed_data_bytes: u64,
    pub fragment_count: u32,
    /// Regular files whose content was already stored for another file.
    pub duplicate_files: u64,
}

/// Writes `tree` as a squashfs image to `out`, streaming, with a zeroed superblock that the
/// caller must replace by [`SquashfsSummary::superblock`].
pub fn write_squashfs<W: Write>(
    tree: &Tree,
    options: &SquashfsOptions,
    out: W,
) -> Result<SquashfsSummary, SquashfsError> {
    write_squashfs_with_progress(tree, options, out, &mut |_| {})
}

/// [`write_squashfs`], calling `progress` with the number of file content bytes processed so
/// far; it ends at [`Tree::content_bytes`].
pub fn write_squashfs_with_progress<W: Write>(
    tree: &Tree,
    options: &SquashfsOptions,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<SquashfsSummary, SquashfsError> {
    write_squashfs_cached(tree, options, None, out, progress)
}

/// [`write_squashfs_with_progress`], taking data and fragment blocks from `cache` when it
/// has them and adding those it lacks. The output is the same as without a cache.
pub fn write_squashfs_cached<W: Write>(
    tree: &Tree,
    options: &SquashfsOptions,
    cache: Option<&BlockCache>,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> Result<SquashfsSummary, SquashfsError> {
    let block_size = options.block_size;
    if !block_size.is_power_of_two() || !(4096..=1 << 20).contains(&block_size) {
        return Err(SquashfsError::InvalidBlockSize(block_size));
    }
    let codec = codec(options)?;
    let flat = flatten::flatten(tree)?;
    let mut out = Output { inner: out, pos: 0 };
    out.write(&[0; SUPERBLOCK_SIZE])?;
    if let Some(block) = codec.options_block() {
        out.write(&block)?;
    }

    let data = data::write_data(
        &mut out,
        &flat,
        codec,
        block_size,
        options.tail_fragments,
        cache,
        progress,
    )?;

    let tables = tables::build(&flat, &data)?;
    let [inode_table, dir_table] = metadata::compress_linked(codec, [tables.inodes, tables.dirs])?;
    let inode_table_start = out.pos();
    out.write(&inode_table.bytes)?;
    let directory_table_start = out.pos();
    out.write(&dir_table.bytes)?;

    let mut entries = Vec::with_capacity(data.fragments.len() * FRAGMENT_ENTRY_SIZE);
    for &(start, size_word) in &data.fragments {
        put_u64(&mut entries, start);
        put_u32(&mut entries, size_word);
        put_u32(&mut entries, 0);
    }
    let fragment_table_start = write_indexed_table(&mut out, codec, &entries)?;

    let mut ids = Vec::with_capacity(flat.ids.len() * 4);
    for &id in &flat.ids {
        put_u32(&mut ids, id);
    }
    let id_table_start = write_indexed_table(&mut out, codec, &ids)?;
    let bytes_used = out.pos();
    let padding = (PAD_TO - bytes_used % PAD_TO) % PAD_TO;
    out.write(&vec![0; padding as usize])?;

    let (root_block, root_offset) = inode_table.locate(tables.root_pos)?;
    let superblock = Superblock {
        inode_count: flat.inode_count(),
        mkfs_time: options.mkfs_time,
        block_size,
        fragment_count: u32::try_from(data.fragments.len())
            .map_err(|_| SquashfsError::TooLarge("fragment count"))?,
        compression_id: codec.compressor_id(),
        block_log: block_size.trailing_zeros() as u16,
        flags: codec.superblock_flags()
            | flags::NO_XATTRS
            | flags::DUPLICATES
            | if options.tail_fragments {
                flags::ALWAYS_FRAGMENTS
            } else {
                0
            },
        id_count: u16::try_from(flat.ids.len()).map_err(|_| SquashfsError::TooManyIds)?,
        root_inode: (root_block << 16) | u64::from(root_offset),
        bytes_used,
        id_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
    };
    out.inner.flush()?;
    Ok(SquashfsSummary {
        superblock: superblock.to_bytes(),
        bytes_written: out.pos(),
        bytes_used,
        inode_count: flat.inode_count(),
        data_bytes: data.bytes_in,
        compressed_data_bytes: data.bytes_out,
        fragment_count: superblock.fragment_count,
        duplicate_files: data.duplicate_files,
    })
}

/// Writes `tree` to a new file at `path` and patches the superblock in.
pub fn write_squashfs_file(
    tree: &Tree,
    options: &SquashfsOptions,
    path: impl AsRef<Path>,
) -> Result<SquashfsSummary, SquashfsError> {
    let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let summary = write_squashfs(tree, options, &mut file)?;
    let mut file = file.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&summary.superblock)?;
    file.flush()?;
    Ok(summary)
}

/// Tracks the output position, which the format's absolute offsets are taken from.
struct Output<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Output<W> {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SquashfsError> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Writes a table stored as metadata blocks followed by the list of their absolute offsets
/// (fragment and id tables); returns where that list starts, which is what the superblock
/// records. An empty table writes nothing and returns the current position, as mksquashfs.
fn write_indexed_table<W: Write>(
    out: &mut Output<W>,
    codec: Codec,
    bytes: &[u8],
) -> Result<u64, SquashfsError> {
    let table = metadata::compress_plain(codec, bytes)?;
    let blocks_start = out.pos();
    out.write(&table.bytes)?;
    let index_start = out.pos();
    let mut index = Vec::new();
    for start in &table.block_starts[..table.block_starts.len().saturating_sub(1)] {
        put_u64(&mut index, blocks_start + start);
    }
    out.write(&index)?;
    Ok(index_start)
}

fn codec(options: &SquashfsOptions) -> Result<Codec, SquashfsError> {
    match options.compression {
        SquashfsCompression::Zstd { level } if (1..=22).contains(&level) => Ok(Codec::Zstd(level)),
        SquashfsCompression::Zstd { level } => Err(SquashfsError::InvalidCompressionLevel(level)),
        SquashfsCompression::None => Ok(Codec::None),
    }
}

/// The bytes this writer stores for one full data block with these options (the block as
/// it is when compression would not shrink it). Lets a test find a file's data in an image.
pub fn stored_block(data: &[u8], options: &SquashfsOptions) -> Result<Vec<u8>, SquashfsError> {
    Ok(codec(options)?
        .compress(data)
        .map_err(SquashfsError::Compress)?
        .unwrap_or_else(|| data.to_vec()))
}
