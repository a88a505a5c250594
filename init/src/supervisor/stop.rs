//! Ordered shutdown: a service gets SIGTERM only once all of its dependents are gone, so
//! that e.g. the kubelet stops before containerd. Independent services stop in parallel.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::manager::{Manager, fmt_duration};
use super::reaper::ExitStatus;
use super::spawn::signal_group;
use super::{Pid, ServiceState, StopOutcome, StopReport};

/// How long a SIGKILLed process may take to be reaped before it is given up on (a process
/// stuck in uninterruptible sleep never goes away).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// One service being stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    kill_at: Instant,
    killed_at: Option<Instant>,
    abandoned: bool,
}

pub(crate) struct StopAll {
    deadline: Instant,
    replies: Vec<Sender<StopReport>>,
    report: StopReport,
    done: bool,
}

impl Manager {
    pub(crate) fn begin_stop(&mut self, timeout: Duration, reply: Sender<StopReport>) {
        if let Some(stopping) = &mut self.stopping {
            if stopping.done {
                let _ = reply.send(stopping.report.clone());
            } else {
                stopping.replies.push(reply);
            }
            return;
        }
        self.console_line("keel: supervisor: stopping all services");
        let mut report = StopReport::default();
        for k in (0..self.order.len()).rev() {
            let i = self.order[k];
            let svc = &mut self.svcs[i];
            if svc.pid.is_some() {
                continue;
            }
            report
                .services
                .push((svc.spec.name.clone(), StopOutcome::NotRunning));
            svc.next_start = None;
            if matches!(svc.state, ServiceState::Waiting | ServiceState::Backoff) {
                svc.message = None;
                self.set_state(i, ServiceState::Stopped);
            }
        }
        self.stopping = Some(StopAll {
            deadline: Instant::now() + timeout,
            replies: vec![reply],
            report,
            done: false,
        });
    }

    pub(crate) fn stop_tick(&mut self, now: Instant) {
        let Some(stopping) = &self.stopping else {
            return;
        };
        if stopping.done {
            return;
        }
        let deadline = stopping.deadline;
        for k in (0..self.order.len()).rev() {
            let i = self.order[k];
            let Some(pid) = self.svcs[i].pid else {
                continue;
            };
            match self.svcs[i].stop {
                None => {
                    let dependents_gone = self.svcs[i].dependents.iter().all(|&d| self.is_gone(d));
                    if dependents_gone {
                        self.terminate(i, pid, now, deadline);
                    }
                }
                Some(progress) => match progress.killed_at {
                    None if now >= progress.kill_at => {
                        signal_group(pid, libc::SIGKILL);
                        self.note(i, "did not stop in time; sent SIGKILL");
                        if let Some(p) = self.svcs[i].stop.as_mut() {
                            p.killed_at = Some(now);
                        }
                    }
                    Some(killed) if !progress.abandoned && now >= killed + KILL_WAIT => {
                        self.note(i, &format!("pid {pid} survived SIGKILL; giving up on it"));
                        if let Some(p) = self.svcs[i].stop.as_mut() {
                            p.abandoned = true;
                        }
                        self.record(i, StopOutcome::StillRunning(pid));
                    }
                    _ => {}
                },
            }
        }
        if !(0..self.svcs.len()).all(|i| self.is_gone(i)) {
            return;
        }
        // Whoever gets the report must also see the final states.
        self.publish();
        if let Some(stopping) = &mut self.stopping {
            stopping.done = true;
            for reply in stopping.replies.drain(..) {
                let _ = reply.send(stopping.report.clone());
            }
            self.console_line("keel: supervisor: all services stopped");
        }
    }

    fn terminate(&mut self, i: usize, pid: Pid, now: Instant, deadline: Instant) {
        let timeout = self.svcs[i].spec.stop_timeout;
        signal_group(pid, libc::SIGTERM);
        let svc = &mut self.svcs[i];
        svc.cancel_checker();
        svc.stop = Some(Progress {
            kill_at: (now + timeout).min(deadline),
            killed_at: None,
            abandoned: false,
        });
        self.note(
            i,
            &format!(
                "stopping (SIGTERM, SIGKILL after {})",
                fmt_duration(timeout)
            ),
        );
        self.set_state(i, ServiceState::Stopping);
    }

    /// An exit while stopping, expected or not.
    pub(crate) fn stopped_exit(&mut self, i: usize, pid: Pid, status: ExitStatus) {
        // Whatever else is left in its process group goes too: nothing may outlive the stop.
        signal_group(pid, libc::SIGKILL);
        let progress = self.svcs[i].stop.take();
        let outcome = match progress {
            Some(p) if p.killed_at.is_some() => StopOutcome::Killed(status),
            _ => StopOutcome::Exited(status),
        };
        self.svcs[i].message = None;
        self.note(i, &format!("stopped ({status})"));
        self.set_state(i, ServiceState::Stopped);
        if !progress.is_some_and(|p| p.abandoned) {
            self.record(i, outcome);
        }
    }

    fn record(&mut self, i: usize, outcome: StopOutcome) {
        let name = self.svcs[i].spec.name.clone();
        if let Some(stopping) = &mut self.stopping
            && !stopping.done
        {
            stopping.report.services.push((name, outcome));
        }
    }

    fn is_gone(&self, i: usize) -> bool {
        let svc = &self.svcs[i];
        svc.pid.is_none() || svc.stop.is_some_and(|p| p.abandoned)
    }

    pub(crate) fn stop_wake(&self) -> Option<Instant> {
        self.svcs
            .iter()
            .filter_map(|s| s.stop)
            .filter_map(|p| match p.killed_at {
                None => Some(p.kill_at),
                Some(_) if p.abandoned => None,
                Some(killed) => Some(killed + KILL_WAIT),
            })
            .min()
    }
}
