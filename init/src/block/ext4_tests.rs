//! Against e2fsprogs itself: images made by mkfs.ext4, changed with debugfs and tune2fs (which
//! rewrite the superblock's checksum their own way), and `e2fsck -p` asked the same question.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

const NOW: u64 = 1_800_000_000;

fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} (e2fsprogs, see vm-tests/install-host-packages)"))
}

fn run(program: &str, args: &[&str], image: &Path) -> (i32, String) {
    let out = Command::new(tool(program))
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A fresh 64 MiB ext4 image (Debian's mke2fs.conf: metadata checksums on).
fn fresh(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join(name);
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (code, text) = run("mkfs.ext4", &["-q", "-F", "-b", "4096"], &image);
    assert_eq!(code, 0, "{text}");
    image
}

fn debugfs(image: &Path, request: &str) {
    let (code, text) = run("debugfs", &["-w", "-R", request], image);
    assert_eq!(code, 0, "debugfs {request}: {text}");
}

fn verdict(image: &Path) -> Option<CheckNeeded> {
    check_needed(&read_superblock(image).unwrap(), NOW)
}

/// `e2fsck -p` on the image: whether it only found it clean (and so checked nothing).
fn e2fsck_found_it_clean(image: &Path) -> bool {
    let (code, text) = run("e2fsck", &["-p"], image);
    assert!(code <= 1, "e2fsck -p exit {code}: {text}");
    text.contains(": clean, ")
}

#[test]
fn a_clean_filesystem_needs_no_check_and_e2fsck_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let image = fresh(dir.path(), "clean.img");
    let sb = read_superblock(&image).unwrap();
    assert_ne!(
        le32(&sb, 0x64) & RO_COMPAT_METADATA_CSUM,
        0,
        "mkfs.ext4 made no metadata checksums: the checksum is untested"
    );
    assert_eq!(check_needed(&sb, NOW), None);
    assert!(e2fsck_found_it_clean(&image));
}

#[test]
fn what_e2fsck_would_check_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    /// A case's name, how its image is changed, and what must be found.
    type Case<'a> = (&'a str, &'a dyn Fn(&Path), CheckNeeded);
    let cases: [Case; 6] = [
        (
            "errors",
            &|i| debugfs(i, "ssv state 3"),
            CheckNeeded::Errors,
        ),
        (
            "unclean",
            &|i| debugfs(i, "ssv state 0"),
            CheckNeeded::NotCleanlyUnmounted,
        ),
        (
            "recover",
            &|i| debugfs(i, "feature needs_recovery"),
            CheckNeeded::JournalToReplay,
        ),
        (
            "orphans",
            &|i| debugfs(i, "ssv last_orphan 12"),
            CheckNeeded::OrphansToCleanUp,
        ),
        (
            "mounts",
            &|i| {
                let (code, text) = run("tune2fs", &["-c", "5", "-C", "5"], i);
                assert_eq!(code, 0, "{text}");
            },
            CheckNeeded::MountCountReached,
        ),
        (
            "interval",
            &|i| {
                let (code, text) = run("tune2fs", &["-i", "1d", "-T", "20200101"], i);
                assert_eq!(code, 0, "{text}");
            },
            CheckNeeded::CheckIntervalPassed,
        ),
    ];
    for (name, change, expected) in cases {
        let image = fresh(dir.path(), name);
        change(&image);
        assert_eq!(verdict(&image), Some(expected), "{name}");
        // The ones e2fsck -p checks without touching the journal: it does not call them clean.
        if !matches!(
            expected,
            CheckNeeded::JournalToReplay | CheckNeeded::OrphansToCleanUp
        ) {
            assert!(
                !e2fsck_found_it_clean(&image),
                "{name}: e2fsck found it clean"
            );
        }
    }
}

#[test]
fn a_changed_byte_fails_the_checksum_and_no_magic_is_not_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let image = fresh(dir.path(), "flipped.img");
    let mut sb = read_superblock(&image).unwrap();
    // The volume name, which nothing else here looks at.
    sb[0x78] ^= 0x01;
    assert_eq!(check_needed(&sb, NOW), Some(CheckNeeded::BadChecksum));
    sb[0x78] ^= 0x01;
    assert_eq!(check_needed(&sb, NOW), None);
    sb[0x38] = 0;
    assert_eq!(check_needed(&sb, NOW), Some(CheckNeeded::NotExt4));
    assert_eq!(
        check_needed(&[0u8; SUPERBLOCK_SIZE], NOW),
        Some(CheckNeeded::NotExt4)
    );
}

#[test]
fn a_device_that_cannot_be_read_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.img");
    std::fs::write(&short, [0u8; 1500]).unwrap();
    let err = read_superblock(&short).unwrap_err().to_string();
    assert!(err.contains("short.img"), "{err}");
}
