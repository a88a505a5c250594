//! On-disk constants and encoders of squashfs 4.0 (always little endian), as defined by the
//! Linux kernel's `fs/squashfs/squashfs_fs.h`.

pub(super) const MAGIC: u32 = 0x7371_7368;
pub(super) const SUPERBLOCK_SIZE: usize = 96;
/// Uncompressed size of every metadata block but the last of a table.
pub(super) const METADATA_SIZE: usize = 8192;
/// Set in a metadata block's 2-byte header when the block is stored uncompressed.
pub(super) const METADATA_UNCOMPRESSED: u16 = 1 << 15;
/// Set in a data block's or fragment's size when it is stored uncompressed.
pub(super) const DATA_UNCOMPRESSED: u32 = 1 << 24;
pub(super) const NO_FRAGMENT: u32 = u32::MAX;
pub(super) const NO_XATTR: u32 = u32::MAX;
pub(super) const NO_TABLE: u64 = u64::MAX;
pub(super) const DIR_HEADER_MAX_ENTRIES: usize = 256;
pub(super) const FRAGMENT_ENTRY_SIZE: usize = 16;
/// mksquashfs pads images to this multiple, so that loop devices and dm-verity see whole
/// 4 KiB blocks.
pub(super) const PAD_TO: u64 = 4096;

/// Linux' NAME_MAX: squashfs itself would allow 256, but no Linux filesystem could hold such
/// a name after extraction.
pub(super) const MAX_NAME_LEN: usize = 255;
/// PATH_MAX minus the terminating NUL: symlink(2) refuses longer targets.
pub(super) const MAX_SYMLINK_LEN: usize = 4095;

pub(super) mod flags {
    pub const UNCOMPRESSED_INODES: u16 = 0x0001;
    pub const UNCOMPRESSED_DATA: u16 = 0x0002;
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
    pub const ALWAYS_FRAGMENTS: u16 = 0x0020;
    pub const DUPLICATES: u16 = 0x0040;
    pub const NO_XATTRS: u16 = 0x0200;
    pub const COMPRESSOR_OPTIONS: u16 = 0x0400;
    pub const UNCOMPRESSED_IDS: u16 = 0x0800;
}

pub(super) mod compressor_id {
    pub const GZIP: u16 = 1;
    pub const ZSTD: u16 = 6;
}

pub(super) mod inode_type {
    pub const DIR: u16 = 1;
    pub const FILE: u16 = 2;
    pub const SYMLINK: u16 = 3;
    pub const BLOCK_DEV: u16 = 4;
    pub const CHAR_DEV: u16 = 5;
    pub const FIFO: u16 = 6;
    pub const SOCKET: u16 = 7;
    pub const EXT_DIR: u16 = 8;
    pub const EXT_FILE: u16 = 9;
}

/// The superblock fields this writer varies; the rest are fixed by the format or by our
/// choices (no xattrs, no export table).
#[derive(Debug, Clone, Default)]
pub(super) struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compression_id: u16,
    pub block_log: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        put_u32(&mut b, MAGIC);
        put_u32(&mut b, self.inode_count);
        put_u32(&mut b, self.mkfs_time);
        put_u32(&mut b, self.block_size);
        put_u32(&mut b, self.fragment_count);
        put_u16(&mut b, self.compression_id);
        put_u16(&mut b, self.block_log);
        put_u16(&mut b, self.flags);
        put_u16(&mut b, self.id_count);
        put_u16(&mut b, 4);
        put_u16(&mut b, 0);
        put_u64(&mut b, self.root_inode);
        put_u64(&mut b, self.bytes_used);
        put_u64(&mut b, self.id_table_start);
        put_u64(&mut b, NO_TABLE); // xattr id table
        put_u64(&mut b, self.inode_table_start);
        put_u64(&mut b, self.directory_table_start);
        put_u64(&mut b, self.fragment_table_start);
        put_u64(&mut b, NO_TABLE); // export (inode lookup) table
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out.copy_from_slice(&b);
        out
    }
}

/// The kernel's `new_encode_dev`: 12 bits of major, 20 bits of minor, interleaved so that
/// the old 8:8 encoding stays valid for small numbers. `None` if either does not fit.
pub(super) fn encode_rdev(major: u32, minor: u32) -> Option<u32> {
    if major > 0xfff || minor > 0xf_ffff {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

pub(super) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_matches_the_kernel_encoding() {
        assert_eq!(encode_rdev(8, 1), Some(0x0801));
        // (300, 70000) as mksquashfs stores it: `unsquashfs -lls` shows it as 1118508,112.
        assert_eq!(encode_rdev(300, 70000), Some(0x1111_2c70));
        assert_eq!(encode_rdev(0x1000, 0), None);
        assert_eq!(encode_rdev(0, 0x10_0000), None);
    }

    #[test]
    fn superblock_is_96_bytes_with_magic_and_version() {
        let sb = Superblock::default().to_bytes();
        assert_eq!(&sb[0..4], b"hsqs");
        assert_eq!(u16::from_le_bytes([sb[28], sb[29]]), 4);
        assert_eq!(&sb[56..64], &u64::MAX.to_le_bytes());
        assert_eq!(&sb[88..96], &u64::MAX.to_le_bytes());
    }
}
