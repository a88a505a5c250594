//! A/B upgrades on the node.
//!
//! The update stream is a tar of `manifest.json`, `manifest.json.minisig`, `vmlinuz`,
//! `initramfs` and `payload`, in that order. The order is what makes an upgrade safe:
//! 1. the manifest's signature is checked against the node's trusted keys, and the version,
//!    name and architecture against the running system, before anything is written;
//! 2. the inactive slot's boot entry is parked (renamed to a name systemd-boot ignores), so
//!    nothing points at the slot while it is rewritten; if the bundle turns out bad, the
//!    entry is put back as it was;
//! 3. the payload is streamed into the slot while it is hashed, checked against the signed
//!    digest, then read back from the device and checked again;
//! 4. kernel, initramfs and manifest go to the ESP;
//! 5. only then is the new entry `keel-<slot>+3.conf` created (written aside, renamed into
//!    place, directory synced).
//!
//! A power cut anywhere before step 5 leaves the old slot the only bootable entry; after it,
//! a complete new slot. The new version's entry has the higher version, so systemd-boot
//! tries it first; if it fails its health gate three times, the old slot boots again and
//! reports the rollback ([`detect_rollback`]).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use keel_contract::layout::{self, BootEntry, EntryName, Slot};
use keel_contract::manifest::{Manifest, Sha256Digest};
use keel_minisign::{self as minisign, SignatureFile, TrustedKeys};
use sha2::{Digest, Sha256};

/// Entries of the update stream, in order (the contract's).
pub use keel_contract::bundle::UPLOAD_ENTRIES as STREAM_ENTRIES;
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIGNATURE: u64 = 16 << 10;
const MAX_BOOT_FILE: u64 = 256 << 20;
pub const JOURNAL: &str = "upgrade.json";
pub const QUARANTINE: &str = "quarantine";
/// Written by a requested rollback: the version rolled back from.
pub const ROLLBACK_REQUESTED: &str = "rollback-requested";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The bundle is not acceptable (bad signature, wrong image, malformed stream).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Acceptable but refused by policy (downgrade, same version, quarantined) unless forced.
    #[error("refused: {0}")]
    Refused(String),
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub from: String,
    pub to: String,
    pub slot: Slot,
    pub bytes: u64,
}

fn read_limited(entry: &mut impl Read, limit: u64, what: &str) -> Result<Vec<u8>, UpgradeError> {
    let mut out = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(io(format!("reading {what}")))?;
    if out.len() as u64 > limit {
        return Err(UpgradeError::Rejected(format!(
            "{what} is larger than {limit} bytes"
        )));
    }
    Ok(out)
}

fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// Versions the node refuses to install again without force (they failed here before).
pub fn quarantined(state: &Path) -> Vec<String> {
    std::fs::read_to_string(state.join(QUARANTINE))
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
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

fn journal(
    state: &Path,
    from: &str,
    to: &str,
    slot: Slot,
    phase: &str,
) -> Result<(), UpgradeError> {
    let text = format!(
        "{{\"from\":\"{from}\",\"to\":\"{to}\",\"slot\":\"{slot}\",\"phase\":\"{phase}\"}}\n"
    );
    crate::config::save(state, JOURNAL, &text).map_err(io("writing the upgrade journal"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), UpgradeError> {
    let mut f = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))?;
    f.sync_all()
        .map_err(io(format!("syncing {}", path.display())))
}

fn sync_dir(path: &Path) -> Result<(), UpgradeError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", path.display())))
}

const PARKED: &str = ".parked";

/// Renames every entry of `slot` to `<name>.parked`, which systemd-boot does not load.
fn park_entries(entries: &Path, slot: Slot) -> Result<Vec<String>, UpgradeError> {
    let mut parked = Vec::new();
    for entry in std::fs::read_dir(entries)
        .map_err(io(format!("listing {}", entries.display())))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if EntryName::parse(&name).is_some_and(|e| e.slot == slot) {
            crate::sys::rename_durably(&entry.path(), &entries.join(format!("{name}{PARKED}")))
                .map_err(io(format!("parking {name}")))?;
            parked.push(name);
        }
    }
    sync_dir(entries)?;
    Ok(parked)
}

/// Puts parked entries back (the bundle was bad: the slot is as it was, apart from the bytes
/// already written into it, which its verity root hash will refuse).
fn unpark_entries(entries: &Path, parked: &[String]) {
    for name in parked {
        let _ = crate::sys::rename_durably(
            &entries.join(format!("{name}{PARKED}")),
            &entries.join(name),
        );
    }
    let _ = sync_dir(entries);
}

fn drop_parked(entries: &Path, parked: &[String]) -> Result<(), UpgradeError> {
    for name in parked {
        std::fs::remove_file(entries.join(format!("{name}{PARKED}")))
            .map_err(io(format!("removing {name}{PARKED}")))?;
    }
    sync_dir(entries)
}

/// Copies the payload into the slot while hashing, then reads it back and hashes again.
fn write_payload(
    entry: &mut impl Read,
    target: &Target,
    manifest: &Manifest,
    progress: &dyn Fn(&str),
) -> Result<u64, UpgradeError> {
    let expected = &manifest.slot_payload;
    if expected.size > target.slot_size {
        return Err(UpgradeError::Rejected(format!(
            "the payload ({} bytes) does not fit the slot ({} bytes)",
            expected.size, target.slot_size
        )));
    }
    let dev = &target.slot_device;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(io(format!("opening {}", dev.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    let mut reported = 0;
    loop {
        let n = entry.read(&mut buf).map_err(io("reading the payload"))?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > expected.size {
            return Err(UpgradeError::Rejected(
                "the payload is longer than the manifest says".into(),
            ));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io(format!("writing {}", dev.display())))?;
        let percent = written * 100 / expected.size.max(1);
        if percent >= reported + 10 {
            reported = percent - percent % 10;
            progress(&format!(
                "upgrade: writing slot {}: {reported}%",
                target.active.other()
            ));
        }
    }
    out.sync_all()
        .map_err(io(format!("syncing {}", dev.display())))?;
    let digest = Sha256Digest(hasher.finalize().into());
    if written != expected.size || digest != expected.sha256 {
        return Err(UpgradeError::Rejected(format!(
            "the payload does not match the signed manifest ({written} bytes, sha256 {digest}; expected {} bytes, {})",
            expected.size, expected.sha256
        )));
    }
    // Read back what the device holds now, not what the page cache remembers.
    // SAFETY: posix_fadvise on a valid descriptor.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&out),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    drop(out);
    let mut input = std::fs::File::open(dev).map_err(io(format!("opening {}", dev.display())))?;
    input.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    let mut hasher = Sha256::new();
    let mut left = expected.size;
    while left > 0 {
        let n = buf.len().min(left as usize);
        input
            .read_exact(&mut buf[..n])
            .map_err(io(format!("reading back {}", dev.display())))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    if Sha256Digest(hasher.finalize().into()) != expected.sha256 {
        return Err(UpgradeError::Io {
            what: format!("reading back {}", dev.display()),
            source: std::io::Error::other("the slot does not hold what was written"),
        });
    }
    Ok(written)
}

/// Installs the update stream into the inactive slot. See the module comment for the order.
pub fn install(
    stream: &mut dyn Read,
    target: &Target,
    force: bool,
    progress: &dyn Fn(&str),
) -> Result<Installed, UpgradeError> {
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive.entries().map_err(io("reading the update stream"))?;
    let mut next = |want: &str| -> Result<tar::Entry<'_, &mut dyn Read>, UpgradeError> {
        let entry = entries
            .next()
            .ok_or_else(|| UpgradeError::Rejected(format!("the update stream ends before {want}")))?
            .map_err(io("reading the update stream"))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != want {
            return Err(UpgradeError::Rejected(format!(
                "expected {want} in the update stream, found {name:?}"
            )));
        }
        Ok(entry)
    };
    let manifest_bytes =
        read_limited(&mut next(STREAM_ENTRIES[0])?, MAX_MANIFEST, "manifest.json")?;
    let signature = read_limited(
        &mut next(STREAM_ENTRIES[1])?,
        MAX_SIGNATURE,
        "manifest.json.minisig",
    )?;
    let sig = SignatureFile::parse(&String::from_utf8_lossy(&signature))
        .map_err(|e| UpgradeError::Rejected(format!("manifest.json.minisig: {e}")))?;
    let verified = minisign::verify_bytes(&target.trusted_keys, &sig, &manifest_bytes)
        .map_err(|e| UpgradeError::Rejected(format!("manifest.json: {e}")))?;
    let manifest = Manifest::from_json(&manifest_bytes)
        .map_err(|e| UpgradeError::Rejected(format!("manifest.json: {e}")))?;
    let version = check_manifest(&manifest, target, &quarantined(&target.state), force)?;
    let slot = target.active.other();
    let from = target.running.to_string();
    let to = version.to_string();
    progress(&format!(
        "upgrade: {from} -> {to} into slot {slot} (manifest signed by key ID {})",
        verified.key_id
    ));

    let entries_dir = layout::on_volume(&target.esp, layout::esp::ENTRIES_DIR);

    let kernel = read_limited(&mut next(STREAM_ENTRIES[2])?, MAX_BOOT_FILE, "vmlinuz")?;
    if sha256(&kernel) != manifest.kernel.sha256 {
        return Err(UpgradeError::Rejected(
            "vmlinuz does not match the signed manifest".into(),
        ));
    }
    let initramfs = read_limited(&mut next(STREAM_ENTRIES[3])?, MAX_BOOT_FILE, "initramfs")?;
    if sha256(&initramfs) != manifest.initramfs.sha256 {
        return Err(UpgradeError::Rejected(
            "initramfs does not match the signed manifest".into(),
        ));
    }
    let parked = park_entries(&entries_dir, slot)?;
    let result = finish(
        &mut next(STREAM_ENTRIES[4])?,
        target,
        &manifest,
        (&manifest_bytes, &signature),
        (&kernel, &initramfs),
        progress,
    );
    match result {
        Ok(bytes) => {
            drop_parked(&entries_dir, &parked)?;
            // The demoted entry a requested rollback left is gone: a failure of what was just
            // installed must count as a failure.
            let _ = std::fs::remove_file(target.state.join(ROLLBACK_REQUESTED));
            journal(&target.state, &from, &to, slot, "installed")?;
            progress(&format!(
                "upgrade: boot entry {} written; {to} boots next",
                EntryName::fresh(slot).file_name()
            ));
            Ok(Installed {
                from,
                to,
                slot,
                bytes,
            })
        }
        Err(e) => {
            unpark_entries(&entries_dir, &parked);
            let _ = journal(&target.state, &from, &to, slot, "failed");
            Err(e)
        }
    }
}

/// Slot, ESP files and boot entry, once the manifest, kernel and initramfs are known good.
fn finish(
    payload: &mut impl Read,
    target: &Target,
    manifest: &Manifest,
    (manifest_bytes, signature): (&[u8], &[u8]),
    (kernel, initramfs): (&[u8], &[u8]),
    progress: &dyn Fn(&str),
) -> Result<u64, UpgradeError> {
    let slot = target.active.other();
    let to = &manifest.version;
    journal(
        &target.state,
        &target.running.to_string(),
        to,
        slot,
        "writing",
    )?;
    let bytes = write_payload(payload, target, manifest, progress)?;
    let entries_dir = layout::on_volume(&target.esp, layout::esp::ENTRIES_DIR);

    let dir = target.esp.join(slot.esp_dir().trim_start_matches('/'));
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let on_esp = |p: String| target.esp.join(p.trim_start_matches('/'));
    write_synced(&on_esp(slot.kernel_path()), kernel)?;
    write_synced(&on_esp(slot.initramfs_path()), initramfs)?;
    write_synced(&on_esp(slot.manifest_path()), manifest_bytes)?;
    write_synced(&on_esp(slot.signature_path()), signature)?;
    sync_dir(&dir)?;
    progress(&format!(
        "upgrade: kernel, initramfs and manifest of {to} written to the ESP"
    ));

    let entry = BootEntry::new(
        slot,
        to,
        &manifest.root.verity.root_hash.to_hex(),
        &manifest.cmdline,
    );
    let name = EntryName::fresh(slot).file_name();
    let aside = entries_dir.join(format!("{name}.new"));
    write_synced(&aside, entry.render().as_bytes())?;
    crate::sys::rename_durably(&aside, &entries_dir.join(&name))
        .map_err(io(format!("renaming {name}")))?;
    sync_dir(&entries_dir)?;
    Ok(bytes)
}

/// The version installed in `slot` on the ESP, from its manifest (unverified: for display and
/// for rollback detection; stage 1 verifies before booting it).
pub fn slot_version(esp: &Path, slot: Slot) -> Option<String> {
    let bytes = std::fs::read(esp.join(slot.manifest_path().trim_start_matches('/'))).ok()?;
    Manifest::from_json(&bytes).ok().map(|m| m.version)
}

/// The boot entry file of `slot`, if any.
pub fn slot_entry(esp: &Path, slot: Slot) -> Option<EntryName> {
    std::fs::read_dir(layout::on_volume(esp, layout::esp::ENTRIES_DIR))
        .ok()?
        .flatten()
        .filter_map(|e| EntryName::parse(&e.file_name().to_string_lossy()))
        .find(|e| e.slot == slot)
}

/// This boot runs because the other slot's newer version was left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The version left behind.
    pub from: String,
    /// `keel node rollback` asked for it; otherwise that version failed to boot.
    pub requested: bool,
}

/// After a boot: if the other slot holds a newer version whose entry ran out of tries, this
/// boot is a rollback from it. Unless the operator asked for the rollback, that version is
/// quarantined (appended once to STATE).
pub fn detect_rollback(
    esp: &Path,
    state: &Path,
    active: Slot,
    running: &semver::Version,
) -> Option<RolledBack> {
    let other = active.other();
    let entry = slot_entry(esp, other)?;
    let version = slot_version(esp, other)?;
    let newer = version
        .parse::<semver::Version>()
        .is_ok_and(|v| &v > running);
    if !(entry.exhausted() && newer) {
        return None;
    }
    // A rollback the operator asked for is reported, but the version is not quarantined. The
    // marker stays for as long as the demoted entry does (every later boot of this slot sees
    // it again); the next install into the other slot removes both.
    let requested = std::fs::read_to_string(state.join(ROLLBACK_REQUESTED)).ok();
    if requested.as_deref().map(str::trim) == Some(version.as_str()) {
        return Some(RolledBack {
            from: version,
            requested: true,
        });
    }
    let mut list = quarantined(state);
    if !list.contains(&version) {
        list.push(version.clone());
        let _ = crate::config::save(state, QUARANTINE, &format!("{}\n", list.join("\n")));
    }
    Some(RolledBack {
        from: version,
        requested: false,
    })
}

/// Makes the other slot boot next: the active entry is marked as out of tries, so
/// systemd-boot sorts it last. Refused when the other slot has no bootable entry.
pub fn rollback(esp: &Path, state: &Path, active: Slot) -> Result<String, UpgradeError> {
    let other = active.other();
    let other_entry = slot_entry(esp, other)
        .ok_or_else(|| UpgradeError::Refused(format!("slot {other} has no boot entry")))?;
    if other_entry.exhausted() {
        return Err(UpgradeError::Refused(format!(
            "slot {other} failed to boot before ({})",
            other_entry.file_name()
        )));
    }
    let version = slot_version(esp, other)
        .ok_or_else(|| UpgradeError::Refused(format!("slot {other} holds no manifest")))?;
    let entries = layout::on_volume(esp, layout::esp::ENTRIES_DIR);
    let current = slot_entry(esp, active)
        .ok_or_else(|| UpgradeError::Refused(format!("slot {active} has no boot entry")))?;
    let demoted = EntryName {
        slot: active,
        counter: Some(keel_contract::layout::BootCounter {
            left: 0,
            done: Some(keel_contract::layout::BOOT_TRIES),
        }),
    };
    if let Some(running) = slot_version(esp, active) {
        crate::config::save(state, ROLLBACK_REQUESTED, &format!("{running}\n"))
            .map_err(io("recording the rollback"))?;
    }
    crate::sys::rename_durably(
        &entries.join(current.file_name()),
        &entries.join(demoted.file_name()),
    )
    .map_err(io(format!("renaming {}", current.file_name())))?;
    sync_dir(&entries)?;
    Ok(version)
}

#[cfg(test)]
#[path = "upgrade_tests.rs"]
mod tests;
