//! Round trips through `unsquashfs` (squashfs-tools), run as root so owners are restored.

use std::collections::BTreeMap;

use super::*;

fn unsquash(image: &Path, out: &Path) {
    require_tool("unsquashfs");
    // -st: any error, even one unsquashfs would otherwise skip over, fails the run.
    run(Command::new("unsquashfs")
        .args(["-no-xattrs", "-st", "-d"])
        .arg(out)
        .arg(image));
}

/// `unsquashfs -s`: one "Description value" per line.
fn stat(image: &Path) -> String {
    require_tool("unsquashfs");
    run(Command::new("unsquashfs").arg("-s").arg(image))
}

fn stat_line<'a>(stat: &'a str, prefix: &str) -> &'a str {
    stat.lines()
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` in unsquashfs -s output:\n{stat}"))
        .trim()
}

fn extract_and_compare(tree: &Tree, options: &SquashfsOptions) -> SquashfsSummary {
    let dir = tempfile::tempdir().unwrap();
    let (image, summary) = write_image(dir.path(), tree, options);
    let out = dir.path().join("out");
    unsquash(&image, &out);
    let how = Compare {
        symlink_times: true,
        link_counts: false,
    };
    compare_tree(tree, &out, how);
    summary
}

#[test]
fn unsquashfs_extracts_every_node_as_written() {
    let tree = sample_tree();
    let options = SquashfsOptions {
        mkfs_time: 1_234_567_890,
        ..SquashfsOptions::default()
    };
    let summary = extract_and_compare(&tree, &options);
    assert_eq!(summary.inode_count as usize, tree.len());
    assert_eq!(summary.data_bytes, tree.content_bytes());
    assert_eq!(summary.bytes_written % 4096, 0);
    assert!(summary.bytes_used <= summary.bytes_written);
    assert!(summary.bytes_written - summary.bytes_used < 4096);
    // shared-b, equal-2 and three of the four /owners files.
    assert_eq!(summary.duplicate_files, 5);
    // 20 MiB of noise cannot shrink, everything else does.
    let noise = 20 * MIB as u64;
    assert!(summary.compressed_data_bytes > noise);
    assert!(summary.compressed_data_bytes < noise + 2 * MIB as u64);
    assert!(summary.fragment_count >= 1);
}

#[test]
fn unsquashfs_reads_other_block_sizes_levels_and_layouts() {
    let mut tree = sample_tree();
    tree.remove("/files/random-20m").unwrap();
    let variants = [
        (4096, SquashfsCompression::Zstd { level: 19 }, false),
        (1 << 20, SquashfsCompression::Zstd { level: 1 }, true),
        (64 * 1024, SquashfsCompression::None, true),
        (128 * 1024, SquashfsCompression::Zstd { level: 15 }, false),
    ];
    for (block_size, compression, tail_fragments) in variants {
        let options = SquashfsOptions {
            block_size,
            compression,
            tail_fragments,
            mkfs_time: 7,
        };
        extract_and_compare(&tree, &options);
    }
}

#[test]
fn unsquashfs_stat_reports_what_was_written() {
    let mut tree = sample_tree();
    tree.remove("/files/random-20m").unwrap();
    let dir = tempfile::tempdir().unwrap();

    let (image, summary) = write_image(dir.path(), &tree, &SquashfsOptions::default());
    let s = stat(&image);
    assert_eq!(stat_line(&s, "Compression"), "zstd");
    assert_eq!(stat_line(&s, "Block size"), "131072");
    assert_eq!(
        stat_line(&s, "Number of inodes"),
        tree.len().to_string().as_str()
    );
    assert_eq!(
        stat_line(&s, "Number of fragments"),
        summary.fragment_count.to_string()
    );
    assert_eq!(stat_line(&s, "Number of ids"), "11");
    assert_eq!(stat_line(&s, "Xattrs are"), "not stored");
    assert_eq!(stat_line(&s, "Always-use-fragments option is"), "specified");
    assert_eq!(stat_line(&s, "Data is"), "compressed");
    let size = format!("{} bytes", summary.bytes_used);
    assert!(stat_line(&s, "Filesystem size").starts_with(&size), "{s}");
    // The default level writes no options block, like mksquashfs.
    assert!(!s.contains("compression-level"), "{s}");

    let options = SquashfsOptions {
        block_size: 1 << 20,
        compression: SquashfsCompression::Zstd { level: 3 },
        tail_fragments: false,
        ..SquashfsOptions::default()
    };
    let (image, _) = write_image(dir.path(), &tree, &options);
    let s = stat(&image);
    assert_eq!(stat_line(&s, "Block size"), "1048576");
    assert_eq!(stat_line(&s, "compression-level"), "3");
    assert_eq!(
        stat_line(&s, "Always-use-fragments option is"),
        "not specified"
    );

    let options = SquashfsOptions {
        compression: SquashfsCompression::None,
        ..SquashfsOptions::default()
    };
    let (image, _) = write_image(dir.path(), &tree, &options);
    let s = stat(&image);
    assert_eq!(stat_line(&s, "Data is"), "uncompressed");
    assert_eq!(stat_line(&s, "Inodes are"), "uncompressed");
    assert_eq!(stat_line(&s, "Fragments are"), "uncompressed");
}

/// `ls -l` style permissions, as unsquashfs prints them.
fn permissions(kind: &NodeKind, mode: u16) -> String {
    let mut s = String::new();
    s.push(match kind {
        NodeKind::Dir(_) => 'd',
        NodeKind::File(_) => '-',
        NodeKind::Symlink(_) => 'l',
        NodeKind::CharDevice { .. } => 'c',
        NodeKind::BlockDevice { .. } => 'b',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
    });
    for (shift, special, set, unset) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (mode & special != 0, bits & 1 != 0) {
            (true, true) => set,
            (true, false) => unset,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

#[test]
fn unsquashfs_listing_matches_the_tree() {
    let mut tree = sample_tree();
    tree.remove("/files/random-20m").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = write_image(dir.path(), &tree, &SquashfsOptions::default());
    require_tool("unsquashfs");
    let listing = run(Command::new("unsquashfs").arg("-lln").arg(&image));

    // perms uid/gid size date time path [-> target]; a device's size is "major, minor",
    // which may hold a space, so fields are located from the path backwards.
    let mut listed: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for line in listing.lines() {
        let fields: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let Some(at) = fields.iter().position(|f| f.starts_with("squashfs-root")) else {
            continue;
        };
        let path = &fields[at]["squashfs-root".len()..];
        let path = if path.is_empty() { "/" } else { path }.to_owned();
        let head = vec![
            fields[0].clone(),
            fields[1].clone(),
            fields[2..at - 2].join(" "),
        ];
        let tail = fields[at + 1..].to_vec();
        assert!(
            listed.insert(path, (head, tail)).is_none(),
            "listed twice: {line}"
        );
    }
    let mut expected = 0;
    tree.walk(|path, node| {
        let path = String::from_utf8(path.to_vec()).unwrap();
        let (fields, tail) = listed
            .get(&path)
            .unwrap_or_else(|| panic!("{path} missing from the listing:\n{listing}"));
        assert_eq!(fields[0], permissions(&node.kind, node.meta.mode), "{path}");
        assert_eq!(
            fields[1],
            format!("{}/{}", node.meta.uid, node.meta.gid),
            "{path}"
        );
        match &node.kind {
            NodeKind::File(content) => assert_eq!(fields[2], content.len().to_string()),
            NodeKind::CharDevice { major, .. } | NodeKind::BlockDevice { major, .. }
                if *major < 256 =>
            {
                // unsquashfs prints the raw 8:8 split, right only for small numbers.
                assert_eq!(
                    fields[2].replace(' ', ""),
                    format!("{major},{}", node_minor(node))
                );
            }
            NodeKind::Symlink(target) => {
                assert_eq!(fields[2], target.len().to_string());
                assert_eq!(tail[0], "->");
                assert_eq!(tail[1].as_bytes(), target.as_slice());
            }
            _ => {}
        }
        expected += 1;
    });
    assert_eq!(listed.len(), expected);
}

fn node_minor(node: &Node) -> u32 {
    match node.kind {
        NodeKind::CharDevice { minor, .. } | NodeKind::BlockDevice { minor, .. } => minor,
        _ => 0,
    }
}
