//! Inputs squashfs (or Linux) cannot represent are reported, with the path, before anything
//! is written.

use std::collections::BTreeMap;

use super::*;

fn write(tree: &Tree, options: &SquashfsOptions) -> Result<Vec<u8>, SquashfsError> {
    let mut out = Vec::new();
    write_squashfs(tree, options, &mut out).map(|_| out)
}

fn small_tree() -> Tree {
    let mut tree = Tree::new();
    insert(&mut tree, "/a", file(0o644, 0, 0, 0, b"a".to_vec()));
    tree
}

/// Puts a child into the root directly, bypassing the path handling of `Tree::insert`.
fn tree_with_raw_child(name: &[u8], child: Node) -> Tree {
    let mut tree = Tree::new();
    insert(
        &mut tree,
        "/dir",
        node(NodeKind::Dir(BTreeMap::new()), 0o755, 0, 0, 0),
    );
    if let NodeKind::Dir(children) = &mut tree.get_mut("/dir").unwrap().kind {
        children.insert(name.to_vec(), child);
    }
    tree
}

#[test]
fn squashfs_block_size_must_be_a_power_of_two_from_4k_to_1m() {
    let tree = small_tree();
    for block_size in [0, 1, 2048, 4095, 4097, 3 * 4096, 100_000, 2 << 20, u32::MAX] {
        let options = SquashfsOptions {
            block_size,
            ..SquashfsOptions::default()
        };
        let err = write(&tree, &options).unwrap_err();
        assert!(
            matches!(err, SquashfsError::InvalidBlockSize(b) if b == block_size),
            "{block_size}: {err}"
        );
    }
    for block_size in [4096, 8192, 1 << 20] {
        let options = SquashfsOptions {
            block_size,
            ..SquashfsOptions::default()
        };
        write(&tree, &options).unwrap();
    }
}

#[test]
fn squashfs_zstd_level_must_be_1_to_22() {
    for level in [-1, 0, 23] {
        let options = SquashfsOptions {
            compression: SquashfsCompression::Zstd { level },
            ..SquashfsOptions::default()
        };
        let err = write(&small_tree(), &options).unwrap_err();
        assert!(matches!(err, SquashfsError::InvalidCompressionLevel(l) if l == level));
    }
}

#[test]
fn squashfs_rejects_names_longer_than_255_bytes() {
    let name = "x".repeat(256);
    let tree = tree_with_raw_child(name.as_bytes(), file(0o644, 0, 0, 0, vec![]));
    let err = write(&tree, &SquashfsOptions::default()).unwrap_err();
    match err {
        SquashfsError::NameTooLong { path, len } => {
            assert_eq!(path, format!("/dir/{name}"));
            assert_eq!(len, 256);
        }
        other => panic!("unexpected {other}"),
    }
    let ok = tree_with_raw_child("x".repeat(255).as_bytes(), file(0o644, 0, 0, 0, vec![]));
    write(&ok, &SquashfsOptions::default()).unwrap();
}

#[test]
fn squashfs_rejects_names_that_are_not_single_components() {
    for (name, reason) in [
        (&b"a/b"[..], "contains '/'"),
        (b"", "empty name"),
        (b".", "`.` and `..` cannot be stored"),
        (b"..", "`.` and `..` cannot be stored"),
        (b"nul\0byte", "contains a NUL byte"),
    ] {
        let tree = tree_with_raw_child(name, file(0o644, 0, 0, 0, vec![]));
        let err = write(&tree, &SquashfsOptions::default()).unwrap_err();
        match err {
            SquashfsError::InvalidName { path, reason: r } => {
                assert_eq!(path, format!("/dir/{}", String::from_utf8_lossy(name)));
                assert_eq!(r, reason);
            }
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn squashfs_rejects_symlink_targets_linux_cannot_hold() {
    let long = Node::symlink(vec![b'a'; 4096]);
    let err = write(
        &tree_with_raw_child(b"l", long),
        &SquashfsOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, SquashfsError::SymlinkTargetTooLong { path, len: 4096 } if path == "/dir/l"),
        "{err}"
    );
    let max = Node::symlink(vec![b'a'; 4095]);
    write(&tree_with_raw_child(b"l", max), &SquashfsOptions::default()).unwrap();

    let empty = Node::symlink(Vec::new());
    let err = write(
        &tree_with_raw_child(b"e", empty),
        &SquashfsOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, SquashfsError::InvalidSymlinkTarget { path, .. } if path == "/dir/e"),
        "{err}"
    );
}

#[test]
fn squashfs_rejects_device_numbers_beyond_12_and_20_bits() {
    for (major, minor) in [(4096, 0), (0, 1 << 20)] {
        let dev = node(NodeKind::BlockDevice { major, minor }, 0o600, 0, 0, 0);
        let err = write(&tree_with_raw_child(b"d", dev), &SquashfsOptions::default()).unwrap_err();
        assert!(
            matches!(&err, SquashfsError::DeviceNumberTooLarge { path, major: a, minor: b }
                if path == "/dir/d" && *a == major && *b == minor),
            "{err}"
        );
    }
    let max = node(
        NodeKind::CharDevice {
            major: 4095,
            minor: (1 << 20) - 1,
        },
        0o600,
        0,
        0,
        0,
    );
    write(&tree_with_raw_child(b"d", max), &SquashfsOptions::default()).unwrap();
}

#[test]
fn squashfs_rejects_more_than_65535_ids() {
    let mut tree = Tree::new();
    // Root uses id 0; 65535 more distinct uids make 65536.
    if let NodeKind::Dir(children) = &mut tree.root_mut().kind {
        for uid in 1..=65535u32 {
            let n = file(0o644, uid, 0, 0, vec![]);
            children.insert(uid.to_string().into_bytes(), n);
        }
    }
    let err = write(&tree, &SquashfsOptions::default()).unwrap_err();
    assert!(matches!(err, SquashfsError::TooManyIds), "{err}");
    if let NodeKind::Dir(children) = &mut tree.root_mut().kind {
        children.remove(&b"65535"[..]);
    }
    write(&tree, &SquashfsOptions::default()).unwrap();
}
