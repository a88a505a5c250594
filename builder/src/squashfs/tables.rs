//! Lays out the inode table and the directory table (uncompressed, with symbolic block
//! references resolved later by `metadata::compress_linked`).
//!
//! Layout: first the inodes of everything that is not a directory, in inode number order;
//! then the directory inodes, each after those of its subdirectories. Directory listings go
//! to the directory table in the same order. Non-directory inodes depend on nothing but the
//! data layout, so their blocks are compressed in the first wave; after that each block of
//! directory inodes only waits for the listings before it, which only wait for the directory
//! inodes before them. That keeps the waves few and wide.

use super::SquashfsError;
use super::data::DataArea;
use super::flatten::Flat;
use super::format::{
    DIR_HEADER_MAX_ENTRIES, METADATA_SIZE, NO_FRAGMENT, NO_XATTR, encode_rdev, inode_type,
};
use super::metadata::{MetaStream, Table};
use crate::tree::NodeKind;

pub(super) struct Tables {
    pub inodes: MetaStream,
    pub dirs: MetaStream,
    /// Uncompressed position of the root inode in the inode table.
    pub root_pos: u64,
}

pub(super) fn build(flat: &Flat<'_>, data: &DataArea) -> Result<Tables, SquashfsError> {
    let mut inodes = MetaStream::default();
    let mut dirs = MetaStream::default();
    let mut inode_pos = vec![0u64; flat.nodes.len()];
    for (index, n) in flat.nodes.iter().enumerate() {
        if !n.node.is_dir() {
            inode_pos[index] = inodes.pos();
            write_leaf_inode(&mut inodes, flat, data, index)?;
        }
    }
    for &index in &flat.dir_order {
        let listing_start = dirs.pos();
        let index_entries = write_listing(&mut dirs, flat, &inode_pos, index)?;
        let listing_size = dirs.pos() - listing_start;
        inode_pos[index] = inodes.pos();
        write_dir_inode(
            &mut inodes,
            flat,
            index,
            listing_start,
            listing_size,
            &index_entries,
        )?;
    }
    Ok(Tables {
        inodes,
        dirs,
        root_pos: inode_pos[0],
    })
}

/// The 16-byte header every inode starts with.
fn base(out: &mut MetaStream, flat: &Flat<'_>, index: usize, kind: u16) {
    let n = &flat.nodes[index];
    out.u16(kind);
    out.u16(n.node.meta.mode & 0o7777);
    out.u16(n.uid_idx);
    out.u16(n.gid_idx);
    out.u32(n.node.meta.mtime);
    out.u32(inode_number(index));
}

fn inode_number(index: usize) -> u32 {
    // flatten() guarantees that every index + 1 fits.
    (index + 1) as u32
}

/// The directory entry type: always the basic type, even for extended inodes.
fn entry_type(kind: &NodeKind) -> u16 {
    match kind {
        NodeKind::Dir(_) => inode_type::DIR,
        NodeKind::File(_) => inode_type::FILE,
        NodeKind::Symlink(_) => inode_type::SYMLINK,
        NodeKind::BlockDevice { .. } => inode_type::BLOCK_DEV,
        NodeKind::CharDevice { .. } => inode_type::CHAR_DEV,
        NodeKind::Fifo => inode_type::FIFO,
        NodeKind::Socket => inode_type::SOCKET,
    }
}

fn write_leaf_inode(
    out: &mut MetaStream,
    flat: &Flat<'_>,
    data: &DataArea,
    index: usize,
) -> Result<(), SquashfsError> {
    let node = flat.nodes[index].node;
    match &node.kind {
        NodeKind::Dir(_) => return Err(SquashfsError::Internal("directory among leaf inodes")),
        NodeKind::File(_) => {
            let file = data
                .file_of_node
                .get(index)
                .copied()
                .flatten()
                .and_then(|f| data.files.get(f))
                .ok_or(SquashfsError::Internal("file without data"))?;
            let (fragment, offset) = file.fragment.unwrap_or((NO_FRAGMENT, 0));
            let basic = (
                u32::try_from(file.start),
                u32::try_from(file.size),
                file.sparse,
            );
            if let (Ok(start), Ok(size), 0) = basic {
                base(out, flat, index, inode_type::FILE);
                out.u32(start);
                out.u32(fragment);
                out.u32(offset);
                out.u32(size);
            } else {
                base(out, flat, index, inode_type::EXT_FILE);
                out.u64(file.start);
                out.u64(file.size);
                out.u64(file.sparse);
                out.u32(1); // nlink
                out.u32(fragment);
                out.u32(offset);
                out.u32(NO_XATTR);
            }
            for &word in &file.blocks {
                out.u32(word);
            }
        }
        NodeKind::Symlink(target) => {
            base(out, flat, index, inode_type::SYMLINK);
            out.u32(1);
            out.u32(target.len() as u32);
            out.bytes(target);
        }
        NodeKind::BlockDevice { major, minor } | NodeKind::CharDevice { major, minor } => {
            let rdev =
                encode_rdev(*major, *minor).ok_or_else(|| SquashfsError::DeviceNumberTooLarge {
                    path: flat.path(index),
                    major: *major,
                    minor: *minor,
                })?;
            base(out, flat, index, entry_type(&node.kind));
            out.u32(1);
            out.u32(rdev);
        }
        NodeKind::Fifo | NodeKind::Socket => {
            base(out, flat, index, entry_type(&node.kind));
            out.u32(1);
        }
    }
    Ok(())
}

/// A directory index entry: lets the kernel skip to the metadata block holding a name.
struct IndexEntry<'t> {
    /// Offset of the directory header in the listing.
    offset: u32,
    /// Uncompressed position of that header in the directory table.
    pos: u64,
    /// Name of the header's first entry.
    name: &'t [u8],
}

/// Writes a directory's entries, split into runs under headers as the format requires: at
/// most 256 entries per header, all of a header's inodes in one metadata block and within a
/// signed 16-bit distance of the header's inode number. A new header is also started in every
/// metadata block the listing reaches, and indexed, so that a lookup decompresses at most a
/// block or two of a large directory.
fn write_listing<'t>(
    out: &mut MetaStream,
    flat: &Flat<'t>,
    inode_pos: &[u64],
    dir: usize,
) -> Result<Vec<IndexEntry<'t>>, SquashfsError> {
    struct Header {
        pos: u64,
        count: u32,
        inode_block: u64,
        inode_number: u32,
    }
    let listing_start = out.pos();
    let mut index = Vec::new();
    let mut header: Option<Header> = None;
    let block = |pos: u64| pos / METADATA_SIZE as u64;
    for &child in &flat.nodes[dir].children {
        let name = flat.nodes[child].name;
        let number = inode_number(child);
        let pos = inode_pos[child];
        let delta = header
            .as_ref()
            .map(|h| i64::from(number) - i64::from(h.inode_number));
        let fits = header.as_ref().is_some_and(|h| {
            (h.count as usize) < DIR_HEADER_MAX_ENTRIES
                && h.inode_block == block(pos)
                && block(h.pos) == block(out.pos())
        }) && delta.is_some_and(|d| i16::try_from(d).is_ok());
        if !fits {
            if let Some(h) = header.take() {
                out.patch_u32(h.pos, h.count - 1);
                if block(h.pos) != block(out.pos()) {
                    index.push(IndexEntry {
                        offset: u32::try_from(out.pos() - listing_start)
                            .map_err(|_| SquashfsError::TooLarge("directory"))?,
                        pos: out.pos(),
                        name,
                    });
                }
            }
            header = Some(Header {
                pos: out.pos(),
                count: 0,
                inode_block: block(pos),
                inode_number: number,
            });
            out.u32(0); // count - 1, patched when the run ends
            out.block_ref(Table::Inode, pos);
            out.u32(number);
        }
        let Some(h) = header.as_mut() else {
            return Err(SquashfsError::Internal("directory entry without header"));
        };
        let delta = i16::try_from(i64::from(number) - i64::from(h.inode_number))
            .map_err(|_| SquashfsError::Internal("inode number delta"))?;
        h.count += 1;
        out.u16((pos % METADATA_SIZE as u64) as u16);
        out.u16(delta as u16);
        out.u16(entry_type(&flat.nodes[child].node.kind));
        // Names are 1..=255 bytes (checked by flatten), stored as length - 1.
        out.u16((name.len() - 1) as u16);
        out.bytes(name);
    }
    if let Some(h) = header {
        out.patch_u32(h.pos, h.count - 1);
    }
    Ok(index)
}

fn write_dir_inode(
    out: &mut MetaStream,
    flat: &Flat<'_>,
    index: usize,
    listing_start: u64,
    listing_size: u64,
    index_entries: &[IndexEntry<'_>],
) -> Result<(), SquashfsError> {
    let n = &flat.nodes[index];
    let nlink = n
        .subdirs
        .checked_add(2)
        .ok_or(SquashfsError::TooLarge("subdirectories"))?;
    // The root's ".." is given the number after the last inode, as mksquashfs does.
    let parent = if index == 0 {
        flat.inode_count() + 1
    } else {
        inode_number(n.parent)
    };
    // The stored size counts the "." and ".." entries the reader synthesises.
    let size = listing_size + 3;
    let offset = (listing_start % METADATA_SIZE as u64) as u16;
    match u16::try_from(size) {
        Ok(size) if index_entries.is_empty() => {
            base(out, flat, index, inode_type::DIR);
            out.block_ref(Table::Dir, listing_start);
            out.u32(nlink);
            out.u16(size);
            out.u16(offset);
            out.u32(parent);
        }
        _ => {
            let size = u32::try_from(size).map_err(|_| SquashfsError::TooLarge("directory"))?;
            let count = u16::try_from(index_entries.len())
                .map_err(|_| SquashfsError::TooLarge("directory"))?;
            base(out, flat, index, inode_type::EXT_DIR);
            out.u32(nlink);
            out.u32(size);
            out.block_ref(Table::Dir, listing_start);
            out.u32(parent);
            out.u16(count);
            out.u16(offset);
            out.u32(NO_XATTR);
            for e in index_entries {
                out.u32(e.offset);
                out.block_ref(Table::Dir, e.pos);
                out.u32((e.name.len() - 1) as u32);
                out.bytes(e.name);
            }
        }
    }
    Ok(())
}
