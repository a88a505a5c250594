//! Which disk stage 1 boots from when more than one carries Keel's partition labels (an old
//! system disk, a USB stick, a second Keel disk of another build).
//!
//! systemd-boot leaves the unique GUID of the ESP it was loaded from in the
//! `LoaderDevicePartUUID` EFI variable: the boot disk is the one whose partition table has a
//! partition with that GUID. Without the variable (another boot loader), a single disk with
//! the labels is taken, and several are refused: the first disk with a label is a guess, and a
//! guess can boot a foreign root or write a boot counter on the wrong disk.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use keel_contract::gpt::{Gpt, PRIMARY_BYTES};
use keel_contract::layout::SECTOR_SIZE;
use uuid::Uuid;

use super::sysfs::{self, Disk};
use super::{Roots, device_size, open_read};

/// A disk carrying the booted slot's label, with the unique GUIDs of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub disk: Disk,
    /// From the disk's GPT; empty when the table could not be read.
    pub partition_uuids: Vec<Uuid>,
}

/// Why a disk was taken, for the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// It holds the partition systemd-boot was loaded from.
    Loader(Uuid),
    /// No boot loader said, and it is the only disk with the label.
    OnlyDisk,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub disk: Disk,
    pub reason: Reason,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = self.disk.path.display();
        match self.reason {
            Reason::Loader(uuid) => {
                write!(
                    f,
                    "{disk} (it holds partition {uuid}, which systemd-boot booted from)"
                )
            }
            Reason::OnlyDisk => write!(
                f,
                "{disk} (the only disk with Keel's labels; the boot loader did not say which it booted from)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootDiskError {
    #[error("no disk has a partition labelled {label:?}")]
    NoDisk { label: String },
    #[error(
        "systemd-boot booted from partition {uuid}, which is on none of the disks with a partition labelled {label:?} ({disks})"
    )]
    LoaderPartitionElsewhere {
        uuid: Uuid,
        label: String,
        disks: String,
    },
    #[error(
        "systemd-boot booted from partition {uuid}, which is on several disks ({disks}): copies of one image; not guessing which to boot, remove all but one"
    )]
    LoaderPartitionOnSeveral { uuid: Uuid, disks: String },
    #[error(
        "a partition labelled {label:?} is on several disks ({disks}) and the boot loader did not say which it booted from (no LoaderDevicePartUUID EFI variable): not guessing, remove all but one"
    )]
    Ambiguous { label: String, disks: String },
}

impl BootDiskError {
    /// Whether looking again later can help: a disk that has not appeared yet. Two disks do
    /// not become one by waiting.
    pub fn may_resolve(&self) -> bool {
        matches!(
            self,
            BootDiskError::NoDisk { .. } | BootDiskError::LoaderPartitionElsewhere { .. }
        )
    }
}

fn names(disks: &[&Candidate]) -> String {
    disks
        .iter()
        .map(|c| c.disk.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The boot disk among the disks carrying `label` (the booted slot's), given the partition
/// systemd-boot says it was loaded from. Never the first of several.
pub fn choose(
    candidates: &[Candidate],
    loader: Option<Uuid>,
    label: &str,
) -> Result<Choice, BootDiskError> {
    let all: Vec<&Candidate> = candidates.iter().collect();
    if all.is_empty() {
        return Err(BootDiskError::NoDisk {
            label: label.to_owned(),
        });
    }
    let Some(uuid) = loader else {
        return match all.as_slice() {
            [only] => Ok(Choice {
                disk: only.disk.clone(),
                reason: Reason::OnlyDisk,
            }),
            _ => Err(BootDiskError::Ambiguous {
                label: label.to_owned(),
                disks: names(&all),
            }),
        };
    };
    let holding: Vec<&Candidate> = all
        .iter()
        .copied()
        .filter(|c| c.partition_uuids.contains(&uuid))
        .collect();
    match holding.as_slice() {
        [one] => Ok(Choice {
            disk: one.disk.clone(),
            reason: Reason::Loader(uuid),
        }),
        [] => Err(BootDiskError::LoaderPartitionElsewhere {
            uuid,
            label: label.to_owned(),
            disks: names(&all),
        }),
        _ => Err(BootDiskError::LoaderPartitionOnSeveral {
            uuid,
            disks: names(&holding),
        }),
    }
}

/// The unique GUIDs of the partitions in `disk`'s primary GPT.
fn partition_uuids(disk: &Disk) -> super::Result<Vec<Uuid>> {
    let file = open_read(&disk.path)?;
    let sectors = device_size(&file, &disk.path)? / SECTOR_SIZE;
    let mut primary = vec![0u8; PRIMARY_BYTES as usize];
    file.read_exact_at(&mut primary, 0)
        .map_err(super::io_err("read partition table of", &disk.path))?;
    let table = Gpt::parse_primary(&primary, sectors).map_err(|source| super::BlockError::Gpt {
        path: disk.path.clone(),
        source,
    })?;
    Ok(table.partitions.iter().map(|p| p.guid).collect())
}

/// The disks that have a partition labelled `label`, with their partition GUIDs. A table that
/// cannot be read leaves the disk without GUIDs (it then matches no loader partition) and is
/// reported through `warn`.
pub fn candidates(
    roots: &Roots,
    label: &str,
    warn: &dyn Fn(&str),
) -> super::Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = Vec::new();
    for part in sysfs::find_partitions(roots, label)? {
        if out.iter().any(|c| c.disk.name == part.disk.name) {
            continue;
        }
        let partition_uuids = partition_uuids(&part.disk).unwrap_or_else(|e| {
            warn(&format!("{e}"));
            Vec::new()
        });
        out.push(Candidate {
            disk: part.disk,
            partition_uuids,
        });
    }
    Ok(out)
}

/// Looks for the boot disk until it is found, the answer cannot change (two disks), or
/// `timeout` passes: disks appear one by one as their drivers probe.
pub fn wait_for_boot_disk(
    roots: &Roots,
    label: &str,
    loader: Option<Uuid>,
    timeout: Duration,
    warn: &dyn Fn(&str),
    poll: &mut dyn FnMut(),
) -> Result<Choice, String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        // Stage 1 loads drivers for devices that appeared meanwhile (a USB disk shows up
        // after its controller's driver has enumerated the bus).
        poll();
        let found = candidates(roots, label, &|_| {}).map_err(|e| e.to_string())?;
        let error = match choose(&found, loader, label) {
            Ok(choice) => return Ok(choice),
            Err(e) if !e.may_resolve() => return Err(e.to_string()),
            Err(e) => e,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            // Say once, at the end, what made a table unreadable.
            let _ = candidates(roots, label, warn);
            return Err(format!("{error} (waited {} ms)", waited.as_millis()));
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn disk(name: &str) -> Disk {
        Disk {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            major: 254,
            minor: 0,
        }
    }

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn candidate(name: &str, uuids: &[u128]) -> Candidate {
        Candidate {
            disk: disk(name),
            partition_uuids: uuids.iter().map(|&n| uuid(n)).collect(),
        }
    }

    #[test]
    fn the_loaders_partition_picks_the_disk_whatever_its_order() {
        let found = [candidate("vda", &[1, 2, 3]), candidate("vdb", &[7, 8, 9])];
        let choice = choose(&found, Some(uuid(7)), "KEEL-A").unwrap();
        assert_eq!(choice.disk.name, "vdb");
        assert_eq!(choice.reason, Reason::Loader(uuid(7)));
        assert_eq!(
            choose(&found, Some(uuid(1)), "KEEL-A").unwrap().disk.name,
            "vda"
        );
        assert!(choice.to_string().contains("/dev/vdb"), "{choice}");
    }

    #[test]
    fn a_loader_partition_on_no_candidate_is_not_the_first_disk() {
        let found = [candidate("vda", &[1]), candidate("vdb", &[2])];
        let e = choose(&found, Some(uuid(5)), "KEEL-A").unwrap_err();
        assert!(
            matches!(e, BootDiskError::LoaderPartitionElsewhere { .. }),
            "{e}"
        );
        assert!(
            e.may_resolve(),
            "the loader's disk may not have appeared yet"
        );
        // Even with a single candidate: the loader said another disk.
        let e = choose(&found[..1], Some(uuid(5)), "KEEL-A").unwrap_err();
        assert!(e.to_string().contains("/dev/vda"), "{e}");
    }

    #[test]
    fn copies_of_one_image_are_refused() {
        let found = [candidate("vda", &[1, 2]), candidate("sda", &[1, 2])];
        let e = choose(&found, Some(uuid(1)), "KEEL-A").unwrap_err();
        assert!(
            matches!(e, BootDiskError::LoaderPartitionOnSeveral { .. }) && !e.may_resolve(),
            "{e}"
        );
        let text = e.to_string();
        assert!(
            text.contains("/dev/vda") && text.contains("/dev/sda"),
            "{text}"
        );
    }

    #[test]
    fn without_the_loader_one_disk_is_taken_and_two_are_refused() {
        let one = [candidate("nvme0n1", &[])];
        let choice = choose(&one, None, "KEEL-B").unwrap();
        assert_eq!(
            (choice.disk.name.as_str(), choice.reason),
            ("nvme0n1", Reason::OnlyDisk)
        );
        let two = [candidate("vda", &[1]), candidate("vdb", &[2])];
        let e = choose(&two, None, "KEEL-B").unwrap_err();
        assert!(matches!(e, BootDiskError::Ambiguous { .. }) && !e.may_resolve());
        let text = e.to_string();
        assert!(
            text.contains("/dev/vda")
                && text.contains("/dev/vdb")
                && text.contains("LoaderDevicePartUUID"),
            "{text}"
        );
    }

    #[test]
    fn no_disk_yet_is_worth_waiting_for() {
        let e = choose(&[], Some(uuid(1)), "KEEL-A").unwrap_err();
        assert_eq!(
            e,
            BootDiskError::NoDisk {
                label: "KEEL-A".into()
            }
        );
        assert!(e.may_resolve());
    }

    #[test]
    fn reads_partition_guids_from_a_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut gpt = Gpt::new(uuid(100), 8192).unwrap();
        gpt.partitions.push(keel_contract::gpt::GptPartition {
            type_guid: Uuid::parse_str(keel_contract::layout::type_guid::ESP).unwrap(),
            guid: uuid(42),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
            name: "ESP".into(),
        });
        let mut bytes = gpt.primary_region().unwrap();
        bytes.resize(8192 * 512, 0);
        std::fs::write(&path, bytes).unwrap();
        let d = Disk {
            path: path.clone(),
            ..disk("img")
        };
        assert_eq!(partition_uuids(&d).unwrap(), [uuid(42)]);
        std::fs::write(&path, [0u8; 512 * 40]).unwrap();
        let e = partition_uuids(&d).unwrap_err().to_string();
        assert!(e.contains("disk.img"), "{e}");
    }
}
