//! What `keel flash` writes to: a block device (refused while anything uses it) or a file.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::FlashError;

/// A block device number.
pub type DevNum = (u32, u32);

#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Device(DevNum),
    File,
}

/// `major:minor` of a `dev_t` (glibc's encoding).
pub fn dev_num(dev: u64) -> DevNum {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// A block device at least as large as the image, or a regular file (existing or new, in
/// an existing directory); anything else is bad input naming the path.
pub fn inspect(path: &Path, image_size: u64) -> Result<Kind, FlashError> {
    let bad = |message: String| FlashError::BadInput {
        path: path.to_path_buf(),
        message,
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if parent.is_some_and(|p| !p.is_dir()) {
                return Err(bad("its directory does not exist".into()));
            }
            return Ok(Kind::File);
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let kind = meta.file_type();
    if kind.is_block_device() {
        let mut dev = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let size = dev.seek(SeekFrom::End(0)).map_err(|e| bad(e.to_string()))?;
        if size < image_size {
            return Err(bad(format!(
                "the device has {size} bytes, the image needs {image_size}"
            )));
        }
        Ok(Kind::Device(dev_num(meta.rdev())))
    } else if kind.is_file() {
        Ok(Kind::File)
    } else {
        Err(bad("neither a block device nor a regular file".into()))
    }
}

/// Why the device must not be overwritten, if anything uses it: a mount of it, of one of its
/// partitions or of a device stacked on them (dm, md), or swap on them.
pub fn in_use(dev: &DevNum) -> Result<Option<String>, FlashError> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let swaps: Vec<DevNum> = read("/proc/swaps")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| dev_num(m.rdev()))
        .collect();
    Ok(users(
        Path::new("/sys/dev/block"),
        *dev,
        &read("/proc/self/mountinfo"),
        &swaps,
    ))
}

/// [`in_use`] over a given sysfs `dev/block` directory, mountinfo text and swap devices.
pub fn users(
    sys_dev_block: &Path,
    dev: DevNum,
    mountinfo: &str,
    swaps: &[DevNum],
) -> Option<String> {
    let family = family(sys_dev_block, dev);
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(num), Some(mount_point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let Some(num) = parse_dev(num) else {
            continue;
        };
        if family.contains(&num) {
            let what = if *mount_point == "/" {
                "holds / (the running system)".to_owned()
            } else {
                format!("mounted at {mount_point}")
            };
            return Some(format!("{what} (device {}:{})", num.0, num.1));
        }
    }
    swaps
        .iter()
        .find(|s| family.contains(s))
        .map(|s| format!("in use as swap (device {}:{})", s.0, s.1))
}

fn parse_dev(text: &str) -> Option<DevNum> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The device, its partitions and everything stacked on any of them (`holders`), as sysfs
/// shows them under `/sys/dev/block/MAJ:MIN`.
fn family(sys_dev_block: &Path, dev: DevNum) -> BTreeSet<DevNum> {
    let mut out = BTreeSet::from([dev]);
    let mut stack: Vec<PathBuf> = vec![sys_dev_block.join(format!("{}:{}", dev.0, dev.1))];
    let mut depth = 0;
    while let Some(dir) = stack.pop() {
        depth += 1;
        if depth > 256 {
            break; // sysfs has no loops here; this only bounds a surprise
        }
        let Ok(dir) = dir.canonicalize() else {
            continue;
        };
        let mut children: Vec<PathBuf> = Vec::new();
        // Partitions are subdirectories with a `partition` file.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            children.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("partition").is_file()),
            );
        }
        if let Ok(entries) = std::fs::read_dir(dir.join("holders")) {
            children.extend(entries.flatten().map(|e| e.path()));
        }
        for child in children {
            let num = std::fs::read_to_string(child.join("dev"))
                .ok()
                .and_then(|t| parse_dev(&t));
            if let Some(num) = num
                && out.insert(num)
            {
                stack.push(child);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_dir(root: &Path, rel: &str, num: &str, partition: bool) -> PathBuf {
        let dir = root.join(rel);
        std::fs::create_dir_all(dir.join("holders")).unwrap();
        std::fs::write(dir.join("dev"), format!("{num}\n")).unwrap();
        if partition {
            std::fs::write(dir.join("partition"), "1\n").unwrap();
        }
        dir
    }

    #[test]
    fn a_mounted_partition_a_stacked_device_or_swap_makes_the_disk_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Like sysfs: devices/.../sda with partition sda1, dm-0 on sda1; dev/block/ links.
        let sda = dev_dir(root, "devices/sda", "8:0", false);
        let sda1 = dev_dir(root, "devices/sda/sda1", "8:1", true);
        dev_dir(root, "devices/sda/sda2", "8:2", true);
        let dm = dev_dir(root, "devices/virtual/dm-0", "254:0", false);
        std::os::unix::fs::symlink(&dm, sda1.join("holders/dm-0")).unwrap();
        let links = root.join("dev/block");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(&sda, links.join("8:0")).unwrap();
        dev_dir(root, "devices/sdb", "8:16", false);
        std::os::unix::fs::symlink(root.join("devices/sdb"), links.join("8:16")).unwrap();

        let line =
            |num: &str, at: &str| format!("36 35 {num} / {at} rw,relatime - ext4 /dev/x rw\n");
        let sda = (8, 0);
        assert_eq!(users(&links, sda, &line("8:16", "/mnt"), &[]), None);
        assert_eq!(
            users(&links, sda, &line("8:2", "/boot"), &[]).as_deref(),
            Some("mounted at /boot (device 8:2)")
        );
        assert_eq!(
            users(&links, sda, &line("254:0", "/"), &[]).as_deref(),
            Some("holds / (the running system) (device 254:0)")
        );
        assert_eq!(
            users(&links, sda, "", &[(8, 1)]).as_deref(),
            Some("in use as swap (device 8:1)")
        );
        assert_eq!(users(&links, (8, 16), &line("8:2", "/boot"), &[]), None);
    }

    #[test]
    fn dev_t_decodes_like_glibc() {
        assert_eq!(dev_num(0x0801), (8, 1));
        assert_eq!(dev_num(0x0001_0301), (259, 1));
        assert_eq!(dev_num(0x0010_0800), (8, 256));
    }
}
