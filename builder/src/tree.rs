//! An in-memory root filesystem.
//!
//! Userland layers (Debian packages, OCI layers, host files) are applied to a [`Tree`] and the
//! tree is then written as squashfs. Holding the tree in memory, rather than unpacking to the
//! host's disk, means the build needs no root privileges, keeps owners, setuid bits and device
//! nodes exactly as the layers describe them, and gives a deterministic order (names are kept
//! sorted bytewise, the order squashfs directories need).

use std::collections::BTreeMap;
use std::sync::Arc;

/// Errors from tree operations; they carry the path inside the tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("{path}: a path component is not a directory")]
    NotADirectory { path: String },
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
    #[error("{path}: path escapes or is not a valid tree path")]
    InvalidPath { path: String },
    #[error("{path}: not found")]
    NotFound { path: String },
}

/// Owner, permissions and time of a node. `mode` holds the permission bits only
/// (`0o7777`: setuid, setgid, sticky and rwx); the file type is the [`NodeKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

impl Meta {
    pub const fn new(mode: u16, uid: u32, gid: u32, mtime: u32) -> Self {
        Meta {
            mode: mode & 0o7777,
            uid,
            gid,
            mtime,
        }
    }

    /// root:root with the given permission bits and time 0 (times are normalised at the end).
    pub const fn root(mode: u16) -> Self {
        Meta::new(mode, 0, 0, 0)
    }
}

/// File contents, shared between hard links and copies without duplicating bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Content(Arc<[u8]>);

impl Content {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Content(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when both handles point at the same bytes (a hard link or a copy made by us).
    pub fn same_allocation(&self, other: &Content) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content({} bytes)", self.0.len())
    }
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// Entries sorted bytewise by name, as squashfs requires.
    Dir(BTreeMap<Vec<u8>, Node>),
    File(Content),
    /// The link target, verbatim.
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub kind: NodeKind,
}

impl Node {
    pub fn dir(meta: Meta) -> Self {
        Node {
            meta,
            kind: NodeKind::Dir(BTreeMap::new()),
        }
    }

    pub fn file(meta: Meta, content: impl Into<Arc<[u8]>>) -> Self {
        Node {
            meta,
            kind: NodeKind::File(Content::new(content)),
        }
    }

    pub fn symlink(target: impl Into<Vec<u8>>) -> Self {
        Node {
            meta: Meta::root(0o777),
            kind: NodeKind::Symlink(target.into()),
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }

    pub fn children(&self) -> Option<&BTreeMap<Vec<u8>, Node>> {
        match &self.kind {
            NodeKind::Dir(children) => Some(children),
            _ => None,
        }
    }
}

/// Mode for directories the tree creates itself (missing parents).
pub const IMPLICIT_DIR_MODE: u16 = 0o755;
const MAX_SYMLINK_HOPS: usize = 40;

/// A root filesystem. Paths are absolute or relative to the root (`/usr/bin`, `./usr/bin` and
/// `usr/bin` are the same); `..` never leaves the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    root: Node,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        Tree {
            root: Node::dir(Meta::root(0o755)),
        }
    }

    /// A root with the merged-/usr layout Debian 12 uses (`/bin -> usr/bin` and so on), so that
    /// packages that still ship files under `/lib` land in `/usr/lib` as dpkg would put them.
    pub fn with_merged_usr() -> Self {
        let mut tree = Tree::new();
        for dir in ["usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
            // Infallible: fresh directories under a fresh root.
            let _ = tree.insert(dir, Node::dir(Meta::root(0o755)));
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            let _ = tree.insert(link, Node::symlink(target));
        }
        tree
    }

    pub fn root(&self) -> &Node {
        &self.root
    }

    pub fn root_mut(&mut self) -> &mut Node {
        &mut self.root
    }

    /// Inserts `node` at `path`, as extracting an archive onto a real filesystem would:
    /// symlinks in the parent components are followed (within the tree), missing parents are
    /// created with mode 0755, an existing non-directory is replaced, and a directory placed on
    /// an existing directory only updates its metadata (the children stay).
    pub fn insert(&mut self, path: impl AsRef<[u8]>, node: Node) -> Result<(), TreeError> {
        let path = path.as_ref();
        let (parent, name) = self.resolve_parent_creating(path)?;
        if node.is_dir() && self.get(path).is_some_and(Node::is_dir) {
            // A directory entry where a symlink to a directory already stands (`/lib` in a
            // merged-/usr root): keep the link, as dpkg does, and leave the target alone.
            let existing_is_link = self
                .node_at(&parent)
                .and_then(Node::children)
                .and_then(|c| c.get(&name))
                .is_some_and(|n| matches!(n.kind, NodeKind::Symlink(_)));
            if existing_is_link {
                return Ok(());
            }
        }
        let dir = self.dir_mut(&parent, path)?;
        match (dir.get_mut(&name), node.kind) {
            (
                Some(
                    existing @ Node {
                        kind: NodeKind::Dir(_),
                        ..
                    },
                ),
                NodeKind::Dir(new_children),
            ) => {
                existing.meta = node.meta;
                if let NodeKind::Dir(children) = &mut existing.kind {
                    children.extend(new_children);
                }
            }
            (_, kind) => {
                dir.insert(
                    name,
                    Node {
                        meta: node.meta,
                        kind,
                    },
                );
            }
        }
        Ok(())
    }

    /// Removes whatever is at `path` (an OCI whiteout). Missing paths are not an error.
    pub fn remove(&mut self, path: impl AsRef<[u8]>) -> Result<Option<Node>, TreeError> {
        let path = path.as_ref();
        let (parent, name) = match self.resolve_parent(path) {
            Ok(found) => found,
            Err(TreeError::NotFound { .. }) => return Ok(None),
            Err(err) => return Err(err),
        };
        let dir = self.dir_mut(&parent, path)?;
        Ok(dir.remove(&name))
    }

    /// Removes every entry inside the directory at `path` (an OCI opaque whiteout).
    pub fn clear_dir(&mut self, path: impl AsRef<[u8]>) -> Result<(), TreeError> {
        let path = path.as_ref();
        let resolved = self.resolve(path, true)?;
        if let NodeKind::Dir(children) = &mut self.node_mut_at(&resolved, path)?.kind {
            children.clear();
            Ok(())
        } else {
            Err(TreeError::NotADirectory {
                path: display(path),
            })
        }
    }

    /// The node at `path`, following symlinks in every component including the last.
    pub fn get(&self, path: impl AsRef<[u8]>) -> Option<&Node> {
        let resolved = self.resolve(path.as_ref(), true).ok()?;
        self.node_at(&resolved)
    }

    /// The node at `path`, following symlinks in the parents but not the last component.
    pub fn get_no_follow(&self, path: impl AsRef<[u8]>) -> Option<&Node> {
        let (parent, name) = self.resolve_parent(path.as_ref()).ok()?;
        self.node_at(&parent)?.children()?.get(&name)
    }

    /// Mutable access to the node at `path` (symlinks followed).
    pub fn get_mut(&mut self, path: impl AsRef<[u8]>) -> Option<&mut Node> {
        let path = path.as_ref();
        let resolved = self.resolve(path, true).ok()?;
        self.node_mut_at(&resolved, path).ok()
    }

    /// Canonical path (components, no symlinks) of `path`.
    pub fn canonical(&self, path: impl AsRef<[u8]>) -> Result<Vec<Vec<u8>>, TreeError> {
        self.resolve(path.as_ref(), true)
    }

    /// Visits every node depth first, parents before children, names in sorted order.
    /// The callback gets the absolute path (`/` for the root).
    pub fn walk(&self, mut visit: impl FnMut(&[u8], &Node)) {
        fn go(path: &mut Vec<u8>, node: &Node, visit: &mut impl FnMut(&[u8], &Node)) {
            visit(if path.is_empty() { b"/" } else { path }, node);
            if let NodeKind::Dir(children) = &node.kind {
                for (name, child) in children {
                    let len = path.len();
                    path.push(b'/');
                    path.extend_from_slice(name);
                    go(path, child, visit);
                    path.truncate(len);
                }
            }
        }
        go(&mut Vec::new(), &self.root, &mut visit);
    }

    /// Applies `f` to every node's metadata (used to clamp all times to SOURCE_DATE_EPOCH).
    pub fn for_each_meta_mut(&mut self, mut f: impl FnMut(&mut Meta)) {
        fn go(node: &mut Node, f: &mut impl FnMut(&mut Meta)) {
            f(&mut node.meta);
            if let NodeKind::Dir(children) = &mut node.kind {
                for child in children.values_mut() {
                    go(child, f);
                }
            }
        }
        go(&mut self.root, &mut f);
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        let mut count = 0;
        self.walk(|_, _| count += 1);
        count
    }

    pub fn is_empty(&self) -> bool {
        self.root.children().is_none_or(BTreeMap::is_empty)
    }

    /// Total bytes of regular file contents.
    pub fn content_bytes(&self) -> u64 {
        let mut total = 0u64;
        self.walk(|_, node| {
            if let NodeKind::File(content) = &node.kind {
                total += content.len() as u64;
            }
        });
        total
    }

    fn node_at(&self, components: &[Vec<u8>]) -> Option<&Node> {
        let mut node = &self.root;
        for name in components {
            node = node.children()?.get(name)?;
        }
        Some(node)
    }

    fn node_mut_at(&mut self, components: &[Vec<u8>], path: &[u8]) -> Result<&mut Node, TreeError> {
        let mut node = &mut self.root;
        for name in components {
            node = match &mut node.kind {
                NodeKind::Dir(children) => {
                    children.get_mut(name).ok_or_else(|| TreeError::NotFound {
                        path: display(path),
                    })?
                }
                _ => {
                    return Err(TreeError::NotADirectory {
                        path: display(path),
                    });
                }
            };
        }
        Ok(node)
    }

    fn dir_mut(
        &mut self,
        components: &[Vec<u8>],
        path: &[u8],
    ) -> Result<&mut BTreeMap<Vec<u8>, Node>, TreeError> {
        match &mut self.node_mut_at(components, path)?.kind {
            NodeKind::Dir(children) => Ok(children),
            _ => Err(TreeError::NotADirectory {
                path: display(path),
            }),
        }
    }

    /// Resolves the parent of `path` (following symlinks) and returns it with the final name,
    /// creating missing parent directories.
    fn resolve_parent_creating(
        &mut self,
        path: &[u8],
    ) -> Result<(Vec<Vec<u8>>, Vec<u8>), TreeError> {
        let (parent_path, name) = split_parent(path)?;
        Ok((self.resolve_creating(&parent_path)?, name))
    }

    /// Resolves the parent of `path` (following symlinks) and returns it with the final name.
    fn resolve_parent(&self, path: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>), TreeError> {
        let (parent_path, name) = split_parent(path)?;
        Ok((self.resolve(&parent_path, true)?, name))
    }

    fn resolve_creating(&mut self, path: &[u8]) -> Result<Vec<Vec<u8>>, TreeError> {
        // Create missing components one by one, resolving symlinks as we go.
        let mut done: Vec<Vec<u8>> = Vec::new();
        for c in split(path) {
            let mut probe = join(&done);
            probe.push(b'/');
            probe.extend_from_slice(&c);
            match self.resolve(&probe, true) {
                Ok(resolved) => {
                    if !self.node_at(&resolved).is_some_and(Node::is_dir) {
                        return Err(TreeError::NotADirectory {
                            path: display(path),
                        });
                    }
                    done = resolved;
                }
                Err(TreeError::NotFound { .. }) => {
                    // A dangling symlink is not created through; only plain missing names.
                    let dir = self.dir_mut(&done, path)?;
                    if dir.contains_key(&c) {
                        return Err(TreeError::NotFound {
                            path: display(path),
                        });
                    }
                    dir.insert(c.clone(), Node::dir(Meta::root(IMPLICIT_DIR_MODE)));
                    done.push(c);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(done)
    }

    /// Resolves `path` to canonical components. `follow_last` decides whether a symlink in the
    /// final component is followed.
    fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Vec<Vec<u8>>, TreeError> {
        let mut pending: Vec<Vec<u8>> = split(path);
        pending.reverse();
        let mut resolved: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == b".." {
                resolved.pop();
                continue;
            }
            let parent = self.node_at(&resolved).ok_or_else(|| TreeError::NotFound {
                path: display(path),
            })?;
            let children = parent.children().ok_or_else(|| TreeError::NotADirectory {
                path: display(path),
            })?;
            let child = children.get(&c).ok_or_else(|| TreeError::NotFound {
                path: display(path),
            })?;
            match &child.kind {
                NodeKind::Symlink(target) if follow_last || !pending.is_empty() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(TreeError::SymlinkLoop {
                            path: display(path),
                        });
                    }
                    if target.first() == Some(&b'/') {
                        resolved.clear();
                    }
                    for t in split(target).into_iter().rev() {
                        pending.push(t);
                    }
                }
                _ => resolved.push(c),
            }
        }
        Ok(resolved)
    }
}

/// Splits `path` into its parent path and final name; `..` or nothing as the name is invalid.
fn split_parent(path: &[u8]) -> Result<(Vec<u8>, Vec<u8>), TreeError> {
    let mut components = split(path);
    match components.pop() {
        Some(name) if name != b".." => Ok((join(&components), name)),
        _ => Err(TreeError::InvalidPath {
            path: display(path),
        }),
    }
}

/// Splits a path into its components, dropping empty and `.` components.
fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn join(components: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in components {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

pub(crate) fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: &str) -> Node {
        Node::file(Meta::root(0o644), content.as_bytes().to_vec())
    }

    #[test]
    fn insert_creates_parents_and_follows_merged_usr_symlinks() {
        let mut tree = Tree::with_merged_usr();
        tree.insert("./lib/x86_64-linux-gnu/libc.so.6", file("libc"))
            .unwrap();
        let node = tree
            .get_no_follow("/usr/lib/x86_64-linux-gnu/libc.so.6")
            .unwrap();
        assert_eq!(node.kind, NodeKind::File(Content::new(b"libc".to_vec())));
        assert!(matches!(
            tree.get_no_follow("/lib").unwrap().kind,
            NodeKind::Symlink(_)
        ));
        assert_eq!(
            tree.get_no_follow("/usr/lib/x86_64-linux-gnu")
                .unwrap()
                .meta
                .mode,
            IMPLICIT_DIR_MODE
        );
    }

    #[test]
    fn directory_over_directory_keeps_children_and_takes_new_meta() {
        let mut tree = Tree::new();
        tree.insert("/etc/hosts", file("h")).unwrap();
        tree.insert("/etc", Node::dir(Meta::new(0o700, 1, 2, 3)))
            .unwrap();
        assert_eq!(tree.get("/etc").unwrap().meta, Meta::new(0o700, 1, 2, 3));
        assert!(tree.get("/etc/hosts").is_some());
    }

    #[test]
    fn file_replaces_file_and_symlink_is_not_followed_when_replaced() {
        let mut tree = Tree::new();
        tree.insert("/a", file("1")).unwrap();
        tree.insert("/link", Node::symlink("/a")).unwrap();
        tree.insert("/link", file("2")).unwrap();
        assert_eq!(
            tree.get("/a").unwrap().kind,
            NodeKind::File(Content::new(b"1".to_vec()))
        );
        assert_eq!(
            tree.get("/link").unwrap().kind,
            NodeKind::File(Content::new(b"2".to_vec()))
        );
    }

    #[test]
    fn remove_and_clear_dir() {
        let mut tree = Tree::new();
        tree.insert("/d/x", file("x")).unwrap();
        tree.insert("/d/y", file("y")).unwrap();
        assert!(tree.remove("/d/x").unwrap().is_some());
        assert!(tree.remove("/d/missing").unwrap().is_none());
        assert!(tree.remove("/nowhere/missing").unwrap().is_none());
        assert!(tree.get("/d/y").is_some());
        tree.clear_dir("/d").unwrap();
        assert!(tree.get("/d").unwrap().children().unwrap().is_empty());
    }

    #[test]
    fn relative_symlinks_and_dotdot_resolve_inside_the_root() {
        let mut tree = Tree::new();
        tree.insert("/usr/lib/modules/6.1/kernel/a.ko", file("a"))
            .unwrap();
        tree.insert("/lib", Node::symlink("usr/lib")).unwrap();
        tree.insert("/usr/lib/escape", Node::symlink("../../../../usr"))
            .unwrap();
        assert!(tree.get("/lib/modules/6.1/kernel/a.ko").is_some());
        assert!(tree.get("/usr/lib/escape/lib/modules").is_some());
        assert_eq!(
            tree.canonical("/lib/modules").unwrap(),
            vec![b"usr".to_vec(), b"lib".to_vec(), b"modules".to_vec()]
        );
    }

    #[test]
    fn symlink_loops_are_reported() {
        let mut tree = Tree::new();
        tree.insert("/a", Node::symlink("b")).unwrap();
        tree.insert("/b", Node::symlink("a")).unwrap();
        assert!(matches!(
            tree.canonical("/a/x"),
            Err(TreeError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn inserting_under_a_file_fails() {
        let mut tree = Tree::new();
        tree.insert("/f", file("f")).unwrap();
        assert!(matches!(
            tree.insert("/f/x", file("x")),
            Err(TreeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn walk_is_sorted_and_parents_first() {
        let mut tree = Tree::new();
        tree.insert("/b/2", file("")).unwrap();
        tree.insert("/a", file("")).unwrap();
        tree.insert("/b/1", file("")).unwrap();
        let mut seen = Vec::new();
        tree.walk(|p, _| seen.push(String::from_utf8_lossy(p).into_owned()));
        assert_eq!(seen, ["/", "/a", "/b", "/b/1", "/b/2"]);
    }
}
