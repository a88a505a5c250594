//! Mounting with the Linux kernel's squashfs driver, the reader that matters at boot.
//!
//! When this machine cannot mount squashfs at all (not root, no squashfs filesystem, no loop
//! device, or an image made by mksquashfs itself fails to mount) the test fails saying why,
//! unless KEEL_SKIP_KERNEL_SQUASHFS_TESTS=1 asks to skip it knowingly (the skip is printed).
//! A test that passed without its subject would hide a missing check. Once mksquashfs' image
//! mounts, ours must too.

use super::*;

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(image: &Path, at: &Path) -> Result<Mounted, String> {
    fs::create_dir_all(at).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(image)
        .arg(at)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if out.status.success() {
        Ok(Mounted(at.to_owned()))
    } else {
        Err(format!(
            "mount {} failed: {}{}",
            image.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why squashfs cannot be mounted here, if it cannot.
fn mount_unavailable(scratch: &Path) -> Option<String> {
    // /proc/self belongs to the effective user.
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        return Some("not running as root".into());
    }
    let _ = Command::new("modprobe").args(["-q", "squashfs"]).status();
    let _ = Command::new("modprobe").args(["-q", "loop"]).status();
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.split_whitespace().any(|f| f == "squashfs") {
        return Some("the kernel has no squashfs filesystem".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices (/dev/loop-control missing)".into());
    }
    require_tool("mksquashfs");
    let source = scratch.join("probe-src");
    fs::create_dir_all(&source).unwrap();
    fs::write(source.join("f"), b"probe").unwrap();
    let probe = scratch.join("probe.sqfs");
    run(Command::new("mksquashfs").arg(&source).arg(&probe).args([
        "-comp",
        "zstd",
        "-noappend",
        "-quiet",
        "-no-progress",
    ]));
    match mount(&probe, &scratch.join("probe-mnt")) {
        Ok(_mounted) => None,
        Err(e) => Some(format!("a mksquashfs image does not mount either: {e}")),
    }
}

#[test]
fn kernel_mounts_squashfs_and_sees_every_node() {
    let scratch = tempfile::tempdir().unwrap();
    if let Some(why) = mount_unavailable(scratch.path()) {
        if std::env::var("KEEL_SKIP_KERNEL_SQUASHFS_TESTS").as_deref() == Ok("1") {
            // Straight to fd 2: libtest would swallow eprintln! of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (KEEL_SKIP_KERNEL_SQUASHFS_TESTS=1) kernel_mounts_squashfs_and_sees_every_node: {why}"
            );
            return;
        }
        panic!(
            "the kernel cannot mount squashfs here ({why}); run as root on a kernel with squashfs and loop devices, or set KEEL_SKIP_KERNEL_SQUASHFS_TESTS=1 to skip this test knowingly"
        );
    }
    let tree = sample_tree();
    let how = Compare {
        symlink_times: true,
        link_counts: true,
    };
    let mut small = tree.clone();
    small.remove("/files/random-20m").unwrap();
    let variants = [
        (&tree, SquashfsOptions::default()),
        (
            &small,
            SquashfsOptions {
                block_size: 4096,
                compression: SquashfsCompression::Zstd { level: 19 },
                tail_fragments: false,
                mkfs_time: 1,
            },
        ),
        (
            &small,
            SquashfsOptions {
                block_size: 1 << 20,
                compression: SquashfsCompression::None,
                ..SquashfsOptions::default()
            },
        ),
    ];
    for (i, (tree, options)) in variants.iter().enumerate() {
        let dir = scratch.path().join(format!("v{i}"));
        fs::create_dir_all(&dir).unwrap();
        let (image, _) = write_image(&dir, tree, options);
        let at = dir.join("mnt");
        let mounted = mount(&image, &at).unwrap_or_else(|e| panic!("{options:?}: {e}"));
        compare_tree(tree, &mounted.0, how);
    }
}
