//! Synthetic image parts (no Debian packages, no build): deterministic noise for kernel,
//! initramfs and payload, a manifest that describes them and its signature with a fixed test
//! key. Shared by the test files that write bundles and network-boot directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use keel_contract::manifest::{
    Disk, FileDigest, KernelFile, MANIFEST_SCHEMA, Manifest, RootFs, Sha256Digest, Verity,
};
use keel_minisign::{KeyId, SecretKey, TrustedKeys, sign_bytes};
use sha2::{Digest, Sha256};

pub fn sha(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

pub fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: sha(bytes),
    }
}

/// Deterministic bytes that do not compress or repeat, so a flip anywhere is a new digest.
pub fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block: [u8; 32] = Sha256::digest([seed]).into();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    out.truncate(len);
    out
}

pub fn secret() -> SecretKey {
    SecretKey::from_seed(KeyId(*b"keeltest"), &[7; 32])
}

pub fn trusted() -> TrustedKeys {
    TrustedKeys::new([secret().public_key()]).unwrap()
}

pub fn write_pub(dir: &Path) -> PathBuf {
    let path = dir.join("test.pub");
    let text = secret()
        .public_key()
        .to_file_string("keel test key")
        .unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

pub fn manifest_for(version: &str, kernel: &[u8], initramfs: &[u8], payload: &[u8]) -> Manifest {
    let d = |b: u8| Sha256Digest([b; 32]);
    Manifest {
        schema: MANIFEST_SCHEMA,
        name: "keel-test".into(),
        version: version.into(),
        arch: "x86_64".into(),
        builder: "keel test".into(),
        source_date_epoch: 1_700_000_000,
        profile_sha256: d(1),
        kernel: KernelFile {
            release: "6.1.0-test".into(),
            size: kernel.len() as u64,
            sha256: sha(kernel),
        },
        initramfs: digest(initramfs),
        bootloader: FileDigest {
            size: 12,
            sha256: d(4),
        },
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
        slot_payload: digest(payload),
        disk: Disk {
            size: 1 << 30,
            guid: "00000000-0000-0000-0000-000000000001".into(),
            partitions: vec![],
        },
        sources: vec![],
    }
}

pub fn sign(manifest: &Manifest) -> (Vec<u8>, String) {
    let bytes = manifest.to_canonical_json().unwrap();
    let sig = sign_bytes(&secret(), &bytes, "timestamp:0\tfile:manifest.json")
        .unwrap()
        .to_file_string();
    (bytes, sig)
}
