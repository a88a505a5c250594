//! Finding the kernel: in the userland (`/boot/vmlinuz-<release>` or
//! `/usr/lib/modules/<release>/vmlinuz`) or at host paths the profile names.

use std::path::Path;

use keel_contract::profile::KernelSpec;

use crate::tree::{Meta, Node, NodeKind, Tree};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "no kernel in the userland: expected /boot/vmlinuz-<release> or /usr/lib/modules/<release>/vmlinuz (add e.g. linux-image-cloud-amd64 to the Debian packages, or set image.kernel = {{ path = ... }})"
    )]
    NotFound,
    #[error(
        "several kernels in the userland ({0}); remove all but one or set image.kernel = {{ path = ... }}"
    )]
    Ambiguous(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: kernel modules directory name must be the kernel release (like 6.1.0-50-cloud-amd64)"
    )]
    BadModulesDir { path: String },
    #[error("{path}: {why}")]
    Tree { path: String, why: String },
}

#[derive(Debug, Clone)]
pub struct Kernel {
    pub release: String,
    pub image: Vec<u8>,
}

/// Finds the kernel. With host paths, the modules directory is copied into the tree so the
/// rest of the build treats both cases alike.
pub fn locate(tree: &mut Tree, spec: &KernelSpec) -> Result<Kernel, KernelError> {
    match spec {
        KernelSpec::Auto => find_in_tree(tree),
        KernelSpec::Path { path, modules } => {
            let image = std::fs::read(path).map_err(|source| KernelError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let release = match modules {
                Some(dir) => {
                    let release = dir
                        .file_name()
                        .and_then(|n| n.to_str())
                        .filter(|n| n.chars().next().is_some_and(|c| c.is_ascii_digit()))
                        .ok_or_else(|| KernelError::BadModulesDir {
                            path: dir.display().to_string(),
                        })?
                        .to_owned();
                    copy_host_dir(tree, dir, &crate::kmod::modules_dir(&release))?;
                    release
                }
                None => release_from_file_name(path).ok_or_else(|| KernelError::BadModulesDir {
                    path: path.display().to_string(),
                })?,
            };
            Ok(Kernel { release, image })
        }
    }
}

fn release_from_file_name(path: &Path) -> Option<String> {
    path.file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")
        .map(str::to_owned)
}

fn find_in_tree(tree: &Tree) -> Result<Kernel, KernelError> {
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(children) = tree.get("/boot").and_then(|n| n.children()) {
        for (name, node) in children {
            let name = String::from_utf8_lossy(name);
            if let (Some(release), NodeKind::File(c)) = (name.strip_prefix("vmlinuz-"), &node.kind)
            {
                found.push((release.to_owned(), c.bytes().to_vec()));
            }
        }
    }
    if let Some(children) = tree.get("/usr/lib/modules").and_then(|n| n.children()) {
        for (name, node) in children {
            let release = String::from_utf8_lossy(name).into_owned();
            if found.iter().any(|(r, _)| *r == release) {
                continue;
            }
            if let Some(NodeKind::File(c)) = node
                .children()
                .and_then(|c| c.get(&b"vmlinuz"[..]))
                .map(|n| &n.kind)
            {
                found.push((release, c.bytes().to_vec()));
            }
        }
    }
    match found.len() {
        0 => Err(KernelError::NotFound),
        1 => {
            let (release, image) = found.remove(0);
            Ok(Kernel { release, image })
        }
        _ => Err(KernelError::Ambiguous(
            found
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Copies a host directory into the tree (files, dirs and symlinks; root-owned).
pub fn copy_host_dir(tree: &mut Tree, src: &Path, dst: &str) -> Result<(), KernelError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| KernelError::Io { path, source }
    };
    let tree_err = |path: &str| {
        let path = path.to_owned();
        move |e: crate::tree::TreeError| KernelError::Tree {
            path,
            why: e.to_string(),
        }
    };
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    let mode = (meta.permissions().mode() & 0o7777) as u16;
    if meta.is_dir() {
        tree.insert(dst, Node::dir(Meta::root(mode)))
            .map_err(tree_err(dst))?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(io(src))?
            .collect::<Result<_, _>>()
            .map_err(io(src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let child_dst = format!("{dst}/{}", name.to_string_lossy());
            copy_host_dir(tree, &entry.path(), &child_dst)?;
        }
    } else if meta.file_type().is_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let target = std::fs::read_link(src).map_err(io(src))?;
        tree.insert(dst, Node::symlink(target.as_os_str().as_bytes()))
            .map_err(tree_err(dst))?;
    } else {
        let bytes = std::fs::read(src).map_err(io(src))?;
        tree.insert(dst, Node::file(Meta::root(mode), bytes))
            .map_err(tree_err(dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_one_kernel_and_refuses_two() {
        let mut tree = Tree::with_merged_usr();
        assert!(matches!(find_in_tree(&tree), Err(KernelError::NotFound)));
        tree.insert(
            "/boot/vmlinuz-6.1.0-1-amd64",
            Node::file(Meta::root(0o644), b"k1".to_vec()),
        )
        .unwrap();
        tree.insert(
            "/usr/lib/modules/6.1.0-1-amd64/kernel/x.ko",
            Node::file(Meta::root(0o644), b"m".to_vec()),
        )
        .unwrap();
        let k = find_in_tree(&tree).unwrap();
        assert_eq!(
            (k.release.as_str(), k.image.as_slice()),
            ("6.1.0-1-amd64", &b"k1"[..])
        );
        tree.insert(
            "/usr/lib/modules/6.2.0/vmlinuz",
            Node::file(Meta::root(0o644), b"k2".to_vec()),
        )
        .unwrap();
        let err = find_in_tree(&tree).unwrap_err().to_string();
        assert!(err.contains("6.1.0-1-amd64, 6.2.0"), "{err}");
    }
}
