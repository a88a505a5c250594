//! The init's process reaper and service supervisor.
//!
//! Two pieces:
//!
//! - [`Reaper`]: the only code in the process that calls `waitpid`. It is a process-wide
//!   singleton ([`Reaper::global`]) because two waiters of `waitpid(-1)` steal each other's
//!   exit statuses. Everything the init runs goes through [`Reaper::spawn`] or
//!   [`Reaper::run`]; `std::process::Command`'s `wait`, `status` and `output` must not be
//!   used anywhere in the init (std even waits internally when `exec` fails, which would race
//!   with the reaper). Children of other processes re-parented to us (containerd shims,
//!   double-forked daemons) are reaped and logged as orphans.
//! - [`Supervisor`]: runs a set of [`ServiceSpec`]s: dependency order gated on health,
//!   output capture to the console and to rotated log files, restarts with exponential
//!   backoff, health checks, and an ordered shutdown ([`Supervisor::stop_all`]).
//!
//! All service state lives in one manager thread that reacts to events (exits from the
//! reaper, health results, stop requests) and timers; the public API only reads published
//! snapshots or sends requests, so no lock is ever held across a fork, a sleep or a
//! health check.
//!
//! Log files: `<log_dir>/<service>.log`, moved to `<service>.log.1` when it would exceed
//! [`LogSettings::max_file_size`] (one old file kept). Until a log directory is attached
//! ([`Supervisor::attach_log_dir`]; /var/log/keel exists only once /var is mounted) the last
//! 64 KiB of each service's output is kept in memory and written out on attach, with a note
//! saying how many older lines were dropped.

mod graph;
mod health;
mod logfile;
mod manager;
mod output;
mod reaper;
mod spawn;
mod stop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

pub use reaper::{ExitStatus, OrphanRecord, OrphanSink, Reaper, RunError};
pub use spawn::{ProcessSpec, SpawnError};

/// A process id.
pub type Pid = libc::pid_t;

/// Receives complete console lines (service output as `[name] text`, supervisor events as
/// `keel: name: text`), without a trailing newline. Called from several threads; a slow sink
/// slows only the service whose output it is writing (through its pipe), and a panicking
/// sink loses that line only.
pub type ConsoleSink = Arc<dyn Fn(&str) + Send + Sync>;

/// A sink that writes each line to the init's stdout (the console).
pub fn stdout_sink() -> ConsoleSink {
    Arc::new(|line: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}

/// How a service's health is judged. Dependents start only once it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Healthy as soon as the process has been started.
    ProcessAlive,
    /// Healthy when a connection to this Unix stream socket succeeds.
    UnixSocket(PathBuf),
    /// Healthy when `GET path` on `127.0.0.1:port` (plain HTTP/1.0) answers 2xx.
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
    /// Time between SIGTERM and SIGKILL in [`Supervisor::stop_all`].
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
    /// Being stopped by [`Supervisor::stop_all`].
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
    /// Whether dependents may start and [`Supervisor::wait_healthy`] is satisfied.
    pub fn is_ready(&self) -> bool {
        self.state == ServiceState::Healthy
            || (self.state == ServiceState::Stopped && self.finished)
    }

    /// Whether the service has settled in a state it will not leave by itself.
    fn is_final(&self) -> bool {
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

/// Invalid service definitions, found before anything is started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid service name {0:?}: it must be non-empty and contain no '/' or NUL")]
    InvalidName(String),
    #[error("service {0:?} is defined more than once")]
    Duplicate(String),
    #[error("service {0:?} has an empty command line")]
    EmptyCommand(String),
    #[error("service {service:?} depends on unknown service {dependency:?}")]
    UnknownDependency { service: String, dependency: String },
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the reaper: {0}")]
    Reaper(#[source] std::io::Error),
    #[error("cannot start the supervisor thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why [`Supervisor::wait_healthy`] gave up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaitError {
    #[error("no service named {0:?}")]
    UnknownService(String),
    #[error("{name} is {state} and will not become healthy{}", fmt_message(.message))]
    Failed {
        name: String,
        state: ServiceState,
        message: Option<String>,
    },
    #[error("{name} is still {state} after the timeout{}", fmt_message(.message))]
    Timeout {
        name: String,
        state: ServiceState,
        message: Option<String>,
    },
}

fn fmt_message(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default()
}

/// How one service ended in [`Supervisor::stop_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Had no process when the stop began.
    NotRunning,
    /// Exited after SIGTERM (or by itself during the stop).
    Exited(ExitStatus),
    /// Had to be SIGKILLed after its stop timeout.
    Killed(ExitStatus),
    /// Still not reaped some seconds after SIGKILL (stuck in the kernel); abandoned.
    StillRunning(Pid),
}

/// The result of [`Supervisor::stop_all`]: services in the order they were done with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    pub services: Vec<(String, StopOutcome)>,
}

impl StopReport {
    pub fn all_gone(&self) -> bool {
        !self
            .services
            .iter()
            .any(|(_, o)| matches!(o, StopOutcome::StillRunning(_)))
    }

    pub fn outcome(&self, name: &str) -> Option<&StopOutcome> {
        self.services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o)
    }
}

/// Supervisor settings that are not per service.
#[derive(Clone)]
pub struct Options {
    pub console: ConsoleSink,
    /// Attached at start if given; see [`Supervisor::attach_log_dir`].
    pub log_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            console: stdout_sink(),
            log_dir: None,
        }
    }
}

/// Locks a mutex even if a thread panicked while holding it: the data behind every mutex
/// here stays consistent between statements, and PID 1 must keep going.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Calls the console sink, containing a panic in caller-provided code to this one line.
pub(crate) fn emit(console: &ConsoleSink, line: &str) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| console(line)));
}

/// Snapshots published by the manager thread.
pub(crate) struct Board {
    statuses: Mutex<Vec<ServiceStatus>>,
    changed: Condvar,
}

impl Board {
    pub(crate) fn publish(&self, statuses: Vec<ServiceStatus>) {
        *lock(&self.statuses) = statuses;
        self.changed.notify_all();
    }
}

/// A running set of services. Dropping it stops them (2 s timeout); PID 1 keeps it forever
/// and calls [`Supervisor::stop_all`] before rebooting.
pub struct Supervisor {
    events: Sender<manager::Event>,
    board: Arc<Board>,
    logs: Arc<logfile::LogStore>,
    console: ConsoleSink,
    manager: Option<JoinHandle<()>>,
    stopped: AtomicBool,
}

impl Supervisor {
    /// Validates the services (names, commands, dependencies: unknown ones and cycles are
    /// errors) and starts supervising them in the background.
    pub fn start(services: Vec<ServiceSpec>, options: Options) -> Result<Supervisor, Error> {
        let plan = graph::plan(&services)?;
        let reaper = Reaper::global().map_err(Error::Reaper)?;
        let logs = Arc::new(logfile::LogStore::new());
        for spec in &services {
            logs.register(&spec.name, spec.log.max_file_size);
        }
        if let Some(dir) = &options.log_dir
            && let Err(e) = logs.attach(dir)
        {
            emit(
                &options.console,
                &format!(
                    "keel: supervisor: cannot use log directory {}: {e}; keeping logs in memory",
                    dir.display()
                ),
            );
        }
        let board = Arc::new(Board {
            statuses: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let manager = manager::Manager::new(
            services,
            plan,
            reaper,
            tx.clone(),
            options.console.clone(),
            logs.clone(),
            board.clone(),
        );
        // Publish before returning so status() and wait_healthy() know every name at once.
        board.publish(manager.snapshot());
        let handle = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || manager.run(rx))
            .map_err(Error::Thread)?;
        Ok(Supervisor {
            events: tx,
            board,
            logs,
            console: options.console,
            manager: Some(handle),
            stopped: AtomicBool::new(false),
        })
    }

    /// Every service, in dependency order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        lock(&self.board.statuses).clone()
    }

    pub fn service(&self, name: &str) -> Option<ServiceStatus> {
        lock(&self.board.statuses)
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Waits until `name` is healthy (or, for a one-shot, has finished successfully).
    /// Gives up early when the service settled in `Failed` or `Stopped` without a retry
    /// pending.
    pub fn wait_healthy(&self, name: &str, timeout: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + timeout;
        let mut statuses = lock(&self.board.statuses);
        loop {
            let Some(status) = statuses.iter().find(|s| s.name == name) else {
                return Err(WaitError::UnknownService(name.to_string()));
            };
            if status.is_ready() {
                return Ok(());
            }
            if status.is_final() {
                return Err(WaitError::Failed {
                    name: name.to_string(),
                    state: status.state,
                    message: status.message.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout {
                    name: name.to_string(),
                    state: status.state,
                    message: status.message.clone(),
                });
            }
            statuses = self
                .board
                .changed
                .wait_timeout(statuses, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Starts writing log files into `dir` (created if missing), flushing what was kept in
    /// memory. May be called again to move to another directory.
    pub fn attach_log_dir(&self, dir: impl Into<PathBuf>) -> std::io::Result<()> {
        self.logs.attach(&dir.into())
    }

    /// Stops every service, dependents before their dependencies: SIGTERM to the service's
    /// process group, SIGKILL after its `stop_timeout` (or when `timeout`, the bound for the
    /// whole shutdown, runs out). Nothing is restarted afterwards. Returns once every process
    /// is reaped, or abandoned 5 s after its SIGKILL.
    pub fn stop_all(&self, timeout: Duration) -> StopReport {
        self.stopped.store(true, Ordering::SeqCst);
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = self
            .events
            .send(manager::Event::StopAll {
                timeout,
                reply: reply_tx,
            })
            .is_ok();
        if sent && let Ok(report) = reply_rx.recv_timeout(timeout + stop::KILL_WAIT * 2) {
            return report;
        }
        // The manager thread is gone or wedged; do the one thing that still matters before
        // a reboot: no service process may survive.
        emit(
            &self.console,
            "keel: supervisor: not responding to stop; killing every service",
        );
        let mut report = StopReport::default();
        for status in self.status() {
            let outcome = match status.pid {
                Some(pid) => {
                    spawn::signal_group(pid, libc::SIGKILL);
                    StopOutcome::StillRunning(pid)
                }
                None => StopOutcome::NotRunning,
            };
            report.services.push((status.name, outcome));
        }
        report
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::SeqCst) {
            self.stop_all(Duration::from_secs(2));
        }
        let _ = self.events.send(manager::Event::Quit);
        if let Some(handle) = self.manager.take() {
            let _ = handle.join();
        }
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
