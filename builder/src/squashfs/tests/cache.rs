//! The block cache: the same bytes with and without it, damaged entries never used,
//! concurrent writers, incremental rebuilds and the size bound.

use std::time::{Duration, SystemTime};

use super::*;

/// Many small files (fragments), compressible and incompressible multi-block files (whole
/// blocks stored compressed and as they are) and a hole.
fn cache_tree(extra: Option<(&str, Vec<u8>)>) -> Tree {
    let mut tree = Tree::new();
    let t = 1_600_000_000;
    for i in 0..300u64 {
        let len = 500 + (i as usize * 997) % 9000;
        let mut body = text(len);
        body.extend_from_slice(format!("file {i}\n").as_bytes());
        insert(
            &mut tree,
            &format!("/small/f{i:03}"),
            file(0o644, 0, 0, t, body),
        );
    }
    insert(
        &mut tree,
        "/big/text",
        file(0o644, 0, 0, t, text(5 * BLOCK + 77)),
    );
    let noise = pseudo_random(3 * BLOCK + 5, 9);
    insert(&mut tree, "/big/noise", file(0o644, 0, 0, t, noise));
    let mut sparse = vec![0u8; 2 * BLOCK];
    // Text in another phase than /big/text's, so that no block occurs twice.
    sparse.extend_from_slice(&text(BLOCK + 10)[10..]);
    insert(&mut tree, "/big/sparse", file(0o644, 0, 0, t, sparse));
    if let Some((path, body)) = extra {
        insert(&mut tree, path, file(0o644, 0, 0, t, body));
    }
    tree
}

fn options() -> SquashfsOptions {
    SquashfsOptions {
        compression: SquashfsCompression::Zstd { level: 3 },
        mkfs_time: 7,
        ..SquashfsOptions::default()
    }
}

fn image(tree: &Tree, options: &SquashfsOptions, cache: Option<&BlockCache>) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = write_squashfs_cached(tree, options, cache, &mut out, &mut |_| {}).unwrap();
    out[..SUPERBLOCK_SIZE].copy_from_slice(&summary.superblock);
    out
}

/// A fresh handle on the cache in `dir`, as the next build would open it.
fn open(dir: &Path) -> BlockCache {
    BlockCache::open(dir, DEFAULT_MAX_BYTES).unwrap()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in fs::read_dir(dir.join("v1")).unwrap() {
        for f in fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[test]
fn cold_and_warm_cached_images_equal_the_uncached_one() {
    let dir = tempfile::tempdir().unwrap();
    let tree = cache_tree(None);
    let plain = image(&tree, &options(), None);

    let cold = open(dir.path());
    assert!(
        image(&tree, &options(), Some(&cold)) == plain,
        "cold cache changed the image"
    );
    let s = cold.stats();
    assert_eq!((s.hits, s.corrupt, s.write_errors), (0, 0, 0));
    assert!(s.misses > 10, "{s:?}");
    assert_eq!(entries(dir.path()).len() as u64, s.misses);

    let warm = open(dir.path());
    assert!(
        image(&tree, &options(), Some(&warm)) == plain,
        "warm cache changed the image"
    );
    assert_eq!(warm.stats().hits, s.misses);
    assert_eq!(warm.stats().misses, 0);
}

#[test]
fn cached_images_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let tree = cache_tree(None);
    let plain = image(&tree, &options(), None);
    for threads in [1, 2, 1] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let cache = open(dir.path());
        let got = pool.install(|| image(&tree, &options(), Some(&cache)));
        assert!(
            got == plain,
            "{threads} threads with the cache wrote another image"
        );
    }
}

#[test]
fn the_cache_key_covers_the_compression_level_and_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let tree = cache_tree(None);
    let warmed = open(dir.path());
    image(&tree, &options(), Some(&warmed));
    for other in [
        SquashfsOptions {
            compression: SquashfsCompression::Zstd { level: 15 },
            ..options()
        },
        SquashfsOptions {
            block_size: 64 * 1024,
            ..options()
        },
    ] {
        let cache = open(dir.path());
        assert!(image(&tree, &other, Some(&cache)) == image(&tree, &other, None));
        // Only blocks repeated within the image itself may hit.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = open(fresh_dir.path());
        image(&tree, &other, Some(&fresh));
        assert_eq!(
            cache.stats(),
            fresh.stats(),
            "{other:?} reused blocks of level 3"
        );
    }
}

#[test]
fn damaged_entries_are_recompressed_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let tree = cache_tree(None);
    let plain = image(&tree, &options(), None);
    let cold = open(dir.path());
    image(&tree, &options(), Some(&cold));
    let all = entries(dir.path());
    // Flip the last byte (in the payload of compressed entries, in the digest of blocks
    // stored as they are) of every other entry, truncate the rest.
    for (i, path) in all.iter().enumerate() {
        let mut bytes = fs::read(path).unwrap();
        if i % 2 == 0 {
            *bytes.last_mut().unwrap() ^= 0x01;
        } else {
            bytes.truncate(bytes.len() - 1);
        }
        fs::write(path, bytes).unwrap();
    }
    let damaged = open(dir.path());
    assert!(
        image(&tree, &options(), Some(&damaged)) == plain,
        "a damaged entry was used"
    );
    let s = damaged.stats();
    assert_eq!((s.hits, s.corrupt), (0, all.len() as u64), "{s:?}");

    // The rewritten entries are sound again.
    let repaired = open(dir.path());
    assert!(image(&tree, &options(), Some(&repaired)) == plain);
    assert_eq!(
        (repaired.stats().hits, repaired.stats().corrupt),
        (all.len() as u64, 0)
    );
}

#[test]
fn an_entry_under_another_key_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let tree = cache_tree(None);
    let plain = image(&tree, &options(), None);
    image(&tree, &options(), Some(&open(dir.path())));
    // A sound entry copied over another one: its digest covers its own key only.
    let all = entries(dir.path());
    fs::copy(&all[0], &all[1]).unwrap();
    let cache = open(dir.path());
    assert!(image(&tree, &options(), Some(&cache)) == plain);
    assert_eq!(cache.stats().corrupt, 1);
}

#[test]
fn one_added_file_recompresses_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let before = cache_tree(None);
    let first = open(dir.path());
    image(&before, &options(), Some(&first));
    let total = first.stats().misses;

    // Sorted after everything else, as a new file in /usr would be on a real root.
    let after = cache_tree(Some(("/zz-new", text(2 * BLOCK + 300))));
    let second = open(dir.path());
    assert!(image(&after, &options(), Some(&second)) == image(&after, &options(), None));
    let s = second.stats();
    // Its two whole blocks are text already stored for /big/text; the last fragment
    // changes because the new tail joins it.
    assert_eq!(s.misses, 1, "{s:?} of {total}");

    // A new small file early in the order shifts the packing of the fragments after it,
    // which the greedy packing resynchronises within a few fragments.
    let early = cache_tree(Some(("/small/a-new", b"new small file\n".repeat(40))));
    let third = open(dir.path());
    assert!(image(&early, &options(), Some(&third)) == image(&early, &options(), None));
    let s = third.stats();
    assert!(s.misses * 4 < s.hits, "{s:?}");
}

#[test]
fn concurrent_writers_to_one_cache_write_correct_images() {
    let dir = tempfile::tempdir().unwrap();
    let trees = [cache_tree(None), cache_tree(Some(("/zz", text(3000))))];
    let plain: Vec<Vec<u8>> = trees.iter().map(|t| image(t, &options(), None)).collect();
    for _round in 0..3 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let (tree, dir) = (&trees[i % 2], dir.path());
                    s.spawn(move || image(tree, &options(), Some(&open(dir))))
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                assert!(
                    h.join().unwrap() == plain[i % 2],
                    "writer {i} wrote another image"
                );
            }
        });
    }
    let leftovers = entries(dir.path());
    assert!(
        leftovers
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp-"))
    );
}

#[test]
fn eviction_keeps_the_bound_and_drops_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    image(&cache_tree(None), &options(), Some(&open(dir.path())));
    let old = entries(dir.path());
    let long_ago = SystemTime::now() - Duration::from_secs(7200);
    for path in &old {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(long_ago).unwrap();
    }
    // New entries of another tree, and hits on the old entries of /big/text's blocks.
    let mut other = Tree::new();
    let t = 1_600_000_000;
    insert(
        &mut other,
        "/x",
        file(0o644, 0, 0, t, pseudo_random(4 * BLOCK, 77)),
    );
    insert(&mut other, "/y", file(0o644, 0, 0, t, text(5 * BLOCK + 77)));
    let cache = open(dir.path());
    image(&other, &options(), Some(&cache));
    assert!(cache.stats().hits > 0);
    let recent_after = SystemTime::now() - Duration::from_secs(60);
    let recent: Vec<PathBuf> = entries(dir.path())
        .into_iter()
        .filter(|p| fs::metadata(p).unwrap().modified().unwrap() > recent_after)
        .collect();
    let touched = recent.iter().filter(|p| old.contains(p)).count();
    assert!(touched > 0, "a hit did not make its entry recent");
    let recent_bytes: u64 = recent.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let before = entries(dir.path()).len();

    let bounded = BlockCache::open(dir.path(), recent_bytes).unwrap();
    let report = bounded.evict().unwrap();
    assert_eq!(report.entries_removed as usize, before - recent.len());
    assert_eq!(report.bytes_kept, recent_bytes);
    assert_eq!(entries(dir.path()), recent);

    let empty = BlockCache::open(dir.path(), 0).unwrap();
    assert_eq!(empty.evict().unwrap().bytes_kept, 0);
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn uncompressed_images_do_not_use_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let none = SquashfsOptions {
        compression: SquashfsCompression::None,
        ..options()
    };
    let tree = cache_tree(None);
    let cache = open(dir.path());
    assert!(image(&tree, &none, Some(&cache)) == image(&tree, &none, None));
    assert_eq!(cache.stats(), CacheStats::default());
    assert!(entries(dir.path()).is_empty());
}
