//! fork/exec without std::process: std waits for the child itself when `exec` fails, which
//! would race with the reaper (and std panics if the reaper won), and std cannot put the
//! child in its own session.
//!
//! Everything the child needs is allocated before `fork`; between `fork` and `exec` the
//! child only makes async-signal-safe calls, because other threads may have held the
//! allocator's lock at the moment of the fork.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Pid;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run. stdin is always /dev/null; a missing stdout or stderr is /dev/null too.
/// The child runs in a new session (so its process group id is its pid), with default
/// signal dispositions and an empty signal mask, and only the file descriptors 0-2.
#[derive(Debug)]
pub struct ProcessSpec<'a> {
    /// Program and arguments; a program without `/` is looked up in `PATH` from `env`.
    pub argv: &'a [String],
    /// The complete environment (`PATH` gets a default when missing).
    pub env: &'a [(String, String)],
    pub working_dir: Option<&'a Path>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A process could not be started. The message names the program (or directory) involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    /// Set when the fork happened but exec (or the setup before it) failed: that child exits
    /// with status 127 and the reaper discards its status.
    pub(crate) pid: Option<Pid>,
    message: String,
}

impl SpawnError {
    fn new(message: String) -> SpawnError {
        SpawnError { pid: None, message }
    }
}

/// Which step of the child's setup failed, sent through the error pipe.
const STAGE_SETSID: u32 = 1;
const STAGE_STDIO: u32 = 2;
const STAGE_CHDIR: u32 = 3;
const STAGE_EXEC: u32 = 4;

/// A close-on-exec pipe: (read end, write end), both above the standard descriptors.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Moves a descriptor to 3 or above so that the child's dup2 onto 0, 1 and 2 can never
/// overwrite another descriptor it still needs (possible when PID 1 started with 0-2
/// closed).
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new one or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn open_dev_null() -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated literal.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    above_stdio(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::new(format!("{what} contains a NUL byte")))
}

fn resolve(program: &str, path: &str) -> Result<PathBuf, SpawnError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(SpawnError::new(format!(
        "cannot find {program} in PATH {path}"
    )))
}

/// Starts the process and returns its pid once `exec` has succeeded. The caller must make
/// sure the reaper will claim the pid (see `Reaper::spawn`).
pub(crate) fn fork_exec(spec: ProcessSpec<'_>) -> Result<Pid, SpawnError> {
    let ExecStrings {
        exe,
        exe_c,
        argv_c,
        env_c,
        cwd_c,
    } = exec_strings(&spec)?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());

    let io_err = |what: &str, e: io::Error| SpawnError::new(format!("{what}: {e}"));
    let null = open_dev_null().map_err(|e| io_err("cannot open /dev/null", e))?;
    let stdout = spec.stdout.map(above_stdio).transpose();
    let stdout = stdout.map_err(|e| io_err("cannot set up stdout", e))?;
    let stderr = spec.stderr.map(above_stdio).transpose();
    let stderr = stderr.map_err(|e| io_err("cannot set up stderr", e))?;
    let (err_r, err_w) = pipe().map_err(|e| io_err("cannot create a pipe", e))?;
    let fds = ChildFds {
        stdin: null.as_raw_fd(),
        stdout: stdout.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd()),
        stderr: stderr.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd()),
        report: err_w.as_raw_fd(),
    };

    // Signals stay blocked from just before the fork until the child has reset every
    // handler, so the child never runs one of the parent's handlers.
    // SAFETY: sigset_t is plain data initialised by sigfillset/sigemptyset.
    let (mut all, mut empty, mut saved): (libc::sigset_t, libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: valid pointers to sigset_t values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
    }
    // SAFETY: the child branch only calls async-signal-safe functions (see `child`).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the freshly forked child; every pointer refers to memory allocated
        // above, which the fork copied.
        unsafe { child(&fds, &exe_c, &argv_p, &env_p, cwd_c.as_ref(), &empty) }
    }
    let fork_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    // Our copies of the child's ends must be closed before waiting for the error pipe's EOF
    // (only err_w matters for that, but the others would keep the output pipes open).
    drop((err_w, null, stdout, stderr));
    if pid < 0 {
        return Err(io_err("fork failed", fork_error));
    }

    match read_child_report(std::fs::File::from(err_r)) {
        None => Ok(pid),
        Some((stage, error)) => Err(SpawnError {
            pid: Some(pid),
            message: describe_child_failure(stage, &error, &exe, spec.working_dir),
        }),
    }
}

/// Everything `exec` needs, as C strings made before the fork (the child must not allocate).
struct ExecStrings {
    exe: PathBuf,
    exe_c: CString,
    argv_c: Vec<CString>,
    env_c: Vec<CString>,
    cwd_c: Option<CString>,
}

fn exec_strings(spec: &ProcessSpec<'_>) -> Result<ExecStrings, SpawnError> {
    let Some(program) = spec.argv.first() else {
        return Err(SpawnError::new("empty command line".into()));
    };
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let exe = resolve(program, path_var)?;
    let exe_c = cstring("program path", exe.as_os_str().as_bytes())?;
    let argv_c = spec
        .argv
        .iter()
        .map(|a| cstring("an argument", a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env_c = spec
        .env
        .iter()
        .map(|(k, v)| cstring("the environment", format!("{k}={v}").as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        env_c.push(cstring("PATH", format!("PATH={DEFAULT_PATH}").as_bytes())?);
    }
    let cwd_c = match spec.working_dir {
        Some(dir) => Some(cstring("working directory", dir.as_os_str().as_bytes())?),
        None => None,
    };
    Ok(ExecStrings {
        exe,
        exe_c,
        argv_c,
        env_c,
        cwd_c,
    })
}

/// Reads the child's failure report from the error pipe: nothing (EOF at `exec`, which closes
/// the pipe) means it started; otherwise the stage that failed and its errno.
fn read_child_report(mut file: std::fs::File) -> Option<(u32, io::Error)> {
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match file.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if got == 0 {
        return None;
    }
    let stage = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]);
    let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
    Some((stage, io::Error::from_raw_os_error(errno)))
}

fn describe_child_failure(
    stage: u32,
    error: &io::Error,
    exe: &Path,
    working_dir: Option<&Path>,
) -> String {
    match stage {
        STAGE_SETSID => format!("setsid failed for {}: {error}", exe.display()),
        STAGE_STDIO => format!("cannot set up stdio for {}: {error}", exe.display()),
        STAGE_CHDIR => format!(
            "cannot change directory to {}: {error}",
            working_dir.map_or_else(String::new, |d| d.display().to_string())
        ),
        STAGE_EXEC => format!("cannot execute {}: {error}", exe.display()),
        _ => format!(
            "cannot start {}: unexpected report from child",
            exe.display()
        ),
    }
}

struct ChildFds {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

/// The child between fork and exec.
///
/// # Safety
/// Must be called only in a freshly forked child, with pointers to NUL-terminated arrays.
unsafe fn child(
    fds: &ChildFds,
    exe: &CString,
    argv: &[*const libc::c_char],
    env: &[*const libc::c_char],
    cwd: Option<&CString>,
    empty: &libc::sigset_t,
) -> ! {
    // SAFETY: the whole body makes only async-signal-safe calls, on memory prepared before
    // the fork (the caller's contract), so nothing here takes a lock another thread held.
    unsafe {
        // Handlers do not survive exec anyway, but ignored signals would (the Rust runtime
        // ignores SIGPIPE, for one). The raw system call, because glibc refuses to touch the
        // two real-time signals it reserves, and those can be inherited as ignored too. An
        // all-zero kernel sigaction is SIG_DFL with no flags and an empty mask, whatever the
        // architecture's field order.
        let dfl = [0u64; 4];
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, empty, std::ptr::null_mut());
        // Own session: the console's Ctrl-C never reaches services, and stopping a service
        // can signal its whole process group.
        if libc::setsid() < 0 {
            report(fds.report, STAGE_SETSID);
        }
        for (from, to) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)] {
            if libc::dup2(from, to) < 0 {
                report(fds.report, STAGE_STDIO);
            }
        }
        if let Some(dir) = cwd
            && libc::chdir(dir.as_ptr()) < 0
        {
            report(fds.report, STAGE_CHDIR);
        }
        libc::execve(exe.as_ptr(), argv.as_ptr(), env.as_ptr());
        report(fds.report, STAGE_EXEC)
    }
}

/// Sends the stage and errno to the parent and exits; async-signal-safe.
unsafe fn report(fd: RawFd, stage: u32) -> ! {
    // SAFETY: errno location is thread-local and valid; write/_exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&stage.to_ne_bytes());
        buf[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

/// Signals a service's process group (its pid, as it is a session leader), falling back to
/// the process alone.
pub(crate) fn signal_group(pid: Pid, signal: libc::c_int) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill has no memory effects.
    unsafe {
        if libc::kill(-pid, signal) < 0 {
            libc::kill(pid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_in_path() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin").unwrap(),
            Path::new("/bin/sh")
        );
        assert_eq!(resolve("./x", "").unwrap(), Path::new("./x"));
        let err = resolve("no-such-program-keel", "/bin:/usr/bin").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot find no-such-program-keel in PATH /bin:/usr/bin"
        );
    }

    #[test]
    fn pipes_are_above_stdio_and_cloexec() {
        let (r, w) = pipe().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            assert!(fd > 2);
            // SAFETY: F_GETFD only reads the descriptor's flags; `fd` is open.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
    }

    #[test]
    fn nul_bytes_are_spawn_errors() {
        let argv = vec!["/bin/true".to_string(), "a\0b".to_string()];
        let spec = ProcessSpec {
            argv: &argv,
            env: &[],
            working_dir: None,
            stdout: None,
            stderr: None,
        };
        let err = fork_exec(spec).unwrap_err();
        assert_eq!(err.pid, None, "nothing was forked");
        assert_eq!(err.to_string(), "an argument contains a NUL byte");
    }
}
