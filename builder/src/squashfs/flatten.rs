//! Validates the tree and flattens it into inode-numbered nodes plus the id table.

use std::collections::HashMap;

use super::SquashfsError;
use super::format::{MAX_NAME_LEN, MAX_SYMLINK_LEN, encode_rdev};
use crate::tree::{Content, Node, NodeKind, Tree, display};

/// One inode. Its index in [`Flat::nodes`] is its inode number minus one.
pub(super) struct FlatNode<'t> {
    pub node: &'t Node,
    /// Index of the parent in [`Flat::nodes`]; the root is its own parent here.
    pub parent: usize,
    /// The entry name in the parent (empty for the root).
    pub name: &'t [u8],
    pub uid_idx: u16,
    pub gid_idx: u16,
    /// Directories: node indexes of the entries, in name order.
    pub children: Vec<usize>,
    /// Directories: how many entries are directories (for the link count).
    pub subdirs: u32,
}

pub(super) struct Flat<'t> {
    pub nodes: Vec<FlatNode<'t>>,
    /// Every directory after all of its subdirectories, the root last. The directory table
    /// and the directory inodes are laid out in this order, so that a directory's entries only
    /// refer to inodes already placed.
    pub dir_order: Vec<usize>,
    pub ids: Vec<u32>,
}

impl<'t> Flat<'t> {
    pub fn inode_count(&self) -> u32 {
        // flatten() checked that the count (plus one, for the root's parent) fits.
        u32::try_from(self.nodes.len()).unwrap_or(u32::MAX)
    }

    /// Regular files in depth-first tree order (mksquashfs' order), the order their data is
    /// written in: files of one subtree stay together, which packs similar small files into
    /// the same fragments and compresses measurably better than directory-by-directory.
    pub fn files(&self) -> Vec<(usize, &'t Content)> {
        let mut out = Vec::new();
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            match &self.nodes[i].node.kind {
                NodeKind::File(content) => out.push((i, content)),
                NodeKind::Dir(_) => stack.extend(self.nodes[i].children.iter().rev()),
                _ => {}
            }
        }
        out
    }

    /// The path of a node in the tree, for error messages.
    pub fn path(&self, mut index: usize) -> String {
        let mut parts = Vec::new();
        while index != 0 {
            parts.push(self.nodes[index].name);
            index = self.nodes[index].parent;
        }
        let mut path = Vec::new();
        for part in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(part);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        display(&path)
    }
}

struct IdTable {
    ids: Vec<u32>,
    index: HashMap<u32, u16>,
}

impl IdTable {
    fn get(&mut self, id: u32) -> Result<u16, SquashfsError> {
        if let Some(&i) = self.index.get(&id) {
            return Ok(i);
        }
        // The superblock's id count is a u16, so 65535 distinct ids at most.
        let i = u16::try_from(self.ids.len())
            .ok()
            .filter(|&i| i < u16::MAX)
            .ok_or(SquashfsError::TooManyIds)?;
        self.ids.push(id);
        self.index.insert(id, i);
        Ok(i)
    }
}

/// Numbers the inodes: the root is 1 and the entries of each directory get consecutive
/// numbers, directories visited depth first. Consecutive numbers keep the deltas stored in
/// directory entries small, so one directory header can cover up to 256 entries.
pub(super) fn flatten(tree: &Tree) -> Result<Flat<'_>, SquashfsError> {
    let mut ids = IdTable {
        ids: Vec::new(),
        index: HashMap::new(),
    };
    let root = tree.root();
    let mut flat = Flat {
        nodes: Vec::new(),
        dir_order: Vec::new(),
        ids: Vec::new(),
    };
    flat.nodes.push(new_node(root, 0, b"", &mut ids)?);
    let mut stack = vec![0usize];
    while let Some(dir) = stack.pop() {
        flat.dir_order.push(dir);
        let Some(children) = flat.nodes[dir].node.children() else {
            continue;
        };
        let first = flat.nodes.len();
        for (name, child) in children {
            let index = flat.nodes.len();
            flat.nodes.push(new_node(child, dir, name, &mut ids)?);
            check_node(&flat, index)?;
        }
        let end = flat.nodes.len();
        flat.nodes[dir].children = (first..end).collect();
        let subdirs: Vec<usize> = (first..end)
            .filter(|&i| flat.nodes[i].node.is_dir())
            .collect();
        flat.nodes[dir].subdirs = u32::try_from(subdirs.len())
            .map_err(|_| SquashfsError::TooLarge("directory entries"))?;
        stack.extend(subdirs.into_iter().rev());
    }
    // Pre-order reversed puts every directory after its descendants.
    flat.dir_order.reverse();
    // The root's parent number is inode count + 1, which must fit in 32 bits too.
    if flat.nodes.len() >= u32::MAX as usize {
        return Err(SquashfsError::TooLarge("inode count"));
    }
    flat.ids = ids.ids;
    Ok(flat)
}

fn new_node<'t>(
    node: &'t Node,
    parent: usize,
    name: &'t [u8],
    ids: &mut IdTable,
) -> Result<FlatNode<'t>, SquashfsError> {
    Ok(FlatNode {
        node,
        parent,
        name,
        uid_idx: ids.get(node.meta.uid)?,
        gid_idx: ids.get(node.meta.gid)?,
        children: Vec::new(),
        subdirs: 0,
    })
}

fn check_node(flat: &Flat<'_>, index: usize) -> Result<(), SquashfsError> {
    let n = &flat.nodes[index];
    let name = n.name;
    let invalid = |reason: &'static str| SquashfsError::InvalidName {
        path: flat.path(index),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty name"));
    }
    if name == b"." || name == b".." {
        return Err(invalid("`.` and `..` cannot be stored"));
    }
    if name.contains(&b'/') {
        return Err(invalid("contains '/'"));
    }
    if name.contains(&0) {
        return Err(invalid("contains a NUL byte"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(SquashfsError::NameTooLong {
            path: flat.path(index),
            len: name.len(),
        });
    }
    match &n.node.kind {
        NodeKind::Symlink(target) => {
            let invalid = |reason: &'static str| SquashfsError::InvalidSymlinkTarget {
                path: flat.path(index),
                reason,
            };
            if target.is_empty() {
                return Err(invalid("empty target"));
            }
            if target.contains(&0) {
                return Err(invalid("target contains a NUL byte"));
            }
            if target.len() > MAX_SYMLINK_LEN {
                return Err(SquashfsError::SymlinkTargetTooLong {
                    path: flat.path(index),
                    len: target.len(),
                });
            }
        }
        NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor }
            if encode_rdev(*major, *minor).is_none() =>
        {
            return Err(SquashfsError::DeviceNumberTooLarge {
                path: flat.path(index),
                major: *major,
                minor: *minor,
            });
        }
        _ => {}
    }
    Ok(())
}
