//! Every single-byte change to a signed manifest is rejected: by the signature (the bytes are
//! what was signed) before anything reads the content.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keel_contract::manifest::{
    self, Disk, FileDigest, KernelFile, Manifest, Partition, RootFs, Sha256Digest, Verity,
};
use keel_minisign::{SecretKey, SignatureFile, TrustedKeys, sign_bytes, verify_bytes};

fn sample() -> Manifest {
    let d = |b: u8| Sha256Digest([b; 32]);
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: "keel-worker".into(),
        version: "1.2.3".into(),
        arch: "x86_64".into(),
        builder: "keel 0.1.0".into(),
        source_date_epoch: 1_700_000_000,
        profile_sha256: d(1),
        kernel: KernelFile {
            release: "6.1.0-56-cloud-amd64".into(),
            size: 14_000_000,
            sha256: d(2),
        },
        initramfs: FileDigest {
            size: 4_000_000,
            sha256: d(3),
        },
        bootloader: FileDigest {
            size: 100_000,
            sha256: d(4),
        },
        cmdline: vec!["console=ttyS0,115200".into()],
        root: RootFs {
            format: "squashfs".into(),
            compression: "zstd".into(),
            size: 76_000_000,
            verity: Verity {
                algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 18_554,
                hash_offset: 76_000_000,
                salt: "ab".repeat(32),
                root_hash: d(5),
                uuid: "8a9c0000-0000-5000-8000-000000000000".into(),
            },
        },
        slot_payload: FileDigest {
            size: 76_700_000,
            sha256: d(6),
        },
        disk: Disk {
            size: 1 << 31,
            guid: "11111111-2222-5333-8444-555555555555".into(),
            partitions: vec![Partition {
                number: 2,
                label: "KEEL-A".into(),
                type_guid: keel_contract::layout::type_guid::ROOT_X86_64.into(),
                guid: "66666666-7777-5888-8999-000000000000".into(),
                offset: 257 << 20,
                size: 768 << 20,
                content: Some(FileDigest {
                    size: 76_700_000,
                    sha256: d(6),
                }),
            }],
        },
        sources: vec![],
    }
}

#[test]
fn flipping_any_byte_of_a_signed_manifest_is_rejected() {
    let (secret, public) = SecretKey::generate().unwrap();
    let keys = TrustedKeys::new([public]).unwrap();
    let bytes = sample().to_canonical_json().unwrap();
    let sig = SignatureFile::parse(
        &sign_bytes(&secret, &bytes, "keel manifest")
            .unwrap()
            .to_file_string(),
    )
    .unwrap();
    verify_bytes(&keys, &sig, &bytes).unwrap();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut altered = bytes.clone();
            altered[i] ^= bit;
            assert!(
                verify_bytes(&keys, &sig, &altered).is_err(),
                "flip of bit {bit:#x} at byte {i} accepted"
            );
        }
    }
    // Truncation and extension too.
    assert!(verify_bytes(&keys, &sig, &bytes[..bytes.len() - 1]).is_err());
    assert!(verify_bytes(&keys, &sig, &[bytes.as_slice(), b" "].concat()).is_err());
}
