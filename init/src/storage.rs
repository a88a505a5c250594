//! Where stage 2 keeps the node's state and boot bookkeeping: the ESP, STATE and the boot
//! entries of a disk boot, or, for a diskless node (a network boot, `BootSource::Network`),
//! none of them: STATE falls back to /run and there are no entries to tidy, count or bless.

use std::path::{Path, PathBuf};

use keel_contract::layout;

use crate::bootinfo::{BootSource, Handoff};
use crate::entries::{self, BootState, DiskStorage};
use crate::{console, mounts, sys, upgrade};

const ESP: &str = layout::root::ESP_MOUNT;
const STATE: &str = layout::root::STATE_MOUNT;
/// Where the node keeps its state when STATE is not there (lost at the next boot).
const STATE_FALLBACK: &str = "/run/keel/state";

fn log(line: &str) {
    console::line(line);
}

fn warn(warnings: &mut Vec<String>, line: String) {
    log(&format!("warning: {line}"));
    warnings.push(line);
}

/// The ESP at /efi; a diskless node has none.
pub fn mount_esp(handoff: &Handoff) -> Result<(), String> {
    match handoff.disk() {
        Some((_, partitions)) => {
            mounts::fat(&partitions.esp.path.display().to_string(), ESP).map_err(|e| e.to_string())
        }
        None => Ok(()),
    }
}

/// STATE at /state, or a directory in /run when there is none (the node then forgets its
/// configuration at the next boot, and says so).
pub fn mount_state(handoff: &Handoff, warnings: &mut Vec<String>) -> Result<PathBuf, String> {
    let state = match &handoff.source {
        BootSource::Disk { partitions, .. } => &partitions.state,
        BootSource::Network { url, .. } => {
            log(&format!(
                "diskless (root from {url}): state in {STATE_FALLBACK}, forgotten at the next boot"
            ));
            sys::mkdir_p(STATE_FALLBACK, 0o700).map_err(|e| e.to_string())?;
            return Ok(PathBuf::from(STATE_FALLBACK));
        }
    };
    let mounted = match state {
        Some(state) => mounts::fat(&state.path.display().to_string(), STATE)
            .map_err(|e| format!("STATE: {e}"))
            .and_then(|()| {
                // The builder marks Keel's STATE; anything else is not ours to write.
                layout::on_volume(Path::new(STATE), layout::state::MARKER)
                    .exists()
                    .then_some(())
                    .ok_or_else(|| format!("STATE has no {}", layout::state::MARKER))
            }),
        None => Err("no STATE partition".to_owned()),
    };
    match mounted {
        Ok(()) => Ok(PathBuf::from(STATE)),
        Err(e) => {
            warn(
                warnings,
                format!(
                    "{e}: the applied profile and the upgrade journal will not survive a reboot"
                ),
            );
            sys::mkdir_p(STATE_FALLBACK, 0o700).map_err(|e| e.to_string())?;
            Ok(PathBuf::from(STATE_FALLBACK))
        }
    }
}

/// Finishes what an interrupted upgrade left on the ESP (see [`BootState::recover`]) and
/// tells whether this boot is a rollback.
pub fn settle_boot_entries(
    handoff: &Handoff,
    state_dir: &Path,
    warnings: &mut Vec<String>,
) -> Option<upgrade::RolledBack> {
    handoff.disk()?;
    let mut storage = DiskStorage {
        esp: PathBuf::from(ESP),
        state: Some(state_dir.to_path_buf()),
    };
    let mut boot = match BootState::load(&storage) {
        Ok(b) => b,
        Err(e) => {
            warn(warnings, format!("reading the boot entries: {e}"));
            return None;
        }
    };
    let ops = boot.recover(handoff.slot);
    if !ops.is_empty() {
        for op in &ops {
            log(&format!("boot entries: {op}"));
        }
        if let Err(e) = entries::apply(&ops, &mut storage) {
            warn(warnings, format!("tidying the boot entries: {e}"));
        }
        boot = boot.after_all(&ops);
    }
    if let Some(why) = boot.invalid(handoff.slot.other()) {
        log(&format!("slot {}: {why}", handoff.slot.other()));
    }
    let rolled_back = upgrade::detect_rollback(&boot, state_dir, handoff.slot, &handoff.version);
    match &rolled_back {
        Some(r) if r.requested => log(&format!(
            "rolled back from {} as requested: {} runs again",
            r.from, handoff.version
        )),
        Some(r) => log(&format!(
            "rolled back from {}: it failed to boot, {} runs again",
            r.from, handoff.version
        )),
        None => {}
    }
    rolled_back
}

/// Blesses the booted entry (the health gate passed); a diskless node has none.
pub fn bless(handoff: &Handoff, state_dir: &Path) {
    if handoff.disk().is_none() {
        return;
    }
    let mut storage = DiskStorage {
        esp: PathBuf::from(ESP),
        state: Some(state_dir.to_path_buf()),
    };
    let blessed = crate::timeline::BOOT.step("bless", || {
        BootState::load(&storage)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let current = b.slot(handoff.slot).entry;
                let ops = b.bless(handoff.slot).map_err(|e| e.to_string())?;
                entries::apply(&ops, &mut storage).map_err(|e| e.to_string())?;
                Ok((current, ops.is_empty()))
            })
    });
    match blessed {
        Ok((Some(entry), true)) => log(&format!("{} already blessed", entry.file_name())),
        Ok((Some(entry), false)) => log(&format!(
            "blessed {} -> {}",
            entry.file_name(),
            layout::EntryName::blessed(handoff.slot).file_name()
        )),
        Ok((None, _)) => {}
        Err(e) => log(&format!("warning: could not bless the boot entry: {e}")),
    }
}
