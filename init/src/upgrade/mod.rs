//! A/B upgrades on the node.
//!
//! The update stream is a tar of [`UPLOAD_ENTRIES`] in that order. The order, and the boot
//! entries' state machine ([`crate::entries`]), are what make an upgrade safe:
//! 1. the running slot must be blessed (a node on trial must not overwrite its last good
//!    slot), unless forced;
//! 2. the manifest's signature is checked against the node's trusted keys, and the version,
//!    name and architecture against the running system, before anything is written;
//! 3. the kernel and initramfs are staged next to the inactive slot's files on the ESP
//!    (`vmlinuz.new`), each bounded by its size in the signed manifest, hashed while it is
//!    copied, synced and read back: the inactive slot is still untouched and bootable;
//! 4. then, before the first payload byte, the slot is invalidated: the journal on STATE says
//!    "slot X: being written", its entry and manifest are removed. Nothing ever puts them back:
//!    an upgrade that fails from here on leaves the slot invalid (RAUC's and update_engine's
//!    rule), and the node keeps running, and booting, its current slot;
//! 5. the payload is streamed into the slot while it is hashed, checked against the signed
//!    digest, then read back from the device and checked again;
//! 6. the staged files go into place, then the signature and manifest, the journal is
//!    cleared, and only then is the new entry `keel-<slot>+3.conf` written.
//!
//! A power cut anywhere before step 6's entry leaves the old slot the only bootable entry;
//! after it, a complete new slot. The new version's entry has the higher version, so
//! systemd-boot tries it first; if it fails its health gate three times, the old slot boots
//! again and reports the rollback ([`detect_rollback`]).

mod rollback;
pub(crate) mod stream;
#[cfg(test)]
pub(crate) mod tests;

use std::io::Read;
use std::path::PathBuf;

use keel_contract::bundle::UPLOAD_ENTRIES;
use keel_contract::layout::{BootEntry, EntryName, Slot};
use keel_contract::manifest::Manifest;
use keel_minisign::TrustedKeys;

use crate::entries::{self, BootState, DiskStorage, SlotFile};
pub use crate::entries::{JOURNAL, ROLLBACK_REQUESTED};
pub use rollback::{QUARANTINE, RolledBack, detect_rollback, quarantined, rollback};
use stream::{BUFFER, Upload, copy_hashed, drop_cache, read_back};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The bundle is not acceptable (bad signature, wrong image, malformed stream).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Acceptable but refused by policy (downgrade, same version, quarantined) unless forced.
    #[error("refused: {0}")]
    Refused(String),
    /// Not now: the running slot is on trial (not blessed yet), unless forced.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let what = what.into();
    move |source| UpgradeError::Io { what, source }
}

fn applied(e: entries::ApplyError) -> UpgradeError {
    UpgradeError::Io {
        what: format!("the boot entries: {}", e.op),
        source: e.source,
    }
}

/// What the running node is, and where the other slot lives.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub arch: String,
    pub running: semver::Version,
    pub active: Slot,
    /// The inactive slot's partition (a block device, or a file in tests).
    pub slot_device: PathBuf,
    pub slot_size: u64,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Where STATE is mounted (journal, quarantine list).
    pub state: PathBuf,
    pub trusted_keys: TrustedKeys,
}

impl Target {
    /// The running node's: the other slot's partition, as stage 1 found it.
    pub fn of_running(
        handoff: &crate::bootinfo::Handoff,
        esp: &std::path::Path,
        state: &std::path::Path,
    ) -> Result<Target, String> {
        let (_, partitions) = handoff
            .disk()
            .ok_or("booted from the network: no disk to write a slot to")?;
        let other = partitions
            .other_slot
            .as_ref()
            .ok_or_else(|| format!("no {} partition", handoff.slot.other().partition().label()))?;
        let file = std::fs::File::open(&other.path)
            .map_err(|e| format!("{}: {e}", other.path.display()))?;
        let size = crate::block::device_size(&file, &other.path).map_err(|e| e.to_string())?;
        Ok(Target {
            name: handoff.name.clone(),
            arch: handoff.arch.clone(),
            running: handoff.version.clone(),
            active: handoff.slot,
            slot_device: other.path.clone(),
            slot_size: size,
            esp: esp.to_path_buf(),
            state: state.to_path_buf(),
            trusted_keys: crate::bootinfo::trusted_keys()?,
        })
    }

    fn storage(&self) -> DiskStorage {
        DiskStorage {
            esp: self.esp.clone(),
            state: Some(self.state.clone()),
        }
    }

    fn boot_state(&self) -> Result<BootState, UpgradeError> {
        BootState::load(&self.storage()).map_err(io("reading the boot entries"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub from: String,
    pub to: String,
    pub slot: Slot,
    pub bytes: u64,
}

/// Checks the signed manifest against the running system; pure policy.
pub fn check_manifest(
    manifest: &Manifest,
    target: &Target,
    quarantine: &[String],
    force: bool,
) -> Result<semver::Version, UpgradeError> {
    if manifest.name != target.name {
        return Err(UpgradeError::Rejected(format!(
            "the bundle is for image {:?}, this node runs {:?}",
            manifest.name, target.name
        )));
    }
    if manifest.arch != target.arch {
        return Err(UpgradeError::Rejected(format!(
            "the bundle is for {}, this node is {}",
            manifest.arch, target.arch
        )));
    }
    let version: semver::Version = manifest.version.parse().map_err(|e| {
        UpgradeError::Rejected(format!("manifest version {:?}: {e}", manifest.version))
    })?;
    if !force {
        if version <= target.running {
            return Err(UpgradeError::Refused(format!(
                "{version} is not newer than the running {} (use --force to downgrade or reinstall)",
                target.running
            )));
        }
        if quarantine.iter().any(|q| q == &manifest.version) {
            return Err(UpgradeError::Refused(format!(
                "{version} failed on this node before and is quarantined (use --force to try it again)"
            )));
        }
    }
    Ok(version)
}

/// An upgrade overwrites the other slot, the only way back if the running one turns out bad:
/// the running slot must have passed its health gate (its entry is blessed) first.
pub fn require_blessed(boot: &BootState, active: Slot, force: bool) -> Result<(), UpgradeError> {
    match boot.slot(active).entry {
        Some(e) if e.is_blessed() => Ok(()),
        _ if force => Ok(()),
        Some(e) => Err(UpgradeError::Unavailable(format!(
            "slot {active} is on trial ({}): it has not passed its health gate at this boot, and \
             an upgrade would overwrite the last known-good slot; try again once the node is \
             ready, or use --force",
            e.file_name()
        ))),
        None => Err(UpgradeError::Unavailable(format!(
            "slot {active} has no boot entry: it cannot be known good (use --force)"
        ))),
    }
}

/// Installs the update stream into the inactive slot. See the module comment for the order.
/// What [`install`] checks before it reads a byte of the stream.
pub fn admissible(target: &Target, force: bool) -> Result<(), UpgradeError> {
    require_blessed(&target.boot_state()?, target.active, force)
}

pub fn install(
    stream: &mut dyn Read,
    target: &Target,
    force: bool,
    progress: &dyn Fn(&str),
) -> Result<Installed, UpgradeError> {
    admissible(target, force)?;
    let mut archive = tar::Archive::new(stream);
    let mut upload = Upload::new(&mut archive)?;
    let verified = upload.verified_manifest(&target.trusted_keys)?;
    let version = check_manifest(
        &verified.manifest,
        target,
        &quarantined(&target.state),
        force,
    )?;
    let slot = target.active.other();
    let from = target.running.to_string();
    let to = version.to_string();
    progress(&format!(
        "upgrade: {from} -> {to} into slot {slot} (manifest signed by key ID {})",
        verified.key_id
    ));
    let mut buf = vec![0u8; BUFFER];
    let mut phases = Phases::default();
    let result = write_slot(
        &mut upload,
        target,
        &verified,
        &mut buf,
        &mut phases,
        progress,
    );
    if result.is_err() {
        // Staged files are of no use any more; whatever else happened stays as it is (the
        // slot is invalid from its first byte on, and the journal says so).
        let mut storage = target.storage();
        for file in [SlotFile::Kernel, SlotFile::Initramfs] {
            let _ = entries::Storage::remove_esp(&mut storage, &file.staged_path(slot));
        }
    }
    let bytes = result?;
    progress(&format!(
        "upgrade: boot entry {} written; {to} boots next; {phases}; {}",
        EntryName::fresh(slot).file_name(),
        crate::sys::rss_summary()
    ));
    Ok(Installed {
        from,
        to,
        slot,
        bytes,
    })
}

/// Where an install's time went (seconds), for its last progress line.
#[derive(Debug, Default)]
struct Phases {
    staged: f64,
    payload: f64,
    read_back: f64,
    esp: f64,
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel and initramfs staged in {:.2}s, payload {:.2}s, read back {:.2}s, ESP and entry {:.2}s",
            self.staged, self.payload, self.read_back, self.esp
        )
    }
}

/// Seconds since `since`, which moves to now.
fn lap(since: &mut std::time::Instant) -> f64 {
    let now = std::time::Instant::now();
    let secs = now.duration_since(*since).as_secs_f64();
    *since = now;
    secs
}

/// Steps 3 to 6 of the module comment; returns the payload's size.
fn write_slot<R: Read>(
    upload: &mut Upload<'_, R>,
    target: &Target,
    verified: &stream::Verified,
    buf: &mut [u8],
    phases: &mut Phases,
    progress: &dyn Fn(&str),
) -> Result<u64, UpgradeError> {
    let mut clock = std::time::Instant::now();
    let manifest = &verified.manifest;
    let slot = target.active.other();
    let expected = &manifest.slot_payload;
    if expected.size > target.slot_size {
        return Err(UpgradeError::Rejected(format!(
            "the payload ({} bytes) does not fit the slot ({} bytes)",
            expected.size, target.slot_size
        )));
    }
    let esp_dir = target.esp.join(slot.esp_dir().trim_start_matches('/'));
    std::fs::create_dir_all(&esp_dir).map_err(io(format!("creating {}", esp_dir.display())))?;
    let kernel = (manifest.kernel.size, &manifest.kernel.sha256);
    let initramfs = (manifest.initramfs.size, &manifest.initramfs.sha256);
    for (i, file, digest) in [
        (2, SlotFile::Kernel, kernel),
        (3, SlotFile::Initramfs, initramfs),
    ] {
        let path = target.esp.join(file.staged_path(slot));
        upload.copy_to_file(UPLOAD_ENTRIES[i], digest, &path, buf)?;
    }
    let mut payload = upload.payload(expected.size)?;
    phases.staged = lap(&mut clock);

    // The first byte of the slot is next: from here on the slot is invalid until complete.
    let mut storage = target.storage();
    let boot = BootState::load(&storage).map_err(io("reading the boot entries"))?;
    let ops = boot
        .invalidate(slot, target.active, &manifest.version)
        .map_err(|e| UpgradeError::Refused(e.0))?;
    entries::apply_named(&ops, &mut storage, Some("upgrade")).map_err(applied)?;
    progress(&format!(
        "upgrade: slot {slot} invalidated (its entry and manifest removed; the journal says it is being written)"
    ));
    let bytes = write_payload(&mut payload, target, manifest, buf, progress)?;
    phases.payload = lap(&mut clock);
    read_back(&target.slot_device, expected.size, &expected.sha256, buf)?;
    crate::testhooks::pause_at("upgrade read back done");
    phases.read_back = lap(&mut clock);

    let boot = BootState::load(&storage).map_err(io("reading the boot entries"))?;
    let entry = BootEntry::new(
        slot,
        &manifest.version,
        &manifest.root.verity.root_hash.to_hex(),
        &manifest.cmdline,
    );
    let ops = boot
        .complete(slot, &verified.bytes, &verified.signature, &entry)
        .map_err(|e| UpgradeError::Refused(e.0))?;
    entries::apply_named(&ops, &mut storage, Some("upgrade")).map_err(applied)?;
    phases.esp = lap(&mut clock);
    Ok(bytes)
}

/// Copies the payload into the slot while hashing, and syncs it.
fn write_payload(
    entry: &mut impl Read,
    target: &Target,
    manifest: &Manifest,
    buf: &mut [u8],
    progress: &dyn Fn(&str),
) -> Result<u64, UpgradeError> {
    let expected = &manifest.slot_payload;
    let dev = &target.slot_device;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(io(format!("opening {}", dev.display())))?;
    let slot = target.active.other();
    let reported = std::cell::Cell::new(0);
    let report = |written: u64| {
        let percent = written * 100 / expected.size.max(1);
        if percent >= reported.get() + 10 {
            reported.set(percent - percent % 10);
            progress(&format!(
                "upgrade: writing slot {slot}: {}%",
                reported.get()
            ));
            crate::testhooks::pause_at(&format!("upgrade payload {}%", reported.get()));
        }
    };
    let digest = copy_hashed(entry, &mut out, expected.size, buf, &report)
        .map_err(|e| e.context(UPLOAD_ENTRIES[4], dev))?;
    out.sync_all()
        .map_err(io(format!("syncing {}", dev.display())))?;
    if digest != expected.sha256 {
        return Err(UpgradeError::Rejected(format!(
            "the payload does not match the signed manifest (sha256 {digest}; expected {})",
            expected.sha256
        )));
    }
    drop_cache(&out);
    Ok(expected.size)
}
