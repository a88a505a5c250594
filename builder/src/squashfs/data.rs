//! File contents: deduplication, block and fragment layout, and parallel compression in
//! batches written in a fixed order.

use std::collections::HashMap;
use std::io::{self, Write};
use std::ops::Range;

use rayon::prelude::*;

use super::cache::BlockCache;
use super::compress::Codec;
use super::flatten::Flat;
use super::format::DATA_UNCOMPRESSED;
use super::{Output, SquashfsError};
use crate::tree::Content;

/// Uncompressed bytes compressed per batch: enough to keep every core busy, small enough
/// that the batch's compressed output held before writing stays modest. Tests use small
/// batches so that their trees span many.
const BATCH_BYTES: usize = if cfg!(test) { 1 << 20 } else { 32 << 20 };

/// Where one distinct file content ended up.
#[derive(Debug, Clone, Default)]
pub(super) struct FileData {
    pub size: u64,
    /// Absolute offset of the first block (0 for contents that have no blocks).
    pub start: u64,
    /// The on-disk size word of each block: compressed size, `DATA_UNCOMPRESSED` set for
    /// blocks stored as they are, 0 for holes.
    pub blocks: Vec<u32>,
    /// Fragment index and offset in that fragment of the tail.
    pub fragment: Option<(u32, u32)>,
    /// Bytes of the file that are holes.
    pub sparse: u64,
}

#[derive(Debug, Default)]
pub(super) struct DataArea {
    /// For each node, the index in `files` of its content (regular files only).
    pub file_of_node: Vec<Option<usize>>,
    pub files: Vec<FileData>,
    /// Absolute start and on-disk size word of each fragment block.
    pub fragments: Vec<(u64, u32)>,
    /// Total size of all regular files, duplicates included.
    pub bytes_in: u64,
    /// Bytes the data area takes in the image.
    pub bytes_out: u64,
    pub duplicate_files: u64,
}

enum Job {
    Block { file: usize, block: usize },
    Fragment { pieces: Range<usize> },
}

/// A tail (or a whole small file) packed into a fragment block.
struct Piece {
    file: usize,
    offset: usize,
    len: usize,
}

enum Compressed {
    Hole,
    Stored { bytes: Vec<u8>, size_word: u32 },
}

struct Plan<'t> {
    contents: Vec<&'t Content>,
    files: Vec<FileData>,
    file_of_node: Vec<Option<usize>>,
    jobs: Vec<Job>,
    pieces: Vec<Piece>,
    duplicate_files: u64,
    duplicate_bytes: u64,
    bytes_in: u64,
}

pub(super) fn write_data<W: Write>(
    out: &mut Output<W>,
    flat: &Flat<'_>,
    codec: Codec,
    block_size: u32,
    tail_fragments: bool,
    cache: Option<&BlockCache>,
    progress: &mut dyn FnMut(u64),
) -> Result<DataArea, SquashfsError> {
    let bs = block_size as usize;
    let mut plan = plan(flat, bs, tail_fragments)?;
    let data_start = out.pos();
    let mut fragments = Vec::new();
    let mut done = plan.duplicate_bytes;
    let mut next = 0;
    while next < plan.jobs.len() {
        let mut end = next;
        let mut batch_bytes = 0;
        while end < plan.jobs.len() && (end == next || batch_bytes < BATCH_BYTES) {
            batch_bytes += job_len(&plan, &plan.jobs[end], bs);
            end += 1;
        }
        let results: Vec<Compressed> = plan.jobs[next..end]
            .par_iter()
            .map(|job| run_job(&plan, job, codec, cache, bs))
            .collect::<io::Result<_>>()
            .map_err(SquashfsError::Compress)?;
        for (job, result) in plan.jobs[next..end].iter().zip(results) {
            let pos = out.pos();
            let size_word = match result {
                Compressed::Hole => 0,
                Compressed::Stored { bytes, size_word } => {
                    out.write(&bytes)?;
                    size_word
                }
            };
            match job {
                Job::Block { file, block } => {
                    let file = &mut plan.files[*file];
                    if *block == 0 {
                        file.start = pos;
                    }
                    if size_word == 0 {
                        file.sparse += block_size as u64;
                    }
                    file.blocks[*block] = size_word;
                }
                Job::Fragment { .. } => fragments.push((pos, size_word)),
            }
        }
        done += batch_bytes as u64;
        progress(done);
        next = end;
    }
    if plan.jobs.is_empty() {
        progress(done);
    }
    Ok(DataArea {
        file_of_node: plan.file_of_node,
        files: plan.files,
        fragments,
        bytes_in: plan.bytes_in,
        bytes_out: out.pos() - data_start,
        duplicate_files: plan.duplicate_files,
    })
}

/// Deduplicates contents and decides, without compressing anything, which blocks and
/// fragments are written in which order.
fn plan<'t>(flat: &Flat<'t>, bs: usize, tail_fragments: bool) -> Result<Plan<'t>, SquashfsError> {
    let files = flat.files();
    let hashes: Vec<u32> = files
        .par_iter()
        .map(|(_, content)| crc32fast::hash(content.bytes()))
        .collect();
    let mut plan = Plan {
        contents: Vec::new(),
        files: Vec::new(),
        file_of_node: vec![None; flat.nodes.len()],
        jobs: Vec::new(),
        pieces: Vec::new(),
        duplicate_files: 0,
        duplicate_bytes: 0,
        bytes_in: 0,
    };
    // The hash only narrows the candidates; contents are compared in full, so a collision
    // can never merge different files.
    let mut by_hash: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
    for (&(node, content), hash) in files.iter().zip(hashes) {
        plan.bytes_in += content.len() as u64;
        let candidates = by_hash.entry((content.len(), hash)).or_default();
        let same = |&u: &usize| {
            let other: &Content = plan.contents[u];
            other.same_allocation(content) || other.bytes() == content.bytes()
        };
        let unique = match candidates.iter().copied().find(same) {
            Some(u) => {
                plan.duplicate_files += 1;
                plan.duplicate_bytes += content.len() as u64;
                u
            }
            None => {
                candidates.push(plan.contents.len());
                plan.contents.push(content);
                plan.contents.len() - 1
            }
        };
        plan.file_of_node[node] = Some(unique);
    }

    let mut fragment_count = 0u32;
    let mut fragment_first_piece = 0;
    let mut fragment_fill = 0;
    for (u, content) in plan.contents.iter().enumerate() {
        let len = content.len();
        // Like mksquashfs, small files always go to fragments; the tails of larger files
        // only with `tail_fragments` (mksquashfs' -always-use-fragments).
        let (blocks, tail) = if len < bs || tail_fragments {
            (len / bs, len % bs)
        } else {
            (len.div_ceil(bs), 0)
        };
        let mut data = FileData {
            size: len as u64,
            blocks: vec![0; blocks],
            ..FileData::default()
        };
        plan.jobs
            .extend((0..blocks).map(|block| Job::Block { file: u, block }));
        if tail > 0 {
            // A fragment is written once the next tail does not fit, after the blocks of the
            // current file: a file's blocks must stay contiguous.
            if fragment_fill + tail > bs {
                plan.jobs.push(Job::Fragment {
                    pieces: fragment_first_piece..plan.pieces.len(),
                });
                fragment_count = fragment_count
                    .checked_add(1)
                    .ok_or(SquashfsError::TooLarge("fragment count"))?;
                fragment_first_piece = plan.pieces.len();
                fragment_fill = 0;
            }
            plan.pieces.push(Piece {
                file: u,
                offset: blocks * bs,
                len: tail,
            });
            data.fragment = Some((fragment_count, fragment_fill as u32));
            fragment_fill += tail;
        }
        plan.files.push(data);
    }
    if fragment_fill > 0 {
        plan.jobs.push(Job::Fragment {
            pieces: fragment_first_piece..plan.pieces.len(),
        });
    }
    Ok(plan)
}

fn job_len(plan: &Plan<'_>, job: &Job, bs: usize) -> usize {
    match job {
        Job::Block { file, block } => bs.min(plan.contents[*file].len() - block * bs),
        Job::Fragment { pieces } => plan.pieces[pieces.clone()].iter().map(|p| p.len).sum(),
    }
}

fn run_job(
    plan: &Plan<'_>,
    job: &Job,
    codec: Codec,
    cache: Option<&BlockCache>,
    bs: usize,
) -> io::Result<Compressed> {
    match job {
        Job::Block { file, block } => {
            let bytes = plan.contents[*file].bytes();
            let start = block * bs;
            let data = &bytes[start..bytes.len().min(start + bs)];
            // Only whole blocks become holes, so no reader has to zero-fill a short last
            // block; a zero tail costs next to nothing compressed anyway.
            if data.len() == bs && is_zero(data) {
                return Ok(Compressed::Hole);
            }
            store(codec, cache, bs, data)
        }
        Job::Fragment { pieces } => {
            let mut buf = Vec::with_capacity(bs);
            for p in &plan.pieces[pieces.clone()] {
                buf.extend_from_slice(&plan.contents[p.file].bytes()[p.offset..p.offset + p.len]);
            }
            store(codec, cache, bs, &buf)
        }
    }
}

fn store(
    codec: Codec,
    cache: Option<&BlockCache>,
    bs: usize,
    data: &[u8],
) -> io::Result<Compressed> {
    // Blocks are at most 1 MiB, far below the uncompressed flag bit.
    let len = data.len() as u32;
    let compressed = match cache {
        // Nothing to save without compression.
        Some(cache) if codec != Codec::None => cache.compress(codec, bs as u32, data)?,
        _ => codec.compress(data)?,
    };
    Ok(match compressed {
        Some(bytes) => Compressed::Stored {
            size_word: bytes.len() as u32,
            bytes,
        },
        None => Compressed::Stored {
            bytes: data.to_vec(),
            size_word: len | DATA_UNCOMPRESSED,
        },
    })
}

fn is_zero(data: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    data.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}
