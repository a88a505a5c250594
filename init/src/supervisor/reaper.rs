//! The one owner of `waitpid` in the process.
//!
//! A dedicated thread blocks in `waitpid(-1)` and hands each exit status to whoever claimed
//! that pid. A child may exit before its spawner has claimed it (exec of /bin/true takes
//! less than the time between fork and claim), so unclaimed statuses are kept: the spawner
//! brackets fork-to-claim with `in_flight`, and a status reaped while any spawn is in flight
//! cannot yet be told apart from an orphan. Once no spawn is in flight, every status still
//! unclaimed belongs to a process we did not start: it is logged as an orphan, and still
//! kept for [`RETAIN`] in case something claims it late through [`Reaper::claim`].

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::spawn::{self, ProcessSpec, SpawnError};
use super::{Pid, lock};

/// How long an unclaimed exit status stays claimable.
const RETAIN: Duration = Duration::from_secs(60);
/// Bound on kept unclaimed statuses, against orphan storms.
const MAX_UNCLAIMED: usize = 4096;
/// Orphans remembered for [`Reaper::recent_orphans`].
const RECENT_ORPHANS: usize = 64;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    Exited(i32),
    Signaled {
        signal: i32,
        core_dumped: bool,
    },
    /// A wait status that is neither (cannot happen without ptrace); the raw value.
    Other(i32),
}

impl ExitStatus {
    pub fn from_raw(raw: libc::c_int) -> ExitStatus {
        if libc::WIFEXITED(raw) {
            ExitStatus::Exited(libc::WEXITSTATUS(raw))
        } else if libc::WIFSIGNALED(raw) {
            ExitStatus::Signaled {
                signal: libc::WTERMSIG(raw),
                core_dumped: libc::WCOREDUMP(raw),
            }
        } else {
            ExitStatus::Other(raw)
        }
    }

    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exit status {code}"),
            ExitStatus::Signaled {
                signal,
                core_dumped,
            } => {
                match signal_name(signal) {
                    Some(name) => write!(f, "killed by {name}")?,
                    None => write!(f, "killed by signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            ExitStatus::Other(raw) => write!(f, "wait status {raw:#x}"),
        }
    }
}

/// A reaped process nobody had claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanRecord {
    pub pid: Pid,
    pub status: ExitStatus,
    pub reaped_at: Instant,
}

/// Told about every orphan; the default writes a line to the console.
pub type OrphanSink = Arc<dyn Fn(&OrphanRecord) + Send + Sync>;

type ExitCallback = Box<dyn FnOnce(ExitStatus) + Send>;

struct Unclaimed {
    status: ExitStatus,
    seq: u64,
    at: Instant,
    reported: bool,
}

struct State {
    claims: HashMap<Pid, ExitCallback>,
    unclaimed: HashMap<Pid, Unclaimed>,
    /// Spawns between fork and claim.
    in_flight: usize,
    /// Bumped at every spawn start and end; the reaper sleeps on it when it has no children.
    epoch: u64,
    /// Number of statuses reaped so far; orders reaps against spawns.
    reaped: u64,
    orphans: VecDeque<OrphanRecord>,
    orphan_sink: Option<OrphanSink>,
}

/// See the module documentation. Obtain it with [`Reaper::global`].
pub struct Reaper {
    state: Mutex<State>,
    wake: Condvar,
}

/// Why [`Reaper::run`] did not return a status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("timed out after {0:?}; killed")]
    Timeout(Duration),
}

static GLOBAL: Mutex<Option<&'static Reaper>> = Mutex::new(None);

impl Reaper {
    /// The process's reaper, started on first use. Outside PID 1 this also makes the process
    /// a child subreaper, so that orphans of its descendants come to it as they would to
    /// PID 1 (tests rely on this).
    pub fn global() -> std::io::Result<&'static Reaper> {
        let mut global = lock(&GLOBAL);
        if let Some(reaper) = *global {
            return Ok(reaper);
        }
        if std::process::id() != 1 {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
            state: Mutex::new(State {
                claims: HashMap::new(),
                unclaimed: HashMap::new(),
                in_flight: 0,
                epoch: 0,
                reaped: 0,
                orphans: VecDeque::new(),
                orphan_sink: None,
            }),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper.reap_forever())?;
        *global = Some(reaper);
        Ok(reaper)
    }

    /// Starts a process; `on_exit` gets its status exactly once, on the reaper thread (so it
    /// must be quick: send it somewhere). On error no callback is made.
    pub fn spawn(
        &self,
        spec: ProcessSpec<'_>,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> Result<Pid, SpawnError> {
        let since = self.begin_spawn();
        let result = spawn::fork_exec(spec);
        match &result {
            Ok(pid) => self.claim_since(*pid, since, Box::new(on_exit)),
            // The child that failed to exec exits with 127; nobody wants that status, but it
            // is not an orphan either.
            Err(e) => {
                if let Some(pid) = e.pid {
                    self.claim_since(pid, since, Box::new(|_| {}));
                }
            }
        }
        self.end_spawn();
        result
    }

    /// Runs a process to completion. After `timeout` its process group is SIGKILLed and
    /// [`RunError::Timeout`] returned once it is reaped (or 5 s later).
    pub fn run(&self, spec: ProcessSpec<'_>, timeout: Duration) -> Result<ExitStatus, RunError> {
        let (tx, rx) = mpsc::channel();
        let pid = self.spawn(spec, move |status| {
            let _ = tx.send(status);
        })?;
        match rx.recv_timeout(timeout) {
            Ok(status) => Ok(status),
            Err(_) => {
                spawn::signal_group(pid, libc::SIGKILL);
                let _ = rx.recv_timeout(Duration::from_secs(5));
                Err(RunError::Timeout(timeout))
            }
        }
    }

    /// Claims a child started some other way. If it was reaped already (within the last
    /// minute), `on_exit` runs at once on the calling thread. Prefer [`Reaper::spawn`], which
    /// also keeps such a child from being reported as an orphan.
    pub fn claim(&self, pid: Pid, on_exit: impl FnOnce(ExitStatus) + Send + 'static) {
        self.claim_since(pid, 0, Box::new(on_exit));
    }

    /// Replaces the orphan sink (`None` restores the console default).
    pub fn set_orphan_sink(&self, sink: Option<OrphanSink>) {
        lock(&self.state).orphan_sink = sink;
    }

    /// The last orphans reaped, oldest first.
    pub fn recent_orphans(&self) -> Vec<OrphanRecord> {
        lock(&self.state).orphans.iter().copied().collect()
    }

    fn begin_spawn(&self) -> u64 {
        let mut state = lock(&self.state);
        state.in_flight += 1;
        state.epoch += 1;
        state.reaped
    }

    fn end_spawn(&self) {
        let mut state = lock(&self.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        state.epoch += 1;
        let orphans = if state.in_flight == 0 {
            take_unreported(&mut state)
        } else {
            Vec::new()
        };
        let sink = state.orphan_sink.clone();
        drop(state);
        self.wake.notify_all();
        report_orphans(sink, &orphans);
    }

    /// `since`: the reap count when the spawn began. A kept status for this pid reaped before
    /// that belonged to an earlier process with the same pid.
    fn claim_since(&self, pid: Pid, since: u64, on_exit: ExitCallback) {
        let mut state = lock(&self.state);
        match state.unclaimed.remove(&pid) {
            Some(u) if u.seq > since => {
                drop(state);
                on_exit(u.status);
            }
            _ => {
                state.claims.insert(pid, on_exit);
            }
        }
    }

    fn reap_forever(&self) -> ! {
        loop {
            let epoch = lock(&self.state).epoch;
            let mut raw = 0;
            // SAFETY: waitpid with a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut raw, 0) };
            if pid > 0 {
                self.dispatch(pid, ExitStatus::from_raw(raw));
                continue;
            }
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECHILD: no children at all. The next one can only come from a spawn (orphans
            // are descendants of children, which we would have), so sleep until one starts.
            // The timeout covers children started behind our back.
            let state = lock(&self.state);
            let _ = self
                .wake
                .wait_timeout_while(state, Duration::from_secs(1), |s| s.epoch == epoch);
        }
    }

    fn dispatch(&self, pid: Pid, status: ExitStatus) {
        let mut state = lock(&self.state);
        state.reaped += 1;
        if let Some(on_exit) = state.claims.remove(&pid) {
            drop(state);
            // A panicking callback must not take the reaper thread down with it.
            let _ = crate::fatal::contained(std::panic::AssertUnwindSafe(|| on_exit(status)));
            return;
        }
        let now = Instant::now();
        let seq = state.reaped;
        let reported = state.in_flight == 0;
        state.unclaimed.insert(
            pid,
            Unclaimed {
                status,
                seq,
                at: now,
                reported,
            },
        );
        prune(&mut state, now);
        if !reported {
            return;
        }
        let record = OrphanRecord {
            pid,
            status,
            reaped_at: now,
        };
        remember(&mut state, record);
        let sink = state.orphan_sink.clone();
        drop(state);
        report_orphans(sink, &[record]);
    }
}

fn remember(state: &mut State, record: OrphanRecord) {
    if state.orphans.len() >= RECENT_ORPHANS {
        state.orphans.pop_front();
    }
    state.orphans.push_back(record);
}

fn take_unreported(state: &mut State) -> Vec<OrphanRecord> {
    let mut records: Vec<OrphanRecord> = state
        .unclaimed
        .iter_mut()
        .filter(|(_, u)| !u.reported)
        .map(|(&pid, u)| {
            u.reported = true;
            OrphanRecord {
                pid,
                status: u.status,
                reaped_at: u.at,
            }
        })
        .collect();
    records.sort_by_key(|r| r.reaped_at);
    for &record in &records {
        remember(state, record);
    }
    records
}

fn prune(state: &mut State, now: Instant) {
    if state.unclaimed.len() < 64 {
        return;
    }
    state
        .unclaimed
        .retain(|_, u| now.duration_since(u.at) < RETAIN || !u.reported);
    if state.unclaimed.len() > MAX_UNCLAIMED {
        let mut by_age: Vec<(Instant, Pid)> =
            state.unclaimed.iter().map(|(&p, u)| (u.at, p)).collect();
        by_age.sort_unstable();
        let excess = state.unclaimed.len() - MAX_UNCLAIMED / 2;
        for (_, pid) in by_age.into_iter().take(excess) {
            state.unclaimed.remove(&pid);
        }
    }
}

fn report_orphans(sink: Option<OrphanSink>, records: &[OrphanRecord]) {
    for record in records {
        let _ = crate::fatal::contained(std::panic::AssertUnwindSafe(|| match &sink {
            Some(sink) => sink(record),
            None => crate::console::line(&format!(
                "reaped orphan pid {} ({})",
                record.pid, record.status
            )),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(ExitStatus::from_raw(0), ExitStatus::Exited(0));
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited(3));
        assert_eq!(
            ExitStatus::from_raw(libc::SIGKILL),
            ExitStatus::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(libc::SIGSEGV | 0x80).to_string(),
            "killed by SIGSEGV (core dumped)"
        );
        assert_eq!(ExitStatus::Exited(1).to_string(), "exit status 1");
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Exited(2).success());
    }
}
