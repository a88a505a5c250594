//! Resolves a Debian package set the way a profile's `debian = { .. }` userland would, unpacks
//! it into a tree and reports its size and any missing shared libraries or script
//! interpreters. A tool for choosing `exclude` lists:
//!
//! ```text
//! cargo run -p keel-builder --example debian_closure -- \
//!     --exclude perl,initramfs-tools,udev runc containerd
//! ```
//!
//! Options: `--suite S` (default bookworm), `--exclude a,b`, `--cache DIR` (default
//! `$KEEL_CACHE_DIR` or `~/.cache/keel`), `--extract DIR` (write the tree out, for poking at it
//! with chroot), `--list` (print every package).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use keel_builder::tree::{NodeKind, Tree};
use keel_builder::userland::debian::{DebianSource, install, resolve_and_download};
use keel_builder::userland::shlibs::{missing_script_interpreters, missing_shared_libraries};

fn main() -> anyhow::Result<()> {
    let mut src = DebianSource {
        suite: "bookworm".into(),
        packages: Vec::new(),
        exclude: Vec::new(),
        components: Vec::new(),
    };
    let mut cache = std::env::var_os("KEEL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/keel")))
        .context("set KEEL_CACHE_DIR or HOME")?;
    let mut extract = None;
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--suite" => src.suite = args.next().context("--suite needs a value")?,
            "--exclude" => {
                let v = args.next().context("--exclude needs a value")?;
                src.exclude
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
            "--cache" => cache = args.next().context("--cache needs a value")?.into(),
            "--extract" => extract = Some(PathBuf::from(args.next().context("--extract")?)),
            "--list" => list = true,
            a if a.starts_with('-') => bail!("unknown option {a}"),
            _ => src.packages.push(arg),
        }
    }

    let resolved = resolve_and_download(&src, &cache, &mut |l| eprintln!("{l}"))?;
    let mut tree = Tree::with_merged_usr();
    let stats = install(&resolved, &mut tree)?;
    if list {
        for (r, s) in resolved.iter().zip(&stats) {
            println!(
                "{:<40} {:<32} {:>10} deb {:>11} unpacked",
                r.package, r.version, r.size, s.layer.bytes
            );
        }
    }
    println!(
        "packages: {}\n.deb bytes: {}\nunpacked file bytes: {}\ntree nodes: {}",
        resolved.len(),
        resolved.iter().map(|r| r.size).sum::<u64>(),
        tree.content_bytes(),
        tree.len()
    );
    let libs = missing_shared_libraries(&tree);
    println!("missing shared libraries: {}", libs.len());
    for m in &libs {
        println!("  {m}");
    }
    let scripts = missing_script_interpreters(&tree);
    println!("scripts with a missing interpreter: {}", scripts.len());
    for m in &scripts {
        println!("  {m}");
    }
    if let Some(dir) = extract {
        write_tree(&tree, &dir)?;
        println!("written to {}", dir.display());
    }
    Ok(())
}

/// Writes files, directories and symlinks (not devices) under `dir`.
fn write_tree(tree: &Tree, dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut result = Ok(());
    tree.walk(|path, node| {
        if result.is_err() {
            return;
        }
        let rel = std::ffi::OsStr::from_bytes(path.strip_prefix(b"/").unwrap_or(path));
        let target = dir.join(rel);
        let mode = u32::from(node.meta.mode);
        let r: std::io::Result<()> = (|| {
            match &node.kind {
                NodeKind::Dir(_) => std::fs::create_dir_all(&target)?,
                NodeKind::File(c) => {
                    std::fs::write(&target, c.bytes())?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
                }
                NodeKind::Symlink(t) => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(t), &target)?
                }
                _ => {}
            }
            Ok(())
        })();
        result = r.with_context(|| target.display().to_string());
    });
    result
}
