//! What Keel adds to the userland to make it a bootable root: mount points, the init for
//! stage 2, os-release, module dependency data, host files; and what it takes away (the
//! kernel image lives on the ESP, not in the root).

use std::path::Path;

use keel_contract::layout::{self, OS_NAME, root};
use keel_contract::profile::FileSpec;

use crate::tree::{Meta, Node, NodeKind, Tree, TreeError};

/// Where the init binary lives in the root; stage 1 executes it after switching root.
pub use keel_contract::layout::root::INIT as INIT_IN_ROOT;

/// Directories the read-only root must already have so the init can mount onto them.
pub const MOUNT_POINTS: &[(&str, u16)] = &[
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/dev", 0o755),
    ("/run", 0o755),
    ("/tmp", 0o1777),
    ("/var", 0o755),
    (root::ESP_MOUNT, 0o700),
    (root::STATE_MOUNT, 0o700),
    // containerd and CNI DaemonSets expect /opt/cni/bin; the init mounts /opt from /var.
    ("/opt", 0o755),
    ("/etc", 0o755),
    ("/root", 0o700),
];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{path}: {source}")]
    Tree { path: String, source: TreeError },
    #[error("image.files: {src}: {source}")]
    HostFile { src: String, source: std::io::Error },
}

pub struct RootfsSpec<'a> {
    pub image_name: &'a str,
    pub version: &'a str,
    pub init: &'a [u8],
    pub kernel_release: &'a str,
    pub modules_dep: String,
    /// `modules.alias`: the init loads drivers by the devices it finds.
    pub modules_alias: String,
    pub files: &'a [FileSpec],
    pub source_date_epoch: u32,
}

fn at(path: &str) -> impl FnOnce(TreeError) -> RootfsError + '_ {
    move |source| RootfsError::Tree {
        path: path.to_owned(),
        source,
    }
}

pub fn finish(tree: &mut Tree, spec: &RootfsSpec<'_>) -> Result<(), RootfsError> {
    for (dir, mode) in MOUNT_POINTS {
        if tree.get(dir).is_none_or(|n| !n.is_dir()) {
            tree.insert(dir, Node::dir(Meta::root(*mode)))
                .map_err(at(dir))?;
        }
    }
    tree.insert(
        INIT_IN_ROOT,
        Node::file(Meta::root(0o755), spec.init.to_vec()),
    )
    .map_err(at(INIT_IN_ROOT))?;

    let os_release = format!(
        "NAME=\"{OS_NAME}\"\nID=keel\nPRETTY_NAME=\"{OS_NAME} {v} ({n})\"\nVERSION_ID={v}\nIMAGE_ID={n}\nIMAGE_VERSION={v}\nHOME_URL=\"https://keel.invalid/\"\n",
        v = spec.version,
        n = spec.image_name
    );
    tree.insert(
        "/usr/lib/os-release",
        Node::file(Meta::root(0o644), os_release.into_bytes()),
    )
    .map_err(at("/usr/lib/os-release"))?;
    tree.insert("/etc/os-release", Node::symlink("../usr/lib/os-release"))
        .map_err(at("/etc/os-release"))?;

    // No maintainer scripts ran, so nobody created the account databases.
    for (path, text) in [
        (
            "/etc/passwd",
            "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        ("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        if tree.get(path).is_none() {
            tree.insert(
                path,
                Node::file(Meta::root(0o644), text.as_bytes().to_vec()),
            )
            .map_err(at(path))?;
        }
    }

    let modules = crate::kmod::modules_dir(spec.kernel_release);
    for (name, text) in [
        (layout::modules::DEP, &spec.modules_dep),
        (layout::modules::ALIAS, &spec.modules_alias),
    ] {
        let path = format!("{modules}/{name}");
        tree.insert(
            &path,
            Node::file(Meta::root(0o644), text.clone().into_bytes()),
        )
        .map_err(at(&path))?;
    }

    // The kernel boots from the ESP; a copy in the root would only cost space.
    let boot_files: Vec<Vec<u8>> = tree
        .get("/boot")
        .and_then(|n| n.children())
        .map(|c| {
            c.keys()
                .filter(|k| k.starts_with(b"vmlinuz") || k.starts_with(b"System.map"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for name in boot_files {
        let mut path = b"/boot/".to_vec();
        path.extend_from_slice(&name);
        tree.remove(&path).map_err(at("/boot"))?;
    }

    for file in spec.files {
        add_host_path(tree, &file.src, &file.dst, file.mode.map(|m| m.0))?;
    }

    let epoch = spec.source_date_epoch;
    tree.for_each_meta_mut(|meta| meta.mtime = epoch);
    Ok(())
}

/// Copies a host file or directory tree into the root, owned by root.
fn add_host_path(
    tree: &mut Tree,
    src: &Path,
    dst: &str,
    mode: Option<u16>,
) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let host = |source| RootfsError::HostFile {
        src: src.display().to_string(),
        source,
    };
    let meta = std::fs::symlink_metadata(src).map_err(host)?;
    let mode = mode.unwrap_or((meta.permissions().mode() & 0o7777) as u16);
    if meta.is_dir() {
        tree.insert(dst, Node::dir(Meta::root(mode)))
            .map_err(at(dst))?;
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|source| RootfsError::HostFile {
                src: src.display().to_string(),
                source,
            })?
            .collect::<Result<_, _>>()
            .map_err(|source| RootfsError::HostFile {
                src: src.display().to_string(),
                source,
            })?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = format!(
                "{}/{}",
                dst.trim_end_matches('/'),
                entry.file_name().to_string_lossy()
            );
            add_host_path(tree, &entry.path(), &child, None)?;
        }
    } else if meta.file_type().is_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let target = std::fs::read_link(src).map_err(host)?;
        tree.insert(dst, Node::symlink(target.as_os_str().as_bytes()))
            .map_err(at(dst))?;
    } else {
        let bytes = std::fs::read(src).map_err(host)?;
        tree.insert(
            dst,
            Node {
                meta: Meta::root(mode),
                kind: NodeKind::File(crate::tree::Content::new(bytes)),
            },
        )
        .map_err(at(dst))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::profile::FileMode;

    #[test]
    fn adds_mount_points_init_os_release_and_host_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("motd"), "hi\n").unwrap();
        let mut tree = Tree::with_merged_usr();
        tree.insert(
            "/boot/vmlinuz-6.1",
            Node::file(Meta::root(0o644), b"k".to_vec()),
        )
        .unwrap();
        tree.insert(
            "/boot/config-6.1",
            Node::file(Meta::root(0o644), b"c".to_vec()),
        )
        .unwrap();
        let files = vec![FileSpec {
            src: dir.path().join("motd"),
            dst: "/etc/motd".into(),
            mode: Some(FileMode(0o600)),
        }];
        finish(
            &mut tree,
            &RootfsSpec {
                image_name: "keel-t",
                version: "1.0.0",
                init: b"init",
                kernel_release: "6.1",
                modules_dep: "x.ko:\n".into(),
                modules_alias: "alias pci:v1* x\n".into(),
                files: &files,
                source_date_epoch: 42,
            },
        )
        .unwrap();
        assert!(tree.get("/proc").unwrap().is_dir());
        assert_eq!(tree.get("/tmp").unwrap().meta.mode, 0o1777);
        assert!(tree.get(INIT_IN_ROOT).is_some());
        assert!(
            matches!(&tree.get("/usr/lib/modules/6.1/modules.alias").unwrap().kind, NodeKind::File(c) if c.bytes() == b"alias pci:v1* x\n")
        );
        assert!(tree.get("/boot/vmlinuz-6.1").is_none());
        assert!(tree.get("/boot/config-6.1").is_some());
        assert_eq!(tree.get("/etc/motd").unwrap().meta.mode, 0o600);
        assert!(
            matches!(&tree.get("/etc/os-release").unwrap().kind, NodeKind::File(c) if c.bytes().starts_with(b"NAME=\"Keel\""))
        );
        let mut times = std::collections::BTreeSet::new();
        tree.walk(|_, n| {
            times.insert(n.meta.mtime);
        });
        assert_eq!(times.into_iter().collect::<Vec<_>>(), vec![42]);
    }

    #[test]
    fn missing_host_file_names_it() {
        let mut tree = Tree::new();
        let files = vec![FileSpec {
            src: "/nonexistent/keel-x".into(),
            dst: "/x".into(),
            mode: None,
        }];
        let err = finish(
            &mut tree,
            &RootfsSpec {
                image_name: "k",
                version: "1.0.0",
                init: b"",
                kernel_release: "r",
                modules_dep: String::new(),
                modules_alias: String::new(),
                files: &files,
                source_date_epoch: 0,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("image.files: /nonexistent/keel-x"), "{err}");
    }
}
