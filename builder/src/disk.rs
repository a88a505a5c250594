//! Disk layout planning (pure: sizes in, offsets and GUIDs out) and the GPT writer.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use keel_contract::gpt::{Gpt, GptPartition};
use keel_contract::layout::{ALIGNMENT, PartitionRole, SECTOR_SIZE as SECTOR};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("partition table: {0}")]
    Gpt(#[from] keel_contract::gpt::GptError),
    #[error("{what} size {size} is not a whole number of MiB")]
    Unaligned { what: &'static str, size: u64 },
}

/// What a disk's GUIDs are derived from: one build of one image.
pub fn build_identity(image_name: &str, version: &str, root_hash_hex: &str) -> String {
    format!("{image_name}/{version}/{root_hash_hex}")
}

/// Derived, never random: the same inputs give the same GUIDs, build after build.
pub fn derive_uuid(parts: &[&str]) -> Uuid {
    let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://keel.invalid/ns/build");
    Uuid::new_v5(&namespace, parts.join("/").as_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    pub role: PartitionRole,
    pub offset: u64,
    pub size: u64,
    pub guid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub total_size: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PlannedPartition>,
}

/// Lays out ESP, KEEL-A, KEEL-B and STATE back to back from 1 MiB, each 1 MiB aligned, with
/// 1 MiB at the end for the backup table. DATA is not planned: the node creates it on first
/// boot to fill whatever disk it lands on.
///
/// The GUIDs are derived from `identity` (the build's name, version and root hash, see
/// [`build_identity`]): reproducible, yet different for every build, so the ESP GUID that
/// systemd-boot reports tells a node's boot disk from a Keel disk of another build next to
/// it. Copies of one image share them; the node refuses to choose between those.
pub fn plan(identity: &str, esp: u64, slot: u64, state: u64) -> Result<DiskPlan, DiskError> {
    for (what, size) in [("ESP", esp), ("slot", slot), ("STATE", state)] {
        if size == 0 || size % ALIGNMENT != 0 {
            return Err(DiskError::Unaligned { what, size });
        }
    }
    let mut offset = ALIGNMENT;
    let mut partitions = Vec::new();
    for (role, size) in [
        (PartitionRole::Esp, esp),
        (PartitionRole::SlotA, slot),
        (PartitionRole::SlotB, slot),
        (PartitionRole::State, state),
    ] {
        partitions.push(PlannedPartition {
            role,
            offset,
            size,
            guid: derive_uuid(&[identity, "partition", role.label()]),
        });
        offset += size;
    }
    Ok(DiskPlan {
        total_size: offset + ALIGNMENT,
        disk_guid: derive_uuid(&[identity, "disk"]),
        partitions,
    })
}

impl DiskPlan {
    pub fn partition(&self, role: PartitionRole) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    pub fn gpt(&self) -> Result<Gpt, DiskError> {
        let mut gpt = Gpt::new(self.disk_guid, self.total_size / SECTOR)?;
        for p in &self.partitions {
            gpt.partitions.push(GptPartition {
                type_guid: Uuid::parse_str(p.role.type_guid()).unwrap_or_default(),
                guid: p.guid,
                first_lba: p.offset / SECTOR,
                last_lba: (p.offset + p.size) / SECTOR - 1,
                attributes: 0,
                name: p.role.label().to_owned(),
            });
        }
        gpt.check()?;
        Ok(gpt)
    }
}

/// Creates the (sparse) disk file at its full size and writes both partition tables. A disk
/// that will hold secrets (`private`) is owner-only (0600) from its creation, not from the end
/// of the build: a build killed halfway must not leave a readable copy behind.
pub fn create_disk(path: &Path, plan: &DiskPlan, private: bool) -> Result<File, DiskError> {
    let io = |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    };
    let gpt = plan.gpt()?;
    let mut options = File::options();
    options.read(true).write(true).create_new(true);
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.set_len(plan.total_size).map_err(io)?;
    file.write_all(&gpt.primary_region()?).map_err(io)?;
    let (offset, backup) = gpt.backup_region()?;
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.write_all(&backup).map_err(io)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn plan_is_aligned_contiguous_and_derived() {
        let plan = plan("keel", 256 * MIB, 1024 * MIB, 32 * MIB).unwrap();
        let offsets: Vec<u64> = plan.partitions.iter().map(|p| p.offset / MIB).collect();
        assert_eq!(offsets, [1, 257, 1281, 2305]);
        assert_eq!(plan.total_size, (2305 + 32 + 1) * MIB);
        assert_eq!(
            plan,
            super::plan("keel", 256 * MIB, 1024 * MIB, 32 * MIB).unwrap()
        );
        assert_ne!(
            plan.disk_guid,
            super::plan("other", 256 * MIB, 1024 * MIB, 32 * MIB)
                .unwrap()
                .disk_guid
        );
        // Another version, or another root of the same version: other GUIDs everywhere.
        let esp = |identity: &str| {
            super::plan(identity, 256 * MIB, 1024 * MIB, 32 * MIB)
                .unwrap()
                .partition(PartitionRole::Esp)
                .unwrap()
                .guid
        };
        let v1 = esp(&build_identity("keel-worker", "1.0.0", "aa"));
        assert_eq!(v1, esp(&build_identity("keel-worker", "1.0.0", "aa")));
        assert_ne!(v1, esp(&build_identity("keel-worker", "1.0.1", "aa")));
        assert_ne!(v1, esp(&build_identity("keel-worker", "1.0.0", "bb")));
        let gpt = plan.gpt().unwrap();
        assert_eq!(gpt.partitions[1].name, "KEEL-A");
        assert_eq!(gpt.partitions[1].first_lba, 257 * MIB / 512);
    }

    #[test]
    fn unaligned_sizes_are_refused() {
        assert!(matches!(
            plan("keel", 256 * MIB + 1, MIB, MIB),
            Err(DiskError::Unaligned { what: "ESP", .. })
        ));
    }
}
