//! Finding block devices and partitions in sysfs, as udev would, without udev.
//!
//! Each entry of `/sys/class/block` has a `uevent` file with the kernel's own description of
//! the device (`MAJOR`, `MINOR`, `DEVNAME`, `DEVTYPE`, and for GPT partitions with a name
//! `PARTN` and `PARTNAME`). devtmpfs creates `/dev/<DEVNAME>` by itself, so the path follows.
//! A partition's sysfs directory sits inside its disk's, which is how we find the disk.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{BlockError, Result, Roots, io_err};

/// The fields of a block device's `uevent` file that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub major: u32,
    pub minor: u32,
    /// Path relative to /dev.
    pub devname: String,
    /// `disk` or `partition`.
    pub devtype: Option<String>,
    pub partn: Option<u32>,
    pub partname: Option<String>,
}

/// Parses a `uevent` file. Unknown keys are ignored; `MAJOR`, `MINOR` and `DEVNAME` are
/// required because without them there is no device node to open.
pub fn parse_uevent(text: &str) -> std::result::Result<Uevent, String> {
    let (mut major, mut minor, mut devname) = (None, None, None);
    let (mut devtype, mut partn, mut partname) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{key}={v:?} is not a number"))
        };
        match key {
            "MAJOR" => major = Some(number(value)?),
            "MINOR" => minor = Some(number(value)?),
            "PARTN" => partn = Some(number(value)?),
            "DEVNAME" => devname = Some(value.to_owned()),
            "DEVTYPE" => devtype = Some(value.to_owned()),
            "PARTNAME" => partname = Some(value.to_owned()),
            _ => {}
        }
    }
    let devname: String = devname.ok_or("no DEVNAME")?;
    if devname.is_empty() || devname.split('/').any(|c| c == "..") {
        return Err(format!("unusable DEVNAME {devname:?}"));
    }
    Ok(Uevent {
        major: major.ok_or("no MAJOR")?,
        minor: minor.ok_or("no MINOR")?,
        devname,
        devtype,
        partn,
        partname,
    })
}

/// One entry of `/sys/class/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The sysfs name (`vda2`, `nvme0n1p2`, `loop3p5`).
    pub name: String,
    pub uevent: Uevent,
    /// For partitions, the sysfs name of the disk that holds it.
    pub disk: Option<String>,
}

impl BlockDevice {
    pub fn is_partition(&self) -> bool {
        self.uevent.devtype.as_deref() == Some("partition") || self.uevent.partn.is_some()
    }

    pub fn dev_path(&self, roots: &Roots) -> PathBuf {
        roots.dev.join(&self.uevent.devname)
    }
}

/// A whole disk (stage 1 hands it to stage 2 as JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disk {
    /// sysfs name.
    pub name: String,
    /// Device node under the /dev root.
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
}

/// A partition and the disk that holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    pub name: String,
    pub path: PathBuf,
    pub major: u32,
    pub minor: u32,
    /// 1-based number in the partition table.
    pub number: u32,
    /// The GPT partition name, when the kernel read it from the table. Partitions added with
    /// BLKPG have none until the table is read again (next boot).
    pub label: Option<String>,
    pub disk: Disk,
}

fn read_uevent(dir: &Path) -> io::Result<std::result::Result<Uevent, String>> {
    Ok(parse_uevent(&fs::read_to_string(dir.join("uevent"))?))
}

/// Lists `/sys/class/block`. Entries that vanish while we look, or whose uevent makes no
/// sense, are left out: devices come and go during boot and one odd device must not stop us
/// from finding ours.
pub fn scan(roots: &Roots) -> Result<Vec<BlockDevice>> {
    let class = roots.sys.join("class/block");
    let mut out = Vec::new();
    for entry in fs::read_dir(&class).map_err(io_err("list", &class))? {
        let entry = entry.map_err(io_err("list", &class))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(device) = describe(&class.join(&name), name) {
            out.push(device);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads one sysfs block device directory (or a symlink to one).
fn describe(link: &Path, name: String) -> Option<BlockDevice> {
    let uevent = read_uevent(link).ok()?.ok()?;
    let mut device = BlockDevice {
        name,
        uevent,
        disk: None,
    };
    if device.is_partition() {
        let real = fs::canonicalize(link).ok()?;
        let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
        device.disk = Some(disk);
    }
    Some(device)
}

fn disk_named(roots: &Roots, devices: &[BlockDevice], name: &str) -> Option<Disk> {
    let d = devices
        .iter()
        .find(|d| d.name == name && !d.is_partition())?;
    Some(Disk {
        name: d.name.clone(),
        path: d.dev_path(roots),
        major: d.uevent.major,
        minor: d.uevent.minor,
    })
}

fn as_partition(roots: &Roots, devices: &[BlockDevice], d: &BlockDevice) -> Option<Partition> {
    let disk = disk_named(roots, devices, d.disk.as_deref()?)?;
    Some(Partition {
        name: d.name.clone(),
        path: d.dev_path(roots),
        major: d.uevent.major,
        minor: d.uevent.minor,
        number: d.uevent.partn?,
        label: d.uevent.partname.clone(),
        disk,
    })
}

/// Every partition labelled `label`, on any disk.
pub fn find_partitions(roots: &Roots, label: &str) -> Result<Vec<Partition>> {
    let devices = scan(roots)?;
    Ok(devices
        .iter()
        .filter(|d| d.uevent.partname.as_deref() == Some(label))
        .filter_map(|d| as_partition(roots, &devices, d))
        .collect())
}

/// The partition labelled `label`, if exactly one disk has it. Two would mean two Keel disks
/// (a second installed node disk, an installer stick): booting from a guess is worse than
/// stopping with both names on the console.
pub fn find_partition(roots: &Roots, label: &str) -> Result<Option<Partition>> {
    let mut found = find_partitions(roots, label)?;
    if found.len() > 1 {
        return Err(BlockError::AmbiguousLabel {
            label: label.to_owned(),
            devices: found
                .iter()
                .map(|p| p.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(found.pop())
}

/// The partition of `disk` labelled `label`, ignoring other disks.
pub fn find_partition_on(roots: &Roots, disk: &Disk, label: &str) -> Result<Option<Partition>> {
    Ok(find_partitions(roots, label)?
        .into_iter()
        .find(|p| p.disk.name == disk.name))
}

/// Partition `number` of `disk`, labelled or not.
pub fn find_partition_number(roots: &Roots, disk: &Disk, number: u32) -> Result<Option<Partition>> {
    let devices = scan(roots)?;
    Ok(devices
        .iter()
        .filter(|d| d.disk.as_deref() == Some(disk.name.as_str()) && d.uevent.partn == Some(number))
        .find_map(|d| as_partition(roots, &devices, d)))
}

/// Start and size in 512-byte sectors, as the kernel has them (`start` and `size` in sysfs).
pub fn partition_extent(roots: &Roots, partition: &Partition) -> Result<(u64, u64)> {
    let dir = roots.sys.join("class/block").join(&partition.name);
    let read = |file: &str| -> Result<u64> {
        let path = dir.join(file);
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        text.trim().parse().map_err(|_| BlockError::Device {
            path: path.clone(),
            reason: format!("not a number: {:?}", text.trim()),
        })
    };
    Ok((read("start")?, read("size")?))
}

/// The disk holding the block device `major:minor`; the device itself if it is a disk.
/// Found through `/sys/dev/block/MAJOR:MINOR`, which links to its sysfs directory.
pub fn disk_of_devnum(roots: &Roots, major: u32, minor: u32) -> Result<Disk> {
    let link = roots.sys.join(format!("dev/block/{major}:{minor}"));
    let real = fs::canonicalize(&link).map_err(io_err("resolve", &link))?;
    let uevent = read_uevent(&real)
        .map_err(io_err("read uevent of", &real))?
        .map_err(|reason| BlockError::Device {
            path: real.clone(),
            reason,
        })?;
    let dir = if uevent.devtype.as_deref() == Some("partition") || uevent.partn.is_some() {
        real.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        real
    };
    let disk = read_uevent(&dir)
        .map_err(io_err("read uevent of", &dir))?
        .map_err(|reason| BlockError::Device {
            path: dir.clone(),
            reason,
        })?;
    Ok(Disk {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: roots.dev.join(&disk.devname),
        major: disk.major,
        minor: disk.minor,
    })
}

/// The disk holding the block device node at `path` (or the device itself if it is a disk).
pub fn disk_for(roots: &Roots, path: &Path) -> Result<Disk> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::metadata(path).map_err(io_err("stat", path))?;
    if !meta.file_type().is_block_device() {
        return Err(BlockError::Device {
            path: path.to_path_buf(),
            reason: "not a block device".into(),
        });
    }
    let rdev = meta.rdev();
    disk_of_devnum(roots, libc::major(rdev), libc::minor(rdev))
}

/// Polls `find` until it returns something or `timeout` passes. Disks appear asynchronously
/// after their driver probes (virtio, NVMe and USB all take a while), and there is no udev to
/// tell us, so we look again every few tens of milliseconds.
fn wait_for<T>(
    roots: &Roots,
    what: impl FnOnce() -> String,
    timeout: Duration,
    mut find: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(found) = find()? {
            return Ok(found);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(BlockError::Timeout {
                what: what(),
                waited_ms: waited.as_millis(),
                seen: summary(roots),
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// What the kernel has, for timeout messages: the console is all a failed boot leaves.
fn summary(roots: &Roots) -> String {
    match scan(roots) {
        Ok(devices) if devices.is_empty() => "none".into(),
        Ok(devices) => devices
            .iter()
            .map(|d| match &d.uevent.partname {
                Some(label) => format!("{} {label:?}", d.name),
                None => d.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unknown: {e}"),
    }
}

/// Waits until a partition labelled `label` appears (see [`find_partition`]).
pub fn wait_for_partition(roots: &Roots, label: &str, timeout: Duration) -> Result<Partition> {
    wait_for(
        roots,
        || format!("a partition labelled {label:?}"),
        timeout,
        || find_partition(roots, label),
    )
}

/// Waits until partition `number` of `disk` appears.
pub fn wait_for_partition_number(
    roots: &Roots,
    disk: &Disk,
    number: u32,
    timeout: Duration,
) -> Result<Partition> {
    wait_for(
        roots,
        || format!("partition {number} of {}", disk.name),
        timeout,
        || find_partition_number(roots, disk, number),
    )
}

/// Waits until a device node exists. devtmpfs creates nodes before the ioctl or uevent that
/// announced them returns, so this normally succeeds at once; the wait covers a /dev that is
/// not devtmpfs-backed as a clear timeout rather than a confusing ENOENT later.
pub fn wait_for_node(roots: &Roots, path: &Path, timeout: Duration) -> Result<()> {
    wait_for(
        roots,
        || format!("device node {}", path.display()),
        timeout,
        || Ok(path.exists().then_some(())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PART: &str = "MAJOR=259\nMINOR=3\nDEVNAME=nvme0n1p2\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=2\nPARTNAME=KEEL-A\n";

    #[test]
    fn parses_a_partition_uevent() {
        let u = parse_uevent(PART).unwrap();
        assert_eq!(
            u,
            Uevent {
                major: 259,
                minor: 3,
                devname: "nvme0n1p2".into(),
                devtype: Some("partition".into()),
                partn: Some(2),
                partname: Some("KEEL-A".into()),
            }
        );
    }

    #[test]
    fn parses_a_disk_uevent_and_rejects_broken_ones() {
        let u = parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=1\n").unwrap();
        assert_eq!(
            (u.partn, u.partname, u.devtype.as_deref()),
            (None, None, Some("disk"))
        );
        assert_eq!(
            parse_uevent("MAJOR=1\nMINOR=2\n").unwrap_err(),
            "no DEVNAME"
        );
        assert_eq!(
            parse_uevent("MINOR=2\nDEVNAME=x\n").unwrap_err(),
            "no MAJOR"
        );
        assert!(parse_uevent("MAJOR=x\nMINOR=2\nDEVNAME=x\n").is_err());
        assert!(parse_uevent("MAJOR=1\nMINOR=2\nDEVNAME=../etc\n").is_err());
        // A label may contain '=' and spaces; only the first '=' splits.
        let u = parse_uevent("MAJOR=1\nMINOR=2\nDEVNAME=sda1\nPARTN=1\nPARTNAME=a=b c\n").unwrap();
        assert_eq!(u.partname.as_deref(), Some("a=b c"));
    }

    /// A fake sysfs laid out like the real one: devices under `devices/`, with
    /// `class/block/<name>` and `dev/block/M:m` symlinks into it.
    struct FakeSys {
        root: PathBuf,
        roots: Roots,
    }

    impl FakeSys {
        fn new(tag: &str) -> Self {
            // Unique per call: tests run in parallel threads of one process, and several
            // use the same tag.
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let root = std::env::temp_dir()
                .join(format!("keel-fake-sysfs-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("sys/class/block")).unwrap();
            fs::create_dir_all(root.join("sys/dev/block")).unwrap();
            let roots = Roots {
                sys: root.join("sys"),
                dev: root.join("dev"),
            };
            FakeSys { root, roots }
        }

        fn add(&self, rel_dir: &str, major: u32, minor: u32, extra: &str) {
            let dir = self.roots.sys.join("devices").join(rel_dir);
            fs::create_dir_all(&dir).unwrap();
            let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
            let devtype = if extra.contains("PARTN=") {
                "partition"
            } else {
                "disk"
            };
            fs::write(
                dir.join("uevent"),
                format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE={devtype}\n{extra}"),
            )
            .unwrap();
            symlink(
                format!("../../devices/{rel_dir}"),
                self.roots.sys.join("class/block").join(&name),
            )
            .unwrap();
            symlink(
                format!("../../devices/{rel_dir}"),
                self.roots.sys.join(format!("dev/block/{major}:{minor}")),
            )
            .unwrap();
        }

        fn standard() -> Self {
            let s = FakeSys::new("std");
            s.add("pci0/virtio1/block/vda", 254, 0, "");
            s.add(
                "pci0/virtio1/block/vda/vda1",
                254,
                1,
                "PARTN=1\nPARTNAME=ESP\n",
            );
            s.add(
                "pci0/virtio1/block/vda/vda2",
                254,
                2,
                "PARTN=2\nPARTNAME=KEEL-A\n",
            );
            s.add("pci0/virtio1/block/vda/vda5", 254, 5, "PARTN=5\n");
            s.add("virtual/block/loop0", 7, 0, "");
            s
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn finds_a_partition_and_its_disk_by_label() {
        let s = FakeSys::standard();
        let p = find_partition(&s.roots, "KEEL-A").unwrap().unwrap();
        assert_eq!(p.name, "vda2");
        assert_eq!(p.path, s.roots.dev.join("vda2"));
        assert_eq!((p.major, p.minor, p.number), (254, 2, 2));
        assert_eq!(p.label.as_deref(), Some("KEEL-A"));
        assert_eq!(p.disk.name, "vda");
        assert_eq!(p.disk.path, s.roots.dev.join("vda"));
        assert_eq!(find_partition(&s.roots, "KEEL-B").unwrap(), None);
        assert_eq!(
            find_partition_on(&s.roots, &p.disk, "ESP")
                .unwrap()
                .unwrap()
                .name,
            "vda1"
        );
    }

    #[test]
    fn finds_unlabelled_partitions_by_number_and_disks_by_devnum() {
        let s = FakeSys::standard();
        let disk = disk_of_devnum(&s.roots, 254, 2).unwrap();
        assert_eq!(disk.name, "vda");
        assert_eq!(disk_of_devnum(&s.roots, 254, 0).unwrap(), disk);
        assert_eq!(disk_of_devnum(&s.roots, 7, 0).unwrap().name, "loop0");
        assert!(disk_of_devnum(&s.roots, 9, 9).is_err());
        let p5 = find_partition_number(&s.roots, &disk, 5).unwrap().unwrap();
        assert_eq!((p5.name.as_str(), p5.label.as_deref()), ("vda5", None));
        assert_eq!(find_partition_number(&s.roots, &disk, 3).unwrap(), None);
    }

    #[test]
    fn a_label_on_two_disks_is_an_error() {
        let s = FakeSys::standard();
        s.add("pci0/usb/block/sda", 8, 0, "");
        s.add(
            "pci0/usb/block/sda/sda2",
            8,
            2,
            "PARTN=2\nPARTNAME=KEEL-A\n",
        );
        let e = find_partition(&s.roots, "KEEL-A").unwrap_err().to_string();
        assert!(e.contains("sda2") && e.contains("vda2"), "{e}");
        assert_eq!(find_partitions(&s.roots, "ESP").unwrap().len(), 1);
    }

    #[test]
    fn broken_entries_are_skipped() {
        let s = FakeSys::standard();
        fs::create_dir_all(s.roots.sys.join("devices/virtual/block/odd")).unwrap();
        fs::write(
            s.roots.sys.join("devices/virtual/block/odd/uevent"),
            "MAJOR=1\n",
        )
        .unwrap();
        symlink(
            "../../devices/virtual/block/odd",
            s.roots.sys.join("class/block/odd"),
        )
        .unwrap();
        symlink("../../devices/gone", s.roots.sys.join("class/block/gone")).unwrap();
        let names: Vec<String> = scan(&s.roots)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["loop0", "vda", "vda1", "vda2", "vda5"]);
    }

    #[test]
    fn waiting_sees_a_late_partition_and_times_out_with_a_summary() {
        let s = FakeSys::standard();
        let sys = s.roots.clone();
        let adder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            let dir = sys.sys.join("devices/pci0/virtio1/block/vda/vda4");
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("uevent"),
                "MAJOR=254\nMINOR=4\nDEVNAME=vda4\nDEVTYPE=partition\nPARTN=4\nPARTNAME=STATE\n",
            )
            .unwrap();
            symlink(
                "../../devices/pci0/virtio1/block/vda/vda4",
                sys.sys.join("class/block/vda4"),
            )
            .unwrap();
        });
        let p = wait_for_partition(&s.roots, "STATE", Duration::from_secs(10)).unwrap();
        adder.join().unwrap();
        assert_eq!(p.name, "vda4");

        let start = Instant::now();
        let e = wait_for_partition(&s.roots, "DATA", Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(200));
        let text = e.to_string();
        assert!(
            text.contains("\"DATA\"") && text.contains("vda2 \"KEEL-A\""),
            "{text}"
        );
    }
}
