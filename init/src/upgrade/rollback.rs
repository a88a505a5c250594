//! Going back to the other slot: by itself when a newer version failed its boots
//! ([`detect_rollback`], which quarantines it), or on request ([`rollback`]).

use std::path::Path;

use keel_contract::layout::Slot;

use super::{UpgradeError, io};
use crate::entries::{self, BootState, DiskStorage};

pub const QUARANTINE: &str = "quarantine";

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
    boot: &BootState,
    state: &Path,
    active: Slot,
    running: &semver::Version,
) -> Option<RolledBack> {
    let other = boot.slot(active.other());
    let version = other.version.clone()?;
    let newer = version
        .parse::<semver::Version>()
        .is_ok_and(|v| &v > running);
    if !(other.entry?.exhausted() && newer) {
        return None;
    }
    // A rollback the operator asked for is reported, but the version is not quarantined. The
    // marker stays for as long as the demoted entry does (every later boot of this slot sees
    // it again); the next install into the other slot removes both.
    if boot.rollback_requested.as_deref() == Some(version.as_str()) {
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

/// Makes the other slot boot next: the running entry is marked as out of tries, so
/// systemd-boot sorts it last. Refused when the other slot cannot boot (being written,
/// empty, incomplete, no entry, or failed before). Returns the other slot's version.
pub fn rollback(
    esp: &Path,
    state: &Path,
    active: Slot,
    running: &str,
) -> Result<String, UpgradeError> {
    let mut storage = DiskStorage {
        esp: esp.to_path_buf(),
        state: Some(state.to_path_buf()),
    };
    let boot = BootState::load(&storage).map_err(io("reading the boot entries"))?;
    let ops = boot
        .rollback(active, running)
        .map_err(|e| UpgradeError::Refused(e.0))?;
    let version = boot
        .slot(active.other())
        .version
        .clone()
        .unwrap_or_default();
    entries::apply(&ops, &mut storage).map_err(|e| UpgradeError::Io {
        what: "demoting the running entry".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(version)
}
