//! dm-verity hash trees, byte-compatible with `veritysetup format` (format 1, sha256).
//!
//! Layout written after the data (at `hash_offset`): a 512-byte superblock padded to one hash
//! block, then the tree levels from the top level down to the leaves. The kernel table's
//! `hash_start_block` is therefore `hash_offset / hash_block_size + 1`.

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const BLOCK_SIZE: usize = 4096;
const DIGEST: usize = 32;
const SUPERBLOCK_SIZE: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerityError {
    #[error("verity data is {len} bytes, not a multiple of the {BLOCK_SIZE}-byte block size")]
    Unaligned { len: usize },
    #[error("verity data is empty")]
    Empty,
}

/// Inputs that, with the data, determine the tree. Both are derived from the build inputs
/// so the output is reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    pub salt: [u8; 32],
    pub uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
    /// Superblock (padded to a block) followed by the levels, top first.
    pub bytes: Vec<u8>,
    pub params: VerityParams,
}

impl VerityTree {
    /// The device-mapper table line for a device holding the data followed, at
    /// `hash_offset`, by these bytes.
    pub fn dm_table(&self, device: &str, hash_offset: u64) -> String {
        format!(
            "0 {sectors} verity 1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} {blocks} {start} sha256 {root} {salt}",
            sectors = self.data_blocks * (BLOCK_SIZE as u64 / 512),
            blocks = self.data_blocks,
            start = hash_offset / BLOCK_SIZE as u64 + 1,
            root = hex::encode(self.root_hash),
            salt = hex::encode(self.params.salt),
        )
    }
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hashes `blocks` (each `BLOCK_SIZE` bytes) into digests packed 128 to a hash block, the
/// last block zero-padded, as dm-verity lays out a level.
fn level(salt: &[u8], blocks: &[u8]) -> Vec<u8> {
    let digests: Vec<[u8; 32]> = blocks
        .par_chunks(BLOCK_SIZE)
        .map(|block| salted(salt, block))
        .collect();
    let per_block = BLOCK_SIZE / DIGEST;
    let mut out = vec![0u8; digests.len().div_ceil(per_block) * BLOCK_SIZE];
    for (i, d) in digests.iter().enumerate() {
        out[i * DIGEST..(i + 1) * DIGEST].copy_from_slice(d);
    }
    out
}

/// Builds the tree over `data`, hashing leaves on every core.
pub fn build(data: &[u8], params: &VerityParams) -> Result<VerityTree, VerityError> {
    if data.is_empty() {
        return Err(VerityError::Empty);
    }
    if !data.len().is_multiple_of(BLOCK_SIZE) {
        return Err(VerityError::Unaligned { len: data.len() });
    }
    let mut levels = vec![level(&params.salt, data)];
    while let Some(last) = levels.last().filter(|l| l.len() > BLOCK_SIZE) {
        let next = level(&params.salt, last);
        levels.push(next);
    }
    let top = levels.last().map(Vec::as_slice).unwrap_or_default();
    let root_hash = salted(&params.salt, top);
    let data_blocks = (data.len() / BLOCK_SIZE) as u64;
    let mut bytes = superblock(params, data_blocks);
    bytes.resize(BLOCK_SIZE, 0);
    for l in levels.iter().rev() {
        bytes.extend_from_slice(l);
    }
    Ok(VerityTree {
        root_hash,
        data_blocks,
        bytes,
        params: *params,
    })
}

fn superblock(params: &VerityParams, data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; SUPERBLOCK_SIZE];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal (not Chrome OS)
    sb[16..32].copy_from_slice(params.uuid.as_bytes());
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    sb[88..88 + params.salt.len()].copy_from_slice(&params.salt);
    sb
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "e48da609055204e89ae53b655ca2216dd983cf3cb829f34f63a297d106d53e2d";

    fn params() -> VerityParams {
        let mut salt = [0u8; 32];
        hex::decode_to_slice(SALT, &mut salt).unwrap();
        VerityParams {
            salt,
            uuid: Uuid::from_u128(0x1234),
        }
    }

    /// The test vector measured with `veritysetup format` (docs/field-notes.md).
    #[test]
    fn eight_mib_of_zeros_matches_veritysetup() {
        let tree = build(&vec![0u8; 8 << 20], &params()).unwrap();
        assert_eq!(
            hex::encode(tree.root_hash),
            "e522df0f97da4febb882ac40f30b37dc0b444bf6df418929463fa25280f09d5c"
        );
        // 2048 leaves -> 16 leaf blocks -> 1 top block, plus the superblock.
        assert_eq!(tree.bytes.len(), (1 + 1 + 16) * BLOCK_SIZE);
        assert_eq!(tree.data_blocks, 2048);
    }

    #[test]
    fn a_single_block_has_a_one_block_tree() {
        let tree = build(&[7u8; BLOCK_SIZE], &params()).unwrap();
        assert_eq!(tree.bytes.len(), 2 * BLOCK_SIZE);
        let leaf = salted(&params().salt, &[7u8; BLOCK_SIZE]);
        assert_eq!(&tree.bytes[BLOCK_SIZE..BLOCK_SIZE + 32], &leaf);
    }

    #[test]
    fn any_changed_byte_changes_the_root() {
        let data = vec![1u8; 3 * BLOCK_SIZE];
        let root = build(&data, &params()).unwrap().root_hash;
        for at in [0, BLOCK_SIZE + 17, data.len() - 1] {
            let mut d = data.clone();
            d[at] ^= 0x80;
            assert_ne!(
                build(&d, &params()).unwrap().root_hash,
                root,
                "flip at {at}"
            );
        }
    }

    #[test]
    fn unaligned_and_empty_data_are_errors() {
        assert_eq!(
            build(&[0u8; 100], &params()),
            Err(VerityError::Unaligned { len: 100 })
        );
        assert_eq!(build(&[], &params()), Err(VerityError::Empty));
    }

    #[test]
    fn dm_table_names_the_hash_start_block() {
        let tree = build(&vec![0u8; 8 << 20], &params()).unwrap();
        let table = tree.dm_table("/dev/vda2", 8 << 20);
        assert!(
            table.starts_with(
                "0 16384 verity 1 /dev/vda2 /dev/vda2 4096 4096 2048 2049 sha256 e522"
            ),
            "{table}"
        );
    }
}
