//! `keel flash` on a synthetic output directory (a sparse disk.raw and a manifest with a
//! signed partition; no Debian packages, no VM): into a file (compared with `cmp`), onto a
//! loop device (refused while mounted), and a byte flipped on the target between the write
//! and the read-back, which the read-back must report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keel_builder::error::Classify;
use keel_builder::flash::{FlashError, FlashOptions, data_regions, flash};
use keel_builder::progress::Reporter;
use keel_contract::manifest::{
    Disk, FileDigest, KernelFile, MANIFEST_SCHEMA, Manifest, Partition, RootFs, Sha256Digest,
    Verity,
};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;
/// The signed partition: 1 MiB..5 MiB, its content the first 3 MiB (with a hole inside).
const PART: (u64, u64) = (MIB, 3 * MIB);

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The data written into the sparse disk: (offset, bytes).
fn pieces() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, noise(1, 8192)),                     // "GPT"
        (MIB, noise(2, 512 * 1024)),             // the partition's start...
        (MIB + 2 * MIB, noise(3, MIB as usize)), // ...and end, a hole between
        (40 * MIB, noise(4, 64 * 1024)),         // other data
        (DISK - 8192, noise(5, 8192)),           // "backup GPT"
    ]
}

fn manifest(part_digest: Sha256Digest) -> Manifest {
    let d = |b: u8| Sha256Digest([b; 32]);
    let fd = |b: u8| FileDigest {
        size: 1,
        sha256: d(b),
    };
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: "keel-test".into(),
        version: "1.0.0".into(),
        arch: "x86_64".into(),
        builder: "keel test".into(),
        source_date_epoch: 1_700_000_000,
        profile_sha256: d(1),
        kernel: KernelFile {
            release: "6.1.0-test".into(),
            size: 1,
            sha256: d(2),
        },
        initramfs: fd(3),
        bootloader: fd(4),
        cmdline: vec!["console=ttyS0".into()],
        root: RootFs {
            format: "squashfs".into(),
            compression: "zstd".into(),
            size: 4096,
            verity: Verity {
                algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 1,
                hash_offset: 4096,
                salt: "00".repeat(32),
                root_hash: d(5),
                uuid: "00000000-0000-0000-0000-000000000000".into(),
            },
        },
        slot_payload: fd(6),
        disk: Disk {
            size: DISK,
            guid: "00000000-0000-0000-0000-000000000001".into(),
            partitions: vec![Partition {
                number: 2,
                label: "KEEL-A".into(),
                type_guid: "00000000-0000-0000-0000-000000000002".into(),
                guid: "00000000-0000-0000-0000-000000000003".into(),
                offset: PART.0,
                size: 4 * MIB,
                content: Some(FileDigest {
                    size: PART.1,
                    sha256: part_digest,
                }),
            }],
        },
        sources: vec![],
    }
}

/// A sparse disk.raw and its manifest in `dir`.
fn output_dir(dir: &Path) -> PathBuf {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let disk = std::fs::File::create(out.join("disk.raw")).unwrap();
    disk.set_len(DISK).unwrap();
    let mut image = vec![0u8; DISK as usize];
    for (at, bytes) in pieces() {
        disk.write_all_at(&bytes, at).unwrap();
        image[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
    }
    let part = &image[PART.0 as usize..(PART.0 + PART.1) as usize];
    let digest = Sha256Digest(Sha256::digest(part).into());
    let json = manifest(digest).to_canonical_json().unwrap();
    std::fs::write(out.join("manifest.json"), json).unwrap();
    out
}

#[test]
fn flashing_into_a_file_gives_a_copy_of_disk_raw_writing_only_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let out = output_dir(tmp.path());
    let disk = out.join("disk.raw");
    let regions = data_regions(&std::fs::File::open(&disk).unwrap(), DISK).unwrap();
    if regions == [(0, DISK)] {
        eprintln!("the temporary directory's filesystem reports no holes: region check skipped");
    } else {
        let want: Vec<(u64, u64)> = pieces()
            .iter()
            .map(|(at, b)| (*at, at + b.len() as u64))
            .collect();
        assert_eq!(regions, want);
    }
    // A target holding older, longer data: none of it may survive.
    let target = tmp.path().join("target.img");
    std::fs::write(&target, vec![0xAAu8; (DISK + MIB) as usize]).unwrap();
    let o = keel(&["flash", p(&out), p(&target)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cmp = Command::new("cmp")
        .arg(&disk)
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "cmp: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
    let err = stderr(&o);
    // Data (1.6 MiB) plus the signed partition's hole (1.5 MiB), not the 64 MiB disk.
    assert!(err.contains("in 4 regions of 64.0 MiB written"), "{err}");
    assert!(
        err.contains("KEEL-A (3145728 bytes) matches the manifest"),
        "{err}"
    );
}

#[test]
fn bad_input_is_exit_2_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let o = keel(&[
        "flash",
        p(&tmp.path().join("nope")),
        p(&tmp.path().join("t")),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope/manifest.json"), "{}", stderr(&o));

    let out = output_dir(tmp.path());
    let o = keel(&["flash", p(&out), p(&tmp.path().join("no/such/dir/t.img"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/dir/t.img"), "{}", stderr(&o));

    let o = keel(&["flash", p(&out), p(&out.join("disk.raw"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is the image itself"), "{}", stderr(&o));
    // Still intact.
    assert_eq!(std::fs::metadata(out.join("disk.raw")).unwrap().len(), DISK);

    std::fs::write(out.join("manifest.json"), "{").unwrap();
    let o = keel(&["flash", p(&out), p(&tmp.path().join("t"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("out/manifest.json"), "{}", stderr(&o));
}

#[test]
fn a_byte_flipped_on_the_target_before_the_read_back_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = output_dir(tmp.path());
    let target = tmp.path().join("target.img");
    let opts = FlashOptions { force: false };
    // As a failing disk would: the byte written at 40 MiB + 100 reads back changed.
    let mut flip = |path: &Path| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 40 * MIB + 100).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], 40 * MIB + 100).unwrap();
    };
    let err = flash(&out, &target, &opts, &Reporter::quiet(), &mut flip).unwrap_err();
    assert!(matches!(err, FlashError::Verify { .. }), "{err}");
    assert!(!err.is_bad_input(), "a failed verification is exit 1");
    let text = err.to_string();
    assert!(
        text.contains("bytes 41943040..42008576 read back differ"),
        "{text}"
    );

    // Without the flip, the same call verifies.
    flash(&out, &target, &opts, &Reporter::quiet(), &mut |_| {}).unwrap();

    // An image that does not match its manifest is caught by the read-back too (exit 1).
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("disk.raw"))
        .unwrap();
    disk.write_all_at(&[0x55], MIB + 7).unwrap();
    let o = keel(&["flash", p(&out), p(&target)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("partition KEEL-A does not match the signed manifest"),
        "{}",
        stderr(&o)
    );
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// A loop device over a fresh ext4 file system; detached on drop.
struct Loop {
    dev: String,
    mount: Option<PathBuf>,
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = run("umount", &[p(m)]);
        }
        let _ = run("losetup", &["-d", &self.dev]);
    }
}

fn mounted_loop(dir: &Path) -> Result<Loop, String> {
    let backing = dir.join("loop.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(DISK + 16 * MIB))
        .map_err(|e| e.to_string())?;
    run("mkfs.ext4", &["-q", "-F", p(&backing)])?;
    let dev = run("losetup", &["-f", "--show", p(&backing)])?;
    let mut lo = Loop { dev, mount: None };
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
    run("mount", &[&lo.dev, p(&mnt)])?;
    lo.mount = Some(mnt);
    Ok(lo)
}

#[test]
fn a_mounted_loop_device_is_refused_and_written_once_unmounted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lo = match mounted_loop(tmp.path()) {
        Ok(lo) => lo,
        Err(why) => {
            eprintln!("skipped: no mountable loop device here ({why})");
            return;
        }
    };
    let out = output_dir(tmp.path());
    let o = keel(&["flash", p(&out), &lo.dev]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("mounted at"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));

    run("umount", &[p(lo.mount.as_ref().unwrap())]).unwrap();
    lo.mount = None;
    let o = keel(&["flash", p(&out), &lo.dev]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The data regions are the image's (the holes keep the old file system's bytes).
    let dev = std::fs::File::open(&lo.dev).unwrap();
    for (at, bytes) in pieces() {
        let mut got = vec![0u8; bytes.len()];
        dev.read_exact_at(&mut got, at).unwrap();
        assert!(got == bytes, "data at {at} differs on {}", lo.dev);
    }
}
