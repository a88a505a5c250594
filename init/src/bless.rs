//! Blessing: once the health gate passes, the booted entry loses its boot counter
//! (`keel-a+2-1.conf` -> `keel-a.conf`), so systemd-boot stops counting it down.

use std::path::{Path, PathBuf};

use keel_contract::layout::{EntryName, Slot};

use crate::sys;

#[derive(Debug, PartialEq, Eq)]
pub enum Blessing {
    /// Renamed from the counted name.
    Blessed { from: String, to: String },
    /// The entry had no counter: blessed at an earlier boot.
    AlreadyBlessed(String),
}

/// Blesses the entry `counted` (the file name systemd-boot reported in LoaderBootCountPath)
/// in `entries_dir`, or confirms the slot's entry is already blessed.
pub fn bless(entries_dir: &Path, slot: Slot, counted: Option<&str>) -> Result<Blessing, String> {
    let blessed = EntryName::blessed(slot).file_name();
    match counted.and_then(|c| EntryName::parse(c).map(|e| (c, e))) {
        Some((file, entry)) if entry.slot == slot && entry.counter.is_some() => {
            let from: PathBuf = entries_dir.join(file);
            let to = entries_dir.join(&blessed);
            sys::rename_durably(&from, &to)
                .map_err(|e| format!("rename {} to {}: {e}", from.display(), to.display()))?;
            Ok(Blessing::Blessed {
                from: file.to_owned(),
                to: blessed,
            })
        }
        Some((file, _)) => Err(format!(
            "systemd-boot booted {file}, which is not slot {slot}'s entry"
        )),
        None if entries_dir.join(&blessed).exists() => Ok(Blessing::AlreadyBlessed(blessed)),
        None => Err(format!(
            "no boot counter for slot {slot} and no {blessed} in {}",
            entries_dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_the_counted_entry_and_recognises_a_blessed_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keel-a+2-1.conf"), "title a\n").unwrap();
        let result = bless(dir.path(), Slot::A, Some("keel-a+2-1.conf")).unwrap();
        assert_eq!(
            result,
            Blessing::Blessed {
                from: "keel-a+2-1.conf".into(),
                to: "keel-a.conf".into()
            }
        );
        assert!(dir.path().join("keel-a.conf").exists());
        assert!(!dir.path().join("keel-a+2-1.conf").exists());
        assert_eq!(
            bless(dir.path(), Slot::A, None).unwrap(),
            Blessing::AlreadyBlessed("keel-a.conf".into())
        );
        assert!(bless(dir.path(), Slot::B, None).is_err());
        assert!(bless(dir.path(), Slot::B, Some("keel-a+1-2.conf")).is_err());
    }
}
