use std::io::Write;

use keel_contract::manifest::{
    Disk, FileDigest, KernelFile, MANIFEST_SCHEMA, Manifest, RootFs, Sha256Digest, Verity,
};
use keel_contract::output::pxe;
use sha2::{Digest, Sha256};

use super::*;

fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: Sha256Digest(Sha256::digest(bytes).into()),
    }
}

/// A manifest describing these bytes (the rest is plausible filler).
pub(super) fn manifest_of(kernel: &[u8], initramfs: &[u8], payload: &[u8]) -> Manifest {
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: "keel-worker".into(),
        version: "1.2.0".into(),
        arch: "x86_64".into(),
        builder: "keel test".into(),
        source_date_epoch: 0,
        profile_sha256: Sha256Digest([1; 32]),
        kernel: KernelFile {
            release: "6.1.0-test".into(),
            size: kernel.len() as u64,
            sha256: digest(kernel).sha256,
        },
        initramfs: digest(initramfs),
        bootloader: digest(b"loader"),
        cmdline: vec!["console=ttyS0,115200".into(), "panic=10".into()],
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
                root_hash: Sha256Digest([0xab; 32]),
                uuid: "00000000-0000-0000-0000-000000000000".into(),
            },
        },
        slot_payload: digest(payload),
        disk: Disk {
            size: 1 << 30,
            guid: "00000000-0000-0000-0000-000000000001".into(),
            partitions: vec![],
        },
        sources: vec![],
    }
}

struct Fixture {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
    payload: Vec<u8>,
}

fn fixture() -> Fixture {
    let kernel = b"kernel bytes".repeat(100);
    let initramfs = b"initramfs bytes".repeat(100);
    let payload = (0..20_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>();
    let manifest = manifest_of(&kernel, &initramfs, &payload);
    Fixture {
        manifest_bytes: manifest.to_canonical_json().unwrap(),
        manifest,
        kernel,
        initramfs,
        payload,
    }
}

fn write(f: &Fixture, dir: &Path, payload: &[u8]) -> Result<Vec<(String, u64)>, PxeError> {
    // In two writes, as a build streams the squashfs and then the verity tree.
    let split = payload.len() / 3;
    write_dir(
        dir,
        &PxeParts {
            manifest: &f.manifest,
            manifest_bytes: &f.manifest_bytes,
            signature: b"untrusted comment: test\n",
            kernel: &f.kernel,
            initramfs: &f.initramfs,
            payload: &|w: &mut dyn Write| {
                w.write_all(&payload[..split])?;
                w.write_all(&payload[split..])
            },
        },
    )
}

#[test]
fn writes_every_file_with_the_builds_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(pxe::DIR);
    let f = fixture();
    let files = write(&f, &dir, &f.payload).unwrap();
    let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, pxe::FILES);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert_eq!(read(pxe::ROOT), f.payload);
    assert_eq!(read(pxe::KERNEL), f.kernel);
    assert_eq!(read(pxe::INITRAMFS), f.initramfs);
    assert_eq!(read(pxe::MANIFEST), f.manifest_bytes);
    assert_eq!(
        String::from_utf8(read(pxe::SCRIPT)).unwrap(),
        boot_script(&f.manifest).unwrap()
    );
    for (name, size) in &files {
        assert_eq!(read(name).len() as u64, *size, "{name}");
    }
    assert!(is_pxe_dir(&dir));
    assert!(!is_pxe_dir(tmp.path()));
}

#[test]
fn a_payload_that_is_not_the_manifests_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture();
    let mut other = f.payload.clone();
    other[7] ^= 1;
    let err = write(&f, &tmp.path().join("a"), &other).unwrap_err();
    assert!(
        matches!(&err, PxeError::Mismatch { path, .. } if path.ends_with(pxe::ROOT)),
        "{err}"
    );
    assert!(err.to_string().contains("slot_payload"), "{err}");
    let err = write(&f, &tmp.path().join("b"), &f.payload[1..]).unwrap_err();
    assert!(err.to_string().contains("slot_payload"), "{err}");

    let mut wrong_kernel = fixture();
    wrong_kernel.kernel.push(0);
    let err = write(&wrong_kernel, &tmp.path().join("c"), &f.payload).unwrap_err();
    assert!(err.to_string().contains(pxe::KERNEL), "{err}");
    assert!(!tmp.path().join("c").exists());
}

#[test]
fn an_unsafe_cmdline_is_bad_input_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = fixture();
    f.manifest.cmdline.push("x=${evil}".into());
    let err = write(&f, &tmp.path().join("d"), &f.payload).unwrap_err();
    assert!(crate::error::Classify::is_bad_input(&err), "{err}");
    assert!(err.to_string().contains("x=${evil}"), "{err}");
    assert!(!tmp.path().join("d").exists());
}
