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
