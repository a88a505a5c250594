//! Running apt with an isolated state, and the lock that keeps builds sharing a package
//! cache from downloading the same file at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{DebianError, apt_failure, io_err, write};

/// The isolated apt state: a scratch directory holding the status file, preferences and
/// extended states, and the options that point apt at them.
pub(super) struct AptEnv {
    _scratch: tempfile::TempDir,
    pub(super) status: PathBuf,
    pub(super) preferences: PathBuf,
    options: Vec<String>,
}

impl AptEnv {
    pub(super) fn new() -> Result<Self, DebianError> {
        let scratch = tempfile::Builder::new()
            .prefix("keel-apt-")
            .tempdir()
            .map_err(io_err(&std::env::temp_dir()))?;
        let dir = scratch.path();
        let status = dir.join("status");
        let preferences = dir.join("preferences");
        let preferences_d = dir.join("preferences.d");
        write(&status, "")?;
        write(&preferences, "")?;
        std::fs::create_dir(&preferences_d).map_err(io_err(&preferences_d))?;
        let o = |kv: String| ["-o".to_string(), kv];
        let options = [
            o(format!("Dir::State::status={}", status.display())),
            o(format!(
                "Dir::State::extended_states={}",
                dir.join("extended_states").display()
            )),
            o(format!("Dir::Etc::preferences={}", preferences.display())),
            o(format!(
                "Dir::Etc::PreferencesParts={}",
                preferences_d.display()
            )),
            // In-memory package cache: nothing is written under /var/cache/apt (which needs
            // root), and the host's cache never mixes with our fake status.
            o("Dir::Cache::pkgcache=".into()),
            o("Dir::Cache::srcpkgcache=".into()),
            o("Debug::NoLocking=1".into()),
            o("APT::Install-Recommends=false".into()),
            o("APT::Install-Suggests=false".into()),
            // Our preferences decide the release; a host-wide default would outrank them.
            o("APT::Default-Release=".into()),
        ]
        .concat();
        Ok(AptEnv {
            _scratch: scratch,
            status,
            preferences,
            options,
        })
    }

    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.arg("-q");
        if program == "apt-get" {
            cmd.arg("-y");
        }
        cmd.args(&self.options)
            .args(args)
            // Parsed output must not be translated.
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .stdin(Stdio::null());
        cmd
    }

    pub(super) fn run_unchecked(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<Output, DebianError> {
        self.command(program, args)
            .output()
            .map_err(|source| DebianError::Spawn {
                program: program.to_string(),
                source,
            })
    }

    pub(super) fn run(&self, program: &str, args: &[String]) -> Result<Output, DebianError> {
        let out = self.run_unchecked(program, args)?;
        if out.status.success() {
            Ok(out)
        } else {
            let verb = args
                .iter()
                .find(|a| !a.starts_with('-'))
                .map_or("", String::as_str);
            Err(apt_failure(&format!("{program} {verb}"), &out))
        }
    }
}

/// An exclusive `flock` on a file in the cache, released when dropped (or when the process
/// dies, which a lock file with a pid inside would not handle).
pub(super) struct CacheLock {
    _file: File,
}

impl CacheLock {
    pub(super) fn acquire(path: &Path) -> Result<Self, DebianError> {
        use std::os::fd::AsRawFd;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        loop {
            // SAFETY: flock only reads the descriptor, which `file` keeps open.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err(path)(err));
            }
        }
        Ok(CacheLock { _file: file })
    }
}
