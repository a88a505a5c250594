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
mod spec;
mod stop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use reaper::{ExitStatus, OrphanRecord, OrphanSink, Reaper, RunError};
pub use spawn::{ProcessSpec, SpawnError};
pub use spec::{Backoff, Health, LogSettings, Restart, ServiceSpec, ServiceState, ServiceStatus};

// The init shares these between threads (console status line, management API).
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Supervisor>();
    shareable::<Reaper>();
};

/// A process id.
pub type Pid = libc::pid_t;

/// Receives complete console lines (service output as `[name] text`, supervisor events as
/// `keel: name: text`), without a trailing newline. Called from several threads. A slow sink
/// (a 115200-baud serial console) holds up whoever is writing: a service blocks once its
/// pipe is full, and the supervisor's own notes wait too. A panicking sink loses that line
/// only.
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
    let _ = crate::fatal::contained(std::panic::AssertUnwindSafe(|| console(line)));
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

    /// Closes the services' log files (later output is kept in memory): what PID 1 does
    /// after [`Supervisor::stop_all`], so that the filesystem they are on can be unmounted.
    pub fn close_logs(&self) {
        self.logs.detach();
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
