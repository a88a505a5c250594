//! The disks an installer may choose from, read from sysfs (there is no udev on a node):
//! each one's identity (serial, WWN, model, the `/dev/disk/by-id` names udev would give it,
//! size), whether it is removable or on USB, its partitions, and what holds it (a mount, a
//! device-mapper device). Names follow udev's `60-persistent-storage.rules` for the buses
//! servers boot from (NVMe, SATA, virtio, USB); `serial` is the portable way to name a disk.

use std::fs;
use std::path::{Path, PathBuf};

use keel_contract::profile::DiskIdentity;

use crate::block::{self, BlockDevice, Disk, Roots};

/// A whole disk, as the installer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub disk: Disk,
    pub identity: DiskIdentity,
    /// The kernel's `removable` flag (USB sticks, card readers).
    pub removable: bool,
    /// Whether it hangs off a USB controller (USB hard disks say they are not removable).
    pub usb: bool,
    /// The sysfs names of the partitions the kernel knows on it.
    pub partitions: Vec<String>,
    /// Why it is in use (a mounted file system, a device-mapper device over it), if it is.
    pub in_use: Option<String>,
}

impl DiskInfo {
    /// How the console names it: its first by-id name, else its serial, then the kernel
    /// name and size for the reader's convenience.
    pub fn describe(&self) -> String {
        let id = self
            .identity
            .by_id
            .first()
            .cloned()
            .or_else(|| self.identity.serial.as_ref().map(|s| format!("serial {s}")))
            .unwrap_or_else(|| "no serial".into());
        format!(
            "{id} ({}, {})",
            self.disk.name,
            super::human_size(self.identity.size)
        )
    }
}

/// Every whole disk but virtual ones (loop, ram, zram, dm, md, sr: nothing to install to).
pub fn inventory(roots: &Roots, mountinfo: &str) -> block::Result<Vec<DiskInfo>> {
    let devices = block::sysfs::scan(roots)?;
    let mut out = Vec::new();
    for dev in devices.iter().filter(|d| !d.is_partition()) {
        if ["loop", "ram", "zram", "dm-", "md", "sr", "nbd"]
            .iter()
            .any(|p| dev.name.starts_with(p))
        {
            continue;
        }
        out.push(describe_disk(roots, &devices, dev, mountinfo));
    }
    Ok(out)
}

fn describe_disk(
    roots: &Roots,
    devices: &[BlockDevice],
    dev: &BlockDevice,
    mountinfo: &str,
) -> DiskInfo {
    let dir = roots.sys.join("class/block").join(&dev.name);
    let partitions: Vec<&BlockDevice> = devices
        .iter()
        .filter(|p| p.disk.as_deref() == Some(dev.name.as_str()))
        .collect();
    let device_dir = fs::canonicalize(dir.join("device")).unwrap_or_default();
    let usb = device_dir.to_string_lossy().contains("/usb");
    let size = read(&dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |sectors| sectors * 512);
    let serial = serial(&dir, &device_dir);
    let model = read(&dir.join("device/model"));
    let wwn = read(&dir.join("wwid")).or_else(|| read(&dir.join("device/wwid")));
    let vendor = read(&dir.join("device/vendor"));
    let by_id = by_id_names(&Names {
        kernel: &dev.name,
        usb,
        vendor: vendor.as_deref(),
        model: model.as_deref(),
        serial: serial.as_deref(),
        wwn: wwn.as_deref(),
        nsid: read(&dir.join("nsid")).as_deref(),
        lun: scsi_lun(&device_dir).as_deref(),
    });
    let mut held: Vec<(u32, u32, String)> =
        vec![(dev.uevent.major, dev.uevent.minor, dev.name.clone())];
    held.extend(
        partitions
            .iter()
            .map(|p| (p.uevent.major, p.uevent.minor, p.name.clone())),
    );
    let in_use = held.iter().find_map(|(major, minor, name)| {
        mounted_at(mountinfo, *major, *minor)
            .map(|at| format!("{name} is mounted at {at}"))
            .or_else(|| holder(roots, name).map(|h| format!("{name} is held by {h}")))
    });
    DiskInfo {
        disk: Disk {
            name: dev.name.clone(),
            path: dev.dev_path(roots),
            major: dev.uevent.major,
            minor: dev.uevent.minor,
        },
        identity: DiskIdentity {
            serial,
            wwn,
            model,
            by_id,
            size,
        },
        removable: read(&dir.join("removable")).as_deref() == Some("1"),
        usb,
        partitions: partitions.iter().map(|p| p.name.clone()).collect(),
        in_use,
    }
}

/// A sysfs attribute, trimmed; `None` when absent or empty.
fn read(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// The serial number: virtio-blk's `serial`, NVMe's controller `serial`, SCSI/SATA VPD page
/// 0x80 (the Unit Serial Number page: a 4-byte header, then the serial), else the USB
/// device's own `serial` string.
fn serial(dir: &Path, device_dir: &Path) -> Option<String> {
    read(&dir.join("serial"))
        .or_else(|| read(&dir.join("device/serial")))
        .or_else(|| {
            let page = fs::read(dir.join("device/vpd_pg80")).ok()?;
            let len = usize::from(*page.get(3)?);
            let text = String::from_utf8_lossy(page.get(4..4 + len)?)
                .trim()
                .to_owned();
            (!text.is_empty()).then_some(text)
        })
        .or_else(|| {
            device_dir
                .ancestors()
                .find(|a| a.join("idVendor").exists())
                .and_then(|usb_dev| read(&usb_dev.join("serial")))
        })
}

/// The SCSI address's `target:lun` of a SCSI disk (`2:0:0:0` gives `0:0`), which udev puts
/// at the end of USB disks' names.
fn scsi_lun(device_dir: &Path) -> Option<String> {
    let name = device_dir.file_name()?.to_string_lossy().into_owned();
    let parts: Vec<&str> = name.split(':').collect();
    (parts.len() == 4).then(|| format!("{}:{}", parts[2], parts[3]))
}

/// Where `major:minor` is mounted, from `/proc/self/mountinfo` (field 3 is `major:minor`,
/// field 5 the mount point).
pub fn mounted_at(mountinfo: &str, major: u32, minor: u32) -> Option<String> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        (fields.get(2) == Some(&want.as_str())).then(|| fields.get(4).unwrap_or(&"?").to_string())
    })
}

/// A device stacked on `name` (`/sys/class/block/NAME/holders`: dm-verity over a slot,
/// a RAID member...).
fn holder(roots: &Roots, name: &str) -> Option<String> {
    let dir = roots.sys.join("class/block").join(name).join("holders");
    let mut entries = fs::read_dir(dir).ok()?;
    entries
        .next()
        .and_then(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// What udev builds a disk's by-id names from.
pub struct Names<'a> {
    pub kernel: &'a str,
    pub usb: bool,
    pub vendor: Option<&'a str>,
    pub model: Option<&'a str>,
    pub serial: Option<&'a str>,
    pub wwn: Option<&'a str>,
    pub nsid: Option<&'a str>,
    pub lun: Option<&'a str>,
}

/// udev's by-id names for a disk (`60-persistent-storage.rules`), as far as sysfs tells
/// them: `nvme-<model>_<serial>` (and with `_<nsid>`), `nvme-eui.…`, `virtio-<serial>`,
/// `ata-<model>_<serial>` for SATA disks (SCSI vendor "ATA"), `usb-<vendor>_<model>_<serial>-<target>:<lun>`,
/// `wwn-0x…` for NAA WWNs.
pub fn by_id_names(n: &Names<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let model = n.model.map(udev_clean);
    let serial = n.serial.map(udev_clean);
    if n.kernel.starts_with("nvme") {
        if let (Some(m), Some(s)) = (&model, &serial) {
            out.push(format!("nvme-{m}_{s}"));
            if let Some(ns) = n.nsid {
                out.push(format!("nvme-{m}_{s}_{ns}"));
            }
        }
        if let Some(eui) = n.wwn.filter(|w| w.starts_with("eui.")) {
            out.push(format!("nvme-{eui}"));
        }
    } else if n.kernel.starts_with("vd") {
        if let Some(s) = &serial {
            out.push(format!("virtio-{}", s.chars().take(20).collect::<String>()));
        }
    } else if n.usb {
        if let (Some(m), Some(s)) = (&model, &serial) {
            let vendor = n.vendor.map(udev_clean).unwrap_or_default();
            let lun = n.lun.unwrap_or("0:0");
            out.push(format!("usb-{vendor}_{m}_{s}-{lun}"));
        }
    } else if n.vendor.map(str::trim) == Some("ATA")
        && let (Some(m), Some(s)) = (&model, &serial)
    {
        out.push(format!("ata-{m}_{s}"));
    }
    if let Some(naa) = n.wwn.and_then(|w| w.strip_prefix("naa.")) {
        out.push(format!("wwn-0x{}", naa.to_ascii_lowercase()));
    }
    out
}

/// udev's cleaning of a sysfs string for a link name: trimmed, runs of white space become
/// one `_`, and characters outside `[A-Za-z0-9#+-.:=@_]` become `_`.
pub fn udev_clean(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "#+-.:=@_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The by-id path of `name`, for messages.
pub fn by_id_path(name: &str) -> PathBuf {
    Path::new(keel_contract::profile::install::BY_ID_DIR).join(name)
}
