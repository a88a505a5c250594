//! Tests against independent readers: squashfs-tools' `unsquashfs` and, where the sandbox
//! allows, the Linux kernel.

mod cache;
mod errors;
mod kernel;
mod stream;
mod unsquashfs;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::tree::{Content, Meta, Node, NodeKind, Tree};

const MIB: usize = 1 << 20;
const BLOCK: usize = 128 * 1024;

/// SplitMix64: seeded, so "random" contents are the same on every run.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn text(len: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog; squashfs keeps it small.\n";
    line.iter().copied().cycle().take(len).collect()
}

fn file(mode: u16, uid: u32, gid: u32, mtime: u32, content: Vec<u8>) -> Node {
    Node::file(Meta::new(mode, uid, gid, mtime), content)
}

fn node(kind: NodeKind, mode: u16, uid: u32, gid: u32, mtime: u32) -> Node {
    Node {
        meta: Meta::new(mode, uid, gid, mtime),
        kind,
    }
}

fn insert(tree: &mut Tree, path: &str, node: Node) {
    tree.insert(path, node).unwrap();
}

/// A tree with every kind of node and the size edge cases of the format.
fn sample_tree() -> Tree {
    let mut tree = Tree::new();
    tree.root_mut().meta = Meta::new(0o755, 0, 0, 1_700_000_000);
    let t = 1_600_000_000;
    insert(
        &mut tree,
        "/files",
        node(NodeKind::Dir(Default::default()), 0o750, 0, 0, t),
    );
    insert(&mut tree, "/files/empty", file(0o644, 0, 0, t + 1, vec![]));
    insert(
        &mut tree,
        "/files/one-byte",
        file(0o600, 0, 0, t + 2, vec![b'x']),
    );
    insert(
        &mut tree,
        "/files/one-block",
        file(0o644, 0, 0, t + 3, text(BLOCK)),
    );
    insert(
        &mut tree,
        "/files/block-multiple",
        file(0o644, 0, 0, t, pseudo_random(3 * BLOCK, 1)),
    );
    let many = pseudo_random(5 * BLOCK + 1234, 2);
    insert(
        &mut tree,
        "/files/many-blocks-and-tail",
        file(0o644, 0, 0, t, many),
    );
    insert(
        &mut tree,
        "/files/random-20m",
        file(0o644, 0, 0, t, pseudo_random(20 * MIB, 3)),
    );
    insert(
        &mut tree,
        "/files/text-3m",
        file(0o644, 0, 0, t, text(3 * MIB)),
    );
    let mut sparse = vec![0u8; 3 * BLOCK + 10];
    sparse[BLOCK + 7] = 1;
    insert(
        &mut tree,
        "/files/mostly-zeros",
        file(0o644, 0, 0, t, sparse),
    );
    insert(
        &mut tree,
        "/files/all-zeros",
        file(0o644, 0, 0, t, vec![0; 2 * BLOCK]),
    );

    // Shared contents: a hard link or copy (same allocation), and equal bytes held apart.
    let shared = Content::new(pseudo_random(BLOCK + 99, 4));
    for (name, uid) in [("shared-a", 0), ("shared-b", 1000)] {
        let n = node(NodeKind::File(shared.clone()), 0o644, uid, uid, t);
        insert(&mut tree, &format!("/files/{name}"), n);
    }
    let equal = pseudo_random(777, 5);
    insert(
        &mut tree,
        "/files/equal-1",
        file(0o644, 0, 0, t, equal.clone()),
    );
    insert(&mut tree, "/files/equal-2", file(0o755, 0, 0, t, equal));

    // > 256 entries with long names: several headers and several metadata blocks, so an
    // extended directory inode with an index. Subdirectories are mixed in so that entries
    // point into both parts of the inode table.
    insert(
        &mut tree,
        "/big",
        node(NodeKind::Dir(Default::default()), 0o755, 0, 0, t),
    );
    for i in 0..700 {
        let name = format!("/big/{i:04}-{}", "n".repeat(40 + i % 150));
        let n = if i % 9 == 0 {
            node(NodeKind::Dir(Default::default()), 0o700, 0, 0, t + i as u32)
        } else {
            file(0o644, 0, 0, t + i as u32, format!("entry {i}").into_bytes())
        };
        insert(&mut tree, &name, n);
    }
    let inner = format!("/big/0009-{}/inner", "n".repeat(49));
    insert(&mut tree, &inner, file(0o644, 0, 0, t, b"in".to_vec()));

    let mut deep = String::from("/deep");
    for level in 0..100 {
        deep.push_str(&format!("/level-{level:03}"));
    }
    insert(
        &mut tree,
        &format!("{deep}/leaf"),
        file(0o644, 0, 0, t, b"deep".to_vec()),
    );

    let long_target: String = (0..4000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    insert(
        &mut tree,
        "/links/short",
        node(
            NodeKind::Symlink(b"../files/one-byte".to_vec()),
            0o777,
            0,
            0,
            t,
        ),
    );
    insert(
        &mut tree,
        "/links/absolute",
        node(NodeKind::Symlink(b"/files".to_vec()), 0o777, 0, 0, t),
    );
    insert(
        &mut tree,
        "/links/long",
        node(NodeKind::Symlink(long_target.into_bytes()), 0o777, 0, 0, t),
    );
    insert(
        &mut tree,
        "/links/dangling",
        node(NodeKind::Symlink(b"nowhere".to_vec()), 0o777, 5, 6, t),
    );

    let dev = |major, minor| NodeKind::CharDevice { major, minor };
    insert(&mut tree, "/dev/null", node(dev(1, 3), 0o666, 0, 0, t));
    insert(
        &mut tree,
        "/dev/big-char",
        node(dev(300, 70000), 0o620, 0, 5, t),
    );
    let blk = NodeKind::BlockDevice {
        major: 259,
        minor: 1_000_000,
    };
    insert(&mut tree, "/dev/big-block", node(blk, 0o660, 0, 6, t));
    insert(&mut tree, "/dev/fifo", node(NodeKind::Fifo, 0o600, 0, 0, t));
    insert(
        &mut tree,
        "/dev/socket",
        node(NodeKind::Socket, 0o755, 0, 0, t),
    );

    insert(
        &mut tree,
        "/modes/setuid",
        file(0o4755, 0, 0, t, b"#!/bin/sh\n".to_vec()),
    );
    insert(
        &mut tree,
        "/modes/setgid",
        file(0o2755, 0, 0, t, b"sg".to_vec()),
    );
    insert(
        &mut tree,
        "/modes/all-bits",
        file(0o7777, 0, 0, t, b"all".to_vec()),
    );
    insert(
        &mut tree,
        "/modes/none",
        file(0o000, 0, 0, t, b"none".to_vec()),
    );
    insert(
        &mut tree,
        "/modes/sticky",
        node(NodeKind::Dir(Default::default()), 0o1777, 0, 0, t),
    );
    insert(
        &mut tree,
        "/modes/setgid-dir",
        node(NodeKind::Dir(Default::default()), 0o2775, 0, 50, t),
    );

    for (i, (uid, gid)) in [
        (1000, 1000),
        (65534, 65534),
        (100_000, 3),
        (4_000_000_000, 7),
    ]
    .into_iter()
    .enumerate()
    {
        insert(
            &mut tree,
            &format!("/owners/{i}"),
            file(0o640, uid, gid, 0, b"o".to_vec()),
        );
    }
    insert(
        &mut tree,
        "/owners/dir",
        node(NodeKind::Dir(Default::default()), 0o755, 33, 33, u32::MAX),
    );
    tree
}

fn require_tool(tool: &str) {
    let found = Command::new(tool).arg("-version").output().is_ok();
    assert!(
        found,
        "`{tool}` not found: install squashfs-tools (apt-get install -y squashfs-tools)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

/// Writes `tree` to `dir/image.sqfs`.
fn write_image(dir: &Path, tree: &Tree, options: &SquashfsOptions) -> (PathBuf, SquashfsSummary) {
    let image = dir.join("image.sqfs");
    let summary = write_squashfs_file(tree, options, &image).unwrap();
    (image, summary)
}

/// What may legitimately differ between the tree and a reader's view.
#[derive(Clone, Copy)]
struct Compare {
    /// unsquashfs does not set the times of symlinks.
    symlink_times: bool,
    /// Directory link counts are the reader's own when extracted to another filesystem.
    link_counts: bool,
}

/// Compares every node of `tree` with the filesystem below `root`, and checks that `root`
/// holds nothing more.
fn compare_tree(tree: &Tree, root: &Path, how: Compare) {
    let mut checked = 0;
    tree.walk(|path, node| {
        let rel = std::str::from_utf8(&path[1..]).unwrap();
        let real = root.join(rel);
        let md = fs::symlink_metadata(&real).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let ft = md.file_type();
        let where_ = String::from_utf8_lossy(path);
        let m = node.meta;
        assert_eq!(md.uid(), m.uid, "{where_}: uid");
        assert_eq!(md.gid(), m.gid, "{where_}: gid");
        if !ft.is_symlink() {
            assert_eq!(md.mode() & 0o7777, u32::from(m.mode), "{where_}: mode");
        }
        if !ft.is_symlink() || how.symlink_times {
            assert_eq!(md.mtime(), i64::from(m.mtime), "{where_}: mtime");
        }
        match &node.kind {
            NodeKind::Dir(children) => {
                assert!(ft.is_dir(), "{where_}: not a directory");
                let on_disk: BTreeSet<Vec<u8>> = fs::read_dir(&real)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_encoded_bytes())
                    .collect();
                let expected: BTreeSet<Vec<u8>> = children.keys().cloned().collect();
                assert_eq!(on_disk, expected, "{where_}: entries");
                let subdirs = children.values().filter(|c| c.is_dir()).count() as u64;
                if how.link_counts {
                    assert_eq!(md.nlink(), 2 + subdirs, "{where_}: link count");
                }
            }
            NodeKind::File(content) => {
                assert!(ft.is_file(), "{where_}: not a file");
                assert_eq!(md.len(), content.len() as u64, "{where_}: size");
                let read = fs::read(&real).unwrap();
                assert!(read == content.bytes(), "{where_}: content differs");
            }
            NodeKind::Symlink(target) => {
                assert!(ft.is_symlink(), "{where_}: not a symlink");
                let read = fs::read_link(&real).unwrap().into_os_string();
                assert_eq!(read.into_encoded_bytes(), *target, "{where_}: target");
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                let is_char = matches!(node.kind, NodeKind::CharDevice { .. });
                assert!(ft.is_char_device() == is_char, "{where_}: device type");
                assert!(ft.is_block_device() != is_char, "{where_}: device type");
                assert_eq!(libc::major(md.rdev()), *major, "{where_}: major");
                assert_eq!(libc::minor(md.rdev()), *minor, "{where_}: minor");
            }
            NodeKind::Fifo => assert!(ft.is_fifo(), "{where_}: not a fifo"),
            NodeKind::Socket => assert!(ft.is_socket(), "{where_}: not a socket"),
        }
        checked += 1;
    });
    assert_eq!(checked, tree.len());
}
