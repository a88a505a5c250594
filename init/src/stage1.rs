//! Stage 1, in the initramfs: find the booted slot, verify the signed manifest with the baked
//! keys, put dm-verity over the slot with the manifest's root hash, mount the squashfs and
//! switch root into it. Nothing from the slot runs before its root hash is checked.

use std::path::Path;
use std::time::Duration;

use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::manifest::Manifest;
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys};

use crate::bootinfo::{self, Handoff};
use crate::{block, console, kmod, sys};

const ESP_MOUNT: &str = "/run/keel/esp";
const SYSROOT: &str = "/sysroot";
const MODULES_LOAD: &str = layout::initramfs::MODULES_LOAD;
const INITRAMFS_KEYS: &str = layout::initramfs::TRUSTED_KEYS;
const INITRAMFS_PROFILE: &str = layout::initramfs::PROFILE;
/// Disks appear asynchronously after their drivers load.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

fn mount_early_filesystems() -> Result<(), String> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    sys::mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(|e| e.to_string())?;
    sys::mount("proc", "/proc", "proc", nosuid, None).map_err(|e| e.to_string())?;
    sys::mount("sysfs", "/sys", "sysfs", nosuid, None).map_err(|e| e.to_string())?;
    sys::mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| e.to_string())?;
    sys::mkdir_p(bootinfo::RUN_DIR, 0o755).map_err(|e| e.to_string())
}

/// Reads and verifies the slot's signed manifest from the ESP.
fn verified_manifest(esp_device: &str, slot: Slot) -> Result<(Manifest, Vec<u8>, String), String> {
    sys::mkdir_p(ESP_MOUNT, 0o700).map_err(|e| e.to_string())?;
    sys::mount(
        esp_device,
        ESP_MOUNT,
        "vfat",
        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    let read = |p: String| {
        std::fs::read(format!("{ESP_MOUNT}{p}")).map_err(|e| format!("{p} on the ESP: {e}"))
    };
    let manifest = read(slot.manifest_path());
    let signature = read(slot.signature_path());
    let _ = sys::umount(ESP_MOUNT, 0);
    let (manifest_bytes, signature) = (manifest?, signature?);
    let keys_text =
        std::fs::read_to_string(INITRAMFS_KEYS).map_err(|e| format!("{INITRAMFS_KEYS}: {e}"))?;
    let keys = TrustedKeys::parse(&keys_text).map_err(|e| format!("{INITRAMFS_KEYS}: {e}"))?;
    let sig = SignatureFile::parse(&String::from_utf8_lossy(&signature))
        .map_err(|e| format!("{}: {e}", slot.signature_path()))?;
    let verified = minisign::verify_bytes(&keys, &sig, &manifest_bytes).map_err(|e| {
        format!(
            "{}: signature does not verify with the trusted keys: {e}",
            slot.manifest_path()
        )
    })?;
    let manifest = Manifest::from_json(&manifest_bytes)
        .map_err(|e| format!("{}: {e}", slot.manifest_path()))?;
    Ok((manifest, manifest_bytes, verified.key_id.to_string()))
}

fn run() -> Result<Handoff, String> {
    let started = sys::boottime();
    mount_early_filesystems()?;
    console::line(&format!("init {} stage 1", crate::VERSION));
    let cmdline = bootinfo::cmdline();
    let slot = bootinfo::booted_slot(&cmdline).ok_or("no keel.slot= on the kernel command line")?;
    console::line(&format!("booted slot {slot}"));
    let loaded = kmod::load_list(Path::new(MODULES_LOAD), &|m| console::line(m))
        .map_err(|e| e.to_string())?;

    let roots = block::Roots::default();
    let slot_part = block::wait_for_partition(&roots, slot.partition().label(), DEVICE_TIMEOUT)
        .map_err(|e| format!("slot {slot}: {e}"))?;
    // The ESP of the disk we booted from, even if another disk carries Keel too.
    let esp = block::sysfs::find_partition_on(&roots, &slot_part.disk, PartitionRole::Esp.label())
        .map_err(|e| format!("ESP: {e}"))?
        .ok_or_else(|| format!("no ESP on {}", slot_part.disk.path.display()))?;
    let skipped = if loaded.not_for_this_machine.is_empty() {
        String::new()
    } else {
        format!(
            " (not for this machine: {})",
            loaded.not_for_this_machine.join(", ")
        )
    };
    console::line(&format!(
        "{} modules loaded{skipped}; slot {slot} is {}, ESP {}",
        loaded.loaded,
        slot_part.path.display(),
        esp.path.display()
    ));

    let (manifest, manifest_bytes, signer) =
        verified_manifest(&esp.path.display().to_string(), slot)?;
    let root_hash = manifest.root.verity.root_hash.to_hex();
    if let Some(from_entry) = layout::cmdline::get(&cmdline, layout::cmdline::ROOTHASH)
        && from_entry != root_hash
    {
        return Err(format!(
            "the boot entry's keel.roothash={from_entry} differs from the signed manifest's {root_hash}"
        ));
    }
    console::line(&format!(
        "manifest {} {} verified (key ID {signer}); root hash {root_hash}",
        manifest.name, manifest.version
    ));

    // A corrupted block restarts the machine rather than handing back an error some program
    // might ignore: the boot counter then moves on to the other slot.
    let verity = block::create_verity_root(
        &roots,
        block::ROOT_NAME,
        &manifest.root.verity.uuid,
        &slot_part.path,
        &manifest.root.verity,
        block::OnCorruption::Restart,
    )
    .map_err(|e| format!("dm-verity on {}: {e}", slot_part.path.display()))?;
    sys::mount(
        &verity.path.display().to_string(),
        SYSROOT,
        "squashfs",
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )
    .map_err(|e| e.to_string())?;

    // What stage 2 needs from the initramfs, which is about to go away.
    let copy = |from: &str, to: &str| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("{from}: {e}"))
    };
    std::fs::write(bootinfo::MANIFEST, &manifest_bytes)
        .map_err(|e| format!("{}: {e}", bootinfo::MANIFEST))?;
    copy(INITRAMFS_KEYS, bootinfo::TRUSTED_KEYS)?;
    if Path::new(INITRAMFS_PROFILE).exists() {
        copy(INITRAMFS_PROFILE, bootinfo::BAKED_PROFILE)?;
    }
    let handoff = Handoff {
        slot: slot.to_string(),
        version: manifest.version.clone(),
        name: manifest.name.clone(),
        root_hash,
        signer,
        disk: slot_part.disk.path.display().to_string(),
        slot_device: slot_part.path.display().to_string(),
        esp_device: esp.path.display().to_string(),
        stage1_start: started,
        stage1_end: sys::boottime(),
    };
    handoff
        .write()
        .map_err(|e| format!("{}: {e}", bootinfo::HANDOFF))?;
    Ok(handoff)
}

/// Deletes the initramfs's files (they would stay in RAM otherwise), without crossing into
/// other filesystems.
fn free_initramfs() {
    use std::os::unix::fs::MetadataExt;
    fn remove(dir: &Path, dev: u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                remove(&path, dev);
                let _ = std::fs::remove_dir(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    if let Ok(meta) = std::fs::metadata("/") {
        remove(Path::new("/"), meta.dev());
    }
}

fn switch_root() -> Result<(), String> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        sys::move_mount(m, format!("{SYSROOT}{m}")).map_err(|e| e.to_string())?;
    }
    free_initramfs();
    sys::chdir(SYSROOT).map_err(|e| e.to_string())?;
    sys::move_mount(".", "/").map_err(|e| e.to_string())?;
    sys::chroot(".").map_err(|e| e.to_string())?;
    sys::chdir("/").map_err(|e| e.to_string())
}

/// Runs stage 1 and executes stage 2 from the verified root. Never returns.
pub fn main() -> ! {
    let handoff = match run() {
        Ok(h) => h,
        Err(e) => crate::fatal::fatal(&format!("stage 1: {e}")),
    };
    if let Err(e) = switch_root() {
        crate::fatal::fatal(&format!("switching root: {e}"));
    }
    console::line(&format!(
        "switching to {} {} (stage 1 took {:.2}s)",
        handoff.name,
        handoff.version,
        handoff.stage1_end - handoff.stage1_start
    ));
    let err = sys::exec(
        crate::INIT_IN_ROOT,
        &["keel-init", crate::STAGE2_ARG],
        &[("PATH", crate::PATH)],
    );
    crate::fatal::fatal(&format!("starting stage 2: {err}"))
}
