use std::io::Cursor;

use keel_contract::manifest::{self, Disk, FileDigest, KernelFile, RootFs, Verity};
use keel_minisign::{SecretKey, sign_bytes};

use super::*;

const SLOT_SIZE: u64 = 4 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    secret: SecretKey,
    target: Target,
}

fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: sha256(bytes),
    }
}

fn manifest(
    version: &str,
    name: &str,
    kernel: &[u8],
    initramfs: &[u8],
    payload: &[u8],
) -> Manifest {
    Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        name: name.into(),
        version: version.into(),
        arch: "x86_64".into(),
        builder: "keel test".into(),
        source_date_epoch: 0,
        profile_sha256: Sha256Digest([0; 32]),
        kernel: KernelFile {
            release: "6.1".into(),
            size: kernel.len() as u64,
            sha256: sha256(kernel),
        },
        initramfs: digest(initramfs),
        bootloader: digest(b""),
        cmdline: vec!["console=ttyS0".into()],
        root: RootFs {
            format: "squashfs".into(),
            compression: "zstd".into(),
            size: payload.len() as u64,
            verity: Verity {
                algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 1,
                hash_offset: 4096,
                salt: "00".into(),
                root_hash: Sha256Digest([7; 32]),
                uuid: "u".into(),
            },
        },
        slot_payload: digest(payload),
        disk: Disk {
            size: 0,
            guid: "g".into(),
            partitions: vec![],
        },
        sources: vec![],
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = SecretKey::generate().unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
    std::fs::create_dir_all(esp.join("keel/a")).unwrap();
    std::fs::write(esp.join("loader/entries/keel-a.conf"), "title a\n").unwrap();
    std::fs::write(esp.join("loader/entries/keel-b.conf"), "title old b\n").unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let slot = dir.path().join("slot-b");
    std::fs::write(&slot, vec![0u8; SLOT_SIZE as usize]).unwrap();
    let target = Target {
        name: "keel-worker".into(),
        arch: "x86_64".into(),
        running: semver::Version::new(1, 0, 0),
        active: Slot::A,
        slot_device: slot,
        slot_size: SLOT_SIZE,
        esp,
        state,
        trusted_keys: TrustedKeys::new([public]).unwrap(),
    };
    Fixture {
        dir,
        secret,
        target,
    }
}

/// The update stream for `m`, with the parts given (which may differ from what `m` says).
fn stream(
    secret: &SecretKey,
    m: &Manifest,
    kernel: &[u8],
    initramfs: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let bytes = m.to_canonical_json().unwrap();
    let sig = sign_bytes(secret, &bytes, "test").unwrap().to_file_string();
    tar_of(&[
        ("manifest.json", &bytes),
        ("manifest.json.minisig", sig.as_bytes()),
        ("vmlinuz", kernel),
        ("initramfs", initramfs),
        ("payload", payload),
    ])
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn parts() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..(2 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    (
        b"kernel image".to_vec(),
        b"initramfs image".to_vec(),
        payload,
    )
}

#[test]
fn installs_into_the_other_slot_and_writes_the_entry_last() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let s = stream(&f.secret, &m, &k, &i, &p);
    let installed = install(&mut Cursor::new(s), &f.target, false, &|_| {}).unwrap();
    assert_eq!(
        installed,
        Installed {
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            slot: Slot::B,
            bytes: p.len() as u64
        }
    );
    let slot = std::fs::read(&f.target.slot_device).unwrap();
    assert_eq!(&slot[..p.len()], &p[..]);
    let esp = &f.target.esp;
    assert_eq!(std::fs::read(esp.join("keel/b/vmlinuz")).unwrap(), k);
    assert!(
        std::fs::read_to_string(esp.join("loader/entries/keel-b+3.conf"))
            .unwrap()
            .contains("version 1.1.0")
    );
    assert!(
        !esp.join("loader/entries/keel-b.conf").exists(),
        "the old entry of slot b is gone"
    );
    assert!(!esp.join("loader/entries/keel-b.conf.parked").exists());
    assert_eq!(slot_version(esp, Slot::B).as_deref(), Some("1.1.0"));
    assert!(
        std::fs::read_to_string(f.target.state.join(JOURNAL))
            .unwrap()
            .contains("\"phase\":\"installed\"")
    );
    drop(f.dir);
}

#[test]
fn any_flipped_byte_is_rejected_and_the_inactive_entry_stays_as_it_was() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let good = stream(&f.secret, &m, &k, &i, &p);
    // One byte in the manifest, the signature, the kernel, the initramfs and the payload.
    let manifest_at = 512 + 40;
    let sig_at = 512 * 2 + m.to_canonical_json().unwrap().len().div_ceil(512) * 512 + 100;
    let payload_at = good.len() - 1024 - p.len().div_ceil(512) * 512 + p.len() / 2;
    for at in [manifest_at, sig_at, payload_at] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let err = install(&mut Cursor::new(bad), &f.target, false, &|_| {}).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Rejected(_)),
            "flip at {at}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(f.target.esp.join("loader/entries/keel-b.conf")).unwrap(),
            "title old b\n",
            "flip at {at}"
        );
        assert!(!f.target.esp.join("loader/entries/keel-b+3.conf").exists());
    }
    let mut bad_kernel = k.clone();
    bad_kernel[3] ^= 1;
    let s = stream(&f.secret, &m, &bad_kernel, &i, &p);
    assert!(matches!(
        install(&mut Cursor::new(s), &f.target, false, &|_| {}),
        Err(UpgradeError::Rejected(_))
    ));
    assert!(f.target.esp.join("loader/entries/keel-b.conf").exists());
}

#[test]
fn policy_refuses_downgrades_reinstalls_quarantined_and_foreign_images() {
    let f = fixture();
    let (k, i, p) = parts();
    for (version, name, want_refused) in [
        ("0.9.0", "keel-worker", true),
        ("1.0.0", "keel-worker", true),
        ("2.0.0", "other-image", false),
    ] {
        let m = manifest(version, name, &k, &i, &p);
        let err = install(
            &mut Cursor::new(stream(&f.secret, &m, &k, &i, &p)),
            &f.target,
            false,
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(
            matches!(err, UpgradeError::Refused(_)),
            want_refused,
            "{version} {name}: {err}"
        );
    }
    std::fs::write(f.target.state.join(QUARANTINE), "1.5.0\n").unwrap();
    let m = manifest("1.5.0", "keel-worker", &k, &i, &p);
    let err = install(
        &mut Cursor::new(stream(&f.secret, &m, &k, &i, &p)),
        &f.target,
        false,
        &|_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("quarantined"), "{err}");
    // --force overrides policy, not verification.
    install(
        &mut Cursor::new(stream(&f.secret, &m, &k, &i, &p)),
        &f.target,
        true,
        &|_| {},
    )
    .unwrap();
    let other_key = SecretKey::generate().unwrap().0;
    let m = manifest("3.0.0", "keel-worker", &k, &i, &p);
    let err = install(
        &mut Cursor::new(stream(&other_key, &m, &k, &i, &p)),
        &f.target,
        true,
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, UpgradeError::Rejected(_)), "{err}");
}

#[test]
fn a_stream_in_the_wrong_order_or_cut_short_is_rejected() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let bytes = m.to_canonical_json().unwrap();
    let sig = sign_bytes(&f.secret, &bytes, "t").unwrap().to_file_string();
    let swapped = tar_of(&[
        ("manifest.json.minisig", sig.as_bytes()),
        ("manifest.json", &bytes),
    ]);
    assert!(matches!(
        install(&mut Cursor::new(swapped), &f.target, false, &|_| {}),
        Err(UpgradeError::Rejected(_))
    ));
    let good = stream(&f.secret, &m, &k, &i, &p);
    let cut = good[..good.len() / 2].to_vec();
    assert!(install(&mut Cursor::new(cut), &f.target, false, &|_| {}).is_err());
    assert!(
        f.target.esp.join("loader/entries/keel-b.conf").exists(),
        "the old entry is restored"
    );
}

#[test]
fn rollback_is_detected_and_quarantined_but_a_requested_one_is_not() {
    let f = fixture();
    let esp = &f.target.esp;
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    install(
        &mut Cursor::new(stream(&f.secret, &m, &k, &i, &p)),
        &f.target,
        false,
        &|_| {},
    )
    .unwrap();
    // Slot b's entry ran out of tries: we (1.0.0 in slot a) were booted instead.
    std::fs::rename(
        esp.join("loader/entries/keel-b+3.conf"),
        esp.join("loader/entries/keel-b+0-3.conf"),
    )
    .unwrap();
    let running = semver::Version::new(1, 0, 0);
    let failed = Some(RolledBack {
        from: "1.1.0".into(),
        requested: false,
    });
    assert_eq!(
        detect_rollback(esp, &f.target.state, Slot::A, &running),
        failed
    );
    assert_eq!(quarantined(&f.target.state), ["1.1.0"]);
    assert_eq!(
        detect_rollback(esp, &f.target.state, Slot::A, &running),
        failed,
        "reported again, listed once"
    );
    assert_eq!(quarantined(&f.target.state), ["1.1.0"]);

    // A requested rollback from b (1.1.0, running) to a: b's entry is demoted, nothing is
    // quarantined when a boots.
    let g = fixture();
    let esp = &g.target.esp;
    install(
        &mut Cursor::new(stream(&g.secret, &m, &k, &i, &p)),
        &g.target,
        false,
        &|_| {},
    )
    .unwrap();
    std::fs::rename(
        esp.join("loader/entries/keel-b+3.conf"),
        esp.join("loader/entries/keel-b.conf"),
    )
    .unwrap();
    std::fs::create_dir_all(esp.join("keel/a")).unwrap();
    std::fs::write(
        esp.join("keel/a/manifest.json"),
        manifest("1.0.0", "keel-worker", &k, &i, &p)
            .to_canonical_json()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(rollback(esp, &g.target.state, Slot::B).unwrap(), "1.0.0");
    assert!(esp.join("loader/entries/keel-b+0-3.conf").exists());
    let requested = Some(RolledBack {
        from: "1.1.0".into(),
        requested: true,
    });
    for boot in ["first", "second"] {
        assert_eq!(
            detect_rollback(esp, &g.target.state, Slot::A, &running),
            requested,
            "{boot} boot after the rollback"
        );
        assert!(quarantined(&g.target.state).is_empty(), "{boot} boot");
    }

    // Installing into b again replaces the demoted entry and forgets the request: if that
    // install then fails to boot, it is quarantined like any other.
    install(
        &mut Cursor::new(stream(&g.secret, &m, &k, &i, &p)),
        &g.target,
        false,
        &|_| {},
    )
    .unwrap();
    assert!(!g.target.state.join(ROLLBACK_REQUESTED).exists());
    std::fs::rename(
        esp.join("loader/entries/keel-b+3.conf"),
        esp.join("loader/entries/keel-b+0-3.conf"),
    )
    .unwrap();
    assert_eq!(
        detect_rollback(esp, &g.target.state, Slot::A, &running),
        failed
    );
    assert_eq!(quarantined(&g.target.state), ["1.1.0"]);
}
