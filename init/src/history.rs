//! The node's boot history under /var/lib/keel: one line per boot, so a boot can tell how
//! many came before it (and tests can see that /var survived a reboot).

use std::io::Write;
use std::path::Path;

pub const HISTORY: &str = "/var/lib/keel/boots";

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
}
