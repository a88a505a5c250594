//! Stage 1, in the initramfs: find the booted slot and its disk's partitions, count this boot
//! (a blessed entry gets its counter back), verify the signed manifest with the baked keys,
//! put dm-verity over the slot with the manifest's root hash, mount the squashfs and switch
//! root into it. Nothing from the slot runs before its root hash is checked, and nothing is
//! read from it before the boot is counted. With `keel.root=URL` there is no disk: the root
//! is fetched into RAM and verified whole before dm-verity goes over it ([`crate::netroot`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_contract::layout::{self, PartitionRole, Slot};
use keel_contract::manifest::Manifest;
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys};

use crate::bootinfo::{self, BootAttempt, BootSource, Handoff, Partitions};
use crate::entries::{self, BootState, DiskStorage, Op};
use crate::{block, console, hwmod, kmod, netroot, sys};

const ESP_MOUNT: &str = "/run/keel/esp";
const SYSROOT: &str = "/sysroot";
const MODULES_LOAD: &str = layout::initramfs::MODULES_LOAD;
const INITRAMFS_KEYS: &str = layout::initramfs::TRUSTED_KEYS;
const INITRAMFS_PROFILE: &str = layout::initramfs::PROFILE;
/// Disks appear asynchronously after their drivers load.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);
/// Why a last-resort boot does not reboot on failure.
pub const LAST_RESORT: &str =
    "every boot entry is out of tries, so a reboot would only come back to this boot";

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

/// Reads and verifies the slot's signed manifest from the mounted ESP.
fn verified_manifest(slot: Slot) -> Result<(Manifest, Vec<u8>, String), String> {
    let read = |p: String| {
        std::fs::read(format!("{ESP_MOUNT}{p}")).map_err(|e| format!("{p} on the ESP: {e}"))
    };
    let (manifest_bytes, signature) = (read(slot.manifest_path())?, read(slot.signature_path())?);
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

/// Counts this boot: a blessed entry of the booted slot gets its counter back before anything
/// is read from the slot (see [`BootState::rearm`]), so a slot that turned bad since it was
/// blessed cannot trap the node. A failure here is reported, not fatal: a fatal error before
/// the counter is re-armed would loop on the blessed entry.
fn count_this_boot(slot: Slot) -> BootAttempt {
    let mut storage = DiskStorage {
        esp: ESP_MOUNT.into(),
        state: None,
    };
    let state = match BootState::load(&storage) {
        Ok(s) => s,
        Err(e) => {
            console::line(&format!("warning: reading the boot entries: {e}"));
            return BootAttempt::default();
        }
    };
    let entry = state.slot(slot).entry;
    let ops = state.rearm(slot);
    let started = sys::boottime();
    let mut rearmed = None;
    if let Some(Op::RenameEntry { from, to }) = ops.first() {
        match entries::apply(&ops, &mut storage) {
            Ok(()) => {
                console::line(&format!(
                    "boot counted: {} -> {} ({:.1} ms)",
                    from.file_name(),
                    to.file_name(),
                    (sys::boottime() - started) * 1000.0
                ));
                rearmed = Some(to.file_name());
            }
            Err(e) => console::line(&format!("warning: counting this boot: {e}")),
        }
    }
    BootAttempt {
        entry: entry.map(|e| e.file_name()),
        rearmed,
        last_resort: state.after_all(&ops).last_resort(slot),
    }
}

/// The partition systemd-boot was loaded from, through efivarfs (mounted only for this: stage
/// 2 mounts its own). `None` when the firmware or boot loader gives none; stage 1 then refuses
/// to choose between several Keel disks.
fn loader_partition() -> Option<uuid::Uuid> {
    let dir = layout::efi::EFIVARS_DIR;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
    if let Err(e) = sys::mount("efivarfs", dir, "efivarfs", flags, None) {
        console::line(&format!(
            "no EFI variables ({dir}: {e}): the boot disk is the only one with Keel's labels"
        ));
        return None;
    }
    let found = bootinfo::loader_partition_uuid(Path::new(dir));
    let _ = sys::umount(dir, 0);
    match found {
        Ok(Some(uuid)) => Some(uuid),
        Ok(None) => {
            console::line(&format!(
                "the boot loader did not set {}: the boot disk is the only one with Keel's labels",
                layout::efi::LOADER_DEVICE_PART_UUID
            ));
            None
        }
        Err(e) => {
            console::line(&format!("warning: {e}"));
            None
        }
    }
}

/// The booted slot's partition and the rest of its disk, by GPT label, on the disk the boot
/// loader booted from: never the first of several disks carrying the labels.
fn find_partitions(
    roots: &block::Roots,
    slot: Slot,
    loader: Option<uuid::Uuid>,
    poll: &mut dyn FnMut(),
) -> Result<Partitions, String> {
    let warn = |m: &str| console::line(&format!("warning: {m}"));
    let label = slot.partition().label();
    let choice =
        block::bootdisk::wait_for_boot_disk(roots, label, loader, DEVICE_TIMEOUT, &warn, poll)
            .map_err(|e| format!("slot {slot}: {e}"))?;
    console::line(&format!("boot disk {choice}"));
    let disk = choice.disk;
    let on_disk = |role: PartitionRole| {
        block::sysfs::find_partition_on(roots, &disk, role.label())
            .map_err(|e| format!("{}: {e}", role.label()))
    };
    // Only the slot and the ESP are needed to boot; the others are for stage 2, which says
    // what is missing.
    let optional = |role: PartitionRole| {
        on_disk(role).unwrap_or_else(|e| {
            warn(&e);
            None
        })
    };
    Ok(Partitions {
        slot: on_disk(slot.partition())?
            .ok_or_else(|| format!("no {label} on {}", disk.path.display()))?,
        esp: on_disk(PartitionRole::Esp)?
            .ok_or_else(|| format!("no ESP on {}", disk.path.display()))?,
        other_slot: optional(slot.other().partition()),
        state: optional(PartitionRole::State),
        data: optional(PartitionRole::Data),
    })
}

/// Mounts the ESP (writable: the boot is counted there), counts the boot, reads the verified
/// manifest, unmounts.
fn read_esp(esp: &Path, slot: Slot) -> Result<(BootAttempt, Manifest, Vec<u8>, String), String> {
    sys::mkdir_p(ESP_MOUNT, 0o700).map_err(|e| e.to_string())?;
    sys::mount(
        &esp.display().to_string(),
        ESP_MOUNT,
        "vfat",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    let boot = count_this_boot(slot);
    let manifest = verified_manifest(slot);
    let _ = sys::umount(ESP_MOUNT, 0);
    let (manifest, bytes, signer) = manifest?;
    Ok((boot, manifest, bytes, signer))
}

/// Stage 1's drivers: those the devices found ask for, among the initramfs's modules.
struct HardwareModules {
    hw: Option<hwmod::Hardware>,
    loaded: BTreeSet<PathBuf>,
    count: usize,
}

impl HardwareModules {
    /// The first scan, beside the list's thread: a file the list holds is left to that
    /// thread (waited for, never loaded twice).
    fn load_beside(list: &kmod::ListProgress) -> Self {
        let mut this = HardwareModules {
            hw: hwmod::Hardware::for_running_kernel()
                .map_err(|e| console::line(&format!("warning: no drivers loaded by device: {e}")))
                .ok(),
            loaded: BTreeSet::new(),
            count: 0,
        };
        this.poll_with(&mut |file: &Path| match list.wait_for(file) {
            Some(Ok(())) => Ok(()),
            Some(Err(kmod::SysErrorCode(errno))) => Err(sys::SysError {
                what: format!("load module {}", file.display()),
                source: std::io::Error::from_raw_os_error(errno),
            }),
            None => hwmod::finit(file),
        });
        this
    }

    /// Another scan (a bus driver made new devices appear; the boot disk is still missing).
    fn poll(&mut self) {
        self.poll_with(&mut hwmod::finit);
    }

    fn poll_with(&mut self, load: &mut hwmod::LoadFn<'_>) {
        if let Some(hw) = &mut self.hw {
            let log = |m: &str| console::line(m);
            self.count += hw.settle(Path::new(hwmod::SYS_DEVICES), &mut self.loaded, load, &log);
        }
    }

    fn summary(&self) -> String {
        self.hw
            .as_ref()
            .map_or_else(|| "none".to_owned(), hwmod::Hardware::summary)
    }
}

/// The initramfs's module list (dm-verity, squashfs, FAT...) on a thread of its own, and the
/// drivers for the devices found on this one: with two CPUs the kernel links two modules at
/// once, and the disk's driver probes while the list loads (0.33 -> 0.20 s under TCG with two
/// vCPUs, BENCHMARKS.md). A driver that needs a listed module waits for it
/// ([`kmod::ListProgress`]), as loading them one after the other would have ordered them.
fn load_modules(files: &[PathBuf]) -> (kmod::Loaded, HardwareModules) {
    let progress = kmod::ListProgress::new(files);
    let (listed, mut drivers) = std::thread::scope(|s| {
        let list = s.spawn(|| kmod::load_files(files, &progress, &|m| console::line(m)));
        let drivers = HardwareModules::load_beside(&progress);
        // A panic on any of the init's threads is fatal before it unwinds
        // (`fatal::on_panic`), so the join's error is never seen: the default only spares
        // an `unwrap`.
        (list.join().unwrap_or_default(), drivers)
    });
    // Listed modules a device also asks for are the list's, as when they loaded first.
    drivers.loaded.extend(listed.files.iter().cloned());
    (listed, drivers)
}

/// The verified root mounted at SYSROOT, and what stage 2 is told about it.
struct Mounted {
    slot: Slot,
    source: BootSource,
    boot: BootAttempt,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signer: String,
}

fn modules_line(listed: &kmod::Loaded, drivers: &HardwareModules) -> String {
    let skipped = if listed.not_for_this_machine.is_empty() {
        String::new()
    } else {
        format!(
            " (not for this machine: {})",
            listed.not_for_this_machine.join(", ")
        )
    };
    format!(
        "{} modules loaded: {} always{skipped}, {} for the devices found: {}",
        listed.loaded + drivers.count,
        listed.loaded,
        drivers.count,
        drivers.summary(),
    )
}

/// The slot named by `keel.slot=` on the boot disk: the boot counted, the manifest from the
/// ESP verified, dm-verity over the slot, the squashfs mounted.
fn boot_from_disk(
    cmdline: &str,
    roots: &block::Roots,
    listed: &kmod::Loaded,
    drivers: &mut HardwareModules,
) -> Result<Mounted, String> {
    let timeline = &crate::timeline::BOOT;
    let slot = bootinfo::booted_slot(cmdline).ok_or("no keel.slot= on the kernel command line")?;
    console::line(&format!("booted slot {slot}"));
    let partitions = timeline.step("disk", || {
        find_partitions(roots, slot, loader_partition(), &mut || drivers.poll())
    })?;
    console::line(&format!(
        "{}; slot {slot} is {}, ESP {}",
        modules_line(listed, drivers),
        partitions.slot.path.display(),
        partitions.esp.path.display()
    ));
    let (boot, manifest, manifest_bytes, signer) =
        timeline.step("esp", || read_esp(&partitions.esp.path, slot))?;
    if boot.last_resort {
        crate::fatal::set_no_reboot(LAST_RESORT);
        console::line(&format!("last resort: {LAST_RESORT}"));
    }
    let root_hash = manifest.root.verity.root_hash.to_hex();
    if let Some(from_entry) = layout::cmdline::get(cmdline, layout::cmdline::ROOTHASH)
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
    timeline.step("verity", || {
        mount_verified_root(roots, &partitions.slot.path, &manifest, boot.last_resort)
    })?;
    Ok(Mounted {
        slot,
        source: BootSource::Disk {
            disk: partitions.slot.disk.clone(),
            partitions: Box::new(partitions),
        },
        boot,
        manifest,
        manifest_bytes,
        signer,
    })
}

/// `keel.root=URL`: the root fetched into RAM and verified whole before dm-verity goes over
/// it (see [`netroot`]). There is no disk, so no boot to count: a failure reboots, and iPXE
/// fetches everything again.
fn boot_from_network(
    url: &str,
    cmdline: &str,
    roots: &block::Roots,
    listed: &kmod::Loaded,
    drivers: &mut HardwareModules,
) -> Result<Mounted, String> {
    let timeline = &crate::timeline::BOOT;
    console::line(&format!("network boot: {url} (no disk)"));
    let fetched = timeline
        .step("fetch", || {
            netroot::fetch(
                url,
                layout::cmdline::get(cmdline, layout::cmdline::ROOTHASH),
                INITRAMFS_KEYS,
                &mut || drivers.poll(),
                &|m| console::line(m),
            )
        })
        .map_err(|e| e.to_string())?;
    console::line(&modules_line(listed, drivers));
    let manifest = fetched.manifest;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    console::line(&format!(
        "manifest {} {} verified (key ID {}); root hash {}; root.img {:.1} MiB fetched and its SHA-256 verified in {:.2}s ({:.1} MiB/s), holding {:.1} MiB of RAM on {}",
        manifest.name,
        manifest.version,
        fetched.signer,
        manifest.root.verity.root_hash.to_hex(),
        mib(manifest.slot_payload.size),
        fetched.seconds,
        mib(manifest.slot_payload.size) / fetched.seconds.max(0.001),
        mib(fetched.ram_bytes),
        fetched.device.display()
    ));
    timeline.step("verity", || {
        mount_verified_root(roots, &fetched.device, &manifest, false)
    })?;
    Ok(Mounted {
        // A network root is a slot payload too; it is called slot A (there is no B).
        slot: Slot::A,
        source: BootSource::Network {
            url: url.to_owned(),
            fetch_seconds: fetched.seconds,
            ram_bytes: fetched.ram_bytes,
            device: fetched.device.clone(),
        },
        boot: BootAttempt::default(),
        manifest,
        manifest_bytes: fetched.manifest_bytes,
        signer: fetched.signer,
    })
}

fn run() -> Result<Handoff, String> {
    let started = sys::boottime();
    let timeline = &crate::timeline::BOOT;
    timeline.step("mounts", mount_early_filesystems)?;
    console::line(&format!("init {} stage 1", crate::VERSION));
    let cmdline = bootinfo::cmdline();
    let (listed, mut drivers) = timeline
        .step("modules", || {
            let files = kmod::read_list(Path::new(MODULES_LOAD))?;
            Ok::<_, sys::SysError>(load_modules(&files))
        })
        .map_err(|e| e.to_string())?;
    let roots = block::Roots::default();
    let mounted = match netroot::root_url(&cmdline) {
        Some(url) => boot_from_network(url, &cmdline, &roots, &listed, &mut drivers)?,
        None => boot_from_disk(&cmdline, &roots, &listed, &mut drivers)?,
    };
    let Mounted {
        slot,
        source,
        boot,
        manifest,
        manifest_bytes,
        signer,
    } = mounted;
    let handing_over = sys::boottime();

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
        slot,
        version: manifest
            .version
            .parse()
            .map_err(|e| format!("manifest version {:?}: {e}", manifest.version))?,
        name: manifest.name.clone(),
        arch: manifest.arch.clone(),
        root_hash: manifest.root.verity.root_hash.to_hex(),
        signer,
        source,
        boot,
        stage1_start: started,
        stage1_end: sys::boottime(),
        timeline: Vec::new(),
    };
    timeline.mark("handoff", handing_over, handoff.stage1_end);
    let handoff = Handoff {
        timeline: timeline.steps(),
        ..handoff
    };
    handoff
        .write()
        .map_err(|e| format!("{}: {e}", bootinfo::HANDOFF))?;
    Ok(handoff)
}

/// dm-verity over the slot with the manifest's root hash, and the squashfs on it at SYSROOT.
/// A corrupted block restarts the machine rather than handing back an error some program
/// might ignore: the boot counter then moves on to the other slot. On a last-resort boot
/// there is no other slot to move on to, and a restart would loop: the read fails with EIO
/// instead (still never returning unverified data), and the init stays up degraded.
fn mount_verified_root(
    roots: &block::Roots,
    slot_device: &Path,
    manifest: &Manifest,
    last_resort: bool,
) -> Result<(), String> {
    let on_corruption = if last_resort {
        block::OnCorruption::Eio
    } else {
        block::OnCorruption::Restart
    };
    let verity = block::create_verity_root(
        roots,
        block::ROOT_NAME,
        &manifest.root.verity.uuid,
        slot_device,
        &manifest.root.verity,
        on_corruption,
    )
    .map_err(|e| format!("dm-verity on {}: {e}", slot_device.display()))?;
    sys::mount(
        &verity.path.display().to_string(),
        SYSROOT,
        "squashfs",
        libc::MS_RDONLY | libc::MS_NODEV,
        None,
    )
    .map_err(|e| e.to_string())
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
    if handoff.boot.last_resort {
        // dm-verity returns EIO here instead of restarting. A corrupted page of the stage-2
        // init met after exec would kill PID 1 (a kernel panic, then a reboot: the loop this
        // boot must not enter); read it all now, while a failure is still ours to handle.
        if let Err(e) = std::fs::read(crate::INIT_IN_ROOT) {
            crate::fatal::fatal(&format!(
                "{} in the verified root cannot be read: {e}",
                crate::INIT_IN_ROOT
            ));
        }
    }
    let err = sys::exec(
        crate::INIT_IN_ROOT,
        &["keel-init", crate::STAGE2_ARG],
        &[("PATH", crate::PATH)],
    );
    crate::fatal::fatal(&format!("starting stage 2: {err}"))
}
