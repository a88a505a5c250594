//! Rough speed and size comparison of Keel's squashfs writer with mksquashfs on the same
//! host files. Not a test: it prints numbers.
//!
//!     cargo run --release -p keel-builder --example squashfs_vs_mksquashfs [DIR...]
//!
//! Each DIR ends up as `/<basename of DIR>` in the image, which is where mksquashfs puts
//! several sources too (a single DIR becomes the root, as with mksquashfs). The default set is ~170 MB of mixed binaries, libraries and text on
//! Debian 12. mksquashfs runs with its defaults (zstd level 15, all cores) and once more with
//! `-always-use-fragments`, which matches our default `tail_fragments: true`; our writer runs
//! both ways as well.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keel_builder::squashfs::{SquashfsOptions, write_squashfs_file};
use keel_builder::tree::{Content, Meta, Node, NodeKind, Tree};

const DEFAULT_SOURCES: &[&str] = &[
    "/usr/lib/python3.11",
    "/usr/libexec",
    "/usr/lib/x86_64-linux-gnu/perl",
    "/usr/lib/x86_64-linux-gnu/valgrind",
];

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let sources: Vec<PathBuf> = if args.is_empty() {
        DEFAULT_SOURCES
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect()
    } else {
        args
    };
    if sources.is_empty() {
        bail!("no source directories");
    }

    let started = Instant::now();
    let mut tree = Tree::new();
    let mut links = HashMap::new();
    if let [source] = sources.as_slice() {
        // mksquashfs puts the contents of a lone source at the root.
        add_dir(&mut tree, b"/", source, &mut links)?;
    } else {
        for source in &sources {
            let name = source
                .file_name()
                .context("source without a name")?
                .as_encoded_bytes()
                .to_vec();
            add_dir(
                &mut tree,
                &[b"/".as_slice(), &name].concat(),
                source,
                &mut links,
            )?;
        }
    }
    println!(
        "read {} nodes, {:.1} MB of file contents in {:.2?}",
        tree.len(),
        tree.content_bytes() as f64 / 1e6,
        started.elapsed()
    );
    println!("threads: {}", rayon::current_num_threads());

    let scratch = tempfile::tempdir()?;
    let mut ours = Vec::new();
    for tail_fragments in [true, false] {
        let image = scratch.path().join("keel.sqfs");
        let options = SquashfsOptions {
            tail_fragments,
            ..SquashfsOptions::default()
        };
        let started = Instant::now();
        let summary = write_squashfs_file(&tree, &options, &image)?;
        let elapsed = started.elapsed();
        println!(
            "keel       tail_fragments={tail_fragments:<5}  {:>12} bytes  {:>8.2?}  ({} inodes, {} fragments, {} duplicate files)",
            summary.bytes_written,
            elapsed,
            summary.inode_count,
            summary.fragment_count,
            summary.duplicate_files
        );
        ours.push((summary.bytes_written, elapsed));
        fs::remove_file(&image)?;
    }

    let mut theirs = Vec::new();
    for extra in [&["-always-use-fragments"][..], &[]] {
        let image = scratch.path().join("mksquashfs.sqfs");
        let started = Instant::now();
        let status = Command::new("mksquashfs")
            .args(&sources)
            .arg(&image)
            .args(["-comp", "zstd", "-noappend", "-quiet", "-no-progress"])
            .args(extra)
            .status()
            .context("running mksquashfs (apt-get install squashfs-tools)")?;
        let elapsed = started.elapsed();
        if !status.success() {
            bail!("mksquashfs failed: {status}");
        }
        let size = fs::metadata(&image)?.len();
        println!(
            "mksquashfs {:<26} {size:>12} bytes  {elapsed:>8.2?}",
            extra.join(" ")
        );
        theirs.push((size, elapsed));
        fs::remove_file(&image)?;
    }

    for (label, (our_size, our_time), (their_size, their_time)) in [
        ("with tail fragments", ours[0], theirs[0]),
        ("mksquashfs defaults", ours[1], theirs[1]),
    ] {
        println!(
            "{label}: keel/mksquashfs size {:.4}, time {:.2}",
            our_size as f64 / their_size as f64,
            ratio(our_time, their_time)
        );
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Copies a host directory into the tree. Hard links share one `Content`, as the userland
/// loaders do.
fn add_dir(
    tree: &mut Tree,
    at: &[u8],
    dir: &Path,
    links: &mut HashMap<(u64, u64), Content>,
) -> Result<()> {
    let md = fs::symlink_metadata(dir)?;
    if at == b"/" {
        tree.root_mut().meta = meta(&md);
    } else {
        tree.insert(at, Node::dir(meta(&md)))?;
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let md = fs::symlink_metadata(&path)?;
        let child = [at, b"/", entry.file_name().as_encoded_bytes()].concat();
        let child = if at == b"/" {
            child[1..].to_vec()
        } else {
            child
        };
        let kind = if md.is_dir() {
            add_dir(tree, &child, &path, links)?;
            continue;
        } else if md.is_symlink() {
            NodeKind::Symlink(fs::read_link(&path)?.into_os_string().into_encoded_bytes())
        } else if md.is_file() {
            let key = (md.dev(), md.ino());
            let content = match links.get(&key) {
                Some(content) => content.clone(),
                None => {
                    let content = Content::new(fs::read(&path)?);
                    links.insert(key, content.clone());
                    content
                }
            };
            NodeKind::File(content)
        } else {
            continue;
        };
        tree.insert(
            &child,
            Node {
                meta: meta(&md),
                kind,
            },
        )?;
    }
    Ok(())
}

fn meta(md: &fs::Metadata) -> Meta {
    let mtime = u32::try_from(md.mtime().max(0)).unwrap_or(u32::MAX);
    Meta::new((md.mode() & 0o7777) as u16, md.uid(), md.gid(), mtime)
}
