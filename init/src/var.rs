//! DATA at `/var`: the node's data (etcd, containers, logs) and the one thing an upgrade or a
//! rollback must never lose.
//!
//! DATA is formatted only when Keel created the partition at this boot, or when STATE records
//! that it was created but never formatted (a power cut between the two). Anything else that
//! does not look like ext4 is a damaged filesystem, not an empty one: the node leaves it
//! alone and comes up degraded, saying so, rather than wiping it. Before a mount, `e2fsck -p`
//! (the root's e2fsprogs) repairs what it safely can, unless DATA's superblock shows it would
//! only find the filesystem clean ([`block::ext4`]: cleanly unmounted, no errors, no check
//! due; a mount that then fails runs it after all). What e2fsck cannot repair, and a mount that
//! fails after it, leave `/var` unmounted and the node degraded, not rebooting (a broken
//! `/var` is not the slot's fault, and the other slot would find it just as broken).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{block, config, services, sys};

/// STATE's record of DATA's filesystem: `formatting` before mkfs starts, `formatted` once it
/// finished (or once an existing filesystem was mounted).
pub const DATA_MARKER: &str = "data-fs";
const E2FSCK: &str = "/usr/sbin/e2fsck";
const MKFS: &str = "/usr/sbin/mkfs.ext4";
const FSCK_TIMEOUT: Duration = Duration::from_secs(600);
const MKFS_TIMEOUT: Duration = Duration::from_secs(600);

/// What STATE says about DATA's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Nothing: a node from before the marker, or STATE missing.
    Unknown,
    /// mkfs was started and did not finish.
    Formatting,
    Formatted,
}

impl Marker {
    pub fn read(state: &Path) -> Marker {
        match std::fs::read_to_string(state.join(DATA_MARKER))
            .as_deref()
            .map(str::trim)
        {
            Ok("formatting") => Marker::Formatting,
            Ok("formatted") => Marker::Formatted,
            _ => Marker::Unknown,
        }
    }
}

/// What to do with DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A new partition, or one whose formatting never finished.
    Format,
    /// An ext4 filesystem: check it, then mount it.
    CheckAndMount,
    /// Not ext4, and not known to be new: do not touch it.
    Refuse(String),
}

/// The decision, from what is known: pure.
pub fn plan(created_now: bool, has_ext4_magic: bool, marker: Marker) -> Plan {
    if has_ext4_magic {
        return Plan::CheckAndMount;
    }
    if created_now || marker == Marker::Formatting {
        return Plan::Format;
    }
    let why = match marker {
        Marker::Formatted => "STATE records that it was formatted",
        _ => "STATE does not record that it was never formatted",
    };
    Plan::Refuse(format!(
        "DATA has no ext4 superblock, and {why}: it is damaged, not new, so it is left as it \
         is (formatting would wipe /var); repair it from a backup superblock, e.g. \
         `e2fsck -b 32768 <device>`"
    ))
}

/// What `e2fsck -p` exiting with `code` means for the mount.
pub fn fsck_verdict(code: i32) -> Result<Option<&'static str>, String> {
    match code {
        0 => Ok(None),
        1 => Ok(Some("e2fsck repaired errors on DATA")),
        // "The system should be rebooted": only for a mounted root; DATA is not mounted.
        2 | 3 => Ok(Some("e2fsck repaired errors on DATA")),
        4..=7 => Err(format!(
            "e2fsck -p found errors on DATA it could not repair (exit {code}); run `e2fsck -f` on it"
        )),
        _ => Err(format!(
            "e2fsck -p could not check DATA (exit {code}: the superblock may be damaged)"
        )),
    }
}

/// DATA mounted at `/var`.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub device: PathBuf,
    /// A line worth a warning (repaired by e2fsck).
    pub note: Option<String>,
}

/// Why `/var` is not mounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/var is unavailable: {0}")]
pub struct Unavailable(pub String);

/// Finds or creates DATA on `disk`, and mounts it at `/var` as the module comment says.
pub fn mount(
    disk: &block::Disk,
    state: &Path,
    timeout: Duration,
    log: &dyn Fn(&str),
) -> Result<Mounted, Unavailable> {
    let fail = |e: String| Unavailable(e);
    let roots = block::Roots::default();
    if !block::data::data_in_table(&disk.path).map_err(|e| fail(e.to_string()))? {
        log(&format!(
            "creating DATA on {} (first boot)",
            disk.path.display()
        ));
        // Recorded before the partition is created: a power cut between its creation and the
        // end of mkfs then still lets the next boot format it.
        let _ = config::save(state, DATA_MARKER, "formatting\n");
    }
    let (data, created) =
        block::ensure_data_partition(&roots, disk, timeout).map_err(|e| fail(e.to_string()))?;
    check_format_and_mount(&data.path, created, state, log)
}

/// DATA's filesystem on `device`: formatted only when `created` (or STATE says its formatting
/// never finished), else checked by e2fsck; then mounted at `/var`.
pub fn check_format_and_mount(
    device: &Path,
    created: bool,
    state: &Path,
    log: &dyn Fn(&str),
) -> Result<Mounted, Unavailable> {
    let fail = |e: String| Unavailable(e);
    let device = device.to_path_buf();
    let shown = device.display().to_string();
    let magic = block::is_ext4(&device).map_err(|e| fail(e.to_string()))?;
    let note = match plan(created, magic, Marker::read(state)) {
        Plan::Refuse(why) => return Err(fail(why)),
        Plan::Format => {
            let _ = config::save(state, DATA_MARKER, "formatting\n");
            log(&format!("formatting {shown} as ext4"));
            let argv = [
                MKFS,
                "-F",
                "-q",
                "-L",
                "DATA",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                &shown,
            ];
            services::run_command(&argv.map(String::from), MKFS_TIMEOUT).map_err(fail)?;
            mount_at_var(&shown).map_err(fail)?;
            None
        }
        Plan::CheckAndMount => check_and_mount(&device, log).map_err(fail)?,
    };
    if Marker::read(state) != Marker::Formatted {
        let _ = config::save(state, DATA_MARKER, "formatted\n");
    }
    for dir in [services::LOG_DIR, "/var/lib/keel", "/var/lib/containerd"] {
        sys::mkdir_p(dir, 0o755).map_err(|e| fail(e.to_string()))?;
    }
    Ok(Mounted { device, note })
}

/// DATA checked by `e2fsck -p` and mounted at `/var`, or mounted at once when its superblock
/// shows e2fsck would only find it clean (a mount that then fails gets the check after all).
/// Returns a line worth a warning when e2fsck repaired something.
fn check_and_mount(device: &Path, log: &dyn Fn(&str)) -> Result<Option<String>, String> {
    let shown = device.display().to_string();
    let clean = block::ext4::read_superblock(device)
        .map(|sb| block::ext4::check_needed(&sb, unix_now()))
        .map_err(|e| e.to_string());
    match clean {
        Ok(None) => match mount_at_var(&shown) {
            Ok(()) => {
                log(&format!(
                    "DATA {shown} is clean (cleanly unmounted, no errors, no check due): \
                     mounted without e2fsck"
                ));
                return Ok(None);
            }
            Err(e) => log(&format!("warning: {e}; checking it with e2fsck")),
        },
        Ok(Some(why)) => log(&format!("DATA {shown}: {why}: checking it with e2fsck")),
        Err(e) => log(&format!("warning: {e}; checking it with e2fsck")),
    }
    let note = fsck(&shown, log)?;
    mount_at_var(&shown)?;
    Ok(note)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `e2fsck -p` on DATA: a line worth a warning when it repaired something.
fn fsck(shown: &str, log: &dyn Fn(&str)) -> Result<Option<String>, String> {
    let argv = [E2FSCK, "-p", shown].map(String::from);
    let code = services::run_command_code(&argv, FSCK_TIMEOUT)?;
    let note = fsck_verdict(code)?.map(str::to_owned);
    if let Some(n) = &note {
        log(&format!("warning: {n} ({shown})"));
    }
    Ok(note)
}

fn mount_at_var(shown: &str) -> Result<(), String> {
    sys::mount(
        shown,
        "/var",
        "ext4",
        libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(|e| format!("mounting {shown}: {e}"))
}

/// `/var` of a diskless node: a tmpfs (at most half the RAM, the kernel's default), lost at
/// power-off, unless its profile names a disk for it (`crate::vardisk`).
pub fn mount_tmpfs(log: &dyn Fn(&str)) -> Result<Mounted, Unavailable> {
    let fail = |e: String| Unavailable(e);
    sys::mount(
        "tmpfs",
        "/var",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|e| fail(format!("mounting a tmpfs at /var: {e}")))?;
    for dir in [services::LOG_DIR, "/var/lib/keel", "/var/lib/containerd"] {
        sys::mkdir_p(dir, 0o755).map_err(|e| fail(e.to_string()))?;
    }
    log("/var on tmpfs (diskless: nothing on it survives a reboot)");
    Ok(Mounted {
        device: PathBuf::from("tmpfs"),
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_formatted_only_when_new_or_never_formatted() {
        use Marker::*;
        assert_eq!(plan(true, false, Unknown), Plan::Format);
        assert_eq!(plan(false, false, Formatting), Plan::Format);
        for marker in [Unknown, Formatted] {
            let Plan::Refuse(why) = plan(false, false, marker) else {
                panic!("{marker:?}: a damaged superblock must not be formatted");
            };
            assert!(why.contains("e2fsck -b"), "{why}");
        }
        for (created, marker) in [(true, Unknown), (false, Formatted), (false, Formatting)] {
            assert_eq!(plan(created, true, marker), Plan::CheckAndMount);
        }
    }

    #[test]
    fn fsck_exit_codes() {
        assert_eq!(fsck_verdict(0), Ok(None));
        assert!(fsck_verdict(1).unwrap().is_some());
        assert!(fsck_verdict(4).unwrap_err().contains("could not repair"));
        assert!(fsck_verdict(8).unwrap_err().contains("superblock"));
    }

    #[test]
    fn the_marker_is_read_from_state() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Marker::read(dir.path()), Marker::Unknown);
        config::save(dir.path(), DATA_MARKER, "formatting\n").unwrap();
        assert_eq!(Marker::read(dir.path()), Marker::Formatting);
        config::save(dir.path(), DATA_MARKER, "formatted\n").unwrap();
        assert_eq!(Marker::read(dir.path()), Marker::Formatted);
    }

    /// e2fsck itself, on an ext4 image whose superblock magic was zeroed: `-p` refuses (exit
    /// 8), which the node takes as "leave it alone"; a backup superblock repairs it.
    #[test]
    fn e2fsck_refuses_a_zeroed_magic_and_a_backup_superblock_repairs_it() {
        let e2fsck = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("e2fsck (e2fsprogs, see vm-tests/install-host-packages)");
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mkfs.ext4");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("data.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap()
                .status
                .code()
                .unwrap_or(-1)
        };
        let path = img.display().to_string();
        assert_eq!(run(&[mkfs, "-q", "-F", "-b", "4096", &path]), 0);
        assert_eq!(run(&[e2fsck, "-p", &path]), 0);
        assert!(block::is_ext4(&img).unwrap());
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&[0, 0], block::EXT4_MAGIC_OFFSET).unwrap();
        assert!(!block::is_ext4(&img).unwrap());
        let code = run(&[e2fsck, "-p", &path]);
        assert!(fsck_verdict(code).is_err(), "exit {code}");
        let code = run(&[e2fsck, "-fy", "-b", "32768", "-B", "4096", &path]);
        assert!(code <= 1, "exit {code}");
        assert!(block::is_ext4(&img).unwrap());
    }
}
