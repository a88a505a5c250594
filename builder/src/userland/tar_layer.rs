//! Applies a tar stream (a Debian `data.tar` or an OCI layer) to a [`Tree`].

use std::collections::HashSet;
use std::io::Read;

use crate::tree::{Meta, Node, NodeKind, Tree, TreeError};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// How to treat `.wh.` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// OCI layer semantics: `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` hides
    /// everything lower layers put in that directory.
    Honour,
    /// Plain archive (a `.deb`): such names are ordinary files.
    Literal,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading tar entry: {0}")]
    Read(#[from] std::io::Error),
    #[error("tar entry {path}: {source}")]
    Tree { path: String, source: TreeError },
    #[error("tar entry {path}: hard link to {target}, which is not in the tree")]
    DanglingHardLink { path: String, target: String },
    #[error("tar entry {path}: unsupported entry type {kind:?}")]
    Unsupported { path: String, kind: tar::EntryType },
}

/// What a layer did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: usize,
    pub whiteouts: usize,
    pub bytes: u64,
}

/// Applies every entry of the tar stream to `tree`, in order.
pub fn apply_tar(
    tree: &mut Tree,
    reader: impl Read,
    whiteouts: Whiteouts,
) -> Result<LayerStats, LayerError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = LayerStats::default();
    // Paths this layer created, so an opaque marker only hides what lower layers put there.
    let mut added: HashSet<Vec<u8>> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path).into_owned();
        let tree_err = |source| LayerError::Tree {
            path: shown.clone(),
            source,
        };
        let (parent, name) = split_last(&path);
        if whiteouts == Whiteouts::Honour && name.starts_with(WHITEOUT_PREFIX) {
            stats.whiteouts += 1;
            apply_whiteout(tree, parent, name, &added).map_err(tree_err)?;
            continue;
        }
        let Some(node) = entry_node(tree, &mut entry, &shown, &mut stats)? else {
            continue;
        };
        if is_root(&path) {
            // "./" itself: only its metadata matters.
            tree.root_mut().meta = node.meta;
            continue;
        }
        tree.insert(&path, node).map_err(tree_err)?;
        if whiteouts == Whiteouts::Honour
            && let Ok(canonical) = tree.canonical(parent)
        {
            added.insert(child_key(&canonical, name));
        }
        stats.entries += 1;
    }
    Ok(stats)
}

/// `parent`'s canonical components joined with `/`, then `/name`: the key of `added`.
fn child_key(canonical_parent: &[Vec<u8>], name: &[u8]) -> Vec<u8> {
    let mut key = canonical_parent.join(&b'/');
    key.push(b'/');
    key.extend_from_slice(name);
    key
}

/// A whiteout `name` (`.wh.NAME` or the opaque marker) in directory `parent`.
fn apply_whiteout(
    tree: &mut Tree,
    parent: &[u8],
    name: &[u8],
    added: &HashSet<Vec<u8>>,
) -> Result<(), TreeError> {
    if name == OPAQUE_WHITEOUT {
        return hide_lower_entries(tree, parent, added);
    }
    let victim_name = &name[WHITEOUT_PREFIX.len()..];
    // A whiteout only hides what lower layers put there, never an entry of its own layer
    // that happens to come first in the archive.
    let own = tree
        .canonical(parent)
        .is_ok_and(|canonical| added.contains(&child_key(&canonical, victim_name)));
    if !own {
        let mut victim = parent.to_vec();
        victim.push(b'/');
        victim.extend_from_slice(victim_name);
        tree.remove(&victim)?;
    }
    Ok(())
}

/// The tree node for one tar entry; `None` for records that carry no file.
fn entry_node<R: Read>(
    tree: &Tree,
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
    stats: &mut LayerStats,
) -> Result<Option<Node>, LayerError> {
    let header = entry.header();
    let meta = Meta::new(
        (header.mode()? & 0o7777) as u16,
        header.uid()? as u32,
        header.gid()? as u32,
        header.mtime()? as u32,
    );
    let kind = header.entry_type();
    let node = match kind {
        tar::EntryType::Directory => Node::dir(meta),
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes)?;
            stats.bytes += bytes.len() as u64;
            Node::file(meta, bytes)
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            Node {
                meta: Meta {
                    mode: 0o777,
                    ..meta
                },
                kind: NodeKind::Symlink(target),
            }
        }
        tar::EntryType::Link => {
            let target = entry.link_name_bytes().unwrap_or_default().into_owned();
            tree.get_no_follow(&target)
                .cloned()
                .ok_or_else(|| LayerError::DanglingHardLink {
                    path: shown.to_owned(),
                    target: String::from_utf8_lossy(&target).into_owned(),
                })?
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = header.device_major()?.unwrap_or(0);
            let minor = header.device_minor()?.unwrap_or(0);
            let kind = if kind == tar::EntryType::Char {
                NodeKind::CharDevice { major, minor }
            } else {
                NodeKind::BlockDevice { major, minor }
            };
            Node { meta, kind }
        }
        tar::EntryType::Fifo => Node {
            meta,
            kind: NodeKind::Fifo,
        },
        // Global PAX headers and GNU long-name records are consumed by the tar crate;
        // anything left of these kinds carries no file.
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => return Ok(None),
        other => {
            return Err(LayerError::Unsupported {
                path: shown.to_owned(),
                kind: other,
            });
        }
    };
    Ok(Some(node))
}

fn hide_lower_entries(
    tree: &mut Tree,
    dir: &[u8],
    added: &HashSet<Vec<u8>>,
) -> Result<(), TreeError> {
    let Ok(canonical) = tree.canonical(dir) else {
        return Ok(()); // Nothing below to hide.
    };
    let prefix = {
        let mut p = canonical.join(&b'/');
        p.push(b'/');
        p
    };
    let Some(node) = tree.get_mut(dir) else {
        return Ok(());
    };
    if let NodeKind::Dir(children) = &mut node.kind {
        children.retain(|name, _| {
            let mut key = prefix.clone();
            key.extend_from_slice(name);
            added.contains(&key)
        });
    }
    Ok(())
}

fn is_root(path: &[u8]) -> bool {
    path.split(|&b| b == b'/')
        .all(|c| c.is_empty() || c == b".")
}

/// Splits `a/b/c` into (`a/b`, `c`), ignoring trailing slashes.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (b"", trimmed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    /// A tiny tar builder for tests: (path, kind, data-or-link).
    pub(crate) fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1);
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_size(0);
                    builder.append_link(&mut header, path, data).unwrap();
                }
                _ => {
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, data.as_bytes())
                        .unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

    fn content(tree: &Tree, path: &str) -> Option<Vec<u8>> {
        match &tree.get(path)?.kind {
            NodeKind::File(c) => Some(c.bytes().to_vec()),
            _ => None,
        }
    }

    #[test]
    fn whiteout_removes_a_lower_file_and_directory() {
        let mut tree = Tree::new();
        let lower = tar_of(&[("etc/", D, ""), ("etc/a", F, "a"), ("opt/x/y", F, "y")]);
        apply_tar(&mut tree, &lower[..], Whiteouts::Honour).unwrap();
        let upper = tar_of(&[("etc/.wh.a", F, ""), ("opt/.wh.x", F, "")]);
        let stats = apply_tar(&mut tree, &upper[..], Whiteouts::Honour).unwrap();
        assert_eq!(stats.whiteouts, 2);
        assert!(tree.get("/etc/a").is_none());
        assert!(tree.get("/etc").is_some());
        assert!(tree.get("/opt/x").is_none());
        assert!(
            tree.get("/etc/.wh.a").is_none(),
            "the marker itself must not appear"
        );
    }

    #[test]
    fn opaque_whiteout_hides_lower_entries_but_keeps_its_own_layer() {
        let mut tree = Tree::new();
        let lower = tar_of(&[("d/old", F, "old"), ("d/sub/deep", F, "deep")]);
        apply_tar(&mut tree, &lower[..], Whiteouts::Honour).unwrap();
        // The new entry comes before the marker, as some tools write it.
        let upper = tar_of(&[
            ("d/", D, ""),
            ("d/new", F, "new"),
            ("d/.wh..wh..opq", F, ""),
        ]);
        apply_tar(&mut tree, &upper[..], Whiteouts::Honour).unwrap();
        assert_eq!(content(&tree, "/d/new").as_deref(), Some(&b"new"[..]));
        assert!(tree.get("/d/old").is_none());
        assert!(tree.get("/d/sub").is_none());
    }

    #[test]
    fn whiteout_does_not_remove_an_entry_of_its_own_layer() {
        let mut tree = Tree::new();
        let lower = tar_of(&[("d/x", F, "old")]);
        apply_tar(&mut tree, &lower[..], Whiteouts::Honour).unwrap();
        let upper = tar_of(&[("d/x", F, "new"), ("d/.wh.x", F, "")]);
        apply_tar(&mut tree, &upper[..], Whiteouts::Honour).unwrap();
        assert_eq!(content(&tree, "/d/x").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn literal_mode_keeps_wh_names() {
        let mut tree = Tree::new();
        let layer = tar_of(&[("x/.wh.y", F, "z")]);
        apply_tar(&mut tree, &layer[..], Whiteouts::Literal).unwrap();
        assert_eq!(content(&tree, "/x/.wh.y").as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn hard_links_share_content_and_symlinks_are_kept() {
        let mut tree = Tree::new();
        let layer = tar_of(&[
            ("bin/a", F, "payload"),
            ("bin/b", H, "bin/a"),
            ("bin/c", S, "a"),
        ]);
        apply_tar(&mut tree, &layer[..], Whiteouts::Honour).unwrap();
        let (NodeKind::File(a), NodeKind::File(b)) = (
            &tree.get("/bin/a").unwrap().kind,
            &tree.get("/bin/b").unwrap().kind,
        ) else {
            panic!("both must be files")
        };
        assert!(a.same_allocation(b));
        assert_eq!(
            tree.get_no_follow("/bin/c").unwrap().kind,
            NodeKind::Symlink(b"a".to_vec())
        );
        assert_eq!(
            tree.get("/bin/c").unwrap().kind,
            NodeKind::File(Content::new(b"payload".to_vec()))
        );
    }

    #[test]
    fn dangling_hard_link_is_an_error_naming_the_entry() {
        let mut tree = Tree::new();
        let layer = tar_of(&[("bin/b", H, "bin/missing")]);
        let err = apply_tar(&mut tree, &layer[..], Whiteouts::Honour).unwrap_err();
        assert!(err.to_string().contains("bin/b"), "{err}");
    }

    #[test]
    fn files_follow_merged_usr_symlinks() {
        let mut tree = Tree::with_merged_usr();
        let layer = tar_of(&[("./lib/", D, ""), ("./lib/libx.so", F, "x")]);
        apply_tar(&mut tree, &layer[..], Whiteouts::Literal).unwrap();
        assert!(tree.get_no_follow("/usr/lib/libx.so").is_some());
        assert!(matches!(
            tree.get_no_follow("/lib").unwrap().kind,
            NodeKind::Symlink(_)
        ));
    }
}
