//! What a service is (its spec) and where it stands (its status).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{ExitStatus, Pid};

/// How a service's health is judged. Dependents start only once it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Healthy as soon as the process has been started.
    ProcessAlive,
    /// Healthy when a connection to this Unix stream socket succeeds.
    UnixSocket(PathBuf),
    /// Healthy when `GET path` on `127.0.0.1:port` (HTTP/1.1, keel-http) answers 2xx.
    Http { port: u16, path: String },
    /// Healthy when this command (program + args, run with the service's environment) exits
    /// with status 0 within [`ServiceSpec::health_timeout`].
    Exec(Vec<String>),
}

/// When a service is started again after its process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    /// Only after a non-zero exit or a death by signal.
    OnFailure,
    Never,
}

/// Delays between restarts: `initial`, doubling up to `max`; back to `initial` when the
/// process had stayed up for at least `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// Where a service's output goes. Lines longer than 8 KiB are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    /// Echo each line to the console sink as `[name] line`.
    pub console: bool,
    /// Append each line to `<log_dir>/<name>.log`.
    pub file: bool,
    /// Rotate the log file before it would grow past this many bytes.
    pub max_file_size: u64,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            console: true,
            file: true,
            max_file_size: 1024 * 1024,
        }
    }
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique; also the log file name, so it may not contain `/` or NUL.
    pub name: String,
    /// Program and arguments. A program without `/` is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment: the init's own environment is not inherited. `PATH` is set
    /// to `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` unless given.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// Services that must be healthy (or have finished successfully, for one-shots) before
    /// this one starts, every time it starts.
    pub depends_on: Vec<String>,
    pub health: Health,
    /// Time between health checks once healthy. Until the first success, checks run at
    /// least every 100 ms so dependents start promptly.
    pub health_interval: Duration,
    /// Bound on one health check (connect, HTTP answer, or the `Exec` command).
    pub health_timeout: Duration,
    /// Failed checks during this time after a start are expected and not reported.
    pub startup_grace: Duration,
    pub restart: Restart,
    pub backoff: Backoff,
    /// Time between SIGTERM and SIGKILL in [`Supervisor::stop_all`](super::Supervisor::stop_all).
    pub stop_timeout: Duration,
    pub log: LogSettings,
}

impl ServiceSpec {
    /// A spec with the defaults: process-alive health, restart always, default backoff,
    /// 10 s stop timeout, output to console and log file.
    pub fn new(name: impl Into<String>, argv: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            working_dir: None,
            depends_on: Vec::new(),
            health: Health::ProcessAlive,
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(5),
            startup_grace: Duration::from_secs(30),
            restart: Restart::Always,
            backoff: Backoff::default(),
            stop_timeout: Duration::from_secs(10),
            log: LogSettings::default(),
        }
    }
}

/// Where a service is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceState {
    /// Not started yet: waiting for its dependencies to become healthy.
    Waiting,
    /// Process started; its health check has not passed yet.
    Starting,
    /// Process alive, was healthy, but its latest health check failed (see `message`).
    Running,
    /// Process alive and its latest health check passed.
    Healthy,
    /// Exited; will be started again at `next_start`.
    Backoff,
    /// Could not be started (`message` says why; retried at `next_start` if its policy
    /// restarts it), or exited unsuccessfully and will not be restarted.
    Failed,
    /// Being stopped by [`Supervisor::stop_all`](super::Supervisor::stop_all).
    Stopping,
    /// Exited successfully and not restarted (`finished`), or stopped by `stop_all`.
    Stopped,
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Healthy => "healthy",
            ServiceState::Backoff => "backoff",
            ServiceState::Failed => "failed",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// A snapshot of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// When `state` was entered.
    pub since: Instant,
    pub since_wall: SystemTime,
    pub pid: Option<Pid>,
    /// Start attempts after the first one, failed spawns included.
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    /// Why the service is in its state, when that needs saying (spawn error, failing check,
    /// what it is waiting for).
    pub message: Option<String>,
    /// When the next start attempt is due (`Backoff`, or a `Failed` spawn being retried).
    pub next_start: Option<Instant>,
    /// Exited with status 0 and its policy does not restart it: a completed one-shot, which
    /// satisfies its dependents.
    pub finished: bool,
    /// The last 16 start attempts, oldest first.
    pub recent_starts: Vec<Instant>,
}

impl ServiceStatus {
    /// Whether dependents may start and [`Supervisor::wait_healthy`](super::Supervisor::wait_healthy) is satisfied.
    pub fn is_ready(&self) -> bool {
        self.state == ServiceState::Healthy
            || (self.state == ServiceState::Stopped && self.finished)
    }

    /// Whether the service has settled in a state it will not leave by itself.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self.state, ServiceState::Failed | ServiceState::Stopped)
            && self.next_start.is_none()
    }
}

impl std::fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.state)?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        if self.restarts > 0 {
            write!(f, ", {} restarts", self.restarts)?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness() {
        let now = Instant::now();
        let mut status = ServiceStatus {
            name: "a".into(),
            state: ServiceState::Stopped,
            since: now,
            since_wall: SystemTime::now(),
            pid: None,
            restarts: 0,
            last_exit: Some(ExitStatus::Exited(0)),
            message: None,
            next_start: None,
            finished: false,
            recent_starts: Vec::new(),
        };
        assert!(!status.is_ready());
        assert!(status.is_final());
        status.finished = true;
        assert!(status.is_ready());
        status.state = ServiceState::Failed;
        status.next_start = Some(now);
        assert!(!status.is_final());
        assert_eq!(
            status.to_string(),
            "a: failed",
            "display names the service and state"
        );
    }
}
