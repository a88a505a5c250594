//! The supervisor's state machine. It runs on one thread and owns all service state, so
//! transitions need no locking; it learns about the world through [`Event`]s (from the
//! reaper, health checkers and the public API) and its own timers, and publishes a snapshot
//! after each step.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use super::graph::Plan;
use super::health::{CancelToken, Checker};
use super::logfile::LogStore;
use super::output::{LineSink, spawn_reader};
use super::reaper::{ExitStatus, Reaper};
use super::spawn::{ProcessSpec, pipe};
use super::stop::{Progress, StopAll};
use super::{
    Board, ConsoleSink, Health, Pid, Restart, ServiceSpec, ServiceState, ServiceStatus, StopReport,
    emit,
};

/// Longest sleep without an event; only a safety net, every timer has its own deadline.
const IDLE: Duration = Duration::from_secs(1);
const RECENT_STARTS: usize = 16;

pub(crate) enum Event {
    Exited {
        idx: usize,
        generation: u64,
        status: ExitStatus,
    },
    Health {
        idx: usize,
        generation: u64,
        result: Result<(), String>,
    },
    StopAll {
        timeout: Duration,
        reply: Sender<StopReport>,
    },
    Quit,
}

pub(crate) struct Svc {
    pub spec: ServiceSpec,
    pub name: Arc<str>,
    pub deps: Vec<usize>,
    pub dependents: Vec<usize>,
    pub state: ServiceState,
    pub since: Instant,
    pub since_wall: SystemTime,
    pub pid: Option<Pid>,
    /// Bumped at every start so that late events of an earlier instance are ignored.
    pub generation: u64,
    pub started_at: Option<Instant>,
    pub started_once: bool,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub message: Option<String>,
    pub next_start: Option<Instant>,
    /// The next backoff delay.
    pub delay: Duration,
    pub finished: bool,
    pub starts: VecDeque<Instant>,
    pub checker: Option<CancelToken>,
    pub grace_reported: bool,
    pub stop: Option<Progress>,
}

impl Svc {
    fn take_delay(&mut self) -> Duration {
        let delay = self.delay;
        let backoff = self.spec.backoff;
        self.delay = delay
            .saturating_mul(2)
            .min(backoff.max.max(backoff.initial));
        delay
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state == ServiceState::Healthy
            || (self.state == ServiceState::Stopped && self.finished)
    }

    pub(crate) fn cancel_checker(&mut self) {
        if let Some(token) = self.checker.take() {
            token.cancel();
        }
    }
}

pub(crate) struct Manager {
    pub svcs: Vec<Svc>,
    /// Dependencies before dependents.
    pub order: Vec<usize>,
    reaper: &'static Reaper,
    events: Sender<Event>,
    console: ConsoleSink,
    logs: Arc<LogStore>,
    board: Arc<Board>,
    pub stopping: Option<StopAll>,
}

impl Manager {
    pub(crate) fn new(
        specs: Vec<ServiceSpec>,
        plan: Plan,
        reaper: &'static Reaper,
        events: Sender<Event>,
        console: ConsoleSink,
        logs: Arc<LogStore>,
        board: Arc<Board>,
    ) -> Manager {
        let now = Instant::now();
        let wall = SystemTime::now();
        let Plan {
            order,
            deps,
            dependents,
        } = plan;
        let svcs = specs
            .into_iter()
            .zip(deps)
            .zip(dependents)
            .map(|((spec, deps), dependents)| Svc {
                name: Arc::from(spec.name.as_str()),
                delay: spec.backoff.initial,
                spec,
                deps,
                dependents,
                state: ServiceState::Waiting,
                since: now,
                since_wall: wall,
                pid: None,
                generation: 0,
                started_at: None,
                started_once: false,
                restarts: 0,
                last_exit: None,
                message: None,
                next_start: None,
                finished: false,
                starts: VecDeque::new(),
                checker: None,
                grace_reported: false,
                stop: None,
            })
            .collect();
        Manager {
            svcs,
            order,
            reaper,
            events,
            console,
            logs,
            board,
            stopping: None,
        }
    }

    pub(crate) fn run(mut self, events: Receiver<Event>) {
        loop {
            let now = Instant::now();
            self.tick(now);
            self.publish();
            let wait = self
                .next_wake()
                .map_or(IDLE, |t| t.saturating_duration_since(now))
                .min(IDLE);
            match events.recv_timeout(wait) {
                Ok(Event::Quit) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        for svc in &mut self.svcs {
            svc.cancel_checker();
        }
    }

    pub(crate) fn publish(&self) {
        self.board.publish(self.snapshot());
    }

    pub(crate) fn snapshot(&self) -> Vec<ServiceStatus> {
        self.order
            .iter()
            .map(|&i| {
                let svc = &self.svcs[i];
                ServiceStatus {
                    name: svc.spec.name.clone(),
                    state: svc.state,
                    since: svc.since,
                    since_wall: svc.since_wall,
                    pid: svc.pid,
                    restarts: svc.restarts,
                    last_exit: svc.last_exit,
                    message: svc.message.clone(),
                    next_start: svc.next_start,
                    finished: svc.finished,
                    recent_starts: svc.starts.iter().copied().collect(),
                }
            })
            .collect()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited {
                idx,
                generation,
                status,
            } => self.on_exit(idx, generation, status),
            Event::Health {
                idx,
                generation,
                result,
            } => self.on_health(idx, generation, result),
            Event::StopAll { timeout, reply } => self.begin_stop(timeout, reply),
            Event::Quit => {}
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.stopping.is_some() {
            return self.stop_wake();
        }
        self.svcs.iter().filter_map(|s| s.next_start).min()
    }

    /// A supervisor event about service `i`: on the console and in the service's log.
    pub(crate) fn note(&self, i: usize, text: &str) {
        let svc = &self.svcs[i];
        emit(&self.console, &format!("keel: {}: {text}", svc.name));
        if svc.spec.log.file {
            self.logs
                .write_line(&svc.name, format!("keel: {text}").as_bytes());
        }
    }

    pub(crate) fn console_line(&self, text: &str) {
        emit(&self.console, text);
    }

    pub(crate) fn set_state(&mut self, i: usize, state: ServiceState) {
        let svc = &mut self.svcs[i];
        if svc.state != state {
            svc.state = state;
            svc.since = Instant::now();
            svc.since_wall = SystemTime::now();
        }
    }

    fn tick(&mut self, now: Instant) {
        if self.stopping.is_some() {
            self.stop_tick(now);
            return;
        }
        for k in 0..self.order.len() {
            let i = self.order[k];
            let svc = &mut self.svcs[i];
            if matches!(svc.state, ServiceState::Backoff | ServiceState::Failed)
                && svc.next_start.is_some_and(|t| t <= now)
            {
                svc.next_start = None;
                self.set_state(i, ServiceState::Waiting);
            }
            if self.svcs[i].state != ServiceState::Waiting {
                continue;
            }
            let missing: Vec<&str> = self.svcs[i]
                .deps
                .iter()
                .filter(|&&d| !self.svcs[d].is_ready())
                .map(|&d| &*self.svcs[d].name)
                .collect();
            if missing.is_empty() {
                self.start(i);
            } else {
                let message = Some(format!("waiting for {}", missing.join(", ")));
                self.svcs[i].message = message;
            }
        }
    }

    fn start(&mut self, i: usize) {
        let now = Instant::now();
        let svc = &mut self.svcs[i];
        svc.generation += 1;
        let generation = svc.generation;
        if svc.started_once {
            svc.restarts = svc.restarts.saturating_add(1);
        }
        svc.started_once = true;
        if svc.starts.len() >= RECENT_STARTS {
            svc.starts.pop_front();
        }
        svc.starts.push_back(now);
        svc.finished = false;
        svc.message = None;

        let (stdout, stderr) = if svc.spec.log.console || svc.spec.log.file {
            let sink = LineSink {
                name: svc.name.clone(),
                settings: svc.spec.log,
                console: self.console.clone(),
                logs: self.logs.clone(),
            };
            match output_pipes(sink) {
                Ok((out, err)) => (Some(out), Some(err)),
                Err(message) => return self.spawn_failed(i, message),
            }
        } else {
            (None, None)
        };
        let events = self.events.clone();
        let svc = &self.svcs[i];
        let spec = ProcessSpec {
            argv: &svc.spec.argv,
            env: &svc.spec.env,
            working_dir: svc.spec.working_dir.as_deref(),
            stdout,
            stderr,
        };
        let result = self.reaper.spawn(spec, move |status| {
            let _ = events.send(Event::Exited {
                idx: i,
                generation,
                status,
            });
        });
        let pid = match result {
            Ok(pid) => pid,
            Err(e) => return self.spawn_failed(i, e.to_string()),
        };
        let svc = &mut self.svcs[i];
        svc.pid = Some(pid);
        svc.started_at = Some(now);
        svc.grace_reported = false;
        self.note(i, &format!("started (pid {pid})"));
        if self.svcs[i].spec.health == Health::ProcessAlive {
            self.set_state(i, ServiceState::Healthy);
            return;
        }
        self.set_state(i, ServiceState::Starting);
        let svc = &self.svcs[i];
        let token = CancelToken::default();
        let checker = Checker {
            idx: i,
            generation,
            health: svc.spec.health.clone(),
            env: svc.spec.env.clone(),
            interval: svc.spec.health_interval,
            timeout: svc.spec.health_timeout,
            events: self.events.clone(),
            reaper: self.reaper,
            token: token.clone(),
        };
        match checker.spawn(&svc.name) {
            Ok(()) => self.svcs[i].checker = Some(token),
            Err(e) => {
                let message = format!("cannot start health checks: {e}");
                self.note(i, &message);
                self.svcs[i].message = Some(message);
            }
        }
    }

    fn spawn_failed(&mut self, i: usize, message: String) {
        let now = Instant::now();
        let svc = &mut self.svcs[i];
        svc.pid = None;
        svc.message = Some(message.clone());
        if svc.spec.restart == Restart::Never {
            self.note(i, &format!("failed to start: {message}"));
        } else {
            let delay = svc.take_delay();
            svc.next_start = Some(now + delay);
            self.note(
                i,
                &format!(
                    "failed to start: {message}; retrying in {}",
                    fmt_duration(delay)
                ),
            );
        }
        self.set_state(i, ServiceState::Failed);
    }

    fn on_exit(&mut self, i: usize, generation: u64, status: ExitStatus) {
        let now = Instant::now();
        let Some(svc) = self.svcs.get_mut(i) else {
            return;
        };
        if svc.generation != generation {
            return;
        }
        let Some(pid) = svc.pid.take() else {
            return;
        };
        svc.cancel_checker();
        svc.last_exit = Some(status);
        if self.stopping.is_some() {
            self.stopped_exit(i, pid, status);
            return;
        }
        let svc = &mut self.svcs[i];
        let uptime = svc.started_at.map_or(Duration::ZERO, |t| now - t);
        if uptime >= svc.spec.backoff.reset_after {
            svc.delay = svc.spec.backoff.initial;
        }
        let restart = match svc.spec.restart {
            Restart::Always => true,
            Restart::OnFailure => !status.success(),
            Restart::Never => false,
        };
        svc.message = (!status.success()).then(|| status.to_string());
        if restart {
            let delay = svc.take_delay();
            svc.next_start = Some(now + delay);
            self.note(
                i,
                &format!("{status}; restarting in {}", fmt_duration(delay)),
            );
            self.set_state(i, ServiceState::Backoff);
        } else {
            svc.finished = status.success();
            self.note(i, &format!("{status}; not restarting"));
            let state = if status.success() {
                ServiceState::Stopped
            } else {
                ServiceState::Failed
            };
            self.set_state(i, state);
        }
    }

    fn on_health(&mut self, i: usize, generation: u64, result: Result<(), String>) {
        let Some(svc) = self.svcs.get_mut(i) else {
            return;
        };
        if svc.generation != generation || svc.pid.is_none() || svc.stop.is_some() {
            return;
        }
        match (result, svc.state) {
            (Ok(()), ServiceState::Healthy) => {}
            (Ok(()), state) => {
                svc.message = None;
                let again = if state == ServiceState::Running {
                    " again"
                } else {
                    ""
                };
                self.note(i, &format!("healthy{again}"));
                self.set_state(i, ServiceState::Healthy);
            }
            (Err(e), ServiceState::Healthy) => {
                svc.message = Some(format!("health check failing: {e}"));
                self.note(i, &format!("unhealthy: {e}"));
                self.set_state(i, ServiceState::Running);
            }
            (Err(e), ServiceState::Running) => {
                svc.message = Some(format!("health check failing: {e}"));
            }
            (Err(e), ServiceState::Starting) => {
                let grace = svc.spec.startup_grace;
                let elapsed = svc.started_at.map_or(Duration::ZERO, |t| t.elapsed());
                if elapsed >= grace {
                    svc.message = Some(format!("not healthy after {}: {e}", fmt_duration(grace)));
                    if !std::mem::replace(&mut svc.grace_reported, true) {
                        let text = format!("still not healthy after {}: {e}", fmt_duration(grace));
                        self.note(i, &text);
                    }
                }
            }
            (Err(_), _) => {}
        }
    }
}

/// Pipes for stdout and stderr with their reader threads running; returns the write ends.
fn output_pipes(sink: LineSink) -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    let (out_r, out_w) = pipe().map_err(|e| format!("cannot create output pipes: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("cannot create output pipes: {e}"))?;
    spawn_reader(out_r, sink.clone(), "stdout")
        .and_then(|()| spawn_reader(err_r, sink, "stderr"))
        .map_err(|e| format!("cannot start output threads: {e}"))?;
    Ok((out_w, err_w))
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}
