//! Determinism, streaming output and progress reporting.

use super::*;

fn write_with_threads(tree: &Tree, options: &SquashfsOptions, threads: usize) -> Vec<u8> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut image = Vec::new();
        let summary = write_squashfs(tree, options, &mut image).unwrap();
        image[..SUPERBLOCK_SIZE].copy_from_slice(&summary.superblock);
        image
    })
}

#[test]
fn squashfs_bytes_do_not_depend_on_the_thread_count() {
    let tree = sample_tree();
    let options = SquashfsOptions {
        mkfs_time: 42,
        ..SquashfsOptions::default()
    };
    let one = write_with_threads(&tree, &options, 1);
    let two = write_with_threads(&tree, &options, 2);
    let three = write_with_threads(&tree, &options, 3);
    assert_eq!(one.len(), two.len());
    assert!(one == two, "1 and 2 threads wrote different images");
    assert!(one == three, "1 and 3 threads wrote different images");
}

#[test]
fn squashfs_mkfs_time_comes_from_the_options_only() {
    let mut tree = sample_tree();
    tree.remove("/files/random-20m").unwrap();
    let at = |mkfs_time| {
        let options = SquashfsOptions {
            mkfs_time,
            ..SquashfsOptions::default()
        };
        write_with_threads(&tree, &options, 2)
    };
    let a = at(1_000);
    let b = at(2_000);
    assert_eq!(&a[8..12], &1_000u32.to_le_bytes());
    assert_eq!(&b[8..12], &2_000u32.to_le_bytes());
    assert!(a[..8] == b[..8] && a[12..] == b[12..]);
}

#[test]
fn streamed_squashfs_with_patched_superblock_equals_the_file() {
    let tree = sample_tree();
    let options = SquashfsOptions::default();
    let mut streamed = Vec::new();
    let summary = write_squashfs(&tree, &options, &mut streamed).unwrap();
    assert!(streamed[..SUPERBLOCK_SIZE].iter().all(|&b| b == 0));
    assert_eq!(streamed.len() as u64, summary.bytes_written);
    assert_eq!(streamed.len() % 4096, 0);
    assert_eq!(&summary.superblock[..4], b"hsqs");
    streamed[..SUPERBLOCK_SIZE].copy_from_slice(&summary.superblock);

    let dir = tempfile::tempdir().unwrap();
    let (image, file_summary) = write_image(dir.path(), &tree, &options);
    assert_eq!(file_summary, summary);
    assert!(fs::read(image).unwrap() == streamed);
}

/// A writer that refuses `seek` by construction and records each write, to show the output
/// really is a single front-to-back stream.
struct Recorder {
    writes: usize,
    bytes: Vec<u8>,
}

impl std::io::Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn squashfs_progress_counts_up_to_the_content_bytes() {
    let tree = sample_tree();
    let mut seen = Vec::new();
    let mut recorder = Recorder {
        writes: 0,
        bytes: Vec::new(),
    };
    let summary = write_squashfs_with_progress(
        &tree,
        &SquashfsOptions::default(),
        &mut recorder,
        &mut |done| seen.push(done),
    )
    .unwrap();
    assert!(seen.len() > 1, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last().copied(), Some(tree.content_bytes()));
    assert_eq!(recorder.bytes.len() as u64, summary.bytes_written);
    assert!(recorder.writes > 10);
}

#[test]
fn squashfs_of_an_empty_tree_is_readable() {
    let tree = Tree::new();
    let dir = tempfile::tempdir().unwrap();
    let (image, summary) = write_image(dir.path(), &tree, &SquashfsOptions::default());
    assert_eq!(summary.inode_count, 1);
    assert_eq!(summary.fragment_count, 0);
    let out = dir.path().join("out");
    require_tool("unsquashfs");
    run(Command::new("unsquashfs")
        .args(["-no-xattrs", "-st", "-d"])
        .arg(&out)
        .arg(&image));
    let how = Compare {
        symlink_times: true,
        link_counts: false,
    };
    compare_tree(&tree, &out, how);
}
