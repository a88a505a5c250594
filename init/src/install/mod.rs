//! The installer (`[node.install]`): a node booted from an installer medium (a USB stick) or
//! from the network (PXE, `keel.root=`) writes the image it runs onto the internal disk the
//! profile selects by identity, makes the firmware boot that disk next, and reboots into it.
//! The installed node keeps this node's profile, secrets and certificates (STATE). What it
//! writes is read and verified by [`source`], the same way for both.
//!
//! It refuses, writing nothing, with one console line that becomes the node's degraded
//! reason: a selector that matches no disk or several, the disk it booted from, a disk in use,
//! a disk that holds partitions or data unless `wipe = true` ([`plan::choose`]). The order of
//! the writes is [`write`]'s. A medium that already installed onto a disk that the firmware
//! then did not boot says so instead of installing again, so a firmware that ignores the
//! boot order gives a node that explains itself, not an install loop; a network boot that
//! finds its target already holding Keel says so too.

pub mod disks;
pub mod plan;
pub mod source;
#[cfg(test)]
pub(crate) mod tests;
pub mod write;

use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_contract::gpt::Gpt;
use keel_contract::layout;
use keel_contract::manifest::Manifest;
use keel_contract::profile::Install;
use serde::{Deserialize, Serialize};

use crate::block::{self, Roots};
use crate::bootinfo::Handoff;
use disks::DiskInfo;
use plan::{Probe, Refusal};

/// How an install attempt ended (when it did not reboot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node booted from an internal disk: it is an installed node, nothing to do.
    Installed(String),
    /// Written and checked; the caller reboots into it.
    Done { disk: String },
    /// Nothing was written: why.
    Refused(String),
    /// Writing failed or did not read back: the disk was left without partition tables.
    Failed(String),
}

/// What a medium remembers of the install it made ([`layout::state::INSTALLED`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: String,
    pub disk: String,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub by_id: Vec<String>,
}

impl Record {
    fn names(&self, d: &DiskInfo) -> bool {
        (self.serial.is_some() && self.serial == d.identity.serial)
            || d.identity.by_id.iter().any(|n| self.by_id.contains(n))
    }
}

/// Where the running node's files are.
pub struct Running<'a> {
    pub handoff: &'a Handoff,
    pub esp: &'a Path,
    pub state: &'a Path,
}

/// Installs when this node booted from an installer medium or from the network; see the
/// module docs. `before_writing` runs once the disk is chosen, before its first byte is
/// written.
pub fn run(
    install: &Install,
    running: &Running<'_>,
    before_writing: &dyn Fn(),
    log: &dyn Fn(&str),
) -> Outcome {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let roots = Roots::default();
    let disks = match disks::inventory(&roots, &mountinfo) {
        Ok(d) => d,
        Err(e) => return Outcome::Refused(format!("listing the disks: {e}")),
    };
    let boot_name = running.handoff.disk().map(|(d, _)| d.name.as_str());
    match boot_name {
        Some(name) => match disks.iter().find(|d| d.disk.name == name) {
            Some(boot) if !boot.removable && !boot.usb => {
                return Outcome::Installed(boot.describe());
            }
            Some(boot) => log(&format!(
                "install: booted from {}, an installer medium",
                boot.describe()
            )),
            None => return Outcome::Refused(format!("the boot disk {name} is not in sysfs")),
        },
        None => log("install: booted from the network, with no boot disk"),
    }
    if let Some(refusal) = already_installed(running.state, &disks) {
        return Outcome::Refused(refusal.to_string());
    }
    let chosen = match plan::choose(install, &disks, boot_name, &mut probe) {
        Ok(d) => d,
        Err(refusal) => return Outcome::Refused(refusal.to_string()),
    };
    if boot_name.is_none() && read_table(&chosen.disk.path).is_ok_and(|t| plan::holds_keel(&t)) {
        let disk = chosen.describe();
        return Outcome::Refused(Refusal::NetworkBootOverKeel { disk }.to_string());
    }
    log(&format!("install: onto {}", chosen.describe()));
    let image = match source::running(running.handoff, running.esp, log) {
        Ok(image) => image,
        Err(e) => return Outcome::Refused(format!("reading the running image: {e}")),
    };
    before_writing();
    match install_onto(chosen, &image, running.state, log) {
        Ok(()) => Outcome::Done {
            disk: chosen.describe(),
        },
        Err(e) => Outcome::Failed(format!(
            "{e}; {} was left without partition tables",
            chosen.describe()
        )),
    }
}

fn already_installed(state: &Path, disks: &[DiskInfo]) -> Option<Refusal> {
    let text = std::fs::read_to_string(layout::on_volume(state, layout::state::INSTALLED)).ok()?;
    let record: Record = toml::from_str(&text).ok()?;
    disks
        .iter()
        .find(|d| record.names(d) && !d.partitions.is_empty())
        .map(|d| Refusal::AlreadyInstalled {
            disk: d.describe(),
            version: record.version.clone(),
        })
}

/// A candidate's first MiB (blank or not) and logical sector size; unreadable counts as
/// not blank and an unknown sector size as 0, which refuse.
fn probe(disk: &DiskInfo) -> Probe {
    let Ok(file) = block::open_read(&disk.disk.path) else {
        return Probe {
            blank: false,
            logical_sector: 0,
        };
    };
    let mut first = vec![0u8; 1 << 20];
    let blank = file.read_exact_at(&mut first, 0).is_ok() && first.iter().all(|&b| b == 0);
    Probe {
        blank,
        logical_sector: block::logical_sector_size(&file, &disk.disk.path).unwrap_or(0),
    }
}

fn install_onto(
    chosen: &DiskInfo,
    image: &source::Image,
    state: &Path,
    log: &dyn Fn(&str),
) -> Result<(), String> {
    let manifest = &image.manifest;
    // The disk's and its four partitions' GUIDs: random, so two installs never share them.
    let mut guids = fresh_guids(5)
        .map_err(|e| format!("/dev/urandom: {e}"))?
        .into_iter();
    let mut fresh = || guids.next().unwrap_or_default();
    let table = plan::target_table(&manifest.disk, chosen.identity.size, &mut fresh)
        .map_err(|e| e.to_string())?;
    let source = write::Source { image, state };
    write::install(&chosen.disk.path, &table, &source, log).map_err(|e| e.to_string())?;
    log(&format!(
        "install: {} {} is on {}; the partition tables are written last",
        manifest.name,
        manifest.version,
        chosen.describe()
    ));
    boot_next(&table, chosen, log);
    remember(state, chosen, manifest, log);
    Ok(())
}

fn read_table(disk: &Path) -> Result<Gpt, String> {
    let file = block::open_read(disk).map_err(|e| e.to_string())?;
    let size = block::device_size(&file, disk).map_err(|e| e.to_string())?;
    let mut primary = vec![0u8; 34 * layout::SECTOR_SIZE as usize];
    file.read_exact_at(&mut primary, 0)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    Gpt::parse_primary(&primary, size / layout::SECTOR_SIZE)
        .map_err(|e| format!("{}: {e}", disk.display()))
}

fn fresh_guids(n: usize) -> std::io::Result<Vec<uuid::Uuid>> {
    let mut bytes = vec![0u8; 16 * n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            uuid::Builder::from_random_bytes(b).into_uuid()
        })
        .collect())
}

/// Points the firmware at the new disk: BootNext for the next boot, first in BootOrder after
/// it. A firmware that refuses leaves a warning: the disk is installed either way.
fn boot_next(table: &Gpt, chosen: &DiskInfo, log: &dyn Fn(&str)) {
    let Some((number, esp)) = table.find(layout::PartitionRole::Esp.label()) else {
        return;
    };
    let location = crate::efiboot::EspLocation {
        partition_number: number,
        start_lba: esp.first_lba,
        size_lba: esp.last_lba + 1 - esp.first_lba,
        partition_guid: esp.guid,
    };
    let description = format!("{} ({})", layout::OS_NAME, chosen.describe());
    match crate::efiboot::boot_next_into(
        Path::new(layout::efi::EFIVARS_DIR),
        &location,
        &description,
    ) {
        Ok(n) => log(&format!(
            "install: the firmware boots Boot{n:04X} \"{description}\" next (BootNext, first in BootOrder)"
        )),
        Err(e) => log(&format!(
            "warning: install: setting the firmware's boot order: {e}; choose {} in the firmware's boot menu",
            chosen.describe()
        )),
    }
}

/// Writes the medium's install record (see [`already_installed`]).
fn remember(state: &Path, chosen: &DiskInfo, manifest: &Manifest, log: &dyn Fn(&str)) {
    let record = Record {
        version: format!("{} {}", manifest.name, manifest.version),
        disk: chosen.describe(),
        serial: chosen.identity.serial.clone(),
        by_id: chosen.identity.by_id.clone(),
    };
    let path = layout::on_volume(state, layout::state::INSTALLED);
    let written = toml::to_string(&record)
        .map_err(|e| e.to_string())
        .and_then(|text| std::fs::write(&path, text).map_err(|e| e.to_string()));
    if let Err(e) = written {
        log(&format!("warning: install: {}: {e}", path.display()));
    }
    crate::sys::sync();
}

/// `1.5 GiB`, `512 MiB`: sizes on the console.
pub fn human_size(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
