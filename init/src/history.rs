//! The node's boot history under /var/lib/keel: one line per boot, so a boot can tell how
//! many came before it (and tests can see that /var survived a reboot).

use std::io::Write;
use std::path::Path;

pub const HISTORY: &str = "/var/lib/keel/boots";

/// The boot's number, whatever happens: the history is best-effort (a full or read-only
/// `/var` must not stop a node from booting). The number counts the boots the history holds
/// (0 when it cannot be read); the warning says what went wrong.
pub fn record_best_effort(
    path: &Path,
    slot: &str,
    version: &str,
    boot_id: &str,
) -> (u64, Option<String>) {
    match record(path, slot, version, boot_id) {
        Ok(n) => (n, None),
        Err(e) => {
            let known = std::fs::read_to_string(path)
                .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64 + 1)
                .unwrap_or(0);
            (
                known,
                Some(format!(
                    "the boot history {} could not be written: {e}",
                    path.display()
                )),
            )
        }
    }
}

/// Appends this boot and returns its number (1 for the first boot on this disk).
pub fn record(path: &Path, slot: &str, version: &str, boot_id: &str) -> std::io::Result<u64> {
    let previous = std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    let number = previous + 1;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        file,
        "boot={number} slot={slot} version={version} id={boot_id}"
    )?;
    file.sync_all()?;
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_boots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib/keel/boots");
        assert_eq!(record(&path, "a", "1.0.0", "x").unwrap(), 1);
        assert_eq!(record(&path, "b", "1.1.0", "y").unwrap(), 2);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("boot=2 slot=b version=1.1.0 id=y\n")
        );
    }

    /// A full (here: unwritable) /var does not stop the boot: the number is still known.
    #[test]
    fn a_history_that_cannot_be_written_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boots");
        assert_eq!(record_best_effort(&path, "a", "1", "x"), (1, None));
        // A directory where the file should be: every write fails, as on a full disk.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("boots")).unwrap();
        let (n, warning) = record_best_effort(&blocked.join("boots"), "a", "1", "y");
        assert_eq!(n, 0);
        assert!(warning.unwrap().contains("could not be written"));
    }
}
