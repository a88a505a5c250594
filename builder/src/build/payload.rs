//! The slot payload: the root tree as squashfs, followed by its dm-verity hash tree.
//!
//! The squashfs is built in memory (the tree already is), its superblock patched in, and then
//! hashed once: one SHA-256 pass gives the squashfs digest (for the salt), and continuing over
//! the verity tree gives the payload digest; the verity leaves are hashed in parallel.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use keel_contract::manifest::{FileDigest, RootFs, Sha256Digest, Verity};
use keel_contract::profile::{Compression, Squashfs};
use sha2::{Digest, Sha256};

use super::BuildError;
use crate::progress::{Reporter, human_bytes};
use crate::squashfs::{BlockCache, SquashfsCompression, SquashfsOptions};
use crate::tree::Tree;
use crate::verity::{self, VerityParams, VerityTree};

pub struct Payload {
    squashfs: Vec<u8>,
    verity: VerityTree,
    payload_sha256: [u8; 32],
}

pub fn build(
    tree: &Tree,
    spec: &Squashfs,
    mkfs_time: u32,
    block_cache: Option<&Path>,
    rep: &Reporter,
) -> Result<Payload, BuildError> {
    let total = tree.content_bytes();
    // The cache only saves time: a cache that cannot be opened means compressing everything.
    let cache = block_cache.and_then(|dir| {
        BlockCache::open(dir, crate::squashfs::DEFAULT_MAX_BYTES)
            .map_err(|e| rep.note(&format!("block cache {}: {e}; not used", dir.display())))
            .ok()
    });
    let phase = rep.phase("squashfs", Some(total));
    let options = SquashfsOptions {
        block_size: spec.block_size.bytes() as u32,
        compression: match spec.compression {
            Compression::Zstd => SquashfsCompression::Zstd {
                level: i32::from(spec.level),
            },
            Compression::None => SquashfsCompression::None,
        },
        mkfs_time,
        ..SquashfsOptions::default()
    };
    let mut squashfs = Vec::with_capacity((total / 2) as usize);
    let summary = crate::squashfs::write_squashfs_cached(
        tree,
        &options,
        cache.as_ref(),
        &mut squashfs,
        &mut |done| phase.set_position(done),
    )
    .map_err(|e| BuildError::Payload(e.to_string()))?;
    squashfs[..summary.superblock.len()].copy_from_slice(&summary.superblock);
    phase.finish(&format!(
        "{} from {} in {} inodes{}",
        human_bytes(squashfs.len() as u64),
        human_bytes(total),
        summary.inode_count,
        cache.as_ref().map(cache_note).unwrap_or_default()
    ));

    let phase = rep.phase("verity", None);
    let mut hasher = Sha256::new();
    hasher.update(&squashfs);
    let squashfs_sha256: [u8; 32] = hasher.clone().finalize().into();
    // Salt and UUID are derived from the content, never random.
    let salt: [u8; 32] =
        Sha256::digest([b"keel verity salt\0".as_slice(), &squashfs_sha256].concat()).into();
    let uuid = crate::disk::derive_uuid(&["verity", &hex::encode(squashfs_sha256)]);
    let verity = verity::build(&squashfs, &VerityParams { salt, uuid })
        .map_err(|e| BuildError::Payload(e.to_string()))?;
    hasher.update(&verity.bytes);
    let payload_sha256 = hasher.finalize().into();
    phase.finish(&format!("root hash {}", hex::encode(verity.root_hash)));
    Ok(Payload {
        squashfs,
        verity,
        payload_sha256,
    })
}

/// Says how many blocks the cache gave, and trims it to its bound.
fn cache_note(cache: &BlockCache) -> String {
    let stats = cache.stats();
    let mut note = format!(
        "; {} of {} blocks from the block cache",
        stats.hits,
        stats.hits + stats.misses
    );
    if stats.corrupt > 0 {
        note += &format!(", {} damaged entries recompressed", stats.corrupt);
    }
    if stats.write_errors > 0 {
        note += &format!(", {} entries could not be written", stats.write_errors);
    }
    if let Err(e) = cache.evict() {
        note += &format!(", eviction failed: {e}");
    }
    note
}

impl Payload {
    pub fn bytes_len(&self) -> u64 {
        (self.squashfs.len() + self.verity.bytes.len()) as u64
    }

    pub fn digest(&self) -> FileDigest {
        FileDigest {
            size: self.bytes_len(),
            sha256: Sha256Digest(self.payload_sha256),
        }
    }

    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.verity.root_hash)
    }

    pub fn root_fs(&self, compression: Compression) -> RootFs {
        RootFs {
            format: "squashfs".into(),
            compression: match compression {
                Compression::Zstd => "zstd".into(),
                Compression::None => "none".into(),
            },
            size: self.squashfs.len() as u64,
            verity: Verity {
                algorithm: "sha256".into(),
                data_block_size: verity::BLOCK_SIZE as u32,
                hash_block_size: verity::BLOCK_SIZE as u32,
                data_blocks: self.verity.data_blocks,
                hash_offset: self.squashfs.len() as u64,
                salt: hex::encode(self.verity.params.salt),
                root_hash: Sha256Digest(self.verity.root_hash),
                uuid: self.verity.params.uuid.hyphenated().to_string(),
            },
        }
    }

    /// Writes squashfs then verity tree at `offset`.
    pub fn write_at<W: Write + Seek>(&self, out: &mut W, offset: u64) -> std::io::Result<()> {
        out.seek(SeekFrom::Start(offset))?;
        self.write_to(out)
    }

    /// Streams the payload (squashfs then verity tree, the slot's bytes) to `out`: the two
    /// parts are kept apart in memory, and update bundles take them without a joined copy.
    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&self.squashfs)?;
        out.write_all(&self.verity.bytes)
    }
}
