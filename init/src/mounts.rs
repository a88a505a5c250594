//! The mounts of stage 2: writable paths on a read-only root.

use crate::sys::{self, SysResult};

/// /etc: an overlay whose upper layer is a tmpfs, so the node can write its generated
/// configuration (hostname, resolv.conf, containerd's config) while /etc in the image stays
/// read-only and verified.
const ETC_OVERLAY: &str = "/run/keel/etc-overlay";

pub fn stage2_basics() -> SysResult<()> {
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV;
    sys::mount("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777"))?;
    sys::mkdir_p("/dev/pts", 0o755)?;
    sys::mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    sys::mkdir_p("/dev/shm", 0o1777)?;
    sys::mount("tmpfs", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    sys::mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid | libc::MS_NOEXEC,
        Some("nsdelegate"),
    )?;
    // Symlinks that many programs expect under /dev.
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        let _ = std::fs::remove_file(link);
        let _ = std::os::unix::fs::symlink(target, link);
    }
    Ok(())
}

/// Needs the overlay module loaded.
pub fn etc_overlay() -> SysResult<()> {
    sys::mkdir_p(ETC_OVERLAY, 0o755)?;
    sys::mount(
        "tmpfs",
        ETC_OVERLAY,
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )?;
    sys::mkdir_p(format!("{ETC_OVERLAY}/upper"), 0o755)?;
    sys::mkdir_p(format!("{ETC_OVERLAY}/work"), 0o755)?;
    sys::mount(
        "overlay",
        "/etc",
        "overlay",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&format!(
            "lowerdir=/etc,upperdir={ETC_OVERLAY}/upper,workdir={ETC_OVERLAY}/work"
        )),
    )
}

/// efivarfs, to read systemd-boot's variables (boot counting, timings).
pub fn efivars() -> SysResult<()> {
    sys::mount(
        "efivarfs",
        "/sys/firmware/efi/efivars",
        "efivarfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// A FAT partition: the ESP at /efi (for blessing and upgrades) or STATE at /state, private
/// to root.
pub fn fat(device: &str, target: &str) -> SysResult<()> {
    sys::mkdir_p(target, 0o700)?;
    sys::mount(
        device,
        target,
        "vfat",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("fmask=0177,dmask=0077,flush"),
    )
}

/// The mount points that keep `target` busy, to unmount before it, last mounted first: bind
/// mounts of its filesystem elsewhere (the CNI directories at `/opt` and `/etc/cni`), mounts
/// below it, and overlays with a directory on it (`/opt/cni/bin`'s upper layer). From
/// `/proc/self/mountinfo`'s text; `None` when `target` is not a mount point. Pure.
pub fn holding(mountinfo: &str, target: &str) -> Option<Vec<String>> {
    let entries: Vec<Vec<&str>> = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() >= 10)
        .collect();
    let device = entries
        .iter()
        .rev()
        .find(|f| f[4] == target)
        .map(|f| f[2])?;
    let below = format!("{}/", target.trim_end_matches('/'));
    let holders = entries
        .iter()
        .rev()
        .filter(|f| f[4] != target)
        .filter(|f| {
            let options = f.last().copied().unwrap_or_default();
            f[2] == device
                || f[4].starts_with(&below)
                || options.split(',').any(|o| {
                    o.split_once('=')
                        .is_some_and(|(_, v)| v.split(':').any(|d| d.starts_with(&below)))
                })
        })
        .map(|f| f[4].to_owned())
        .collect();
    Some(holders)
}

#[cfg(test)]
mod tests {
    use super::holding;

    #[test]
    fn what_holds_var_is_found_last_mounted_first() {
        let mountinfo = "\
22 1 0:21 / /proc rw,relatime - proc proc rw
40 1 254:5 / /var rw,nosuid,nodev,relatime - ext4 /dev/vda5 rw
41 1 254:5 /lib/keel/cni/opt /opt rw,nosuid,nodev - ext4 /dev/vda5 rw
42 41 0:50 / /opt/cni/bin rw,nosuid,nodev - overlay overlay rw,lowerdir=/usr/lib/cni,upperdir=/var/lib/keel/cni/bin,workdir=/var/lib/keel/cni/work
43 1 254:5 /lib/keel/cni/net.d /etc/cni/net.d rw,nosuid,nodev,noexec - ext4 /dev/vda5 rw
44 40 0:60 / /var/lib/kubelet/pods/x/volumes/tmp rw - tmpfs tmpfs rw
45 1 0:61 / /run/other rw - tmpfs tmpfs rw,size=10k
46 1 254:1 / /efi rw - vfat /dev/vda1 rw
";
        assert_eq!(
            holding(mountinfo, "/var").unwrap(),
            [
                "/var/lib/kubelet/pods/x/volumes/tmp",
                "/etc/cni/net.d",
                "/opt/cni/bin",
                "/opt"
            ]
        );
        assert_eq!(holding(mountinfo, "/efi"), Some(Vec::new()));
        assert_eq!(holding(mountinfo, "/nowhere"), None);
    }
}
