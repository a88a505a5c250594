//! What the init knows about this boot: the kernel command line, systemd-boot's EFI
//! variables, and the hand-off from stage 1 (initramfs) to stage 2 (real root).

use std::path::Path;

use keel_contract::layout::{self, Slot};
use serde::{Deserialize, Serialize};

use crate::block::{Disk, Partition};

/// Where stage 1 leaves what stage 2 needs; /run is a tmpfs moved into the new root.
pub const RUN_DIR: &str = "/run/keel";
pub const HANDOFF: &str = "/run/keel/boot.json";
pub const MANIFEST: &str = "/run/keel/manifest.json";
pub const TRUSTED_KEYS: &str = "/run/keel/trusted.pub";
pub const BAKED_PROFILE: &str = "/run/keel/profile.toml";

use layout::efi::{EFIVARS_DIR as EFIVARS, LOADER_VENDOR_GUID as LOADER_GUID};

/// The partitions of the disk the node booted from, found once by stage 1 (by GPT label, on
/// the disk that holds the booted slot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitions {
    pub esp: Partition,
    /// The booted slot.
    pub slot: Partition,
    /// The other slot, which upgrades write.
    pub other_slot: Option<Partition>,
    pub state: Option<Partition>,
    /// `None` until the first boot creates it.
    pub data: Option<Partition>,
}

/// What stage 1 found and did about this boot's entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BootAttempt {
    /// The booted slot's entry as systemd-boot left it (`keel-a+1-2.conf`, `keel-a.conf`).
    pub entry: Option<String>,
    /// The name stage 1 gave a blessed entry to count this boot (`keel-a+2.conf`).
    pub rearmed: Option<String>,
    /// Every entry is out of tries: a reboot would come back here, so this boot must not
    /// reboot on failure (see [`crate::entries::BootState::last_resort`]).
    pub last_resort: bool,
}

/// The keys stage 1 copied from the verified initramfs ([`TRUSTED_KEYS`]); the error names
/// the file.
pub fn trusted_keys() -> Result<keel_minisign::TrustedKeys, String> {
    std::fs::read_to_string(TRUSTED_KEYS)
        .map_err(|e| e.to_string())
        .and_then(|t| keel_minisign::TrustedKeys::parse(&t).map_err(|e| e.to_string()))
        .map_err(|e| format!("{TRUSTED_KEYS}: {e}"))
}

/// Where this boot's root came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BootSource {
    /// A slot on a disk: the ESP, STATE and DATA beside it.
    Disk {
        disk: Disk,
        partitions: Box<Partitions>,
    },
    /// `keel.root=URL`: the verified root is held in RAM and the node has no boot disk (no
    /// ESP, no STATE, no slots to upgrade: it upgrades by being served a new version).
    Network {
        url: String,
        /// Fetching and hashing `root.img`, and the RAM its copy holds.
        fetch_seconds: f64,
        ram_bytes: u64,
        /// The read-only loop device over the verified bytes in RAM (what dm-verity reads,
        /// and what an installing node copies into its disk's slot).
        device: std::path::PathBuf,
    },
}

/// What stage 1 hands to stage 2, typed (JSON in /run, which stage 1 moves into the new root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub slot: Slot,
    /// From the verified manifest.
    pub name: String,
    pub version: semver::Version,
    pub arch: String,
    pub root_hash: String,
    /// The key ID that signed the manifest.
    pub signer: String,
    /// Where the root came from: a disk's slot, or the network (no disk at all).
    pub source: BootSource,
    pub boot: BootAttempt,
    /// CLOCK_BOOTTIME when stage 1 started and when it handed over.
    pub stage1_start: f64,
    pub stage1_end: f64,
    /// Stage 1's steps (`crate::timeline`).
    #[serde(default)]
    pub timeline: Vec<keel_contract::api::BootStep>,
}

impl Handoff {
    /// The boot disk and its partitions; `None` for a network boot.
    pub fn disk(&self) -> Option<(&Disk, &Partitions)> {
        match &self.source {
            BootSource::Disk { disk, partitions } => Some((disk, partitions.as_ref())),
            BootSource::Network { .. } => None,
        }
    }

    pub fn write(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(HANDOFF, bytes)
    }

    pub fn read() -> std::io::Result<Self> {
        let bytes = std::fs::read(HANDOFF)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
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

/// The unique GUID of the partition systemd-boot was loaded from, read from efivarfs mounted
/// at `dir`. `Ok(None)`: no such variable (another boot loader, or no EFI); an error: the
/// variable is there but is not a GUID, which must not be taken as "no variable".
pub fn loader_partition_uuid(dir: &Path) -> Result<Option<uuid::Uuid>, String> {
    let name = layout::efi::LOADER_DEVICE_PART_UUID;
    match read_utf16_variable(dir, name) {
        None => Ok(None),
        Some(text) => uuid::Uuid::parse_str(text.trim())
            .map(Some)
            .map_err(|e| format!("EFI variable {name} = {text:?} is not a GUID: {e}")),
    }
}

/// Seconds from firmware start to the kernel taking over, as systemd-boot measured it.
pub fn firmware_and_loader_seconds() -> Option<f64> {
    let usec: f64 = loader_variable(layout::efi::LOADER_TIME_EXEC_USEC)?
        .trim()
        .parse()
        .ok()?;
    Some(usec / 1e6)
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

    fn write_variable(dir: &Path, name: &str, value: &str) {
        let mut bytes = vec![6, 0, 0, 0];
        for u in value.encode_utf16().chain([0]) {
            bytes.extend(u.to_le_bytes());
        }
        std::fs::write(dir.join(format!("{name}-{LOADER_GUID}")), bytes).unwrap();
    }

    #[test]
    fn reads_the_loader_partition_uuid_in_either_case() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(loader_partition_uuid(dir.path()), Ok(None));
        // systemd-boot writes it in upper case.
        write_variable(
            dir.path(),
            "LoaderDevicePartUUID",
            "1D3F5C2A-0B4E-4F7A-9C8D-2E6B1A0F3C5D",
        );
        assert_eq!(
            loader_partition_uuid(dir.path())
                .unwrap()
                .unwrap()
                .to_string(),
            "1d3f5c2a-0b4e-4f7a-9c8d-2e6b1a0f3c5d"
        );
        write_variable(dir.path(), "LoaderDevicePartUUID", "not-a-guid");
        let e = loader_partition_uuid(dir.path()).unwrap_err();
        assert!(
            e.contains("LoaderDevicePartUUID") && e.contains("not-a-guid"),
            "{e}"
        );
    }

    #[test]
    fn handoff_round_trips() {
        let disk = Disk {
            name: "vda".into(),
            path: "/dev/vda".into(),
            major: 254,
            minor: 0,
        };
        let part = |n: u32, label: &str| Partition {
            name: format!("vda{n}"),
            path: format!("/dev/vda{n}").into(),
            major: 254,
            minor: n,
            number: n,
            label: Some(label.into()),
            disk: disk.clone(),
        };
        let h = Handoff {
            slot: Slot::A,
            name: "keel".into(),
            version: "1.0.0".parse().unwrap(),
            arch: "x86_64".into(),
            root_hash: "ab".into(),
            signer: "K".into(),
            source: BootSource::Disk {
                disk: disk.clone(),
                partitions: Box::new(Partitions {
                    esp: part(1, "ESP"),
                    slot: part(2, "KEEL-A"),
                    other_slot: Some(part(3, "KEEL-B")),
                    state: Some(part(4, "STATE")),
                    data: None,
                }),
            },
            boot: BootAttempt {
                entry: Some("keel-a.conf".into()),
                rearmed: Some("keel-a+2.conf".into()),
                last_resort: false,
            },
            stage1_start: 1.5,
            stage1_end: 2.5,
            timeline: vec![keel_contract::api::BootStep {
                step: "modules".into(),
                start_ms: 1500,
                end_ms: 1900,
            }],
        };
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), h);
        assert!(text.contains("\"slot\":\"a\""), "{text}");
        assert!(text.contains("\"step\":\"modules\""), "{text}");
        assert!(h.disk().is_some());
        let net = Handoff {
            source: BootSource::Network {
                url: "http://10.0.2.2:8080/root.img".into(),
                fetch_seconds: 3.5,
                ram_bytes: 300 << 20,
                device: "/dev/loop0".into(),
            },
            ..h
        };
        let text = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), net);
        assert!(text.contains("\"kind\":\"network\""), "{text}");
        assert!(net.disk().is_none());
    }
}
