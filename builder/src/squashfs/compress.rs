//! Block compression shared by data blocks, fragments and metadata blocks.

use std::cell::RefCell;
use std::io;

use super::format::{METADATA_UNCOMPRESSED, compressor_id, flags};

/// The codec an image is written with, already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    /// Everything stored uncompressed (mksquashfs `-noI -noD -noF -noId`).
    None,
    Zstd(i32),
}

/// mksquashfs' default zstd level; its compressor options block is only written for others.
pub(super) const ZSTD_DEFAULT_LEVEL: i32 = 15;

thread_local! {
    // A zstd context allocates several MiB of tables at high levels: keep one per worker
    // thread instead of one per block. Reuse does not change the output, since every block
    // is compressed as a fresh frame.
    static ZSTD: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

impl Codec {
    pub fn compressor_id(self) -> u16 {
        match self {
            // The kernel refuses to mount an image whose compressor it lacks even if no block
            // is compressed; gzip is what mksquashfs records for uncompressed images and what
            // every squashfs-enabled kernel has.
            Codec::None => compressor_id::GZIP,
            Codec::Zstd(_) => compressor_id::ZSTD,
        }
    }

    pub fn superblock_flags(self) -> u16 {
        match self {
            Codec::None => {
                flags::UNCOMPRESSED_INODES
                    | flags::UNCOMPRESSED_DATA
                    | flags::UNCOMPRESSED_FRAGMENTS
                    | flags::UNCOMPRESSED_IDS
            }
            Codec::Zstd(level) if level != ZSTD_DEFAULT_LEVEL => flags::COMPRESSOR_OPTIONS,
            Codec::Zstd(_) => 0,
        }
    }

    /// The compressor options metadata block written right after the superblock, as
    /// mksquashfs writes it (uncompressed, holding the level) for non-default levels.
    pub fn options_block(self) -> Option<Vec<u8>> {
        match self {
            Codec::Zstd(level) if level != ZSTD_DEFAULT_LEVEL => {
                let mut block = Vec::with_capacity(6);
                block.extend_from_slice(&(4 | METADATA_UNCOMPRESSED).to_le_bytes());
                block.extend_from_slice(&level.to_le_bytes());
                Some(block)
            }
            _ => None,
        }
    }

    /// Compresses `data`; `None` when the result would not be smaller, in which case squashfs
    /// stores the block as it is.
    pub fn compress(self, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let level = match self {
            Codec::None => return Ok(None),
            Codec::Zstd(level) => level,
        };
        let compressed = ZSTD.with(|cell| -> io::Result<Vec<u8>> {
            let mut slot = cell.borrow_mut();
            if !matches!(&*slot, Some((l, _)) if *l == level) {
                *slot = Some((level, zstd::bulk::Compressor::new(level)?));
            }
            match &mut *slot {
                Some((_, compressor)) => compressor.compress(data),
                None => Err(io::Error::other("zstd context missing")),
            }
        })?;
        Ok((compressed.len() < data.len()).then_some(compressed))
    }

    /// A metadata block with its 2-byte length header.
    pub fn metadata_block(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let (body, flag) = match self.compress(data)? {
            Some(c) => (c, 0),
            None => (data.to_vec(), METADATA_UNCOMPRESSED),
        };
        // Metadata blocks hold at most 8 KiB, so the length always fits in 15 bits.
        let len = u16::try_from(body.len())
            .ok()
            .filter(|l| l & METADATA_UNCOMPRESSED == 0)
            .ok_or_else(|| io::Error::other("metadata block larger than 32 KiB"))?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&(len | flag).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompressible_data_is_reported_as_such() {
        let noise: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let zeros = vec![0u8; 4096];
        let codec = Codec::Zstd(15);
        assert!(codec.compress(&zeros).unwrap().is_some());
        assert!(Codec::None.compress(&zeros).unwrap().is_none());
        let block = Codec::None.metadata_block(&noise[..100]).unwrap();
        assert_eq!(u16::from_le_bytes([block[0], block[1]]), 100 | 0x8000);
        assert_eq!(&block[2..], &noise[..100]);
    }

    #[test]
    fn contexts_of_other_levels_are_not_reused() {
        let data = b"squashfs squashfs squashfs squashfs squashfs squashfs".repeat(50);
        let a = Codec::Zstd(1).compress(&data).unwrap().unwrap();
        let b = Codec::Zstd(19).compress(&data).unwrap().unwrap();
        let a2 = Codec::Zstd(1).compress(&data).unwrap().unwrap();
        assert_eq!(a, a2);
        assert_eq!(zstd::bulk::decompress(&b, data.len()).unwrap(), data);
    }
}
