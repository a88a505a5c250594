//! The stock worker image checked against independent tools: sgdisk, fsck.vfat, unsquashfs,
//! veritysetup, cpio and minisign; then `keel verify` and `keel inspect` on it, and tampering.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_contract::manifest::Manifest;
use keel_vm_tests::{stock_image, test_dir};

fn manifest(out: &Path) -> Manifest {
    Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Copies `len` bytes at `offset` of the disk into a file of its own.
fn extract(disk: &Path, offset: u64, len: u64, to: &Path) -> PathBuf {
    let mut input = std::fs::File::open(disk).unwrap();
    input.seek(SeekFrom::Start(offset)).unwrap();
    let mut output = std::fs::File::create(to).unwrap();
    std::io::copy(&mut input.take(len), &mut output).unwrap();
    to.to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the tool installed? see .ci/run)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn gpt_passes_sgdisk_verify() {
    let (out, _) = stock_image("worker");
    let text = run(Command::new("sgdisk").arg("-v").arg(out.join("disk.raw")));
    assert!(text.contains("No problems found"), "{text}");
    let listing = run(Command::new("sgdisk").arg("-p").arg(out.join("disk.raw")));
    for label in ["ESP", "KEEL-A", "KEEL-B", "STATE"] {
        assert!(listing.contains(label), "{label} missing:\n{listing}");
    }
    // 1 MiB alignment: every partition starts on a multiple of 2048 sectors.
    for p in &manifest(&out).disk.partitions {
        assert_eq!(p.offset % (1 << 20), 0, "{} not aligned", p.label);
    }
}

#[test]
fn esp_passes_fsck_vfat_and_holds_boot_files() {
    let (out, _) = stock_image("worker");
    let m = manifest(&out);
    let esp = m.partition("ESP").unwrap();
    let dir = test_dir("esp_fsck");
    let img = extract(
        &out.join("disk.raw"),
        esp.offset,
        esp.size,
        &dir.join("esp.img"),
    );
    run(Command::new("fsck.vfat").arg("-n").arg(&img));
    let listing = run(Command::new("mdir")
        .args(["-/", "-b", "-i"])
        .arg(format!("{}", img.display()))
        .arg("::/"));
    for path in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/keel-a+3.conf",
        "::/keel/a/vmlinuz",
        "::/keel/a/initramfs",
        "::/keel/a/manifest.json",
        "::/keel/a/manifest.json.minisig",
    ] {
        assert!(
            listing.to_uppercase().contains(&path.to_uppercase()),
            "{path} missing:\n{listing}"
        );
    }
    let conf = run(Command::new("mtype")
        .arg("-i")
        .arg(&img)
        .arg("::/loader/loader.conf"));
    assert!(
        conf.contains("default keel-*") && conf.contains("timeout 0"),
        "{conf}"
    );
    let entry = run(Command::new("mtype")
        .arg("-i")
        .arg(&img)
        .arg("::/loader/entries/keel-a+3.conf"));
    assert!(entry.contains("sort-key keel"), "{entry}");
    assert!(entry.contains(&format!("version {}", m.version)), "{entry}");
    assert!(
        entry.contains(&format!(
            "keel.slot=a keel.roothash={}",
            m.root.verity.root_hash
        )),
        "{entry}"
    );
}

#[test]
fn root_passes_unsquashfs_and_veritysetup() {
    let (out, _) = stock_image("worker");
    let m = manifest(&out);
    let slot = m.partition("KEEL-A").unwrap();
    let dir = test_dir("root_peers");
    let payload = extract(
        &out.join("disk.raw"),
        slot.offset,
        m.slot_payload.size,
        &dir.join("slot.img"),
    );
    let squashfs = extract(
        &out.join("disk.raw"),
        slot.offset,
        m.root.size,
        &dir.join("root.squashfs"),
    );
    let listing = run(Command::new("unsquashfs").arg("-l").arg(&squashfs));
    for path in [
        "squashfs-root/usr/lib/keel/keel-init",
        "squashfs-root/usr/bin/containerd",
        "squashfs-root/usr/sbin/runc",
        "squashfs-root/usr/sbin/mkfs.ext4",
        "squashfs-root/usr/lib/os-release",
    ] {
        assert!(
            listing.lines().any(|l| l == path),
            "{path} missing from the squashfs listing"
        );
    }
    let stats = run(Command::new("unsquashfs").arg("-s").arg(&squashfs));
    assert!(stats.contains("Compression zstd"), "{stats}");
    run(Command::new("veritysetup")
        .arg("verify")
        .arg(&payload)
        .arg(&payload)
        .arg(m.root.verity.root_hash.to_hex())
        .arg(format!("--hash-offset={}", m.root.verity.hash_offset)));
    // And a flipped byte in the data is caught by the peer too.
    flip(&payload, m.root.size / 2);
    let status = Command::new("veritysetup")
        .arg("verify")
        .arg(&payload)
        .arg(&payload)
        .arg(m.root.verity.root_hash.to_hex())
        .arg(format!("--hash-offset={}", m.root.verity.hash_offset))
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "veritysetup accepted a corrupted root"
    );
}

#[test]
fn initramfs_passes_cpio_and_has_what_stage_one_needs() {
    let (out, _) = stock_image("worker");
    let text = run(Command::new("sh")
        .arg("-c")
        .arg(format!("cpio -t < {}", out.join("initramfs").display())));
    for entry in [
        "init",
        "dev/console",
        "etc/keel/trusted.pub",
        "etc/keel/profile.toml",
        "etc/keel/modules.load",
    ] {
        assert!(
            text.lines().any(|l| l == entry),
            "{entry} missing from the initramfs:\n{text}"
        );
    }
    for module in [
        "squashfs.ko",
        "dm-verity.ko",
        "dm-mod.ko",
        "vfat.ko",
        "virtio_blk.ko",
    ] {
        assert!(
            text.lines().any(|l| l.ends_with(module)),
            "{module} missing from the initramfs"
        );
    }
}

#[test]
fn manifest_signature_verifies_with_minisign() {
    let (out, public) = stock_image("worker");
    run(Command::new("minisign")
        .arg("-Vm")
        .arg(out.join("manifest.json"))
        .arg("-p")
        .arg(&public));
}

#[test]
fn keel_verify_passes_then_names_the_altered_partition() {
    let (out, public) = stock_image("worker");
    let trusted = keel_builder::verify::load_trusted(std::slice::from_ref(&public)).unwrap();
    keel_builder::verify::verify_output_dir(&out, &trusted).unwrap();

    // A copy with one byte flipped inside KEEL-A.
    let dir = test_dir("verify_tamper");
    for name in [
        "manifest.json",
        "manifest.json.minisig",
        "vmlinuz",
        "initramfs",
    ] {
        std::fs::copy(out.join(name), dir.join(name)).unwrap();
    }
    keel_builder::run::sparse_copy(&out.join("disk.raw"), &dir.join("disk.raw"), 0).unwrap();
    let m = manifest(&out);
    let slot = m.partition("KEEL-A").unwrap();
    flip(&dir.join("disk.raw"), slot.offset + m.root.size / 3);
    let err = keel_builder::verify::verify_output_dir(&dir, &trusted)
        .unwrap_err()
        .to_string();
    assert!(err.contains("KEEL-A"), "{err}");
}

/// A sample of single-byte flips across everything the manifest covers: the root payload, the
/// kernel and initramfs inside the ESP, STATE and the partition table. Each must fail
/// `keel verify`.
#[test]
fn sampled_flips_across_the_image_are_all_rejected() {
    let (out, public) = stock_image("worker");
    let trusted = keel_builder::verify::load_trusted(std::slice::from_ref(&public)).unwrap();
    let m = manifest(&out);
    let disk = std::fs::read(out.join("disk.raw")).unwrap();
    let find = |needle: &[u8], from: u64, len: u64| -> u64 {
        let hay = &disk[from as usize..(from + len) as usize];
        from + hay
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("file data inside the ESP") as u64
    };
    let esp = m.partition("ESP").unwrap();
    let slot = m.partition("KEEL-A").unwrap();
    let state = m.partition("STATE").unwrap();
    let kernel = std::fs::read(out.join("vmlinuz")).unwrap();
    let initramfs = std::fs::read(out.join("initramfs")).unwrap();
    let kernel_at = find(&kernel[..4096], esp.offset, esp.size);
    let initramfs_at = find(&initramfs[..4096], esp.offset, esp.size);
    let mut offsets = vec![512 + 16, 1024 + 32]; // GPT header and entries
    for i in 0..6 {
        offsets.push(slot.offset + m.slot_payload.size * i / 6 + 7);
    }
    offsets.push(slot.offset + m.slot_payload.size - 1);
    offsets.extend([
        kernel_at + 100,
        kernel_at + kernel.len() as u64 / 2,
        initramfs_at + 4000,
        initramfs_at + initramfs.len() as u64 - 1,
    ]);
    offsets.extend([state.offset + 3, state.offset + (1 << 20)]);
    drop(disk);
    let dir = test_dir("sampled_flips");
    for name in ["manifest.json", "manifest.json.minisig"] {
        std::fs::copy(out.join(name), dir.join(name)).unwrap();
    }
    for at in offsets {
        keel_builder::run::sparse_copy(&out.join("disk.raw"), &dir.join("disk.raw"), 0).unwrap();
        flip(&dir.join("disk.raw"), at);
        assert!(
            keel_builder::verify::verify_output_dir(&dir, &trusted).is_err(),
            "a flipped byte at offset {at} was not noticed"
        );
    }
}

/// The build's update bundle carries exactly what the disk does: the slot payload is KEEL-A's
/// bytes, kernel, initramfs, manifest and signature are the output files; it verifies, and
/// verifies again after skopeo copied it.
#[test]
fn the_update_bundle_carries_the_slot_bytes_and_survives_skopeo() {
    use keel_contract::bundle::Part;
    let (out, public) = stock_image("worker");
    let trusted = keel_builder::verify::load_trusted(std::slice::from_ref(&public)).unwrap();
    let m = manifest(&out);
    let update = out.join("update");
    let report = keel_builder::verify::verify_bundle(&update, &trusted).unwrap();
    assert_eq!(report.manifest, m);
    let bundle = keel_builder::bundle::open_bundle(&update, None).unwrap();
    let part = |p: Part| {
        let mut bytes = Vec::new();
        bundle
            .open_part(p)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    };
    let slot = m.partition("KEEL-A").unwrap();
    let mut disk = std::fs::File::open(out.join("disk.raw")).unwrap();
    disk.seek(SeekFrom::Start(slot.offset)).unwrap();
    let mut on_disk = Vec::new();
    disk.take(m.slot_payload.size)
        .read_to_end(&mut on_disk)
        .unwrap();
    assert!(
        part(Part::Payload) == on_disk,
        "payload differs from KEEL-A"
    );
    assert!(part(Part::Kernel) == std::fs::read(out.join("vmlinuz")).unwrap());
    assert!(part(Part::Initramfs) == std::fs::read(out.join("initramfs")).unwrap());
    assert_eq!(
        bundle.manifest,
        std::fs::read(out.join("manifest.json")).unwrap()
    );
    assert_eq!(
        bundle.signature,
        std::fs::read(out.join("manifest.json.minisig")).unwrap()
    );

    let dir = test_dir("bundle_skopeo");
    let copy = dir.join("copy");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:{}", update.display(), m.version),
        &format!("oci:{}:{}", copy.display(), m.version),
    ]));
    keel_builder::verify::verify_bundle(&copy, &trusted).unwrap();
}

#[test]
fn inspect_reads_the_manifest_back_from_the_disk() {
    let (out, _) = stock_image("worker");
    let m = manifest(&out);
    let text = keel_builder::inspect::inspect(&out.join("disk.raw"))
        .unwrap()
        .render();
    for want in [
        "KEEL-A",
        "KEEL-B",
        "STATE",
        "keel-a+3.conf",
        &format!("slot a: keel-worker {}", m.version),
        &m.root.verity.root_hash.to_hex(),
        &m.kernel.release,
        "slot b: no manifest",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
}

fn flip(path: &Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
}
