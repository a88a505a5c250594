//! What the init knows about this boot: the kernel command line, systemd-boot's EFI
//! variables, and the hand-off from stage 1 (initramfs) to stage 2 (real root).

use std::path::Path;

use keel_contract::layout::{self, Slot};
use serde::{Deserialize, Serialize};

/// Where stage 1 leaves what stage 2 needs; /run is a tmpfs moved into the new root.
pub const RUN_DIR: &str = "/run/keel";
pub const HANDOFF: &str = "/run/keel/boot.json";
pub const MANIFEST: &str = "/run/keel/manifest.json";
pub const TRUSTED_KEYS: &str = "/run/keel/trusted.pub";
pub const BAKED_PROFILE: &str = "/run/keel/profile.toml";

/// systemd-boot's vendor GUID for its EFI variables.
const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const EFIVARS: &str = "/sys/firmware/efi/efivars";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub slot: String,
    pub version: String,
    pub name: String,
    pub root_hash: String,
    pub signer: String,
    pub disk: String,
    pub slot_device: String,
    pub esp_device: String,
    /// CLOCK_BOOTTIME when stage 1 started and when it handed over.
    pub stage1_start: f64,
    pub stage1_end: f64,
}

impl Handoff {
    pub fn write(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(HANDOFF, bytes)
    }

    pub fn read() -> std::io::Result<Self> {
        let bytes = std::fs::read(HANDOFF)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    pub fn slot(&self) -> Option<Slot> {
        self.slot.parse().ok()
    }
}

pub fn cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    layout::cmdline::get(cmdline, layout::cmdline::SLOT)?
        .parse()
        .ok()
}

/// Reads a systemd-boot EFI variable (UTF-16LE string after 4 attribute bytes).
pub fn loader_variable(name: &str) -> Option<String> {
    read_utf16_variable(Path::new(EFIVARS), name)
}

fn read_utf16_variable(dir: &Path, name: &str) -> Option<String> {
    let bytes = std::fs::read(dir.join(format!("{name}-{LOADER_GUID}"))).ok()?;
    let units: Vec<u16> = bytes
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(String::from_utf16_lossy(&units))
}

/// Seconds from firmware start to the kernel taking over, as systemd-boot measured it.
pub fn firmware_and_loader_seconds() -> Option<f64> {
    let usec: f64 = loader_variable("LoaderTimeExecUSec")?.trim().parse().ok()?;
    Some(usec / 1e6)
}

/// The booted entry's file name when it carries a boot counter (`keel-a+2-1.conf`).
pub fn boot_count_entry() -> Option<String> {
    let path = loader_variable("LoaderBootCountPath")?;
    path.rsplit(['\\', '/']).next().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utf16_variables() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![6, 0, 0, 0];
        for u in "\\loader\\entries\\keel-a+2-1.conf"
            .encode_utf16()
            .chain([0])
        {
            bytes.extend(u.to_le_bytes());
        }
        std::fs::write(
            dir.path()
                .join(format!("LoaderBootCountPath-{LOADER_GUID}")),
            bytes,
        )
        .unwrap();
        assert_eq!(
            read_utf16_variable(dir.path(), "LoaderBootCountPath").as_deref(),
            Some("\\loader\\entries\\keel-a+2-1.conf")
        );
        assert!(read_utf16_variable(dir.path(), "Missing").is_none());
    }

    #[test]
    fn handoff_round_trips() {
        let h = Handoff {
            slot: "a".into(),
            version: "1.0.0".into(),
            name: "keel".into(),
            root_hash: "ab".into(),
            signer: "K".into(),
            disk: "/dev/vda".into(),
            slot_device: "/dev/vda2".into(),
            esp_device: "/dev/vda1".into(),
            stage1_start: 1.5,
            stage1_end: 2.5,
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), h);
    }
}
