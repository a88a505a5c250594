use std::io::Cursor;

use keel_contract::manifest::{self, Disk, FileDigest, KernelFile, RootFs, Sha256Digest, Verity};
use keel_minisign::{SecretKey, sign_bytes};
use sha2::{Digest, Sha256};

use super::*;

pub(crate) fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

const SLOT_SIZE: u64 = 4 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    secret: SecretKey,
    target: Target,
}

pub(crate) fn digest(bytes: &[u8]) -> FileDigest {
    FileDigest {
        size: bytes.len() as u64,
        sha256: sha256(bytes),
    }
}

pub(crate) fn manifest(
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
    std::fs::write(esp.join("loader/entries/keel-a.conf"), "title a\n").unwrap();
    std::fs::write(esp.join("loader/entries/keel-b.conf"), "title old b\n").unwrap();
    // Both slots complete: a runs 1.0.0, b holds 0.9.0 (the fallback).
    for (slot, version) in [("a", "1.0.0"), ("b", "0.9.0")] {
        std::fs::create_dir_all(esp.join(format!("keel/{slot}"))).unwrap();
        for file in ["vmlinuz", "initramfs", "manifest.json.minisig"] {
            std::fs::write(esp.join(format!("keel/{slot}/{file}")), version).unwrap();
        }
        std::fs::write(
            esp.join(format!("keel/{slot}/manifest.json")),
            format!("{{\"version\":\"{version}\"}}"),
        )
        .unwrap();
    }
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

fn entries(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(f.target.esp.join("loader/entries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn boot_state(f: &Fixture) -> BootState {
    f.target.boot_state().unwrap()
}

fn install_bytes(f: &Fixture, bytes: Vec<u8>, force: bool) -> Result<Installed, UpgradeError> {
    install(&mut Cursor::new(bytes), &f.target, force, &|_| {})
}

/// Slot b is as the fixture made it: its entry and files untouched, nothing staged.
fn assert_fallback_untouched(f: &Fixture, what: &str) {
    assert_eq!(
        std::fs::read_to_string(f.target.esp.join("loader/entries/keel-b.conf")).unwrap(),
        "title old b\n",
        "{what}"
    );
    let state = boot_state(f);
    assert_eq!(state.invalid(Slot::B), None, "{what}");
    assert_eq!(
        state.slot(Slot::B).version.as_deref(),
        Some("0.9.0"),
        "{what}"
    );
    assert!(state.slot(Slot::B).staged.is_empty(), "{what}");
    assert_eq!(entries(f), ["keel-a.conf", "keel-b.conf"], "{what}");
}

/// Slot b was being written when the upgrade failed: no entry, no manifest, the journal
/// says so, and a rollback to it is refused.
fn assert_invalid(f: &Fixture, what: &str) {
    let state = boot_state(f);
    assert_eq!(state.slot(Slot::B).entry, None, "{what}");
    assert_eq!(state.slot(Slot::B).version, None, "{what}");
    assert!(state.slot(Slot::B).staged.is_empty(), "{what}");
    let why = state.invalid(Slot::B).unwrap_or_default();
    assert!(why.contains("being written"), "{what}: {why}");
    assert_eq!(entries(f), ["keel-a.conf"], "{what}");
    let err = rollback(&f.target.esp, &f.target.state, Slot::A, "1.0.0").unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Refused(m) if m.contains("being written")),
        "{what}: {err}"
    );
}

#[test]
fn installs_into_the_other_slot_and_writes_the_entry_last() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let s = stream(&f.secret, &m, &k, &i, &p);
    let installed = install_bytes(&f, s, false).unwrap();
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
    assert_eq!(std::fs::read(esp.join("keel/b/initramfs")).unwrap(), i);
    assert!(
        std::fs::read_to_string(esp.join("loader/entries/keel-b+3.conf"))
            .unwrap()
            .contains("version 1.1.0")
    );
    assert_eq!(entries(&f), ["keel-a.conf", "keel-b+3.conf"]);
    let state = boot_state(&f);
    assert_eq!(state.slot(Slot::B).version.as_deref(), Some("1.1.0"));
    assert_eq!(state.invalid(Slot::B), None);
    assert_eq!(state.journal, crate::entries::Journal::Idle);
    assert!(state.strays.is_empty() && state.slot(Slot::B).staged.is_empty());
    drop(f.dir);
}

#[test]
fn a_flipped_byte_before_the_payload_leaves_the_fallback_as_it_was_and_in_it_invalidates_it() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let good = stream(&f.secret, &m, &k, &i, &p);
    // One byte in the manifest and one in the signature: refused before anything is written.
    let manifest_at = 512 + 40;
    let sig_at = 512 * 2 + m.to_canonical_json().unwrap().len().div_ceil(512) * 512 + 100;
    for at in [manifest_at, sig_at] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let err = install_bytes(&f, bad, false).unwrap_err();
        assert!(
            matches!(err, UpgradeError::Rejected(_)),
            "flip at {at}: {err}"
        );
        assert_fallback_untouched(&f, &format!("flip at {at}"));
    }
    // A kernel that does not match: found while it is staged, before the slot is touched.
    let mut bad_kernel = k.clone();
    bad_kernel[3] ^= 1;
    let s = stream(&f.secret, &m, &bad_kernel, &i, &p);
    assert!(matches!(
        install_bytes(&f, s, false),
        Err(UpgradeError::Rejected(_))
    ));
    assert_fallback_untouched(&f, "bad kernel");
    // One in the payload: found once the slot is partly overwritten. The slot must not get
    // its entry back (the fault of issue 10: the entry was restored over a half-written
    // slot, and a rollback then looped on dm-verity).
    let payload_at = good.len() - 1024 - p.len().div_ceil(512) * 512 + p.len() / 2;
    let mut bad = good.clone();
    bad[payload_at] ^= 0x01;
    let err = install_bytes(&f, bad, false).unwrap_err();
    assert!(matches!(err, UpgradeError::Rejected(_)), "{err}");
    assert_invalid(&f, "payload flip");
    // The same bundle, good this time, installs over the invalid slot.
    install_bytes(&f, good, false).unwrap();
    assert_eq!(entries(&f), ["keel-a.conf", "keel-b+3.conf"]);
}

#[test]
fn parts_larger_or_smaller_than_the_signed_manifest_are_refused_before_they_are_read() {
    let f = fixture();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let bytes = m.to_canonical_json().unwrap();
    let sig = sign_bytes(&f.secret, &bytes, "t").unwrap().to_file_string();
    let mut big_kernel = k.clone();
    big_kernel.extend(vec![0u8; 300 << 20 >> 8]);
    let mut short_payload = p.clone();
    short_payload.truncate(p.len() - 1);
    for (what, kernel, payload) in [
        ("vmlinuz", &big_kernel, &p),
        ("payload", &k, &short_payload),
    ] {
        let s = tar_of(&[
            ("manifest.json", &bytes),
            ("manifest.json.minisig", sig.as_bytes()),
            ("vmlinuz", kernel),
            ("initramfs", &i),
            ("payload", payload),
        ]);
        let err = install_bytes(&f, s, false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{what} is")) && err.contains("the signed manifest says"),
            "{what}: {err}"
        );
        assert_fallback_untouched(&f, what);
    }
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
        let err = install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), false).unwrap_err();
        assert_eq!(
            matches!(err, UpgradeError::Refused(_)),
            want_refused,
            "{version} {name}: {err}"
        );
        assert_fallback_untouched(&f, version);
    }
    std::fs::write(f.target.state.join(QUARANTINE), "1.5.0\n").unwrap();
    let m = manifest("1.5.0", "keel-worker", &k, &i, &p);
    let err = install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), false).unwrap_err();
    assert!(err.to_string().contains("quarantined"), "{err}");
    // --force overrides policy, not verification.
    install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), true).unwrap();
    let other_key = SecretKey::generate().unwrap().0;
    let m = manifest("3.0.0", "keel-worker", &k, &i, &p);
    let err = install_bytes(&f, stream(&other_key, &m, &k, &i, &p), true).unwrap_err();
    assert!(matches!(err, UpgradeError::Rejected(_)), "{err}");
}

#[test]
fn an_upgrade_during_a_trial_boot_is_unavailable_unless_forced() {
    let f = fixture();
    std::fs::rename(
        f.target.esp.join("loader/entries/keel-a.conf"),
        f.target.esp.join("loader/entries/keel-a+1-1.conf"),
    )
    .unwrap();
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let err = install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), false).unwrap_err();
    assert!(
        matches!(&err, UpgradeError::Unavailable(m) if m.contains("on trial (keel-a+1-1.conf)")),
        "{err}"
    );
    assert_eq!(entries(&f), ["keel-a+1-1.conf", "keel-b.conf"]);
    install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), true).unwrap();
    assert_eq!(entries(&f), ["keel-a+1-1.conf", "keel-b+3.conf"]);
}

#[test]
fn a_stream_in_the_wrong_order_or_cut_short_never_leaves_an_entry_over_a_written_slot() {
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
        install_bytes(&f, swapped, false),
        Err(UpgradeError::Rejected(_))
    ));
    assert_fallback_untouched(&f, "swapped");
    // A stream that ends before its payload (the fault of issue 10: the fallback entry stayed
    // parked, and the node had no fallback): nothing was written, nothing changes.
    let no_payload = tar_of(&[
        ("manifest.json", &bytes),
        ("manifest.json.minisig", sig.as_bytes()),
        ("vmlinuz", &k),
        ("initramfs", &i),
    ]);
    let err = install_bytes(&f, no_payload, false).unwrap_err();
    assert!(err.to_string().contains("ends before payload"), "{err}");
    assert_fallback_untouched(&f, "no payload");
    let good = stream(&f.secret, &m, &k, &i, &p);
    // Cut inside the initramfs: still before the slot.
    let initramfs_end = 512 * 4
        + bytes.len().div_ceil(512) * 512
        + sig.len().div_ceil(512) * 512
        + k.len().div_ceil(512) * 512;
    let err = install_bytes(&f, good[..initramfs_end + 5].to_vec(), false).unwrap_err();
    assert!(err.to_string().contains("initramfs"), "{err}");
    assert_fallback_untouched(&f, "cut in the initramfs");
    // Cut at 60% of the stream, inside the payload: the slot is invalid, for good.
    let cut = good[..good.len() * 6 / 10].to_vec();
    assert!(install_bytes(&f, cut, false).is_err());
    assert_invalid(&f, "cut in the payload");
}

#[test]
fn rollback_is_detected_and_quarantined_but_a_requested_one_is_not() {
    let f = fixture();
    let esp = &f.target.esp;
    let (k, i, p) = parts();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    install_bytes(&f, stream(&f.secret, &m, &k, &i, &p), false).unwrap();
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
    let detect = |f: &Fixture| detect_rollback(&boot_state(f), &f.target.state, Slot::A, &running);
    assert_eq!(detect(&f), failed);
    assert_eq!(quarantined(&f.target.state), ["1.1.0"]);
    assert_eq!(detect(&f), failed, "reported again, listed once");
    assert_eq!(quarantined(&f.target.state), ["1.1.0"]);
    // Slot b failed: a rollback to it is refused.
    let err = rollback(esp, &f.target.state, Slot::A, "1.0.0").unwrap_err();
    assert!(err.to_string().contains("failed to boot"), "{err}");

    // A requested rollback from b (1.1.0, running) to a: b's entry is demoted, nothing is
    // quarantined when a boots.
    let g = fixture();
    let esp = &g.target.esp;
    install_bytes(&g, stream(&g.secret, &m, &k, &i, &p), false).unwrap();
    std::fs::rename(
        esp.join("loader/entries/keel-b+3.conf"),
        esp.join("loader/entries/keel-b.conf"),
    )
    .unwrap();
    assert_eq!(
        rollback(esp, &g.target.state, Slot::B, "1.1.0").unwrap(),
        "1.0.0"
    );
    assert!(esp.join("loader/entries/keel-b+0-3.conf").exists());
    let requested = Some(RolledBack {
        from: "1.1.0".into(),
        requested: true,
    });
    for boot in ["first", "second"] {
        assert_eq!(detect(&g), requested, "{boot} boot after the rollback");
        assert!(quarantined(&g.target.state).is_empty(), "{boot} boot");
    }

    // Installing into b again replaces the demoted entry and forgets the request: if that
    // install then fails to boot, it is quarantined like any other.
    install_bytes(&g, stream(&g.secret, &m, &k, &i, &p), false).unwrap();
    assert!(!g.target.state.join(ROLLBACK_REQUESTED).exists());
    std::fs::rename(
        esp.join("loader/entries/keel-b+3.conf"),
        esp.join("loader/entries/keel-b+0-3.conf"),
    )
    .unwrap();
    assert_eq!(detect(&g), failed);
    assert_eq!(quarantined(&g.target.state), ["1.1.0"]);
}

/// PID 1's memory does not grow with the update: the kernel, initramfs and payload go
/// through one buffer. A 64 MiB kernel (which the old code held in memory, twice: stream and
/// digest) must not raise the peak by more than a few MiB.
#[test]
fn an_upload_is_copied_through_one_buffer() {
    let f = fixture();
    let (_, i, p) = parts();
    let k: Vec<u8> = (0..(64u32 << 20)).map(|x| (x >> 9) as u8).collect();
    let m = manifest("1.1.0", "keel-worker", &k, &i, &p);
    let s = stream(&f.secret, &m, &k, &i, &p);
    drop(k);
    let reader = std::io::Read::chain(Cursor::new(s), std::io::empty());
    let mut reader = reader;
    let (before, peak) = (
        crate::sys::rss_bytes().unwrap(),
        crate::sys::peak_rss_bytes().unwrap(),
    );
    install(&mut reader, &f.target, false, &|_| {}).unwrap();
    let after = crate::sys::peak_rss_bytes().unwrap();
    // The peak is shared by the test threads: only a rise above what this process ever had,
    // and above what it had just now, counts against the install.
    let grown = after.saturating_sub(peak.max(before));
    assert!(
        grown < 16 << 20,
        "the install raised the peak RSS by {} MiB",
        grown >> 20
    );
}
