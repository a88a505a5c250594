//! `[node.install]`: a node booted from an installer medium (a USB stick, or the network)
//! writes itself onto an internal disk chosen by identity, never by a `/dev/sdX` name (those
//! change between boots).
//!
//! ```toml
//! [node.install]
//! disk = { serial = "S4EVNX0R123456" }   # or wwn, by_id, model, min_size, max_size
//! wipe = false                           # a disk that holds partitions is refused
//! ```

use serde::{Deserialize, Serialize};

use super::values::ByteSize;

/// `[node.install]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// Which disk: every criterion given must match, and exactly one disk must.
    pub disk: DiskSelector,
    /// Overwrite a disk that already holds partitions (default false: such a disk is refused,
    /// so that a selector that matches a data disk by mistake destroys nothing).
    #[serde(default)]
    pub wipe: bool,
}

/// `[node.var]`: a node booted from the network keeps `/var` on a disk of its own instead of
/// RAM. The disk is chosen like the installer's (by identity, exactly one match). A blank
/// disk gets a partition table with one DATA partition, formatted ext4; a disk holding
/// exactly that is mounted as it is; anything else is refused unless `wipe = true`. A node
/// booted from a disk keeps DATA on that disk and ignores this section.
///
/// ```toml
/// [node.var]
/// disk = { serial = "S4EVNX0R654321" }
/// wipe = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VarDisk {
    pub disk: DiskSelector,
    /// Repartition a disk that holds anything but Keel's DATA (default false: refused).
    #[serde(default)]
    pub wipe: bool,
}

/// How the installer picks its disk. Criteria combine (all must match); at least one is
/// required, so that no profile installs onto "any disk".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    try_from = "SelectorFields",
    into = "SelectorFields"
)]
pub struct DiskSelector {
    fields: SelectorFields,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SelectorFields {
    /// The disk's serial number as the device reports it (NVMe `serial`, SCSI/SATA VPD page
    /// 0x80, virtio-blk `serial`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    /// The World Wide Name (SCSI/SATA `wwid`, NVMe `wwid`/EUI), as sysfs shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wwn: Option<String>,
    /// A `/dev/disk/by-id` name as udev makes it (`nvme-<model>_<serial>`,
    /// `ata-<model>_<serial>`, `scsi-…`, `wwn-…`, `virtio-<serial>`), with or without the
    /// `/dev/disk/by-id/` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by_id: Option<String>,
    /// The model string, whitespace-trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_size: Option<ByteSize>,
}

/// Where udev puts the names [`DiskSelector::by_id`] matches.
pub const BY_ID_DIR: &str = "/dev/disk/by-id/";

impl TryFrom<SelectorFields> for DiskSelector {
    type Error = String;
    fn try_from(mut f: SelectorFields) -> Result<Self, String> {
        if let Some(id) = f.by_id.take() {
            let name = id.strip_prefix(BY_ID_DIR).unwrap_or(&id).to_owned();
            if name.is_empty() || name.contains('/') {
                return Err(format!(
                    "by_id {id:?}: expected a name in /dev/disk/by-id, like \"nvme-Samsung_SSD_980_S64DNX0R123456\"; /dev/sdX-style names change between boots"
                ));
            }
            f.by_id = Some(name);
        }
        for (key, value) in [("serial", &f.serial), ("wwn", &f.wwn), ("model", &f.model)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{key} is empty"));
            }
        }
        if let (Some(min), Some(max)) = (f.min_size, f.max_size)
            && min > max
        {
            return Err(format!("min_size {min} is larger than max_size {max}"));
        }
        let identifying = [&f.serial, &f.wwn, &f.by_id, &f.model]
            .iter()
            .any(|v| v.is_some());
        if !identifying && f.min_size.is_none() && f.max_size.is_none() {
            return Err("expected at least one of serial, wwn, by_id, model, min_size, max_size: an empty selector would match any disk".into());
        }
        Ok(DiskSelector { fields: f })
    }
}

impl From<DiskSelector> for SelectorFields {
    fn from(s: DiskSelector) -> Self {
        s.fields
    }
}

/// What the installer knows of a disk, to match a selector against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskIdentity {
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub model: Option<String>,
    /// Its `/dev/disk/by-id` names.
    pub by_id: Vec<String>,
    pub size: u64,
}

impl DiskSelector {
    /// Whether `disk` meets every criterion (strings compare exactly, after trimming).
    pub fn matches(&self, disk: &DiskIdentity) -> bool {
        let f = &self.fields;
        let same = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref().map(str::trim) == Some(w.trim()),
        };
        same(&f.serial, &disk.serial)
            && same(&f.wwn, &disk.wwn)
            && same(&f.model, &disk.model)
            && f.by_id.as_ref().is_none_or(|id| disk.by_id.contains(id))
            && f.min_size.is_none_or(|m| disk.size >= m.bytes())
            && f.max_size.is_none_or(|m| disk.size <= m.bytes())
    }
}

impl std::fmt::Display for DiskSelector {
    /// As the profile writes it: `{ serial = "X", min_size = "100GiB" }`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.fields;
        let mut parts = Vec::new();
        for (key, value) in [
            ("serial", &s.serial),
            ("wwn", &s.wwn),
            ("by_id", &s.by_id),
            ("model", &s.model),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key} = {v:?}"));
            }
        }
        for (key, value) in [("min_size", s.min_size), ("max_size", s.max_size)] {
            if let Some(v) = value {
                parts.push(format!("{key} = \"{v}\""));
            }
        }
        write!(f, "{{ {} }}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::LoadedProfile;
    use std::path::Path;

    #[test]
    fn a_var_disk_takes_the_installers_selectors() {
        let text = "[node.var]\ndisk = { serial = \"V1\", min_size = \"8 GiB\" }\n";
        let var = LoadedProfile::from_text(std::path::Path::new("p.toml"), text)
            .unwrap()
            .profile
            .node
            .var
            .unwrap();
        assert!(!var.wipe);
        assert!(var.disk.matches(&disk("V1", 10 << 30)));
        assert!(!var.disk.matches(&disk("V1", 4 << 30)));
        let err =
            LoadedProfile::from_text(std::path::Path::new("p.toml"), "[node.var]\ndisk = {}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("p.toml"), "{err}");
    }

    fn load(text: &str) -> Result<Option<Install>, String> {
        LoadedProfile::from_text(Path::new("p.toml"), text)
            .map(|p| p.profile.node.install)
            .map_err(|e| e.to_string())
    }

    fn disk(serial: &str, size: u64) -> DiskIdentity {
        DiskIdentity {
            serial: Some(serial.into()),
            wwn: None,
            model: Some("QEMU NVMe Ctrl".into()),
            by_id: vec![format!("nvme-QEMU_NVMe_Ctrl_{serial}")],
            size,
        }
    }

    #[test]
    fn selectors_parse_and_match_by_every_criterion() {
        assert_eq!(load("").unwrap(), None);
        let i = load("[node.install]\ndisk = { serial = \"A1\" }\n")
            .unwrap()
            .unwrap();
        assert!(!i.wipe);
        assert!(i.disk.matches(&disk("A1", 1 << 30)));
        assert!(!i.disk.matches(&disk("A2", 1 << 30)));
        let by_id = "[node.install]\ndisk = { by_id = \"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_A1\" }\nwipe = true\n";
        let i = load(by_id).unwrap().unwrap();
        assert!(i.wipe && i.disk.matches(&disk("A1", 1)));
        assert_eq!(i.disk.to_string(), "{ by_id = \"nvme-QEMU_NVMe_Ctrl_A1\" }");
        let sized =
            load("[node.install]\ndisk = { min_size = \"2GiB\", model = \"QEMU NVMe Ctrl\" }\n")
                .unwrap()
                .unwrap();
        assert!(sized.disk.matches(&disk("X", 2 << 30)));
        assert!(!sized.disk.matches(&disk("X", (2 << 30) - 1)));
        let max = load("[node.install]\ndisk = { max_size = \"1GiB\" }\n")
            .unwrap()
            .unwrap();
        assert!(max.disk.matches(&disk("X", 1 << 30)) && !max.disk.matches(&disk("X", 2 << 30)));
    }

    #[test]
    fn bad_selectors_are_profile_errors_with_line_and_column() {
        for (bad, expected) in [
            ("disk = {}", "at least one of"),
            ("disk = { by_id = \"/dev/sda\" }", "/dev/disk/by-id"),
            ("disk = { serial = \" \" }", "serial is empty"),
            (
                "disk = { min_size = \"2GiB\", max_size = \"1GiB\" }",
                "larger than max_size",
            ),
            ("disk = { min_size = \"lots\" }", "invalid size"),
            ("disk = { name = \"sda\" }", "name"),
            ("wipe = true", "disk"),
            ("disk = { serial = \"A\" }\nwipe = \"yes\"", "wipe"),
        ] {
            let err = load(&format!("[node.install]\n{bad}\n")).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
            assert!(err.contains("p.toml:"), "{bad}: names the file: {err}");
        }
    }
}
