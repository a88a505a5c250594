//! Thin, checked wrappers over the system calls the init needs. Every one returns an error
//! naming what it was doing; none panics.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// An error from a system call, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SysError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

pub type SysResult<T> = Result<T, SysError>;

fn cstr(s: impl AsRef<OsStr>) -> SysResult<CString> {
    CString::new(s.as_ref().as_bytes()).map_err(|_| SysError {
        what: format!("{:?} contains a NUL byte", s.as_ref()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> SysResult<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(SysError {
            what: what(),
            source: io::Error::last_os_error(),
        })
    }
}

pub fn mount(
    source: &str,
    target: impl AsRef<Path>,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> SysResult<()> {
    let target = target.as_ref();
    let (s, t, f) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    let d = data.map(cstr).transpose()?;
    // SAFETY: all pointers are valid NUL-terminated strings or null for data.
    let ret = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    check(ret, || {
        format!("mount {source} on {} ({fstype})", target.display())
    })
}

/// Moves an existing mount (MS_MOVE).
pub fn move_mount(from: impl AsRef<Path>, to: impl AsRef<Path>) -> SysResult<()> {
    let (from, to) = (from.as_ref(), to.as_ref());
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid strings; fstype and data may be null for MS_MOVE.
    let ret = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    };
    check(ret, || {
        format!("move mount {} to {}", from.display(), to.display())
    })
}

pub fn umount(target: impl AsRef<Path>, flags: libc::c_int) -> SysResult<()> {
    let target = target.as_ref();
    let t = cstr(target)?;
    // SAFETY: valid string.
    let ret = unsafe { libc::umount2(t.as_ptr(), flags) };
    check(ret, || format!("umount {}", target.display()))
}

pub fn mkdir_p(path: impl AsRef<Path>, mode: u32) -> SysResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    let path = path.as_ref();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| SysError {
            what: format!("mkdir {}", path.display()),
            source,
        })
}

/// Loads a kernel module from a file. Already loaded is not an error.
pub fn finit_module(path: &Path, params: &str) -> SysResult<()> {
    let file = std::fs::File::open(path).map_err(|source| SysError {
        what: format!("open {}", path.display()),
        source,
    })?;
    let p = cstr(params)?;
    // SAFETY: a valid fd and NUL-terminated params string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            p.as_ptr(),
            0,
        )
    };
    if ret == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(SysError {
            what: format!("load module {}", path.display()),
            source: io::Error::last_os_error(),
        })
    }
}

pub fn sethostname(name: &str) -> SysResult<()> {
    // SAFETY: pointer and length describe the string's bytes.
    let ret = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    check(ret, || format!("sethostname {name}"))
}

pub fn chdir(path: impl AsRef<Path>) -> SysResult<()> {
    let path = path.as_ref();
    let p = cstr(path)?;
    // SAFETY: valid string.
    check(unsafe { libc::chdir(p.as_ptr()) }, || {
        format!("chdir {}", path.display())
    })
}

pub fn chroot(path: impl AsRef<Path>) -> SysResult<()> {
    let path = path.as_ref();
    let p = cstr(path)?;
    // SAFETY: valid string.
    check(unsafe { libc::chroot(p.as_ptr()) }, || {
        format!("chroot {}", path.display())
    })
}

/// Replaces this process (PID 1 stays PID 1). Returns only on failure.
pub fn exec(path: &str, args: &[&str], env: &[(&str, &str)]) -> SysError {
    let fail = |what: String| SysError {
        what,
        source: io::Error::from(io::ErrorKind::InvalidInput),
    };
    let Ok(prog) = cstr(path) else {
        return fail(format!("exec {path}"));
    };
    let Ok(argv) = args.iter().map(cstr).collect::<SysResult<Vec<_>>>() else {
        return fail(format!("exec {path}"));
    };
    let Ok(envp) = env
        .iter()
        .map(|(k, v)| cstr(format!("{k}={v}")))
        .collect::<SysResult<Vec<_>>>()
    else {
        return fail(format!("exec {path}"));
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: null-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(prog.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    SysError {
        what: format!("exec {path}"),
        source: io::Error::last_os_error(),
    }
}

/// CLOCK_BOOTTIME in seconds: time since the kernel started, suspend included.
pub fn boottime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

pub fn sync() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
}

/// reboot(2). Only returns on failure.
pub fn reboot(cmd: libc::c_int) -> SysError {
    sync();
    // SAFETY: plain syscall.
    unsafe { libc::reboot(cmd) };
    SysError {
        what: "reboot".into(),
        source: io::Error::last_os_error(),
    }
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once.
pub fn ctrl_alt_del_to_signal() {
    // SAFETY: plain syscall.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };
}

/// Makes glibc's allocator keep PID 1's memory close to what it uses. PID 1 lives as long as
/// the node and its RSS is reported at ready and after every upgrade. By default glibc gives
/// each thread that allocates an arena of its own (up to eight per core) and keeps what was
/// freed in each; and after a large buffer is freed it raises its mmap threshold, so later
/// large buffers (an upgrade's) come from an arena and stay there after use. One arena, and
/// large buffers always mapped and unmapped, make the RSS what is in use. Measured side by
/// side with the init before (BENCHMARKS.md): at ready 5.7-6.0 MiB -> 5.5 MiB in every boot,
/// after an upgrade's install 10.4-10.5 MiB -> 7.3-7.7 MiB, the timings unchanged.
/// Must run before any thread is started.
pub fn keep_malloc_compact() {
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

/// The node's memory in use and in all, in bytes: `MemTotal - MemAvailable` and `MemTotal`
/// from /proc/meminfo (what the kernel could not hand out without swapping; a diskless node's
/// root in RAM counts).
pub fn memory_in_use() -> Option<(u64, u64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
    Some((total.saturating_sub(available) * 1024, total * 1024))
}

/// The peak resident set size of this process in bytes (`VmHWM` in /proc/self/status): what
/// an upgrade's buffers cost PID 1 at most.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `PID 1 RSS 4.1 MiB (peak 9.3 MiB)`, for the console.
pub fn rss_summary() -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "PID 1 RSS {:.1} MiB (peak {:.1} MiB)",
        mib(rss_bytes().unwrap_or(0)),
        mib(peak_rss_bytes().unwrap_or(0))
    )
}

/// fsync a directory, so a rename in it is durable.
pub fn fsync_dir(path: impl AsRef<Path>) -> SysResult<()> {
    let path = path.as_ref();
    let dir = std::fs::File::open(path).map_err(|source| SysError {
        what: format!("open {}", path.display()),
        source,
    })?;
    dir.sync_all().map_err(|source| SysError {
        what: format!("fsync {}", path.display()),
        source,
    })
}

/// Renames `from` to `to` so that it survives a power cut, also on FAT: there, a renamed
/// file's new directory entry gets its size and first cluster only when the file's inode is
/// written back, which syncing the directory alone does not do (a power cut then leaves an
/// empty file under the new name). So the file is synced after the rename, then the
/// directory.
pub fn rename_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    std::fs::File::open(to)?.sync_all()?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
